"""Report 2's forward (W2) against the ceiling of its own register tile: how
much of its distance from the matmul rate is the tile's, and how much the
memory's and the rest of the kernel's, measured side by side in one run.

    python bench/bench_w2_tile.py [--rounds N] [--threads N]

`loops:numba` computes W2's forward (x 100x16x28x28, weight 16x16x3x3x26x26)
as register tiles: 16 lanes along x's flat position ``h*28 + w``, 6 images x
4 output channels of such vectors summed in 24 registers over 16 input
channels and 3x3 taps, the weight's slice packed once a call into panels
the tiles read for every block of images.  The cases, each a round of calls
interleaved with the others' (all with 2 threads by default; medians):

- ``matmul 2048``: a 2048 x 2048 float32 ``np.matmul`` with ``out=``;
- ``tile, data in L1``: that register tile's loop (the same loads, 24 fused
  multiply-adds a tap, x's rows 28 apart and images 12544 elements apart),
  every step on the first block's data: it stays in the core's caches;
- ``tile, W2's vectors and panels``: the same over every vector of W2's
  positions and every weight panel, x's and y's first block of images;
- ``+ x of every image``, ``+ y of every image``: the same, reading x (or
  writing y) for every block of images, as the kernel does;
- ``tile over W2``: both: the kernel's loop over W2, without its packing,
  its rows' masks and edges;
- ``W2 forward``: ``el.locally_connected2d(x, w, out=y)``.

Each call follows untimed ones of its own (`bench_roofline.warm`), so its
data is cached as far as the caches hold it and its cores are running.
Rates count the multiply-adds each case executes (2 flops a lane); the
forward's own count (``op.flops()``) is lower: its 46 vectors of 16 lanes
cover 676 outputs, its 17 blocks of 6 images 100.
"""
from __future__ import annotations

import argparse
import os
import statistics

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")     # see bench_roofline.py

import numpy as np  # noqa: E402
# run as a script: bench/ is on the path
from bench_roofline import code_line, interleaved, matmul_case, random_arrays, warm  # noqa: E402

N, C, O, H, PITCH, TAPS = 100, 16, 16, 26, 28, 3
IMAGE, PLANE = C * PITCH * PITCH, PITCH * PITCH      # x's strides (elements)
BN, BO, V = 6, 4, 16                                 # the register tile: images x output channels, lanes
TILES, VECS = 8, 6                                   # parallel tiles, vectors a tile (the kernel: 5 or 6)
PANEL = C * TAPS * TAPS * BO * V                     # one weight panel (elements)


# the register tile's loop: (W2's vectors and panels, x of every block of images, y of every block)
TILE_CASES = {
    "tile, data in L1": (False, False, False),
    "tile, W2's vectors and panels": (True, False, False),
    "  + x of every image": (True, True, False),
    "  + y of every image": (True, False, True),
    "tile over W2": (True, True, True),
}


def _args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15, help="interleaved rounds (each times every case once)")
    p.add_argument("--threads", type=int, default=2, help="threads for numba and BLAS")
    return p.parse_args()


def _tile_source(spread: bool, x_all: bool, y_all: bool) -> str:
    """A parallel kernel ``f(x, pk, y, reps)``: TILES tiles, each VECS
    vectors; for each block of images, vector and tile of output channels,
    the 24 sums over C channels and 3x3 taps, then stored.  ``spread``: the
    vectors and panels are W2's (else every step reads the first vector's
    x and the first panel, and stores one tile of sums); ``x_all`` and
    ``y_all``: x is read and y written for every block of images (else for
    the first block again and again)."""
    acc = [f"s{a}_{b}" for a in range(BN) for b in range(BO)]
    L = ["def f(x, pk, y, reps):",
         f"    for q in numba.prange({TILES}):",
         "        for r in range(reps):",
         f"            for t_n in range({-(-N // BN)}):",
         f"                i_n = min(t_n * {BN}, {N - BN})",
         f"                for k_p in range({VECS}):",
         f"                    p0 = (q * {VECS} + k_p) * {V}" if spread else "                    p0 = 0",
         f"                    for t_o in range({O // BO}):"]
    ind = " " * 24
    L += [ind + f"{s} = vsplat(numba.float32(0), {V})" for s in acc]
    at_pk = f"(t_o * {VECS} + k_p) * {PANEL}" if spread else "0"
    L += [ind + f"for c in range({C}):",
          ind + f"    b_pk = {at_pk} + c * {PANEL // C}",
          ind + f"    b_x = {f'{IMAGE} * i_n + ' if x_all else ''}{PLANE} * c + p0"]
    for t in range(TAPS * TAPS):
        off = (t // TAPS) * PITCH + t % TAPS
        L += [ind + f"    r{b} = vload(pk, b_pk + {(t * BO + b) * V}, {V})" for b in range(BO)]
        for a in range(BN):
            L.append(ind + f"    q{a} = vload(x, b_x + {IMAGE * a + off}, {V})")
            L += [ind + f"    s{a}_{b} = vfma(r{b}, q{a}, s{a}_{b})" for b in range(BO)]
    if spread:
        y_at = f"{f'{O * H * H} * i_n + ' if y_all else ''}{BO * H * H} * t_o + p0"
        L += [ind + f"vstore(y, {y_at} + {(k // BO) * O * H * H + (k % BO) * H * H}, {s})" for k, s in enumerate(acc)]
    else:
        L += [ind + f"vstore(y, q * {len(acc) * V} + {k * V}, {s})" for k, s in enumerate(acc)]
    return "\n".join(L) + "\n"


def _tile_kernel(spread: bool, x_all: bool, y_all: bool):
    import numba
    from einlocal.backends.numba_simd import vfma, vload, vsplat, vstore
    ns = {"numba": numba, "vsplat": vsplat, "vload": vload, "vfma": vfma, "vstore": vstore}
    exec(compile(_tile_source(spread, x_all, y_all), "<W2 register tile>", "exec"), ns)
    return numba.njit(parallel=True, boundscheck=False)(ns["f"])


def _aligned(n: int) -> np.ndarray:
    buf = np.empty(n + 16, np.float32)
    return buf[(-(buf.ctypes.data // 4)) % 16:][:n]


def main():
    args = _args()
    arr = random_arrays(args.threads)
    import einlocal as el
    from einlocal.machine import _cpu_model

    cases = {"matmul 2048": matmul_case(arr)}

    # x with room for the last tile's vectors; the weight packed (random values: the rates are the loads' and FMAs')
    x = arr(N * IMAGE + TILES * VECS * V + 2 * PITCH + TAPS)
    pk = _aligned(O // BO * VECS * PANEL)
    pk[:] = arr(pk.size)
    y = np.empty(N * O * H * H + TILES * VECS * V + O * H * H, np.float32)
    fmas = C * TAPS * TAPS * BN * BO * (O // BO) * VECS * TILES * -(-N // BN)     # vector FMAs a call
    for name, flags in TILE_CASES.items():
        k = _tile_kernel(*flags)
        cases[name] = ((lambda k=k: k(x, pk, y, 1)), 2 * V * fmas)

    x2, w2 = arr(N, C, PITCH, PITCH), arr(O, C, TAPS, TAPS, H, H)
    y2 = np.empty((N, O, H, H), np.float32)
    op = el.locally_connected2d
    cases["W2 forward"] = (lambda: op(x2, w2, backend="loops:numba", out=y2), op.bind(x2, w2).flops())

    for fn, _ in cases.values():       # compile, load, first touch
        fn()
        fn()
    times = interleaved(cases, args.rounds, warm)
    med = {k: statistics.median(v) for k, v in times.items()}
    rate = {k: cases[k][1] / med[k] for k in cases}
    print(f"machine: {_cpu_model()}; threads {args.threads}; {args.rounds} interleaved rounds, "
          "each call after untimed ones of its own")
    print(code_line())
    print()
    print("| case | median ms | GFLOP/s | share of the matmul rate |")
    print("| --- | ---: | ---: | ---: |")
    for k in cases:
        print(f"| {k} | {med[k] * 1e3:.2f} | {rate[k] / 1e9:.0f} | {rate[k] / rate['matmul 2048']:.0%} |")
    useful = N * H * H / (-(-N // BN) * BN * (-(-(PITCH * (H - 1) + H) // V)) * V)
    print()
    print(f"W2 forward's useful share of the lanes and images it computes: {useful:.1%}; "
          f"the tile over W2 at that share: {rate['tile over W2'] * useful / rate['matmul 2048']:.0%} "
          "of the matmul rate")


if __name__ == "__main__":
    main()
