"""Report 2's and report 1's locally connected layers against the machine's
own limits, measured side by side in one run: W2 (compute-bound) against a
2048 x 2048 float32 matmul, W1 (memory-bound) against a single-threaded copy.

    python bench/bench_roofline.py [--rounds N] [--threads N] [--before all|none|call|flush]

Every measurement is a round of calls interleaved with the others' (so a
noisy host slows them alike), all with ``out=``; the figures are medians over
rounds, and the ratios are formed from the same rounds.  What precedes each
timed call decides where its data comes from, so by default the rounds are
run three times, one column each (``--before`` picks one):

- ``none``: nothing, the calls as they come (W2's forward follows the
  matmul, W1's backward W1's forward; which data the last-level cache still
  holds depends on the cases before and on the host);
- ``call``: untimed calls of the same case for `WARM_S` at least (one or
  more), which leave its data in the caches and its cores running, as
  back-to-back repetitions do (the matmul too);
- ``flush``: every numba thread reads a buffer twice the last-level cache,
  so the call reads its data from memory, as the copy roofline assumes, and
  finds every core running.

On a 2-vCPU VM a core left idle took milliseconds to run a parallel kernel's
thread again (W2 forward after a 60 ms sleep: 7.8 ms, back to back 2.9 ms),
and a 480 MiB last-level cache can hold all of W1.

- W2 forward's flop rate as a share of the matmul rate (target >= 60%), and
  its backward (dx + dweight, `el.vjp`) over its forward (target <= 2.0);
- W1 forward's share of its copy roofline: min bytes (x, weight and bias read
  once, y written once) over the bandwidth of a single-threaded `np.copyto`
  of a 256 MB float32 array (2 x its bytes / best time) (target >= 80%), and
  its backward over its forward (target <= 2.0).

The header names the code that ran on both sides: numba's vector width and
target CPU, and the kernels the BLAS picked.  An AVX-512 host runs both
sides' AVX2 code with ``NUMBA_CPU_NAME=haswell OPENBLAS_CORETYPE=Haswell``
(the matmul's AVX2 rate is then the reference, as on an AVX2 host).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

# OpenBLAS's worker threads spin for up to 2**28 cycles (about 0.1 s) after
# each call before they sleep; on a 2-core host they hold both cores while the
# next case runs, so whatever followed the matmul measured its threads'
# contention (W1 forward 7.9 ms against 2.8 ms, W2 forward 10 ms against
# 4.7 ms, on a 2-core AVX-512 Xeon).  2**4 cycles: they sleep at once, and the
# matmul's own rate is unchanged (278-282 GFLOP/s either way there).  Set
# before numpy loads OpenBLAS; a value in the environment wins.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np  # noqa: E402


def _args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15, help="interleaved rounds (each times every case once)")
    p.add_argument("--threads", type=int, default=2, help="threads for numba and BLAS")
    p.add_argument("--backend", default="loops:numba")
    p.add_argument("--before", choices=("all", *BEFORE), default="all",
                   help="before each timed call: nothing, untimed calls of the same case (its data then cached), "
                        "or a read of a buffer twice the last-level cache with every thread; 'all' (default): "
                        "each in turn, a column each")
    return p.parse_args()


# what may precede each timed call, and its column's heading
BEFORE = {"none": "as they come", "call": "after calls of its own", "flush": "after a flush"}
# A core left idle runs again slowly for a few milliseconds, not only the
# first call: W2's forward after a 2048 matmul took 3.10, 2.17, 1.99, 1.97,
# 1.96 ... 1.93 ms in ten calls back to back (medians of 15; after a 50 ms
# sleep or a 64 MB copy alike), so after one untimed call the timed one took
# 2.29 ms, after two 2.10 (2-core AVX-512 Xeon).  ``call`` repeats the case
# untimed for this long first.
WARM_S = 0.01


def warm(fn) -> None:
    """Call ``fn`` untimed for `WARM_S` at least: the state back-to-back calls run in."""
    end = time.perf_counter() + WARM_S
    fn()
    while time.perf_counter() < end:
        fn()


def _flusher(nbytes: int):
    """A callable that reads ``nbytes`` with every numba thread: the caches
    then hold none of a case's data (and no dirty lines to write back), and
    every core is running."""
    import numba

    @numba.njit(parallel=True, cache=True)
    def total(buf):
        n = buf.shape[0]
        acc = 0.0
        for t in numba.prange(64):
            s = 0.0
            for k in range(t * n // 64, (t + 1) * n // 64):
                s += buf[k]
            acc += s
        return acc
    buf = np.ones(nbytes // 4, np.float32)
    total(buf)
    return lambda: total(buf)


def matmul_case(arr, n: int = 2048):
    """A float32 ``n x n`` matmul with ``out=`` (operands from ``arr``) and its flops."""
    a, b, c = arr(n, n), arr(n, n), np.empty((n, n), np.float32)
    return (lambda: np.matmul(a, b, out=c)), 2 * n ** 3


def interleaved(cases: dict, rounds: int, before) -> dict:
    """Each case's times over ``rounds``, every round timing each case once
    (a noisy host slows them alike), ``before(fn)`` run untimed first."""
    times = {k: [] for k in cases}
    for _ in range(rounds):
        for k, (fn, _) in cases.items():
            before(fn)
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return times


def _best_of(fn, calls: int) -> float:
    best = float("inf")
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def code_line() -> str:
    """Which code ran: numba's vector width and the CPU it compiles for, and
    the kernels each loaded BLAS picked (OpenBLAS's core type; numpy's is
    ``libscipy_openblas`` in its wheels)."""
    import llvmlite.binding as llvm
    from numba.core import config
    from einlocal.backends.numba_simd import VECTOR_BITS
    from einlocal.timing import thread_info
    cpu = config.CPU_NAME if config.CPU_NAME not in (None, "host") else llvm.get_host_cpu_name()
    pools = [f"{p['prefix']} {p['version']} ({p.get('architecture') or 'kernels not named'})"
             for p in thread_info()["threadpools"] or [] if p["user_api"] == "blas"]
    return f"code: numba {VECTOR_BITS}-bit vectors for {cpu}; BLAS {', '.join(pools) or 'not found'}"


def random_arrays(threads: int):
    """Set numba's and BLAS's threads; return ``arr(*shape)``: float32
    normal draws, the same from run to run."""
    from einlocal.timing import set_threads
    set_threads(threads)
    rng = np.random.default_rng(0)
    return lambda *shape: rng.standard_normal(shape, dtype=np.float32)


def main():
    args = _args()
    arr = random_arrays(args.threads)
    import einlocal as el
    from einlocal.machine import _cpu_model, llc_bytes
    from einlocal.timing import set_threads, thread_info

    op, name = el.locally_connected2d, args.backend
    cases = {}

    cases["matmul 2048"] = matmul_case(arr)

    src = np.ones(256 * 2 ** 20 // 4, np.float32)
    dst = np.empty_like(src)
    cases["copyto 256 MB (1 thread)"] = (lambda: np.copyto(dst, src), 2 * src.nbytes)

    x2, w2 = arr(100, 16, 28, 28), arr(16, 16, 3, 3, 26, 26)
    y2 = np.empty((100, 16, 26, 26), np.float32)
    g2 = (np.empty_like(x2), np.empty_like(w2), None)
    dy2 = arr(*y2.shape)
    flops2 = op.bind(x2, w2).flops()
    cases["W2 forward"] = (lambda: op(x2, w2, backend=name, out=y2), flops2)
    cases["W2 backward"] = (lambda: el.vjp(op, dy2, x2, w2, backend=name, out=g2), 2 * flops2)

    x1, w1, b1 = arr(32, 4, 256, 256), arr(2, 4, 1, 1, 256, 256), arr(2, 256, 256)
    y1 = np.empty((32, 2, 256, 256), np.float32)
    g1 = (np.empty_like(x1), np.empty_like(w1), np.empty_like(b1))
    dy1 = arr(*y1.shape)
    bytes1 = op.bind(x1, w1, b1).min_bytes(4)
    cases["W1 forward"] = (lambda: op(x1, w1, b1, backend=name, out=y1), bytes1)
    cases["W1 backward"] = (lambda: el.vjp(op, dy1, x1, w1, b1, backend=name, out=g1), bytes1)

    for fn, _ in cases.values():       # compile, load, first touch
        fn()
        fn()
    # the copy's best time on the idle process: the roof is the best the machine reaches
    set_threads(1)
    copy_best = _best_of(cases["copyto 256 MB (1 thread)"][0], 10)
    set_threads(args.threads)
    modes = list(BEFORE) if args.before == "all" else [args.before]
    untimed = {"none": lambda fn: None, "call": warm}
    if "flush" in modes:        # a buffer twice the last-level cache, made only where it is read
        flush = _flusher(max(2 * (llc_bytes() or 0), 256 * 2 ** 20))
        untimed["flush"] = lambda fn: flush()
    timed = {k: v for k, v in cases.items() if not k.startswith("copyto")}
    runs = {m: interleaved(timed, args.rounds, untimed[m]) for m in modes}
    copy_bw = cases["copyto 256 MB (1 thread)"][1] / copy_best

    print(f"machine: {_cpu_model()}, last-level cache {(llc_bytes() or 0) / 2**20:.0f} MiB; "
          f"threads {thread_info().get('numba', '?')} (numba); backend {name}; {args.rounds} interleaved rounds "
          "a column")
    print(code_line())
    print(f"copyto 256 MB, 1 thread: best {copy_best * 1e3:.1f} ms = {copy_bw / 1e9:.1f} GB/s (read + written)")
    print()
    print("| case | target | " + " | ".join(BEFORE[m] for m in modes) + " |")
    print("| --- | --- |" + " ---: |" * len(modes))
    cells = {k: [] for k in ("matmul 2048", "W2 forward", "W2 backward", "W1 forward", "W1 backward")}
    for m in modes:
        med = {k: statistics.median(v) for k, v in runs[m].items()}
        q = {k: (np.percentile(v, 25), np.percentile(v, 75)) for k, v in runs[m].items()}
        rate = cases["matmul 2048"][1] / med["matmul 2048"]       # medians against medians, this column's rounds
        figure = {
            "matmul 2048": f"{rate / 1e9:.0f} GFLOP/s",
            "W2 forward": f"{flops2 / med['W2 forward'] / rate:.0%} of the matmul rate",
            "W2 backward": f"{med['W2 backward'] / med['W2 forward']:.2f}x its forward",
            "W1 forward": f"{bytes1 / copy_bw / med['W1 forward']:.0%} of the copy roofline",
            "W1 backward": f"{med['W1 backward'] / med['W1 forward']:.2f}x its forward",
        }
        for k in cells:
            cells[k].append(f"{med[k] * 1e3:.2f} ms ({q[k][0] * 1e3:.2f}-{q[k][1] * 1e3:.2f}): {figure[k]}")
    targets = {"W2 forward": ">= 60%", "W2 backward": "<= 2.0x", "W1 forward": ">= 80%", "W1 backward": "<= 2.0x"}
    for k, row in cells.items():
        print(f"| {k} | {targets.get(k, '')} | " + " | ".join(row) + " |")
    print()
    print("each cell: median (q1-q3) of the column's rounds, and the figure its target is set on")


if __name__ == "__main__":
    main()
