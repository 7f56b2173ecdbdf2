"""Which tiled form a bound statement takes (`Tiling`): the vector index and
its lanes, the output blocks held in registers, the taps unrolled, the loops,
the parallel index, and for a memory-bound op the streaming order, rows per
tile and sums looped outside the vector.  `numba_tiles` writes the kernel."""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from .numba_simd import LANES, NONTEMPORAL_AWAY, NONTEMPORAL_STORES, REGISTERS

__all__ = ["Tiling", "tiling", "sum_slots", "flat_offsets"]

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
# Not on AMD, where they stall loads (`numba_simd.NONTEMPORAL_STORES`).
STREAM_SHARED_FIRST = True
NONTEMPORAL = NONTEMPORAL_STORES
NONTEMPORAL_BYTES = 4 * 2 ** 20
AWAY = NONTEMPORAL_AWAY      # where NONTEMPORAL is off: for kernels whose loads keep off the stores' page offset
# ... and a tile takes STREAM_ROWS consecutive rows of that index (at least
# MIN_TILES tiles), run inside the other indices, so each image's rows are read
# in one run of 8 KB, not 1 KB (W1's forward 4.6 -> 3.4 ms, its input
# gradient 6.9 -> 4.3 ms of one core's time).
STREAM_ROWS = 8
# An operand that a streaming tile reads again for every value of its first
# inner index (a 1x1 layer's weight, once per image) is copied once a tile
# into a panel, in the order the body reads it, where the panel is at most
# STREAM_PACK_BYTES.  numpy's large arrays all lie 16 bytes past a page, so
# x's, the weight's and y's planes, each 256 KB apart, meet in one L1 and one
# L2 set at every position: W1's forward (bias, out=) took 4.0-4.2 ms
# against 1.7-1.9 with the arrays at spread page offsets (AMD Zen 3, whose
# caches are 8-way); a panel removes the weight's 8 planes from those sets.
STREAM_PACK = True
STREAM_PACK_BYTES = 128 * 1024
# A compute-bound tile whose operand does not depend on the innermost tile
# loops (a locally connected layer's weight, the same for every batch block)
# reads that operand's slice once per tile, from rows kilobytes apart that no
# hardware prefetcher follows.  Packed instead: the tile loops it depends on
# outside, the vector's tile next, then its slice copied once into a
# contiguous, aligned panel in the order the body reads it, and the tiles
# that share it (at least PACK_MIN_REUSE: the copy costs a read and a write
# of the slice, against one read per tile; W2 at batch 12, its input packed
# for 4 output-channel tiles, ran 12% slower) read the panel (at most
# PACK_BYTES: it stays in L1/L2).  A slice whose cache lines come to less
# than PACK_MIN_BYTES (an unaligned vector touches its bytes and about one
# more line) stays in L1 as it is (W2 at batch 12: dy's 12 KB of lines
# packed made its weight gradient 1.0 -> 1.18 ms).  Reads outside the operand (padding) become zeros in
# the panel, so the body's edge tests are the other operand's only.  The
# other operand, where its rows lie PREFETCH_STRIDE bytes or more apart along
# the innermost summed loop, is prefetched about PREFETCH_FMAS multiply-adds
# ahead.  W2's weight gradient 8.9 -> 5.3 ms, its forward 6.3 -> 5.2 ms
# (one core, back to back; 6.2 -> 3.8 and 8.2 -> 6.4 ms after a 2048 matmul).
PACK = True
PACK_BYTES = 64 * 1024
PACK_MIN_REUSE = 8
PACK_MIN_BYTES = 16 * 1024
PREFETCH_STRIDE = 1024
PREFETCH_FMAS = 192
# A packed tile whose rows are short for the vector (W2's 26 outputs a row:
# two 16-lane vectors, 19% of the lanes idle; a 7-wide row: two 4-lane
# vectors, a quarter of AVX-512) runs its lanes across rows instead, along
# the flat position u*pitch + v of the operand not packed, whose rows lie
# `pitch` apart: that operand's loads stay plain vectors, a row's last
# pitch - R lanes idle, and the packed operand and the output are read and
# written in one masked piece per row the vector spans (`numba_rows`).
# Where its lanes do ROWS_GAIN more useful work than the row's own vectors.
ROWS = True
ROWS_GAIN = 1.1
# A register block's stores miss the caches when the output is larger than
# them, and each waits for its line's read-for-ownership: W2's forward spent
# 0.3 ms back to back and 0.45 ms after a matmul of its 2.2-3.1 ms storing y.
# The writers ask for the next block's output lines, owned (`prefetchw`), a
# few each step of the outermost summed loop of this block
# (`numba_step.write_ahead`): not where the output is written non-temporally
# or summed in a scratch.
WRITE_AHEAD = True


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
    pack: str | None = None                 # the operand whose tile slice is packed into a panel
    vector_at: int | None = None            # the vector's tile loop before outer[vector_at] (None: innermost)
    ahead: int = 0                          # prefetch the other operand this many steps of the last loop ahead
    rows: tuple[str, int, int] | None = None  # (u, pitch, lanes): lanes along u*pitch + vector (numba_rows)

    def describe(self, other: str | None = None) -> str:
        """One line for a kernel's header: the decisions (``other``: the
        operand not packed, named where one is)."""
        outside = (f", {', '.join(self.sums_outside)} summed outside the vector into a scratch of {self.chunk} "
                   f"{self.parallel}" if self.sums_outside else "")
        rows = f", {self.chunk} {self.parallel} a tile" if self.chunk > 1 and not self.sums_outside else ""
        if self.streaming and self.pack:
            rows += f"; {self.pack} packed per tile, read from there for every {self.outer[1]}"
        kind = f" (streaming: memory-bound{outside}{rows})" if self.streaming else ""
        ahead = f", {other} prefetched {self.ahead} {self.loops[-1]} ahead" if self.ahead else ""
        tile = (f"blocks {', '.join(f'{n}x{s}' for n, s in self.blocks) or '-'}; taps unrolled: "
                f"{', '.join(self.taps) or '-'}")
        if self.rows:
            u, pitch, lanes = self.rows
            own = (*(n for n in self.outer[:self.vector_at] if n != u), "the vector")
            return (f"{self.form} form: {lanes} lanes along {u}*{pitch}+{self.vector} (rows of {self.vector} "
                    f"{pitch} apart, the lanes past a row's end idle); {tile}; prange over: "
                    f"{u}*{pitch}+{self.vector} in vectors; {self.pack} packed per tile of {', '.join(own)}{ahead}")
        packed = (f"; {self.pack} packed per tile of {', '.join((*self.outer[:self.vector_at], self.vector))}{ahead}"
                  if self.pack and not self.streaming else "")
        return (f"{self.form} form{kind}: {self.lanes} lanes along {self.vector}; {tile}; prange over: "
                f"{self.parallel or '-'}{packed}")


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


def flat_offsets(acc, strides, live) -> tuple[dict, int]:
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
    item = 4 if dtype == "float32" else 8
    streaming = plan.flops() < MIN_INTENSITY * plan.min_elements() * item
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
    flat = {a.name: flat_offsets(a, strides[a.name], live) for a in ops}
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
        row = math.prod(s for _, s in blocks) * live[v] * item
        chunk = max(1, min(SCRATCH_BYTES // row, live[parallel] // MIN_TILES))
        while live[parallel] % chunk:
            chunk -= 1
    elif streaming and parallel is not None and _unblocked(parallel, blocks) and STREAM_ROWS > 1 and \
            all(parallel in a.names for a in ops):
        # a tile: `chunk` consecutive rows of the index every operand reads, each image's rows in one run
        chunk = max(1, min(STREAM_ROWS, live[parallel] // MIN_TILES))
        while live[parallel] % chunk:
            chunk -= 1
    lanes = _lanes(dtype, live[v])
    pack, vector_at, ahead = None, None, 0
    if streaming and not outside and len(outer) > 1 and STREAM_PACK:
        pack = _stream_pack(plan, ops, outer, dict(blocks), taps, live, v, lanes, chunk, item)
    if form == "map" and not streaming and parallel is not None and PACK:
        pack, outer, vector_at = _packing(plan, ops, outer, dict(blocks), taps, loops, tiles, live, v, lanes * item)
        ahead = _ahead(ops, pack, flat, loops, blocks, taps, live, item)
    rows = _rows(plan, ops, pack, dict(blocks), outer[:vector_at], v, taps, live, flat, dtype, lanes) \
        if pack and ROWS and not streaming else None
    return Tiling(form, v, lanes, blocks, tuple(taps), loops, outer, parallel, streaming, outside,
                  chunk, pack, vector_at, ahead, rows)


def _rows(plan, ops, pack, blocks, own, v, taps, live, flat, dtype, lanes) -> tuple[str, int, int] | None:
    """(u, pitch, lanes) where a packed tile's lanes run across rows
    (`ROWS`): u an output index the packed operand's tile depends on, whose
    rows of ``v`` lie ``pitch`` apart in the operand not packed; none where
    the packed operand is read outside its bounds, the other outside them
    along an axis that moves with more than u, v and the taps, or the gain
    is under ROWS_GAIN."""
    P = next(a for a in ops if a.name == pack)
    Q = next(a for a in ops if a is not P)
    if any(p != (0, 0) for p in plan.windows[P.name].pads):
        return None
    bounded = [ax for ax, p in zip(Q.axes, plan.windows[Q.name].pads) if p != (0, 0)]
    if any(ax.coef(v) not in (0, 1) for ax in bounded):
        return None
    top, R = LANES[dtype], live[v]
    if flat[Q.name][0].get(v) != 1 or flat[P.name][0].get(v) != 1:
        return None
    now = R / (math.ceil(R / lanes) * top)
    best = None
    for u in own:
        pitch = flat[Q.name][0].get(u, 0)
        if u == v or u in blocks or pitch < R or not any(ax.alone == u for ax in plan.stmt.out.axes) \
                or any(not {n for n in ax.names if n in live} <= {u, v, *taps} for ax in bounded):
            continue
        tiles = math.ceil(((live[u] - 1) * pitch + R) / top)
        useful = live[u] * R / (tiles * top)
        if tiles >= 4 and useful >= ROWS_GAIN * now and (best is None or useful > best[0]):
            best = (useful, u, pitch)
    return None if best is None else (best[1], best[2], top)


def _stream_pack(plan, ops, outer, blocks, taps, live, v, lanes, chunk, item) -> str | None:
    """The operand a streaming tile packs (`STREAM_PACK`): one read along the
    vector, inside its bounds, that lacks the tile's first inner index
    (read again for each of its values, at least PACK_MIN_REUSE), whose
    panel (the tile's rows, vectors and inner blocks) fits STREAM_PACK_BYTES."""
    again = outer[1]
    for a in ops:
        if again in a.names or v not in a.names or any(p != (0, 0) for p in plan.windows[a.name].pads):
            continue
        keys = math.prod(s for u, s in blocks.items() if u in a.names)
        per = math.prod(live[n] for n in taps) * keys * lanes
        tiles = math.prod(math.ceil(live[u] / blocks.get(u, 1)) for u in outer[2:])
        if live[again] >= PACK_MIN_REUSE and per * tiles * chunk * math.ceil(live[v] / lanes) * item \
                <= STREAM_PACK_BYTES:
            return a.name
    return None


def _packing(plan, ops, outer, blocks, taps, loops, tiles, live, v, vector_bytes):
    """The operand to pack (`PACK`): one read along the vector whose slice
    the most tiles share, within PACK_BYTES; and the outer loops reordered,
    those it depends on first (the parallel index always first), and where
    the vector's tile loop goes.  (None, outer, None) where none qualifies."""
    best = None
    for a in ops:
        if v not in a.names:
            continue
        shared = [u for u in outer[1:] if u not in a.names]
        reuse = math.prod(tiles[u] for u in shared)
        keys = math.prod(s for u, s in blocks.items() if u in a.names)
        vectors = math.prod(live[n] for n in loops) * math.prod(live[n] for n in taps) * keys
        lines = vectors * (vector_bytes + 64)
        if shared and reuse >= PACK_MIN_REUSE and lines >= PACK_MIN_BYTES and vectors * vector_bytes <= PACK_BYTES \
                and (best is None or reuse > best[0]):
            best = (reuse, a.name, shared)
    if best is None:
        return None, outer, None
    own = [u for u in outer if u not in best[2]]
    return best[1], tuple(own + best[2]), len(own)


def _ahead(ops, pack, flat, loops, blocks, taps, live, itemsize) -> int:
    """Steps of the innermost summed loop to prefetch the operand not packed
    ahead by (`PREFETCH_FMAS`); 0 where nothing is packed or its rows lie
    closer than PREFETCH_STRIDE along that loop."""
    if pack is None or not loops:
        return 0
    other = next(a for a in ops if a.name != pack)
    if abs(flat[other.name][0].get(loops[-1], 0)) * itemsize < PREFETCH_STRIDE:
        return 0
    fmas = math.prod(s for _, s in blocks) * math.prod(live[n] for n in taps)
    return max(1, PREFETCH_FMAS // fmas)


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


def sum_slots(plan, t: Tiling, operand: str, sum_strides) -> tuple | None:
    """Where a kernel of tiling ``t`` can also sum ``operand`` into one more
    output (a bias's gradient beside a weight's): an array indexed like the
    operand with ``sum_strides``, 0 along exactly the indices the statement
    sums.  Returns (the output indices the operand lacks, the sum's
    coefficients and constant) or None: only the map form with its sums
    outside the vector, whose tiles each own their part of that output."""
    stmt = plan.stmt
    live = {n: r for n, r in plan.range.items() if r > 1}
    acc = next((a for a in stmt.operands if a.name == operand), None)
    if acc is None or t.form != "map" or not t.sums_outside or t.parallel is None or not acc.plain:
        return None
    coef, const = flat_offsets(acc, sum_strides, live)
    kept = {n for n in acc.names if n in live and coef.get(n)}
    summed = {n for a in stmt.operands for n in a.names if n in live} - set(stmt.out.names)
    if {n for n in acc.names if n in live} - kept != summed or coef.get(t.vector) != 1 or t.parallel not in kept:
        return None
    return tuple(n for n in stmt.out.names if n in live and n not in acc.names), coef, const
