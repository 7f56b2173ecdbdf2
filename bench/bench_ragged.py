"""Report 4's ragged-set workload (W4): per_item vs packed (chunked), forward
and forward+backward, fresh outputs on both sides.

    python bench/bench_ragged.py                  # torch CPU, n_i in 20..40 and n_i = 1
    python bench/bench_ragged.py --library jax --threads 1 --chunk 500

m = 1000 sets of n_i single-channel 16x16 images, conv2d 5x5 1 -> 4, per-set
mean.  Targets: packed >= 1.5x faster than per_item at n_i 20..40 (both
passes) and >= 20x at n_i = 1.  Times are medians from einlocal.timing.measure.
"""
from __future__ import annotations

import argparse
import sys

from einlocal import ragged
from einlocal.timing import measure, set_threads

TARGETS = {(20, 40): 1.5, (1, 1): 20.0}


def run(library="torch", backend=None, chunk=1000, n_sets=1000, budget_s=2.0, cap_s=60.0) -> list[dict]:
    rows = []
    for n_range, target in TARGETS.items():
        wl = ragged.workload(n_sets=n_sets, n_range=n_range, library=library, backend=backend, chunk=chunk)
        passes = sorted({p for _, p in wl.calls}, key=len)
        for p in passes:
            t = {s: measure(wl.calls[(s, p)], budget_s=budget_s, cap_s=cap_s) for s in ragged.STRATEGIES}
            speedup = t["per_item"].median_s / t["packed"].median_s
            rows.append(dict(n_range=f"{n_range[0]}..{n_range[1]}", items=wl.items, pass_=p,
                             per_item_ms=t["per_item"].median_s * 1e3, packed_ms=t["packed"].median_s * 1e3,
                             speedup=speedup, target=target, met=speedup >= target,
                             spread=max(x.spread for x in t.values())))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--library", default="torch", choices=("torch", "jax", "numpy"))
    ap.add_argument("--backend", default=None,
                    help="backend of the conv2d layer (default: native:torch / native:jax, auto for numpy)")
    ap.add_argument("--chunk", type=int, default=1000, help="items per packed layer call")
    ap.add_argument("--sets", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=None, help="threads for every library (default: as set)")
    ap.add_argument("--budget", type=float, default=2.0, help="seconds of timed repetitions per cell")
    args = ap.parse_args(argv)
    if args.threads:
        set_threads(args.threads)
    rows = run(args.library, args.backend, args.chunk, args.sets, args.budget)
    print(f"W4 ragged sets, {args.library}, backend {args.backend or 'native'}, chunk {args.chunk}, {args.sets} sets")
    print("| n_i | items | pass | per_item ms | packed ms | speedup | target | spread |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['n_range']} | {r['items']} | {r['pass_']} | {r['per_item_ms']:.1f} | {r['packed_ms']:.1f} | "
              f"{r['speedup']:.1f}x | {r['target']:g}x {'met' if r['met'] else 'MISSED'} | {r['spread']:.0%} |")
    return 0 if all(r["met"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
