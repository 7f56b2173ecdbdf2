"""Benchmark ``loops:numba`` on the report workloads (WORKLOADS.md): W1 against
copy bandwidth, W3a/W3b against ``F.conv2d(groups=C)``, W2 for information.

    python bench/bench_numba.py [--budget SECONDS] [--threads N]

numba and torch use the same number of threads (2 by default). Times are
medians (``einlocal.timing.measure``); "fresh" allocates every result,
"steady" reuses ``out=``. First-call compile (or file-cache load) time is
reported apart from run time.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np


def _args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=1.0, help="seconds of timed work per measurement")
    p.add_argument("--threads", type=int, default=2, help="numba and torch threads")
    return p.parse_args()


def main():
    args = _args()
    from einlocal.timing import measure, set_threads
    set_threads(args.threads)
    import numba
    import torch
    import torch.nn.functional as F
    import einlocal as el
    from einlocal import machine, registry
    numba.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    backend = registry.get("loops:numba")
    rng = np.random.default_rng(0)
    rows = []

    def t(fn, **kw):
        return measure(fn, budget_s=args.budget, **kw).median_s

    def compile_s(before):
        new = {k: v for k, v in backend.compile_seconds.items() if k not in before}
        return sum(new.values())

    def arr(*shape):
        return rng.standard_normal(shape, dtype=np.float32)

    bw = machine.copy_bandwidth(refresh=True)
    print(f"threads: numba {numba.get_num_threads()}, torch {torch.get_num_threads()}; "
          f"copy bandwidth {bw / 1e9:.1f} GB/s (read + written, measured now)")

    # --- W1: LC 1x1 -------------------------------------------------------------------
    op = el.locally_connected2d
    x, w, b = arr(32, 4, 256, 256), arr(2, 4, 1, 1, 256, 256), arr(2, 256, 256)
    call = op.bind(x, w, b)
    before = dict(backend.compile_seconds)
    y = op(x, w, b, backend="loops:numba")
    dy = arr(*y.shape)
    op.vjp(dy, x, w, b, backend="loops:numba", wrt=("x", "weight"))
    comp = compile_s(before)
    out = np.empty_like(y)
    dx, dw = np.empty_like(x), np.empty_like(w)
    fresh = t(lambda: op(x, w, b, backend="loops:numba"))
    steady = t(lambda: op(x, w, b, backend="loops:numba", out=out))
    bwd = t(lambda: op.vjp(dy, x, w, None, backend="loops:numba", wrt=("x", "weight"), out=(dx, dw, None)))
    floor = call.min_bytes(4) / bw
    rows += [("W1", "fwd fresh", fresh, None, f"{floor / fresh:.0%} of copy bw"),
             ("W1", "fwd steady", steady, None, f"{floor / steady:.0%} of copy bw (target >= 80%; floor {floor * 1e3:.2f} ms)"),
             ("W1", "bwd steady (dx+dW)", bwd, None, f"{bwd / steady:.2f}x fwd steady (target <= 2x)"),
             ("W1", "first-call compile", comp, None, "3 kernels (compile or file-cache load)")]

    # --- W3a, W3b: depthwise vs F.conv2d(groups=C) -------------------------------------------
    for name, xs, ws, pad in (("W3a", (1, 1024, 28, 28), (1024, 1, 3, 3), 1),
                              ("W3b", (32, 32, 128, 128), (64, 1, 3, 3), 0)):
        op = el.depthwise_conv2d
        x, w = arr(*xs), arr(*ws)
        C = xs[1]
        before = dict(backend.compile_seconds)
        y = op(x, w, padding=pad, backend="loops:numba")
        dy = arr(*y.shape)
        op.vjp(dy, x, w, padding=pad, backend="loops:numba", wrt=("x", "weight"))
        comp = compile_s(before)
        fwd = t(lambda: op(x, w, padding=pad, backend="loops:numba"))
        bwd = t(lambda: op.vjp(dy, x, w, padding=pad, backend="loops:numba", wrt=("x", "weight")))
        xt, wt, dyt = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(dy)
        with torch.no_grad():
            tf = t(lambda: F.conv2d(xt, wt, padding=pad, groups=C))
            tb = t(lambda: torch.ops.aten.convolution_backward(
                dyt, xt, wt, None, [1, 1], [pad, pad], [1, 1], False, [0, 0], C, [True, True, False]))
        rows += [(name, "fwd fresh", fwd, tf, f"{tf / fwd:.2f}x torch's speed"),
                 (name, "bwd fresh (dx+dW)", bwd, tb, f"{tb / bwd:.2f}x torch's speed"),
                 (name, "first-call compile", comp, None, "3 kernels (compile or file-cache load)")]

    # --- W2: LC 3x3, for information ----------------------------------------------------------
    op = el.locally_connected2d
    x, w = arr(100, 16, 28, 28), arr(16, 16, 3, 3, 26, 26)
    before = dict(backend.compile_seconds)
    y = op(x, w, backend="loops:numba")
    dy = arr(*y.shape)
    op.vjp(dy, x, w, backend="loops:numba", wrt=("x", "weight"))
    comp = compile_s(before)
    out = np.empty_like(y)
    dx, dw = np.empty_like(x), np.empty_like(w)
    fwd_f = t(lambda: op(x, w, backend="loops:numba"))
    fwd_s = t(lambda: op(x, w, backend="loops:numba", out=out))
    bwd_s = t(lambda: op.vjp(dy, x, w, backend="loops:numba", wrt=("x", "weight"), out=(dx, dw, None)))
    rows += [("W2", "fwd fresh", fwd_f, None, ""), ("W2", "fwd steady", fwd_s, None, ""),
             ("W2", "bwd steady (dx+dW)", bwd_s, None, f"{bwd_s / fwd_s:.2f}x fwd steady"),
             ("W2", "first-call compile", comp, None, "3 kernels")]

    print()
    print("| workload | pass | loops:numba ms | F.conv2d(groups) ms | note |")
    print("| --- | --- | ---: | ---: | --- |")
    for wl, what, ours, peer, note in rows:
        peer_s = "" if peer is None else f"{peer * 1e3:.2f}"
        print(f"| {wl} | {what} | {ours * 1e3:.2f} | {peer_s} | {note} |")
    print(f"\nfloat32; median of a {args.budget:g} s budget per cell; python {sys.version.split()[0]}, "
          f"numba {numba.__version__}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
