"""Benchmark the framework backends on W2 and W3a/W3b (WORKLOADS.md) beside
the peers, and print where each stands against the issue-3 targets.

    python bench/bench_frameworks.py [--budget S] [--cap S] [--threads N] [--workloads W2,W3a,W3b]

W2 (LC 3x3): every available non-native backend, forward fresh and steady
(``out=`` reused where the library allows), backward in each grad mode
(``vjp`` and ``autodiff`` side by side for torch and jax: report 2's gap),
beside torch's unfold+einsum and numpy's im2col+matmul peers.
W3a/W3b (depthwise): forward and backward, fresh outputs, against
``native:torch`` (F.conv2d(groups=C)).  Times are medians of
``einlocal.timing.measure``; a measurement whose first call exceeds ``--cap``
is reported as a lower bound (">").  Thread counts are printed.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SKIP = ("loops:python", "loops:triton")   # the reference; Triton needs a GPU here
WORKLOADS = {
    "W2": ("locally_connected2d", (100, 16, 28, 28), (16, 16, 3, 3, 26, 26), {}),
    "W3a": ("depthwise_conv2d", (1, 1024, 28, 28), (1024, 1, 3, 3), {"padding": 1}),
    "W3b": ("depthwise_conv2d", (32, 32, 128, 128), (64, 1, 3, 3), {}),
}


def _args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=1.0, help="seconds of timed work per measurement")
    p.add_argument("--cap", type=float, default=20.0, help="seconds after which a measurement stops")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workloads", default="W2,W3a,W3b")
    p.add_argument("--backends", default="", help="comma-separated prefixes (default: all non-native)")
    return p.parse_args()


class Bench:
    def __init__(self, args):
        from einlocal.timing import measure
        self.measure, self.args = measure, args

    def time(self, fn):
        """Median seconds, or (seconds, '>') when capped, or the error text."""
        import einlocal as el
        try:
            t = self.measure(fn, budget_s=self.args.budget, cap_s=self.args.cap)
        except el.MemoryBudgetError as e:
            return f"memory guard ({str(e)[:40]}...)"
        except (el.BackendError, MemoryError) as e:
            return f"{type(e).__name__}: {str(e)[:50]}"
        return (t.median_s, ">" if t.capped else "")


def _fmt(v):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    s, mark = v
    return f"{mark}{s * 1e3:.3g} ms"


def _ms(v):
    return v[0] * 1e3 if isinstance(v, tuple) and not v[1] else None


def _convert(lib, a):
    if lib == "torch":
        import torch
        return torch.from_numpy(a)
    if lib == "jax":
        import jax.numpy as jnp
        return jnp.asarray(a)
    return a


def _zeros_like(lib, a):
    if lib == "torch":
        import torch
        return torch.zeros_like(a)
    return np.zeros_like(a)


def _candidates(args, natives=False):
    import einlocal as el
    from einlocal import registry
    names = [n for n in el.backends() if n not in SKIP and n.startswith("native:") == natives]
    if args.backends:
        names = [n for n in names if any(n.startswith(w) for w in args.backends.split(","))]
    return [(n, registry.get(n).takes[0]) for n in names]


def run_workload(wid, bench, args):
    import einlocal as el
    from einlocal import peers
    from einlocal import registry
    op_name, xs, ws, params = WORKLOADS[wid]
    op = getattr(el, op_name)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(xs, dtype=np.float32)
    w = rng.standard_normal(ws, dtype=np.float32) * 0.1
    call = op.bind(x, w, None, **params)
    dy = rng.standard_normal(call.out_shape, dtype=np.float32)
    rows = []
    steady = wid == "W2"
    backends = _candidates(args) + ([] if steady else _candidates(args, natives=True))
    for name, lib in backends:
        xl, wl, dyl = (_convert(lib, a) for a in (x, w, dy))
        reason = registry.get(name).cannot(call.plan, library=lib, device="cpu", call=call)
        if reason:
            continue
        row = {"name": name}
        print(f"  {wid} {name} ...", file=sys.stderr, flush=True)
        row["fwd fresh"] = bench.time(lambda: op(xl, wl, backend=name, **params))
        if steady and lib != "jax":
            out = _zeros_like(lib, _convert(lib, np.zeros(call.out_shape, np.float32)))
            row["fwd steady"] = bench.time(lambda: op(xl, wl, backend=name, out=out, **params))
        for mode in registry.get(name).grad_modes(lib):
            row[f"bwd {mode}"] = bench.time(lambda: op.vjp(dyl, xl, wl, backend=name, grad=mode, **params))
        if steady and lib != "jax":
            outs = (_zeros_like(lib, xl), _zeros_like(lib, wl), None)
            row["bwd steady"] = bench.time(lambda: op.vjp(dyl, xl, wl, backend=name, out=outs, **params))
        rows.append(row)
    if wid == "W2":
        peer_names = ("unfold+einsum (torch)", "im2col+matmul (numpy)")
    else:
        peer_names = ()
    for pname in peer_names:
        fwd, bwd, lib, _ = peers.PEERS[pname]
        xl, wl, dyl = (_convert(lib, a) for a in (x, w, dy))
        print(f"  {wid} {pname} ...", file=sys.stderr, flush=True)
        rows.append({"name": f"peer: {pname}", "fwd fresh": bench.time(lambda: fwd(xl, wl, None, **params)),
                     "bwd autodiff" if lib != "numpy" else "bwd vjp": bench.time(lambda: bwd(dyl, xl, wl, None, **params))})
    return rows


def _table(wid, rows):
    cols = ["fwd fresh", "fwd steady", "bwd vjp", "bwd autodiff", "bwd steady"]
    lines = [f"### {wid}", "", "| backend | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for r in rows:
        lines.append(f"| {r['name']} | " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    return "\n".join(lines)


def _targets(wid, rows):
    """Where the best non-native backend stands against the issue-3 targets."""
    ours = [r for r in rows if not r["name"].startswith(("peer:", "native:"))]

    def best(col):
        vals = [(_ms(r.get(c)), r["name"]) for r in ours for c in col if _ms(r.get(c)) is not None]
        return min(vals) if vals else (None, None)
    out = []
    if wid == "W2":
        peer = next((r for r in rows if r["name"] == "peer: unfold+einsum (torch)"), None)
        f, fname = best(("fwd steady", "fwd fresh"))
        if peer and f and _ms(peer["fwd fresh"]):
            ratio = _ms(peer["fwd fresh"]) / f
            out.append(f"W2 forward: best {fname} {f:.3g} ms vs unfold+einsum {_ms(peer['fwd fresh']):.3g} ms: "
                       f"{ratio:.1f}x (target >= 10x) {'MET' if ratio >= 10 else 'NOT MET'}")
        for r in ours:
            fwd = _ms(r.get("fwd steady")) or _ms(r.get("fwd fresh"))
            bwd = _ms(r.get("bwd steady")) or _ms(r.get("bwd vjp"))
            if r["name"] == fname and fwd and bwd:
                out.append(f"W2 backward of {fname}: {bwd:.3g} ms = {bwd / fwd:.1f}x its forward (target <= 3x) "
                           f"{'MET' if bwd <= 3 * fwd else 'NOT MET'}")
    else:
        nat = next((r for r in rows if r["name"] == "native:torch"), None)
        for col in ("fwd fresh", "bwd vjp"):
            b, bname = best((col,))
            if nat and b and _ms(nat.get(col)):
                n = _ms(nat[col])
                out.append(f"{wid} {col}: best {bname} {b:.3g} ms vs native:torch {n:.3g} ms "
                           f"{'MET' if b <= n else 'NOT MET'}")
    return out


def main():
    args = _args()
    from einlocal.timing import set_threads, thread_info
    set_threads(args.threads)
    import torch
    torch.set_num_threads(args.threads)
    import einlocal as el
    el.set_memory_budget(None)
    bench = Bench(args)
    print(f"threads: {thread_info()}")
    print("fresh = every call allocates; steady = out= reused (numpy, torch); jax cannot take out=.\n")
    summary = []
    for wid in args.workloads.split(","):
        rows = run_workload(wid, bench, args)
        print(_table(wid, rows), "\n", flush=True)
        summary += _targets(wid, rows)
    print("\n".join(summary))


if __name__ == "__main__":
    main()
