"""Write a packed register-tiled kernel whose vector runs across rows
(`Tiling.rows`): its lanes cover the flat position ``p = u*pitch + v``, for
output rows shorter than the vector (`numba_tiling.ROWS`).

For ``y[n,o,h,w] += x[n,c,h+i,w+j] * wt[o,c,i,j,h,w]`` with h, w < 26 and
x's rows 28 apart, 16 lanes cover x's positions ``p0 .. p0+15``, which lie
in two rows of y: lanes 0..9 in row h, 12..15 in row h+1 (10 and 11 are
past the row's end: computed, never stored).  x's loads are plain vectors at
``p0 + 28*i + j``; the weight's slice is gathered into the packed panel one
masked load per row (``vload_into``), and each sum stored one masked store
per row (``vstore_lanes``)::

    p0 = min(t_p * 16, end - 16)         # the parallel tiles: vectors of p
    u0 = p0 // 28
    c0 = p0 - u0 * 28                    # row u0 + s: its v at lane 0 is c_s,
    l0 = ...; h0 = ...                   #   its lanes l_s <= k < h_s
    for t_o in range(4):                 # the packed operand's own loops, then the panel
        ... vstore(pk, k, vload_into(a_wt, b_wt + 26*(u0+1) + c1, l1, h1, vload_lanes(...)))
        for t_n in range(17):            # the loops that share the panel
            ... s0 = vfma(vload(pk, ...), vload(a_x, b_x + 29, 16), s0) ...
            vstore_lanes(a_y, b_y + 26*u0 + c0, s0, l0, h0); vstore_lanes(..., l1, h1)

Where an array's rows follow each other (its row stride is ``pitch``, its
rows ``pitch`` long: W2's y and weight), the pieces are one span: one masked
load (``l0 <= lane < hm``) and one store, plain where every lane is in.

A parallel tile takes several vectors (`chunk`, spread evenly between the
tiles by `spread`; W2 with 8 lanes on 2 threads: 9 or 10 of them), each
with its own packed panel; for each block of
the shared loops their sums run one after another, so that the block's
slice of the streamed operand (x's rows for 3 images) comes from far once
for the tile, not once a vector.  Where the panels of every tile of the
packed operand's own loops fit in L2 (`OWN_INSIDE`), all are packed first
and the t_o loop above runs inside t_n and the vectors instead.

The last vector is moved back to end at the last output's position (its
lanes that the vector before covers are not stored), so no read leaves x and
x's loads are plain vectors: every lane lies between two positions the
statement reads.
Where x is read outside its bounds (padding, along rows and taps only), each
tap's lanes inside them are one integer mask, computed once a tile, and x's
reads are single masked loads (``vload_bits``); the packed operand must lie
within its bounds.  A vector whose masks are all full (most of W2's) runs a
copy of the summed loops with plain loads.
"""
from __future__ import annotations

import itertools
import math

from . import numba_tiling
from .numba_codegen import INIT, KERNEL_NAME, Kernel
from .numba_simd import L2_BYTES
from .numba_step import aligned_panel, carrays, key, linear, multiply_adds, next_block, panel, points, prefetch_lines, \
    tile_start, write_ahead, write_table
from .numba_tiling import Tiling, flat_offsets

__all__ = ["generate"]


def _sum(terms) -> str:
    """``a + b + ...`` of source terms (ints and names), '0' for none."""
    parts = [str(x) for x in terms if x not in (0, "")]
    return " + ".join(parts).replace("+ -", "- ") if parts else "0"


# Vectors a parallel tile (None: `chunk` picks).  The tile's vectors share
# the packed panel's loops, and for each block of the shared loops their
# sums run one vector after another, so that the block's slice of the other
# operand (W2: x's rows for 3 images) comes from far once for all of them,
# then from L1.  W2's forward, 2 threads, Zen 3, interleaved in one process:
# 1 vector a tile 6.6-7.5 ms, 4 4.8-5.3, 8 3.9-4.5, 12 3.9-4.5, 16 4.3.
CHUNK = None
CHUNK_PANELS_BYTES = 256 * 1024     # the tile's packed panels stay in L2
CHUNK_BALANCE = 0.9                 # vectors / (threads x the most vectors a thread runs)
# Where the panels for every tile of the packed operand's own loops fit in
# OWN_INSIDE_L2 of a core's L2, all are packed first and those loops run
# inside the shared ones: a block of the streamed operand (x's rows for 6
# images) then comes from far once for every own tile, not once each (W2's
# forward: 4 tiles of o, 885 KB of panels).  2-core AVX-512 Xeon, 2 MB L2,
# medians of 15 in one process, three runs: back to back 2.10 / 1.94 / 2.07
# -> 1.96 / 1.80 / 1.93 ms, after a 2048 matmul 2.92 / 2.85 / 2.94 -> 2.71 /
# 2.67 / 2.78.  They run inside the tile's vectors too, so that a vector's
# rows of that block are read again from L1: back to back 1.86 / 1.97 /
# 1.97 -> 1.77 / 1.91 / 1.90 ms (after a matmul within 1.5%; the weight
# gradient within 3%).  Zen 3's 512 KB keeps the other order.
OWN_INSIDE = True
OWN_INSIDE_L2 = 0.5


def chunk(V: int, pitch: int, T: int, panel_bytes: int, threads: int) -> int:
    """Vectors a tile, of ``T``: at most about three rows of positions
    (``3 * pitch / V``), panels within ``CHUNK_PANELS_BYTES``, two tiles a
    thread or more; the most of those that keeps the threads' shares of
    vectors within ``CHUNK_BALANCE`` of even (tiles are split evenly
    between the threads, and the vectors evenly between the tiles:
    `spread`)."""
    top = max(1, min(math.ceil(3 * pitch / V), CHUNK_PANELS_BYTES // max(1, panel_bytes), T // (2 * threads)))
    for k in range(top, 1, -1):
        tiles = math.ceil(T / k)
        if T / (threads * math.ceil(tiles / threads) * math.ceil(T / tiles)) >= CHUNK_BALANCE:
            return k
    return 1


def spread(T: int, K: int) -> tuple[str, str]:
    """Source for tile ``t_q``'s count of vectors and its first, of ``T``
    in tiles of at most ``K``: ``ceil(T / K)`` tiles whose sizes differ by
    one at most, so the threads' shares do too (W2's 46 vectors in 8 tiles:
    5 or 6 each, 23 a thread, where tiles of 6 and a last of 4 gave one
    thread 24 and the other 22; its weight gradient's 46 in 10 tiles: 23 and
    23, not 25 and 21)."""
    tiles = math.ceil(T / K)
    if tiles * K == T:
        return str(K), f"t_q * {K}"
    return f"(t_q + 1) * {T} // {tiles} - t_q * {T} // {tiles}", f"t_q * {T} // {tiles}"


def generate(plan, t: Tiling, strides: dict, out_strides, dtype: str, init_strides=None) -> Kernel | None:
    """The kernel's source, or None where ``init_strides`` (a bias) varies
    across a row but not along it (then the row's own vectors serve)."""
    stmt, out = plan.stmt, plan.stmt.out
    live = {n: r for n, r in plan.range.items() if r > 1}
    v, (u, pitch, V) = t.vector, t.rows
    R, U = live[v], live[u]
    P = next(a for a in stmt.operands if a.name == t.pack)
    Q = next(a for a in stmt.operands if a is not P)
    flat = {a.name: flat_offsets(a, strides[a.name], live) for a in stmt.operands}
    flat[out.name] = flat_offsets(out, out_strides, live)
    if init_strides is not None:
        flat[INIT] = flat_offsets(out, init_strides, live)
        icoef = flat[INIT][0]
        if flat[INIT][1] or icoef.get(v, 0) not in (0, 1) or (icoef.get(v, 0) == 0 and icoef.get(u, 0)):
            return None
    blocks = dict(t.blocks)
    members = points(blocks)
    taps = points({n: live[n] for n in t.taps})
    own = [n for n in t.outer[:t.vector_at] if n != u]
    shared = list(t.outer[t.vector_at:])
    end = (U - 1) * pitch + R                    # one past the last output's position
    segments = math.ceil((V - 1) / pitch) + 1    # rows a vector can span
    itemsize = 4 if dtype == "float32" else 8
    T = math.ceil(end / V)                       # vectors
    zero = f"numba.{dtype}(0)"
    # the next block's output lines, owned during this block's sums (numba_step.write_ahead)
    ahead_w = numba_tiling.WRITE_AHEAD and bool(t.loops) and bool(t.outer[t.vector_at:])

    def value(coef, point):
        return sum(coef.get(n, 0) * x for n, x in point.items())

    def base(name, known, extra=()):
        return _sum([linear(flat[name][0], known), *extra, flat[name][1]])

    def one_span(name):
        """Whether ``name``'s rows follow each other along the vector's lanes
        (its row stride the pitch, rows as long as it): a vector over two
        rows is then one span of memory, one load or store, not one a row."""
        c = flat[name][0]
        return segments > 1 and R == pitch and c.get(v) == 1 and c.get(u) == pitch

    def row_offset(name, s):
        """The element of array ``name`` at lane 0 of row u0 + s (before it, for a row starting later)."""
        return _sum([f"{flat[name][0].get(u, 0)}*(u0 + {s})" if flat[name][0].get(u) else "", f"c{s}"])

    def gathered(name, at, lanes_v):
        """A vector of ``name`` at offset ``at`` (lane 0, row u0), one masked load per row."""
        arr = f"a_{name}" if name != INIT else INIT
        if not lanes_v:          # does not vary along the vector: varies along nothing here (checked above)
            return f"vsplat(sload({arr}, {at}), {V})"
        if one_span(name):
            return f"vload_lanes({arr}, {at} + p0, {V}, l0, hm)".replace("+ -", "- ")
        x = f"vload_lanes({arr}, {at} + {row_offset(name, 0)}, {V}, l0, h0)"
        for s in range(1, segments):
            x = f"vload_into({arr}, {at} + {row_offset(name, s)}, l{s}, h{s}, {x})"
        return x.replace("+ -", "- ")

    bounds = [({n: a for n, a in ax.terms if n in live}, ax.const, plan.shape[Q.name][k])
              for k, ax in enumerate(Q.axes) if plan.windows[Q.name].pads[k] != (0, 0)]
    pkeys, pk_coef, size = panel(members, taps, P, t.loops, live, V)
    if CHUNK is None:
        import numba
        K = chunk(V, pitch, T, size * itemsize, numba.get_num_threads())   # vectors a tile
    else:
        K = max(1, min(CHUNK, T))

    arrays = [(f"a_{out.name}", plan.out_shape, out_strides)] + \
        [(f"a_{a.name}", plan.shape[a.name], strides[a.name]) for a in stmt.operands] + \
        ([(INIT, plan.out_shape, init_strides)] if init_strides is not None else [])
    lines = ["import numba", "import numpy as np", "from einlocal.backends.numba_drive import Tiled",
             "from einlocal.backends.numba_simd import vsplat, vload, vload_lanes, vload_into, vstore, vstore_lanes, "
             "sload, vfma" + (", vload_bits" if bounds else "") + (", prefetch" if t.ahead else "")
             + (", prefetchw" if ahead_w else ""), "", "",
             f"def tiles({', '.join(f'p_{k}' for k, _, _ in arrays)}, {'t_q' if K > 1 else 't_p'}):"]
    ind = 1

    def emit(text):
        lines.append("    " * ind + text)

    def loop(n, size):
        nonlocal ind
        emit(f"for t_{n} in range({math.ceil(live[n] / size)}):")
        ind += 1
        emit(tile_start(n, size, live[n]))

    # the packed operand's own tiles, and whether their panels are all packed first (OWN_INSIDE)
    own_tiles = {n: math.ceil(live[n] / blocks.get(n, 1)) for n in own}
    panels = math.prod(own_tiles.values())
    inside = OWN_INSIDE and panels > 1 and bool(shared) and \
        size * K * panels * itemsize <= OWN_INSIDE_L2 * L2_BYTES
    carrays(emit, arrays, dtype)
    aligned_panel(emit, size * K * (panels if inside else 1), V, dtype)
    if ahead_w:
        write_table(lines, [value(flat[out.name][0], m) for m in members])
    ends: list[str] = []
    # Q read outside its bounds (padding): per tap, the lanes inside, as bits of one mask
    masks: dict[tuple, str] = {}

    def vector_start():
        """The vector's first position p0 and, per row it spans, its lanes."""
        if bounds:
            emit(f"p0 = t_p * {V}")
        else:   # the last vector ends at the last position, its lanes before t_p * V (the tile before's) not stored
            emit(f"p0 = min(t_p * {V}, {end - V})")
            emit(f"q0 = t_p * {V} - p0")
        emit(f"u0 = p0 // {pitch}")
        emit(f"# row u0 + s: {v} = c_s + lane, its outputs in lanes l_s <= lane < h_s")
        for s in range(segments):
            emit(f"c{s} = p0 - (u0 + {s}) * {pitch}")
            emit(f"l{s} = min({V}, max({'0' if bounds else 'q0'}, -c{s}))")
            emit(f"h{s} = max(l{s}, min({V}, {R} - c{s})) if u0 + {s} < {U} else l{s}")
        if any(one_span(a) for a in flat):
            emit(f"hm = max({', '.join(f'h{s}' for s in range(segments))})   # rows one span: lanes l0 <= lane < hm")
        if ahead_w:         # the output a member writes: one span where its rows follow each other, else each row
            firsts = [f"{row_offset(out.name, s)} + l{s}" for s in range(segments)]
            lasts = [f"{row_offset(out.name, s)} + h{s} - 1" for s in range(segments)]
            if flat[out.name][0].get(u) == R:       # from the first row written to the last
                emit("w_lo = " + " else ".join(f"{firsts[s]} if h{s} > l{s}" for s in range(segments)) + " else 0")
                emit("w_hi = " + " else ".join(f"{lasts[s]} if h{s} > l{s}" for s in reversed(range(segments)))
                     + " else 0")
                ends[:] = ["w_lo", "w_hi"]
            else:
                ends[:] = [x for pair in zip(firsts, lasts) for x in pair]
        masks.clear()
        if bounds:
            for tap in taps:
                mask(tap)

    def each_vector():
        """Open the loop over the chunk's vectors (none for one vector a
        tile), then the vector's start."""
        nonlocal ind
        if K > 1:
            count, first = spread(T, K)
            emit(f"for k_p in range({count}):")
            ind += 1
            emit(f"t_p = {first} + k_p")
        vector_start()

    def mask(tap):
        """The name of the lanes a read of Q at ``tap`` may load (emitted once)."""
        point = tuple(sorted((n, x) for n, x in tap.items() if any(n in c for c, _, _ in bounds)))
        if point not in masks:
            name = masks[point] = f"m{len(masks)}"
            parts = []
            for s in range(segments):
                lo, hi, ok = [f"l{s}"], [f"h{s}"], []
                for coef, const, size in bounds:
                    at = _sum([f"{coef[u]}*(u0 + {s})" if coef.get(u) else "", const + value(coef, dict(point))])
                    if coef.get(v):     # along the row: a window of lanes
                        lo.append(f"-({at} + c{s})")
                        hi.append(f"{size} - ({at} + c{s})")
                    else:
                        ok.append(f"0 <= {at} < {size}")
                emit(f"{name}_{s}lo = max({', '.join(lo)})" if len(lo) > 1 else f"{name}_{s}lo = {lo[0]}")
                emit(f"{name}_{s}hi = min({', '.join(hi)})" if len(hi) > 1 else f"{name}_{s}hi = {hi[0]}")
                parts.append(f"((1 << {name}_{s}hi) - (1 << {name}_{s}lo) if "
                             + " and ".join([f"{name}_{s}hi > {name}_{s}lo", *ok]) + " else 0)")
            emit(f"{name} = {' | '.join(parts)}")
        return masks[point]
    if K == 1:
        vector_start()
    for n in own:
        loop(n, blocks.get(n, 1))
    stride, at = size * K, []
    for n in reversed(own if inside else ()):      # the own tile's panels, where all are kept
        at.append(f"{stride}*t_{n}")
        stride *= own_tiles[n]
    panel_at = _sum([*reversed(at), f"{size}*k_p" if K > 1 else ""])

    # the packed operand's slice for this vector, in the order the body reads it
    def sums(writes=False):     # the summed loops
        nonlocal ind
        for k, n in enumerate(t.loops):
            emit(f"for i_{n} in range({live[n]}):")
            ind += 1
            if writes and k == 0:
                write_ahead(emit, out.name, len(members), ends, n, live[n])

    # the summed loops outside the vectors: a plane of P (W2's weight: an (o, c, i, j)) is read for the
    # tile's next vector a step of the summed loops later (36 planes), not after all of them (576), so
    # its lines are still cached (W2's forward, paired in one process, 31 rounds, 2 threads, AVX-512
    # Xeon: 1.84 -> 1.72-1.79 ms)
    emit(f"# {P.name}'s slice for the tiles below, packed" + (f", one panel a vector of the {K}" if K > 1 else ""))
    sums()
    if K > 1:
        each_vector()
    known = set(own) | set(t.loops)
    emit(f"b_{P.name} = {base(P.name, known)}")
    emit(f"b_pk = {_sum([*(f'{c}*i_{n}' for n, c in pk_coef.items()), panel_at])}")
    firsts = {key(m, P): m for m in reversed(members)}
    for k, tap in enumerate(taps):
        for j, kk in enumerate(pkeys):
            at = _sum([f"b_{P.name}", value(flat[P.name][0], {**firsts[kk], **tap})])
            emit(f"vstore(pk, b_pk + {(k * len(pkeys) + j) * V}, {gathered(P.name, at, True)})")
    ind -= len(t.loops) + (K > 1)

    if inside:      # every own tile's panel packed: the own loops again, inside the shared ones and the vector's
        ind -= len(own)
    for n in shared:
        loop(n, blocks.get(n, 1))
    if K > 1:
        each_vector()
    for n in own if inside else ():
        loop(n, blocks.get(n, 1))
    known = set(own) | set(shared)
    if init_strides is not None:
        emit(f"b_{INIT} = {base(INIT, known)}")
        for k, m in enumerate(members):
            emit(f"s{k} = {gathered(INIT, _sum([f'b_{INIT}', value(icoef, m)]), icoef.get(v) == 1)}")
    else:
        for k in range(len(members)):
            emit(f"s{k} = vsplat({zero}, {V})")
    if ahead_w:
        next_block(emit, out.name, base(out.name, known), shared[-1], blocks.get(shared[-1], 1), live[shared[-1]])
    # the operand with fewer loads per tap keeps them in registers; the other streams
    n_loads = {a.name: len({key(m, a) for m in members}) for a in (P, Q)}
    res, stream = (P, Q) if n_loads[P.name] <= n_loads[Q.name] else (Q, P)

    def summed(masked: bool):
        """The summed loops, Q's reads masked (``vload_bits``) or plain."""
        nonlocal ind
        sums(ahead_w)
        emit(f"b_pk = {_sum([*(f'{c}*i_{n}' for n, c in pk_coef.items()), panel_at])}")
        emit(f"b_{Q.name} = {base(Q.name, known | set(t.loops), ['p0'])}")
        if t.ahead:     # its lines t.ahead steps of the last loop ahead, one prefetch a line or so
            at = {value(flat[Q.name][0], {**m, **tap}) + d for m in members for tap in taps for d in (0, V - 1)}
            prefetch_lines(emit, Q.name, at, itemsize, t.ahead * flat[Q.name][0][t.loops[-1]])
        count = itertools.count()
        cur = [f"s{k}" for k in range(len(members))]

        def read(acc, m, k):
            if acc is P:
                return f"vload(pk, b_pk + {(k * len(pkeys) + pkeys.index(key(m, P))) * V}, {V})"
            at = f"a_{Q.name}, b_{Q.name} + {value(flat[Q.name][0], {**m, **taps[k]})}"
            return f"vload_bits({at}, {V}, {mask(taps[k])})" if masked else f"vload({at}, {V})"
        for k, tap in enumerate(taps):
            if tap:
                emit("# " + ", ".join(f"{n}={x}" for n, x in tap.items()))
            multiply_adds(emit, members, key, res, stream, lambda acc, m: read(acc, m, k), cur, count)
        for k, name in enumerate(cur):
            if name != f"s{k}":
                emit(f"s{k} = {name}")
        ind -= len(t.loops)
    if bounds:      # a vector whose every tap lies inside Q (most of them) reads it with plain loads
        emit(f"if ({' & '.join(masks.values())}) == {(1 << V) - 1}:")
        ind += 1
        summed(False)
        ind -= 1
        emit("else:")
        ind += 1
        summed(True)
        ind -= 1
    else:
        summed(False)
    emit(f"b_{out.name} = {base(out.name, known)}")
    # each row's sums stored together: plain where the row takes every lane, masked where it takes
    # some (one test a row, not one a store: W2's forward 5.41/5.56 -> 4.85/5.18 ms, Zen 3)
    spans = [("p0", "l0", "hm")] if one_span(out.name) else [(row_offset(out.name, s), f"l{s}", f"h{s}")
                                                              for s in range(segments)]
    for start, lo, hi in spans:
        for test, whole in ((f"if {lo} == 0 and {hi} == {V}:", True), (f"elif {hi} > {lo}:", False)):
            emit(test)
            for k, m in enumerate(members):
                at = _sum([f"b_{out.name}", value(flat[out.name][0], m), start])
                emit((f"    vstore(a_{out.name}, {at}, s{k})" if whole else
                      f"    vstore_lanes(a_{out.name}, {at}, s{k}, {lo}, {hi})").replace("+ -", "- "))
    tiles = math.ceil(T / K)
    lines += ["", "", f"{KERNEL_NAME} = Tiled(tiles, {tiles}, {dtype!r})"]
    sizes = "-".join(map(str, sorted({T // tiles, math.ceil(T / tiles)})))
    order_note = (f"; panels for every tile of {', '.join(own)} packed first, looped inside {', '.join(shared)}"
                  if inside else "")
    header = (f"# generated by einlocal.backends.numba_rows for\n#   {plan}\n# {t.describe(Q.name)}"
              f"{f'; {out.name} written ahead a block' if ahead_w else ''}"
              f"{f'; {sizes} vectors a tile, one panel each' if K > 1 else ''}{order_note}\n")
    return Kernel(header + "\n".join(lines) + "\n", tuple(a.name for a in stmt.operands),
                  (u, *shared, *own, *t.loops) if inside else (u, *own, *shared, *t.loops), u, v, False)
