"""Per-call overhead on a tiny op, einlocal against the library's own call,
in interleaved rounds (medians, one run): x (1,8,8,8), w (8,1,3,3), padding 1.

    python bench/bench_overhead.py [--rounds N] [--calls N]

- `native:torch` against `F.conv2d(groups=8)`, forward and forward+backward
  (`.sum().backward()`); target within 1.15x;
- `einlocal.torch.DepthwiseConv2d(8, 8, 3, padding=1)` (native:torch) against
  `nn.Conv2d(8, 8, 3, padding=1, groups=8)`, both passes; target within 1.2x;
- `backend="auto"` with a cached choice against its chosen backend by name;
  target within 1.1x;
- numpy: `bmm:numpy` beside the same im2col + matmul written directly, and
  its gradients through `el.vjp` (reported).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

# an empty choice cache of its own, inside the user's cache folder (generated kernels live nowhere else)
from einlocal.cachedir import fresh  # noqa: E402

if "EINLOCAL_CACHE_DIR" not in os.environ:
    os.environ["EINLOCAL_CACHE_DIR"] = str(fresh("overhead-"))


def _args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=30, help="interleaved rounds")
    p.add_argument("--calls", type=int, default=200, help="calls per case per round")
    return p.parse_args()


def main():
    args = _args()
    import torch
    import torch.nn.functional as F

    import einlocal as el
    from einlocal.machine import _cpu_model
    from einlocal.torch import DepthwiseConv2d
    torch.set_num_threads(1)
    xn = np.random.rand(1, 8, 8, 8).astype(np.float32)
    wn = np.random.rand(8, 1, 3, 3).astype(np.float32)
    dyn = np.random.rand(1, 8, 8, 8).astype(np.float32)
    x, w = torch.from_numpy(xn), torch.from_numpy(wn)
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
    ref_layer = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
    layer = DepthwiseConv2d(8, 8, 3, padding=1, backend="native:torch")
    xl = x.clone().requires_grad_()
    chosen = el.choose(el.depthwise_conv2d, x, w, padding=1)

    def im2col_matmul():
        xp = np.pad(xn, ((0, 0), (0, 0), (1, 1), (1, 1)))
        s = xp.strides
        win = np.lib.stride_tricks.as_strided(xp, (1, 8, 8, 8, 3, 3), (s[0], s[1], s[2], s[3], s[2], s[3]))
        return np.matmul(win.reshape(1, 8, 64, 9), wn.reshape(8, 9, 1)).reshape(1, 8, 8, 8)

    def fwd_bwd(f):
        def run():
            f().sum().backward()
        return run

    cases = {
        "F.conv2d forward": lambda: F.conv2d(x, w, None, 1, 1, 1, 8),
        "native:torch forward": lambda: el.depthwise_conv2d(x, w, padding=1, backend="native:torch"),
        "F.conv2d fwd+bwd": fwd_bwd(lambda: F.conv2d(xg, wg, None, 1, 1, 1, 8)),
        "native:torch fwd+bwd": fwd_bwd(lambda: el.depthwise_conv2d(xg, wg, padding=1, backend="native:torch")),
        "nn.Conv2d forward": lambda: ref_layer(x),
        "DepthwiseConv2d forward": lambda: layer(x),
        "nn.Conv2d fwd+bwd": fwd_bwd(lambda: ref_layer(xl)),
        "DepthwiseConv2d fwd+bwd": fwd_bwd(lambda: layer(xl)),
        f"{chosen} by name": lambda: el.depthwise_conv2d(x, w, padding=1, backend=chosen),
        "auto (cached choice)": lambda: el.depthwise_conv2d(x, w, padding=1),
        "im2col + matmul (numpy)": im2col_matmul,
        "bmm:numpy": lambda: el.depthwise_conv2d(xn, wn, padding=1, backend="bmm:numpy"),
        "el.vjp, bmm:numpy": lambda: el.vjp(el.depthwise_conv2d, dyn, xn, wn, padding=1, backend="bmm:numpy"),
    }
    for f in cases.values():
        for _ in range(20):
            f()
    times = {k: [] for k in cases}
    for _ in range(args.rounds):
        for k, f in cases.items():
            t0 = time.perf_counter()
            for _ in range(args.calls):
                f()
            times[k].append((time.perf_counter() - t0) / args.calls)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"machine: {_cpu_model()}; torch {torch.__version__}, 1 thread; {args.rounds} interleaved rounds of "
          f"{args.calls} calls; auto's cached choice: {chosen}")
    print("| case | µs per call | against | ratio | target |")
    print("| --- | ---: | --- | ---: | --- |")
    for case, base, target in (("native:torch forward", "F.conv2d forward", "<= 1.15"),
                               ("native:torch fwd+bwd", "F.conv2d fwd+bwd", "<= 1.15"),
                               ("DepthwiseConv2d forward", "nn.Conv2d forward", "<= 1.2"),
                               ("DepthwiseConv2d fwd+bwd", "nn.Conv2d fwd+bwd", "<= 1.2"),
                               ("auto (cached choice)", f"{chosen} by name", "<= 1.1"),
                               ("bmm:numpy", "im2col + matmul (numpy)", "(reported)"),
                               ("el.vjp, bmm:numpy", "bmm:numpy", "(reported)")):
        print(f"| {case} | {med[case] * 1e6:.1f} | {base} ({med[base] * 1e6:.1f}) | {med[case] / med[base]:.2f} "
              f"| {target} |")


if __name__ == "__main__":
    main()
