"""Does `el.choose` pick well? On a held-out grid of shapes (numpy arrays), its pick must be within
10% of the best by a fresh, independent measurement on >= 90% of the shapes.

    python bench/bench_choose.py [--budget 0.4] [--quick]

The judge re-measures every candidate after `choose` has run (interleaved
rounds, median of medians), with its own inputs, so `choose`'s own numbers
never judge it. The grid spans tiny shapes (call overhead: einsum wins) to
large ones (GEMM or intermediates decide), so different backends win.
The cost model's pick (what `auto` uses without a cache) is scored too.
"""
import argparse
import os
import statistics
import sys

# an empty choice cache of its own, inside the user's cache folder (generated kernels live nowhere else)
from einlocal.cachedir import fresh  # noqa: E402

if "EINLOCAL_CACHE_DIR" not in os.environ:
    os.environ["EINLOCAL_CACHE_DIR"] = str(fresh("choose-"))

import numpy as np  # noqa: E402

import einlocal as el  # noqa: E402
from einlocal.choose import cost_model_choice  # noqa: E402
from einlocal.timing import measure  # noqa: E402

CANDIDATES = ["bmm:numpy", "einsum:numpy", "opt_einsum:numpy", "broadcast:numpy"]

# (op, x shape, weight shape, params): not the report workloads (held out)
GRID = [
    (el.depthwise_conv2d, (1, 4, 8, 8), (4, 1, 3, 3), {"padding": 1}),
    (el.depthwise_conv2d, (2, 16, 16, 16), (32, 1, 3, 3), {}),
    (el.depthwise_conv2d, (8, 64, 32, 32), (64, 1, 3, 3), {"padding": 1}),
    (el.depthwise_conv2d, (4, 32, 24, 24), (96, 1, 5, 5), {"stride": 2}),
    (el.conv2d, (1, 3, 8, 8), (4, 3, 3, 3), {}),
    (el.conv2d, (4, 16, 16, 16), (32, 16, 3, 3), {"padding": 1}),
    (el.conv2d, (8, 32, 24, 24), (64, 32, 3, 3), {"padding": 1}),
    (el.conv2d, (4, 32, 16, 16), (32, 8, 3, 3), {"groups": 4}),
    (el.locally_connected2d, (2, 2, 6, 6), (2, 2, 3, 3, 4, 4), {}),
    (el.locally_connected2d, (16, 4, 32, 32), (2, 4, 1, 1, 32, 32), {}),
    (el.locally_connected2d, (16, 8, 16, 16), (8, 8, 3, 3, 14, 14), {}),
    (el.locally_connected2d, (32, 16, 12, 12), (16, 16, 3, 3, 10, 10), {}),
    (el.locally_connected1d, (8, 4, 64), (8, 4, 5, 60), {}),
    (el.locally_connected1d, (64, 16, 128), (16, 16, 3, 63), {"stride": 2}),
]


def judge(op, x, w, params, names, budget_s: float, rounds: int = 5) -> dict:
    """Median over interleaved rounds of each candidate's median time: name -> seconds."""
    per = {n: [] for n in names}
    for _ in range(rounds):
        for n in names:
            t = measure(lambda n=n: op(x, w, backend=n, **params), budget_s=budget_s / rounds, min_reps=5)
            per[n].append(t.median_s)
    return {n: statistics.median(v) for n, v in per.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=0.4, help="judge's seconds per candidate and shape")
    p.add_argument("--quick", action="store_true", help="the first 6 shapes, smaller budgets")
    args = p.parse_args(argv)
    grid = GRID[:6] if args.quick else GRID
    rng = np.random.default_rng(0)
    hits = model_hits = 0
    winners = set()
    print(f"{'op':<20} {'x':<18} {'choose':<17} {'judge best':<17} {'ratio':>6}  {'cost model':<17} {'ratio':>6}")
    for op, xs, ws, params in grid:
        x = rng.standard_normal(xs, dtype=np.float32)
        w = rng.standard_normal(ws, dtype=np.float32)
        names = [n for n in CANDIDATES if n in el.backends(op, like={"x": x, "weight": w}, **params)]
        pick = el.choose(op, x, w, backends=names, budget_s=0.1 if args.quick else 0.2, refresh=True, **params)
        call = op.bind(x, w, **params)
        model = cost_model_choice(call, "numpy", "cpu", names=names)
        times = judge(op, rng.standard_normal(xs, dtype=np.float32), w, params, names,
                      args.budget / (2 if args.quick else 1))
        best = min(times, key=times.get)
        winners.add(best)
        ratio = times[pick] / times[best]
        mratio = times.get(model, float("inf")) / times[best]
        hits += ratio <= 1.10
        model_hits += mratio <= 1.10
        print(f"{op.name:<20} {str(xs):<18} {pick:<17} {best:<17} {ratio:6.2f}  {model:<17} {mratio:6.2f}")
    n = len(grid)
    print(f"\nel.choose within 10% of the best on {hits}/{n} shapes ({100 * hits / n:.0f}%); "
          f"cost model on {model_hits}/{n}; backends that won somewhere: {', '.join(sorted(winners))}")
    return 0 if hits >= 0.9 * n else 1


if __name__ == "__main__":
    sys.exit(main())
