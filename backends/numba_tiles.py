"""Generate register-tiled SIMD loop nests for numba from a bound plan with a
plain output: a tile of outputs is held in vector registers through the
whole reduction and stored once (``numba_simd`` spells the vectors).

For ``y[n,o,h,w] += x[n,c,h+i,w+j] * wt[o,c,i,j,h,w]`` (float32, AVX2)::

    for t_h in numba.prange(26):              # the parallel index (numba_drive: a tile a call)
      for t_n in range(34):                   # a block of 3 n ...
        i_n = min(t_n * 3, 97)                #   (the last block overlaps: '=' writes)
        for t_o in range(4):                  # ... by 4 o: 12 accumulators
          for t_w in range(4):                # the vector index, 8 lanes
            i_w = min(t_w * 8, 18)
            s0 = vsplat(0, 8) ... s11
            for i_c in range(16):             # reduction loops
              b_x = 12544*i_n + 784*i_c + ...  # one base offset per operand
              r0 = vload(a_x, b_x + 0, 8)     # taps i, j unrolled: constant offsets
              ...
              q = vload(a_wt, b_wt + 6084, 8)
              s0 = vfma(r0, q, s0) ...
            vstore(a_y, b_y + 0, s0) ...

Two forms:
- ``map``: the vector runs along the output's unit-stride index; tiles at
  the edge are shifted back to overlap the previous one (every output is a
  complete sum, written with '=', so writing one twice is harmless).
- ``reduce``: the output's unit-stride axis is short (a depthwise weight's
  gradient, 3x3) and a summed index is long: the vector runs along the sum,
  the last partial vector is a masked load, and each accumulator is summed
  across its lanes at the end.

Blocks (the output indices unrolled into the tile) are chosen to maximise
multiply-adds per load within the register file; summed indices of small
range (kernel taps) are unrolled so every load is a base plus a constant.
Operands read outside their bounds (``pad=0``) are read from zero-padded
copies the caller makes (``plan.windows``).  Strides are baked into the
source: a kernel is generated per layout.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from .numba_codegen import INIT, KERNEL_NAME, Kernel
from .numba_simd import LANES, REGISTERS

__all__ = ["Tiling", "tiling", "generate"]

# accumulators in a tile, leaving registers for loads.  With AVX-512's 32
# registers, 24 measured slower than 12 on a depthwise layer and a shared-weight
# conv (W3b forward 23.5 -> 27 ms, W5 5.1 -> 5.6 ms), whose weight is a
# broadcast scalar: the loads, not the registers, bound these tiles.  Where
# every operand is a vector load (a locally connected layer: weight and input
# both along the row), MAX_ACC_WIDE: a 6x4 block loads 10 vectors per 24
# multiply-adds, not 7 per 12 (W2 forward 8.6 -> 7.0 ms, backward 20 -> 18.4 ms
# of one core's time, medians).
MAX_ACC = 12
MAX_ACC_WIDE = 24
MAX_TAPS = 16         # summed iterations unrolled into one loop body
# Below this many flops per byte of the op's minimum traffic each element is
# used about once and the op is memory-bound.  Tiles then only stream: each
# operand read once per tile, in memory order, the fewest streams open (a 1x1
# locally connected layer: every input channel and both weights' rows in one
# pass over the output).  Where the sum does not unroll, a tile's reduction
# would keep a stream open per summed element (a weight gradient summed over
# a batch of planes 1 MB apart): its long sums are looped outside the vector
# instead, and a tile's output rows accumulate across them in a contiguous
# scratch of at most SCRATCH_BYTES (``Tiling.sums_outside``; accumulating in
# the output itself, rows a plane apart that share L1 sets, was 1.8x slower
# for W1's weight gradient), with at least MIN_TILES tiles to share out.
MIN_INTENSITY = 1.0
SCRATCH_BYTES = 32 * 1024
MIN_TILES = 8
# A streaming tile runs over an index every operand reads, the others inside it,
# so an operand that lacks one (a 1x1 layer's weight, read again for every image)
# is read from memory once and reused from cache: W1's forward took 6.1 ms, not
# 7.7, of one core's time (medians; 2-core AVX-512 Xeon, shared host).  Its
# output, written once, is stored non-temporally where larger than
# NONTEMPORAL_BYTES: no read-for-ownership of each line before it is written
# (W1's forward then 4.1 ms; a smaller output stays in cache for its reader).
STREAM_SHARED_FIRST = True
NONTEMPORAL = True
NONTEMPORAL_BYTES = 4 * 2 ** 20
# ... and a tile takes STREAM_ROWS consecutive rows of that index (at least
# MIN_TILES tiles), run inside the other indices, so each image's rows are read
# in one run of 8 KB, not 1 KB (W1's forward 4.6 -> 3.4 ms, its input
# gradient 6.9 -> 4.3 ms of one core's time).
STREAM_ROWS = 8


@dataclass(frozen=True)
class Tiling:
    """The decisions of one tiled kernel."""

    form: str                               # "map" | "reduce"
    vector: str                             # the vectorised index
    lanes: int
    blocks: tuple[tuple[str, int], ...]     # output index -> block size (unrolled)
    taps: tuple[str, ...]                   # summed indices unrolled into the body
    loops: tuple[str, ...]                  # summed indices looped (the vector last, in the reduce form)
    outer: tuple[str, ...]                  # output indices outside the tile, the parallel one first
    parallel: str | None
    streaming: bool = False                 # memory-bound: blocks and order for the fewest streams
    sums_outside: tuple[str, ...] = ()      # summed indices looped outside the vector (streaming, a long
                                            # sum): a tile's outputs accumulate in a scratch across them
    chunk: int = 1                          # with sums outside: values of the parallel index per tile


def _vectorisable(v: str, acc, strides) -> bool:
    """``acc`` reads along ``v`` contiguously (or does not depend on it)."""
    if v not in acc.names:
        return True
    k = acc.axis_of(v)
    return acc.axes[k].coef(v) == 1 and strides[k] == 1


def _lanes(dtype: str, r: int) -> int:
    top = LANES[dtype]
    return top if r >= top else 1 << (r.bit_length() - 1)


def _choose_blocks(cands, ops, live, flat, v) -> tuple[tuple[str, int], ...]:
    """Up to two output indices and their block sizes: the most multiply-adds
    per vector load, with at most MAX_ACC accumulators (MAX_ACC_WIDE where
    every operand loads vectors along ``v``), registers for the
    loads one side keeps resident, and little work lost to a last block that
    overlaps; among blocks within 5% of the best, the one whose loads lie
    closest together in memory (fewer streams for the prefetcher)."""
    top_acc = MAX_ACC_WIDE if REGISTERS >= 32 and all(v in a.names for a in ops) else MAX_ACC
    scored = []
    for k in (1, 2):
        for us in itertools.combinations(cands, k):
            for U in itertools.product(*(range(2, min(live[u], top_acc) + 1) for u in us)):
                acc = math.prod(U)
                loads = [math.prod(s for u, s in zip(us, U) if u in a.names) for a in ops]
                if acc > top_acc or acc + min(loads) + 1 > REGISTERS:
                    continue
                waste = math.prod(math.ceil(live[u] / s) * s / live[u] for u, s in zip(us, U))
                spread = sum((s - 1) * abs(flat[a.name][0].get(u, 0)) for a in ops for u, s in zip(us, U))
                scored.append((acc / sum(loads) / waste, spread, len(us), tuple(zip(us, U))))
    if not scored:
        return ()
    top = max(s[0] for s in scored)
    return min((s for s in scored if s[0] >= 0.95 * top), key=lambda s: (s[1], s[2], -s[0]))[3]


def _flat(acc, strides, live) -> tuple[dict, int]:
    """Per index, its coefficient in the flat element offset of ``acc``, and
    the constant part."""
    coef: dict[str, int] = {}
    const = 0
    for ax, s in zip(acc.axes, strides):
        const += s * ax.const
        for n, a in ax.terms:
            if n in live:
                coef[n] = coef.get(n, 0) + s * a
    return coef, const


def tiling(plan, dtype: str, strides: dict, out_strides) -> Tiling | None:
    """The tiled form of ``plan`` for these element strides (operands by
    name, and the output's), or None where it does not apply: an
    affine-indexed output, other than two operands, a dtype without
    vectors, a memory-bound op (``MIN_INTENSITY``) whose sum does not
    unroll or whose output is not vectorised along its unit-stride axis, or
    no index read contiguously by every operand that uses it."""
    stmt, out = plan.stmt, plan.stmt.out
    if not out.plain or len(stmt.operands) != 2 or dtype not in LANES:
        return None
    streaming = plan.flops() < MIN_INTENSITY * plan.min_elements() * (4 if dtype == "float32" else 8)
    live = {n: r for n, r in plan.range.items() if r > 1}
    ops = stmt.operands

    def ok(v):
        return v in live and all(_vectorisable(v, a, strides[a.name]) for a in ops) \
            and any(v in a.names for a in ops)

    vmap = next((ax.alone for ax, s in zip(out.axes, out_strides) if s == 1 and ax.alone in live), None)
    vmap = vmap if vmap is not None and ok(vmap) else None
    sums = [n for n in stmt.summed if ok(n)]
    vred = max(sums, key=lambda n: live[n]) if sums else None
    top = LANES[dtype]
    if vmap and live[vmap] >= top:
        form, v = "map", vmap
    elif vred and live[vred] >= top:
        form, v = "reduce", vred
    elif vmap:
        form, v = "map", vmap
    elif vred:
        form, v = "reduce", vred
    else:
        return None
    flat = {a.name: _flat(a, strides[a.name], live) for a in ops}
    outs = [n for n in out.names if n in live and n != v]
    summed = [n for n in stmt.summed if n in live and n != v]
    taps, total = [], 1
    for n in sorted(summed, key=lambda n: live[n]):
        if total * live[n] > MAX_TAPS:
            break
        taps.append(n)
        total *= live[n]
    outside: tuple[str, ...] = ()
    if streaming:
        if form != "map":
            return None
        outside = tuple(n for n in summed if n not in taps)
        # accumulating across a sum outside the vector: every tile adds into
        # outputs only it writes, each once per sum step; a last tile shifted
        # back to overlap, or edge tiles, would add some twice or need masks
        if outside and (live[v] % _lanes(dtype, live[v])
                        or any(p != (0, 0) for a in ops for p in plan.windows[a.name].pads)):
            return None
        blocks = _stream_blocks(outs, ops, plan, live, every=bool(outside))
    else:
        blocks = _choose_blocks(outs, ops, live, flat, v)
    loops = tuple(n for n in summed if n not in taps and n not in outside) + ((v,) if form == "reduce" else ())
    if streaming:   # memory order (each operand's rows follow one another), indices all operands read first
        outer = tuple(sorted(outs, key=lambda u: -abs(out_strides[out.axis_of(u)])))
        if STREAM_SHARED_FIRST:
            outer = tuple(sorted(outer, key=lambda u: -sum(u in a.names for a in ops)))
    else:
        outer = _loop_order(outs, ops, live, dict(blocks), v, out, out_strides)
    tiles = {n: math.ceil(live[n] / dict(blocks).get(n, 1)) for n in outs}
    parallel = next((n for n in outer if tiles[n] >= 4), max(outer, key=tiles.get) if outer else None)
    if parallel is not None and tiles[parallel] < 2:
        parallel = None
    outer = ((parallel,) if parallel else ()) + tuple(n for n in outer if n != parallel)
    chunk = 1
    if outside:     # a tile: `chunk` values of the parallel index, its scratch within SCRATCH_BYTES
        if parallel is None:
            return None
        row = math.prod(s for _, s in blocks) * live[v] * (4 if dtype == "float32" else 8)
        chunk = max(1, min(SCRATCH_BYTES // row, live[parallel] // MIN_TILES))
        while live[parallel] % chunk:
            chunk -= 1
    elif streaming and parallel is not None and _unblocked(parallel, blocks) and STREAM_ROWS > 1 and \
            all(parallel in a.names for a in ops):
        # a tile: `chunk` consecutive rows of the index every operand reads, each image's rows in one run
        chunk = max(1, min(STREAM_ROWS, live[parallel] // MIN_TILES))
        while live[parallel] % chunk:
            chunk -= 1
    return Tiling(form, v, _lanes(dtype, live[v]), blocks, tuple(taps), loops, outer, parallel, streaming, outside,
                  chunk)


def _unblocked(n, blocks) -> bool:
    return dict(blocks).get(n, 1) == 1


def _stream_blocks(outs, ops, plan, live, every: bool = False) -> tuple[tuple[str, int], ...]:
    """For a memory-bound tile: the output indices the largest operand does
    not depend on, each unrolled whole (within MAX_ACC accumulators), so a
    tile reads that operand once for all of them; the smaller operand's rows
    are the extra streams (a 1x1 layer: the input once for every output
    channel, the weights' rows beside it).  ``every``: those any operand
    lacks (a tile with its sum outside reads each operand's rows once per
    sum step: a 1x1 layer's weight gradient blocks both channel indices)."""
    big = max(ops, key=lambda a: math.prod(plan.shape[a.name]))
    lacking = [n for n in outs if any(n not in a.names for a in (ops if every else (big,)))]
    blocks, acc = [], 1
    for n in sorted(lacking, key=lambda n: live[n]):
        if acc * live[n] > MAX_ACC:
            break
        blocks.append((n, live[n]))
        acc *= live[n]
    return tuple(blocks)


def _loop_order(outs, ops, live, blocks, v, out, out_strides) -> tuple[str, ...]:
    """The tile loops outermost first: an index that moves to new rows of
    many operands outside one that moves few, so the rows a tile reads stay
    in cache for the tiles that follow (a weight that does not depend on the
    batch is read once per output row, not once per batch block).  A
    "row" is one vector's worth of an operand along the vector index; a
    tile reads rows(a) of operand a."""
    def rows(a):
        on_v = {n for ax in a.axes if v in ax.names for n in ax.names}
        others = {n for ax in a.axes if v not in ax.names for n in ax.names}
        return math.prod(blocks.get(n, 1) if n in out.names else live[n]
                         for n in a.names if n in live and n != v and (n in others or n not in on_v))
    cost = {u: sum(rows(a) for a in ops if u in a.names) for u in outs}
    return tuple(sorted(outs, key=lambda u: (-cost[u], -abs(out_strides[out.axis_of(u)]))))


def _linear(coef: dict, variables) -> str:
    """The variable part of an affine expression, as source ('' for none)."""
    parts = [f"{c}*i_{n}" if c != 1 else f"i_{n}" for n, c in coef.items() if n in variables and c]
    return " + ".join(parts).replace("+ -", "- ")


def _plus(expr: str, const: int) -> str:
    if not expr:
        return str(const)
    return expr if const == 0 else f"{expr} + {const}".replace("+ -", "- ")


def generate(plan, t: Tiling, strides: dict, out_strides, dtype: str, init_strides=None) -> Kernel:
    """The tiled kernel's source for ``plan`` under tiling ``t``.
    ``init_strides``: the kernel takes one more array (last), indexed like
    the output with these strides (0 or 1 along the vector), that the sums
    start from instead of zero (a bias, broadcast)."""
    stmt, out = plan.stmt, plan.stmt.out
    live = {n: r for n, r in plan.range.items() if r > 1}
    V, v = t.lanes, t.vector
    # memory-bound: the output, written once, with non-temporal stores (no read-for-ownership)
    nt = t.streaming and t.form == "map" and NONTEMPORAL and \
        math.prod(plan.out_shape) * (4 if dtype == "float32" else 8) >= NONTEMPORAL_BYTES
    store = "vstore_nt" if nt else "vstore"
    blocks = dict(t.blocks)
    flat = {a.name: _flat(a, strides[a.name], live) for a in stmt.operands}
    flat[out.name] = _flat(out, out_strides, live)
    members = [dict(zip(blocks, m)) for m in itertools.product(*(range(s) for s in blocks.values()))]
    tap_values = [dict(zip(t.taps, m)) for m in itertools.product(*(range(live[n]) for n in t.taps))]
    variables = set(t.outer) | set(t.loops) | set(t.sums_outside) | {v}
    zero = f"numba.{dtype}(0)"
    R = live[v]
    tail = t.form == "reduce" and R % V != 0

    # the axes a read can leave (pad=0): each with its coefficients, constant and size
    def axis(ax):
        return {n: a for n, a in ax.terms if n in live}, ax.const
    bounded = {a.name: [(k, *axis(ax), plan.shape[a.name][k]) for k, ax in enumerate(a.axes)
                        if plan.windows[a.name].pads[k] != (0, 0)] for a in stmt.operands}

    def value(coef, const, point):
        return const + sum(coef.get(n, 0) * x for n, x in point.items())

    def interior() -> str:
        """Every read of this tile in bounds (then plain loads)."""
        conds = []
        for a in stmt.operands:
            for _, coef, const, size in bounded[a.name]:
                vals = [value(coef, const, {**m, **tp}) for m in members for tp in tap_values]
                lo, hi = min(vals), max(vals) + (V - 1 if v in coef else 0)
                lin = _linear(coef, variables) or "0"
                conds.append(f"{lin} >= {-lo}")
                conds.append(f"{lin} <= {size - 1 - hi}")
        if tail:
            conds.append(f"i_{v} <= {R - V}")
        return " and ".join(conds)

    def load(acc, point, edge, named, known):
        """Source of one vector (or broadcast scalar) of ``acc`` at ``point``
        (block member and tap values); at an edge, only the lanes inside
        the array are loaded (``named`` names each bound once)."""
        coef, const = flat[acc.name]
        off = value(coef, const, point) - const
        at = f"a_{acc.name}, b_{acc.name} + {off}".replace("+ -", "- ")
        oks = []
        lanes_lo, lanes_hi = "0", str(V)
        for k, acoef, aconst, size in (bounded[acc.name] if edge else ()):
            c = named(_plus(_linear(acoef, known), value(acoef, aconst, point)))
            if v in acoef:
                lanes_lo, lanes_hi = named(f"max(0, -{c})"), named(f"min({V}, {size} - {c})")
            else:
                oks.append(named(f"0 <= {c} < {size}"))
        ok = named(" and ".join(oks)) if oks else None
        if v not in acc.names:
            x = f"sload({at})"
            return f"vsplat({x} if {ok} else {zero}, {V})" if ok else f"vsplat({x}, {V})"
        if not edge:
            return f"vload({at}, {V})"
        if tail:
            lanes_hi = named(f"min({lanes_hi}, {R} - i_{v})")
        if ok:
            lanes_hi = named(f"{lanes_hi} if {ok} else 0")
        return f"vload_lanes({at}, {V}, {lanes_lo}, {lanes_hi})"

    args = ", ".join([f"a_{a.name}" for a in (out, *stmt.operands)] + ([INIT] if init_strides is not None else []))
    if init_strides is not None:
        icoef, iconst = _flat(out, init_strides, live)
        if icoef.get(v, 0) not in (0, 1) or iconst:
            raise ValueError(f"init strides {tuple(init_strides)} step {icoef.get(v)} along the vector index {v}")
    lines = ["import numba", *(["import numpy as np"] if t.sums_outside else []),
             *(["from einlocal.backends.numba_drive import Tiled"] if t.parallel is not None else []),
             "from einlocal.backends.numba_simd import vsplat, vload, vload_lanes, vstore, sload, sstore, vfma, vsum"
             + (", vstore_nt, sfence" if nt else ""),
             "", ""]
    ind = 1

    def emit(text):
        lines.append("    " * ind + text)

    def count(n, size):
        return math.ceil(live[n] / size)

    def start(n, size):
        """The first index of tile t_n (the last tile shifted back inside)."""
        if size == 1:
            return f"i_{n} = t_{n}"
        last = live[n] - size
        return f"i_{n} = t_{n} * {size}" if live[n] % size == 0 else f"i_{n} = min(t_{n} * {size}, {last})"

    # The nest for one parallel tile is a function of its own, compiled alone
    # and called by numba_drive's shared parallel loop (numba's parallel
    # passes are slow on a large loop body, and a prange loop calling the
    # tiles would compile them a second time).
    loops = [(n, V if n == v else blocks.get(n, 1)) for n in (*t.outer, *((v,) if t.form == "map" else ()))]
    if t.parallel is not None:
        # the tiles of the parallel index: a C callback on the arrays' first
        # elements, run by ``numba_drive.Tiled`` (compiled once, not twice)
        p, psize = loops.pop(0)
        arrays = [(f"a_{out.name}", plan.out_shape, out_strides)] + \
            [(f"a_{a.name}", plan.shape[a.name], strides[a.name]) for a in stmt.operands] + \
            ([(INIT, plan.out_shape, init_strides)] if init_strides is not None else [])
        lines += [f"def tiles({', '.join(f'p_{k}' for k, _, _ in arrays)}, t_{p}):"]
        for name, shape, st in arrays:      # each array from its first element to its last
            extent = 1 + sum((n - 1) * abs(k) for n, k in zip(shape, st))
            emit(f"{name} = numba.carray(p_{name}, ({extent},), numba.{dtype})")
        emit(start(p, psize) if t.chunk == 1 and not t.sums_outside else f"i_{p}0 = t_{p} * {t.chunk}")
    else:
        lines += ["@numba.njit(cache=True, boundscheck=False)", f"def {KERNEL_NAME}({args}):"]
    out_coef, out_const = flat[out.name]
    out_base = f"b_{out.name} = " + _plus(_linear(out_coef, set(t.outer) | ({v} if t.form == 'map' else set())),
                                          out_const)
    if t.sums_outside:
        # scratch[r, k, v]: row r of the parallel chunk, block member k, along the vector
        M = len(members)
        emit(f"acc = np.empty({t.chunk * M * R}, np.{dtype})")

        def chunk_rows():
            nonlocal ind
            emit(f"for r in range({t.chunk}):")
            ind += 1
            emit(f"i_{p} = i_{p}0 + r")
            emit(f"for t_{v} in range({count(v, V)}):")
            ind += 1
            emit(start(v, V))
            emit(f"b_acc = {M * R}*r + i_{v}")
    for n, size in loops:
        if n == v and t.sums_outside:
            for s_ in t.sums_outside:
                emit(f"for i_{s_} in range({live[s_]}):")
                ind += 1
            chunk_rows()
            break
        if n == v and t.chunk > 1:      # the tile's rows, inside the other indices
            emit(f"for r in range({t.chunk}):")
            ind += 1
            emit(f"i_{p} = i_{p}0 + r")
        emit(f"for t_{n} in range({count(n, size)}):")
        ind += 1
        emit(start(n, size))

    def start_sums():
        if init_strides is not None and t.form == "map":
            emit(f"b_{INIT} = {_plus(_linear(icoef, set(t.outer) | {v}), 0)}")
            for k, m in enumerate(members):
                at = f"{INIT}, b_{INIT} + {value(icoef, 0, m)}"
                emit(f"s{k} = " + (f"vload({at}, {V})" if icoef.get(v) == 1 else f"vsplat(sload({at}), {V})"))
        else:
            for k in range(len(members)):
                emit(f"s{k} = vsplat({zero}, {V})")

    if t.sums_outside:      # the first step starts the sums, the others go on from the scratch
        emit("if " + " and ".join(f"i_{s_} == 0" for s_ in t.sums_outside) + ":")
        ind += 1
        start_sums()
        ind -= 1
        emit("else:")
        ind += 1
        for k in range(len(members)):
            emit(f"s{k} = vload(acc, b_acc + {k * R}, {V})")
        ind -= 1
    else:
        start_sums()

    # the operand with fewer loads per tap keeps them in registers; the other streams
    A, B = stmt.operands

    def key(m, acc):
        return tuple(sorted((u, m[u]) for u in m if u in acc.names))
    n_loads = {a.name: len({key(m, a) for m in members}) for a in (A, B)}
    res, stream = (A, B) if n_loads[A.name] <= n_loads[B.name] else (B, A)

    def body(edge):
        """One step of the reduction: every tap's loads and multiply-adds,
        the taps unrolled (at an edge, looped: edge tiles are few and their
        bound tests long).  Each value gets its own name (numba's SSA pass
        is slow on names assigned many times); the accumulators are renamed
        back at the end."""
        nonlocal ind
        names: dict[str, str] = {}
        count = itertools.count()

        def named(expr):
            if expr not in names:
                names[expr] = f"e{next(count)}"
                emit(f"{names[expr]} = {expr}")
            return names[expr]

        looped = edge and bool(t.taps)
        if looped:
            for n in t.taps:
                emit(f"for i_{n} in range({live[n]}):")
                ind += 1
        known = variables | set(t.taps) if looped else variables
        for acc in (res, stream):
            coef, const = flat[acc.name]
            emit(f"b_{acc.name} = {_plus(_linear(coef, known), const)}")
        cur = [f"s{k}" for k in range(len(members))]
        for tap in ([{}] if looped else tap_values):
            if tap:
                emit("# " + ", ".join(f"{n}={x}" for n, x in tap.items()))
            regs = {}
            for m in members:
                if key(m, res) not in regs:
                    regs[key(m, res)] = f"r{next(count)}"
                    emit(f"{regs[key(m, res)]} = {load(res, {**m, **tap}, edge, named, known)}")
            done = set()
            for m in members:
                if key(m, stream) in done:
                    continue
                done.add(key(m, stream))
                q = f"q{next(count)}"
                emit(f"{q} = {load(stream, {**m, **tap}, edge, named, known)}")
                for k, m2 in enumerate(members):
                    if key(m2, stream) == key(m, stream):
                        new = f"s{k}_{next(count)}"
                        emit(f"{new} = vfma({regs[key(m2, res)]}, {q}, {cur[k]})")
                        cur[k] = new
        for k, name in enumerate(cur):
            if name != f"s{k}":
                emit(f"s{k} = {name}")
        if looped:
            ind -= len(t.taps)

    def tile_body():
        cond = interior()
        if not cond:
            body(False)
            return
        nonlocal ind
        emit(f"if {cond}:")
        ind += 1
        body(False)
        ind -= 1
        emit("else:")
        ind += 1
        body(True)
        ind -= 1

    for n in t.loops:
        emit(f"for i_{n} in range(0, {R}, {V}):" if n == v else f"for i_{n} in range({live[n]}):")
        ind += 1
    tile_body()
    ind -= len(t.loops)

    if t.sums_outside:
        for k in range(len(members)):
            emit(f"vstore(acc, b_acc + {k * R}, s{k})")
        ind -= 2 + len(t.sums_outside)      # out of the chunk's rows, its vector and the sums
        chunk_rows()                        # the finished sums, from the scratch to the output
        emit(out_base)
        for k, m in enumerate(members):
            emit(f"{store}(a_{out.name}, b_{out.name} + {value(out_coef, 0, m)}, vload(acc, b_acc + {k * R}, {V}))")
    else:
        emit(out_base)
    if init_strides is not None and t.form == "reduce":
        emit(f"b_{INIT} = {_plus(_linear(icoef, set(t.outer)), 0)}")
    for k, m in enumerate(members if not t.sums_outside else ()):
        off = value(out_coef, 0, m)
        if t.form == "map":
            emit(f"{store}(a_{out.name}, b_{out.name} + {off}, s{k})")
        elif init_strides is not None:
            emit(f"sstore(a_{out.name}, b_{out.name} + {off}, vsum(s{k}) + sload({INIT}, b_{INIT} + "
                 f"{value(icoef, 0, m)}))")
        else:
            emit(f"sstore(a_{out.name}, b_{out.name} + {off}, vsum(s{k}))")

    if nt:
        ind = 1
        emit("sfence()")
    if t.parallel is not None:
        tiles_count = live[p] // t.chunk if t.chunk > 1 or t.sums_outside else count(p, psize)
        lines += ["", "", f"{KERNEL_NAME} = Tiled(tiles, {tiles_count}, {dtype!r})"]
    order = (*t.outer, *t.sums_outside, *((v,) if t.form == "map" else ()), *t.loops)
    outside = (f", {', '.join(t.sums_outside)} summed outside the vector into a scratch of {t.chunk} {t.parallel}"
               if t.sums_outside else "")
    rows = f", {t.chunk} {t.parallel} a tile" if t.chunk > 1 and not t.sums_outside else ""
    kind = f" (streaming: memory-bound{outside}{rows})" if t.streaming else ""
    header = (f"# generated by einlocal.backends.numba_tiles for\n#   {plan}\n"
              f"# {t.form} form{kind}: {V} lanes along {v}; blocks "
              f"{', '.join(f'{n}x{s}' for n, s in t.blocks) or '-'}; taps unrolled: {', '.join(t.taps) or '-'}; "
              f"prange over: {t.parallel or '-'}\n")
    return Kernel(header + "\n".join(lines) + "\n", tuple(a.name for a in stmt.operands), order, t.parallel, v,
                  False)
