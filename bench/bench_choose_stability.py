"""Are `el.choose`'s picks stable? Each pick must be within 10% of the best found with a ten times longer budget.

    python bench/bench_choose_stability.py [--budget 0.1] [--runs 5] [--passes forward] [--libraries numpy,torch]
                                           [--threads N]

The op is a small depthwise convolution, x (8, 16, 32, 32) float32, weight
(16, 1, 3, 3), padding 1, on numpy arrays and on CPU torch tensors, where
several backends are close. For each library:

- `runs` independent picks: `el.choose` with `budget_s` into an empty cache
  each time, once with the default interleaved rounds and once with
  ``rounds=1`` (every candidate measured in one go, one after another);
- `runs` picks in a row into one cache with ``refresh=True`` (what a user who
  measures again sees: a cached choice is replaced only by a significantly
  faster one), counting how often the choice changed;
- the judge: `el.choose` with ten times the budget, into an empty cache,
  whose times rank every candidate (measured last, after the picks).

A pick passes when the judge's time for it is within 10% of the judge's best.
Exit status 0 when every interleaved pick passes. Performance numbers come
from a shared machine: run it when the machine is quiet, and report the
conditions with the numbers.
"""
import argparse
import os
import sys
import time

# an empty choice cache of its own, inside the user's cache folder (generated kernels live nowhere else)
from einlocal.cachedir import fresh  # noqa: E402

if "EINLOCAL_CACHE_DIR" not in os.environ:
    os.environ["EINLOCAL_CACHE_DIR"] = str(fresh("stability-"))

import numpy as np  # noqa: E402

import einlocal as el  # noqa: E402
from einlocal import auto  # noqa: E402

OP, X, W, PARAMS = el.depthwise_conv2d, (8, 16, 32, 32), (16, 1, 3, 3), {"padding": 1}


def fresh_cache() -> None:
    """No cached choice (the generated kernels stay compiled in the cache folder)."""
    auto.choice_cache().clear()


def arrays(library: str):
    from einlocal.backends.namespaces import namespace
    rng = np.random.default_rng(0)
    xp = namespace(library)
    return (xp.from_numpy(rng.standard_normal(X, dtype=np.float32)),
            xp.from_numpy(rng.standard_normal(W, dtype=np.float32)))


def choose(x, w, names, passes, budget_s, **kw) -> dict:
    return el.choose(OP, x, w, backends=names, passes=passes, budget_s=budget_s, details=True, **kw, **PARAMS)


def run(library: str, budget_s: float, runs: int, passes: tuple) -> bool:
    x, w = arrays(library)
    names = [n for n in el.backends(OP, like={"x": x, "weight": w}, **PARAMS) if n != "loops:python"]
    print(f"\n## {library}: {OP.name} x {X} float32, weight {W}, padding 1; passes {'+'.join(passes)}; "
          f"budget {budget_s} s per candidate; candidates {', '.join(names)}")
    fresh_cache()
    choose(x, w, names, passes, 0.01)          # first calls (numba's kernels, thread pools) out of the way
    picks = {}
    t0 = time.perf_counter()
    for label, kw in (("interleaved", {}), ("rounds=1", {"rounds": 1})):
        picks[label] = []
        for _ in range(runs):
            fresh_cache()
            picks[label].append(choose(x, w, names, passes, budget_s, **kw)["backend"])
    fresh_cache()
    sequence = [choose(x, w, names, passes, budget_s, refresh=True)["backend"] for _ in range(runs)]
    fresh_cache()
    judge = choose(x, w, names, passes, 10 * budget_s)["seconds"]
    best = min(judge, key=judge.get)
    print(f"(picks and judge took {time.perf_counter() - t0:.0f} s)\n")
    print("judge (10x budget), ms: " + ", ".join(f"{n} {judge[n] * 1e3:.3f}" for n in sorted(judge, key=judge.get)))
    ok = True
    for label, chosen in [*picks.items(), ("refresh in a row", sequence)]:
        ratios = [judge[p] / judge[best] for p in chosen]
        within = sum(r <= 1.10 for r in ratios)
        flips = sum(a != b for a, b in zip(chosen, chosen[1:]))
        print(f"{label:<17} within 10%: {within}/{len(chosen)}; changes of pick: {flips}; "
              + ", ".join(f"{p} ({r:.2f}x)" for p, r in zip(chosen, ratios)))
        if label == "interleaved":
            ok = within == len(chosen)
    return ok


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=0.1, help="el.choose's budget_s for the picks")
    p.add_argument("--runs", type=int, default=5, help="picks per method")
    p.add_argument("--passes", default="forward", help="forward, backward, forward+backward (comma-separated)")
    p.add_argument("--libraries", default="numpy,torch")
    p.add_argument("--threads", type=int, default=None, help="threads for every library (einlocal.timing.set_threads)")
    args = p.parse_args(argv)
    if args.threads:
        from einlocal.timing import set_threads
        set_threads(args.threads)
    from einlocal.machine import _cpu_model
    print(f"{_cpu_model()}, {os.cpu_count()} cores, threads {args.threads or 'default'}, einlocal {el.__version__}; "
          f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    ok = True
    for library in args.libraries.split(","):
        from einlocal.backends.namespaces import namespace
        missing = namespace(library).unavailable()
        if missing:
            print(f"\n## {library}: skipped ({missing})")
            continue
        ok &= run(library, args.budget, args.runs, tuple(args.passes.split(",")))
    print(f"\nload average at the end {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
