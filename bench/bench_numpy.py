"""The numpy backends on W1 and W2 (WORKLOADS.md) beside report 1's
slices+concatenate, forward and backward, fresh outputs for all, one run.

    python bench/bench_numpy.py [--budget SECONDS]

Targets (the core issue): the best numpy backend at least 2x faster than
slices+concatenate on W1 forward; on W2 the best backend's backward no more
than 3x its own forward.
"""
from __future__ import annotations

import argparse
import os
import platform

import numpy as np

import einlocal as el
from einlocal.timing import measure, thread_info

NUMPY = ("broadcast:numpy", "bmm:numpy", "einsum:numpy", "opt_einsum:numpy")


def _peers():
    from einlocal import peers
    return peers


def workloads(rng):
    f = np.float32
    yield "W1", (rng.standard_normal((32, 4, 256, 256), dtype=f), rng.standard_normal((2, 4, 1, 1, 256, 256), dtype=f),
                 rng.standard_normal((2, 256, 256), dtype=f))
    yield "W2", (rng.standard_normal((100, 16, 28, 28), dtype=f), rng.standard_normal((16, 16, 3, 3, 26, 26), dtype=f),
                 None)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=1.0, help="seconds of timed work per measurement")
    args = p.parse_args()
    peers = _peers()
    rng = np.random.default_rng(0)
    print(f"machine: {platform.machine()} {os.cpu_count()} cores; numpy {np.__version__}; "
          f"BLAS {[(i.get('internal_api'), i.get('num_threads')) for i in thread_info().get('threadpools', [])]}")
    print("median ms, fresh outputs (every call allocates)\n")
    print(f"{'workload':<9}{'implementation':<28}{'forward':>10}{'backward':>10}{'bwd/fwd':>9}")
    for name, (x, w, b) in workloads(rng):
        dy = rng.standard_normal(el.locally_connected2d.bind(x, w, b).out_shape, dtype=np.float32)
        rows = []
        fwd = measure(lambda: peers.lc2d_slices_concat_numpy(x, w, b), budget_s=args.budget).median_s
        bwd = measure(lambda: peers.lc2d_slices_concat_numpy_vjp(dy, x, w, b), budget_s=args.budget).median_s
        rows.append(("slices+concatenate (report 1)", fwd, bwd))
        for be in NUMPY:
            try:
                fwd = measure(lambda: el.locally_connected2d(x, w, b, backend=be), budget_s=args.budget).median_s
                bwd = measure(lambda: el.vjp(el.locally_connected2d, dy, x, w, b, backend=be),
                              budget_s=args.budget).median_s
            except el.MemoryBudgetError as e:
                print(f"{name:<9}{be:<28}  skipped: {str(e)[:80]}")
                continue
            rows.append((be, fwd, bwd))
        for impl, fwd, bwd in rows:
            print(f"{name:<9}{impl:<28}{fwd * 1e3:>10.1f}{bwd * 1e3:>10.1f}{bwd / fwd:>9.2f}")
        peer = rows[0]
        best = min(rows[1:], key=lambda r: r[1])
        print(f"{name:<9}best numpy backend {best[0]}: forward {peer[1] / best[1]:.2f}x faster than slices+concatenate, "
              f"its backward {best[2] / best[1]:.2f}x its forward\n")


if __name__ == "__main__":
    main()
