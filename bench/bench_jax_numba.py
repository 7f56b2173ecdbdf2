"""``loops:numba`` inside jax programs against ``loops:numba`` on numpy arrays,
on W2 (locally connected 3x3) and W3a (depthwise 3x3, same padding).

    python bench/bench_jax_numba.py [--rounds N] [--reps N] [--threads N] [--only W2|W3a]

Four calls per workload, timed in interleaved rounds (each round times every
call ``--reps`` times in turn, after one untimed warm-up of each), the median
of each call's times reported:

- ``numpy fwd``: ``op(x, w, backend="loops:numba")`` on numpy arrays;
- ``jax.jit fwd``: ``jax.jit(lambda x, w: op(x, w, backend="loops:numba"))``;
- ``numpy fwd + el.vjp``: the forward, then ``el.vjp`` of x and weight;
- ``jax.jit value_and_grad``: of ``jnp.vdot(op(x, w, ...), dy)`` in x and weight
  (the value is used, so the forward and both gradients run).

Targets: each jax time within 1.5x of its numpy counterpart.  Compiling
(numba kernels, XLA) happens in the warm-up and is not timed.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np

WORKLOADS = {
    "W2": ("locally_connected2d", (100, 16, 28, 28), (16, 16, 3, 3, 26, 26), {}),
    "W3a": ("depthwise_conv2d", (1, 1024, 28, 28), (1024, 1, 3, 3), {"padding": 1}),
}
TARGET = 1.5


def _args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15, help="interleaved rounds")
    p.add_argument("--reps", type=int, default=3, help="calls of each kind per round")
    p.add_argument("--threads", type=int, default=2, help="numba and XLA threads")
    p.add_argument("--only", choices=sorted(WORKLOADS), help="one workload")
    return p.parse_args()


def _cpu() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def main():
    args = _args()
    from einlocal.timing import set_threads
    set_threads(args.threads)          # before jax: XLA reads its flags once
    import jax
    import jax.numpy as jnp
    import numba

    import einlocal as el
    numba.set_num_threads(args.threads)
    print(f"machine: {_cpu()}, {len(__import__('os').sched_getaffinity(0))} cores usable; "
          f"numba {numba.__version__} ({args.threads} threads), "
          f"jax {jax.__version__} on {jax.default_backend()}; {args.rounds} rounds x {args.reps} calls, medians")
    rng = np.random.default_rng(0)
    rows = []
    for wid, (opname, xs, ws, params) in WORKLOADS.items():
        if args.only and wid != args.only:
            continue
        op = getattr(el, opname)
        x = rng.standard_normal(xs, dtype=np.float32)
        w = rng.standard_normal(ws, dtype=np.float32)
        dy = rng.standard_normal(op.bind(x, w, **params).out_shape, dtype=np.float32)
        xj, wj, dyj = jnp.asarray(x), jnp.asarray(w), jnp.asarray(dy)

        def np_fwd():
            return op(x, w, backend="loops:numba", **params)

        def np_fwd_vjp():
            y = op(x, w, backend="loops:numba", **params)
            return y, el.vjp(op, dy, x, w, backend="loops:numba", wrt=("x", "weight"), **params)

        jfwd = jax.jit(lambda x, w: op(x, w, backend="loops:numba", **params))
        jvg = jax.jit(jax.value_and_grad(lambda x, w: jnp.vdot(op(x, w, backend="loops:numba", **params), dyj),
                                         argnums=(0, 1)))
        calls = {
            "numpy fwd": np_fwd,
            "jax.jit fwd": lambda: jax.block_until_ready(jfwd(xj, wj)),
            "numpy fwd + el.vjp": np_fwd_vjp,
            "jax.jit value_and_grad": lambda: jax.block_until_ready(jvg(xj, wj)),
        }
        t0 = time.perf_counter()
        for fn in calls.values():       # compile (numba kernels, XLA programs), untimed
            fn()
        warm = time.perf_counter() - t0
        # the jax results against numpy's, so the timed calls compute the same thing
        yj, (v, (gx, gw)) = jax.block_until_ready((jfwd(xj, wj), jvg(xj, wj)))
        y, (dx, dw, _) = np_fwd_vjp()
        for name, a, b in (("y", yj, y), ("dx", gx, dx), ("dw", gw, dw)):
            err = np.max(np.abs(np.asarray(a) - b)) / max(np.max(np.abs(b)), 1e-30)
            assert err < 1e-4, f"{wid}: jax {name} differs from numpy's by {err:.2e} (relative to its largest)"
        times = {k: [] for k in calls}
        for _ in range(args.rounds):
            for k, fn in calls.items():
                for _ in range(args.reps):
                    t = time.perf_counter()
                    fn()
                    times[k].append(time.perf_counter() - t)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"{wid}: first calls (compile or cache load) {warm:.1f} s")
        for jk, nk in (("jax.jit fwd", "numpy fwd"), ("jax.jit value_and_grad", "numpy fwd + el.vjp")):
            r = med[jk] / med[nk]
            rows.append((wid, nk, med[nk], jk, med[jk], r))
    print(f"numba threading layer: {numba.threading_layer()}")
    print(f"\n{'workload':<8} {'numpy (loops:numba)':<20} {'ms':>8}  {'jax (loops:numba)':<24} {'ms':>8}  "
          f"{'ratio':>6}  target <= {TARGET}x")
    for wid, nk, nt, jk, jt, r in rows:
        print(f"{wid:<8} {nk:<20} {nt * 1e3:8.2f}  {jk:<24} {jt * 1e3:8.2f}  {r:6.2f}  "
              f"{'met' if r <= TARGET else 'NOT met'}")


if __name__ == "__main__":
    main()
