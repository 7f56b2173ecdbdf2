"""Generate register-tiled SIMD loop nests for numba from a bound plan with a
plain output: a tile of outputs is held in vector registers through the
whole reduction and stored once (``numba_simd`` spells the vectors).

For ``y[n,o,h,w] += x[n,c,h+i,w+j] * wt[o,c,i,j,h,w]`` (float32, AVX2)::

    for t_h in numba.prange(26):              # the parallel index (numba_drive: a tile a call)
      for t_n in range(34):                   # a block of 3 n (the last overlaps: '=' writes) ...
        for t_o in range(4):                  # ... by 4 o: 12 accumulators
          for t_w in range(4):                # the vector index, 8 lanes: i_w = min(t_w * 8, 18)
            s0 = vsplat(0, 8) ... s11
            for i_c in range(16):             # reduction loops; one base offset per operand
              r0 = vload(a_x, b_x + 0, 8)     # taps i, j unrolled: constant offsets
              s0 = vfma(r0, vload(a_wt, b_wt + 6084, 8), s0) ...
            vstore(a_y, b_y + 0, s0) ...

Two forms: ``map``, the vector along the output's unit-stride index (edge
tiles shifted back to overlap: every output is a complete sum, written with
'='); ``reduce``, where that axis is short and a summed index long (a
depthwise weight's gradient): the vector runs along the sum, each
accumulator summed across its lanes at the end.  An operand's slice shared
by the loops inside is packed into a panel (`numba_tiling.PACK`), one a
vector, and the vectors run inside those loops (``VECTORS_INSIDE``).
Blocks (output indices unrolled into the tile) maximise multiply-adds per
load within the register file; taps are unrolled, so every load is a base
plus a constant.  Reads outside an operand (``pad=0``) load only the lanes
inside it; an edge tile skips a tap whose reads all lie outside.  Strides
are baked into the source: a kernel is generated per layout.
"""
from __future__ import annotations

import dataclasses
import itertools
import math

from . import numba_rows, numba_tiling
from .numba_codegen import INIT, KERNEL_NAME, Kernel
from .numba_step import aligned_panel, carrays, key, linear as _linear, multiply_adds, namer, next_block, panel, \
    plus as _plus, points, prefetch_lines, stream_panel, tile_start, whole_vectors, write_ahead, write_table
from .numba_tiling import Tiling, flat_offsets as _flat, sum_slots, tiling

__all__ = ["Tiling", "tiling", "sum_slots", "generate"]

SUM = "sum_"    # the optional last argument of a kernel that also sums an operand (`sum_slots`)
# A packed tile's vectors inside the loops that share the panels, one panel each (W2's input gradient,
# 2 threads, Zen 3: 8.2-8.8 -> 6.5-7.2 ms); within numba_rows.CHUNK_PANELS_BYTES of panels.
VECTORS_INSIDE = True


def generate(plan, t: Tiling, strides: dict, out_strides, dtype: str, init_strides=None, sum_of=None) -> Kernel:
    """The tiled kernel's source for ``plan`` under tiling ``t``.  ``init_strides``:
    the kernel takes one more array (last), indexed like the output with these
    strides (0 or 1 along the vector), that the sums start from instead of zero
    (a bias, broadcast).  ``sum_of``: (operand, strides) where `sum_slots`
    allows: one more array (last) into which the kernel writes that operand
    summed over the statement's sums, from the loads it makes anyway."""
    if t.rows is not None:      # lanes across rows: its own writer
        k = numba_rows.generate(plan, t, strides, out_strides, dtype, init_strides) if sum_of is None else None
        if k is not None:
            return k
        t = dataclasses.replace(t, rows=None)
    stmt, out = plan.stmt, plan.stmt.out
    live = {n: r for n, r in plan.range.items() if r > 1}
    V, v = t.lanes, t.vector
    # memory-bound: the output, written once, with non-temporal stores (no read-for-ownership)
    nt = t.streaming and t.form == "map" and numba_tiling.NONTEMPORAL and \
        math.prod(plan.out_shape) * (4 if dtype == "float32" else 8) >= numba_tiling.NONTEMPORAL_BYTES
    store = "vstore_nt" if nt else "vstore"
    # the next block's output lines, owned during this block's sums (numba_step.write_ahead)
    ahead_w = numba_tiling.WRITE_AHEAD and t.form == "map" and not (nt or t.sums_outside) and t.chunk == 1 \
        and bool(t.loops)
    blocks = dict(t.blocks)
    flat = {a.name: _flat(a, strides[a.name], live) for a in stmt.operands}
    flat[out.name] = _flat(out, out_strides, live)
    members = points(blocks)
    tap_values = points({n: live[n] for n in t.taps})
    variables = set(t.outer) | set(t.loops) | set(t.sums_outside) | {v}
    zero = f"numba.{dtype}(0)"
    R = live[v]
    # the summed operand's loads, one slot per distinct vector of it in a tile (with the output
    # indices it lacks at their first value, so each is counted once)
    sums = sum_slots(plan, t, sum_of[0], sum_of[1]) if sum_of is not None else None
    if sum_of is not None and sums is None:
        raise ValueError(f"this kernel of {plan} cannot also sum {sum_of[0]} (see sum_slots)")
    S = next((a for a in stmt.operands if a.name == sum_of[0]), None) if sums else None
    slots = {}
    for m in members if sums else ():
        slots.setdefault(tuple(sorted((u, m[u]) for u in m if u in S.names)), m)
    tail = t.form == "reduce" and R % V != 0
    itemsize = 4 if dtype == "float32" else 8

    # the packed operand's panel: per step of the summed loops, per tap, per distinct vector of a tile
    # (`V` apart); a streaming tile's (`stream_panel`) holds that per step of its inner blocks and rows
    P = next((a for a in stmt.operands if a.name == t.pack), None)
    pkeys, pk_coef, panel_size = panel(members, tap_values, P, t.loops, live, V) if P else ([], {}, 0)
    spread, pv, stream_pk = stream_panel(t, live, blocks, R, V, panel_size) if t.streaming else ([], V, "")

    # the axes a read can leave (pad=0): each with its coefficients, constant and size
    def axis(ax):
        return {n: a for n, a in ax.terms if n in live}, ax.const
    bounded = {a.name: [(k, *axis(ax), plan.shape[a.name][k]) for k, ax in enumerate(a.axes)
                        if plan.windows[a.name].pads[k] != (0, 0)] for a in stmt.operands}

    def value(coef, const, point):
        return const + sum(coef.get(n, 0) * x for n, x in point.items())

    def interior() -> tuple[str, str]:
        """The tests that every read of this tile is in bounds (then plain
        loads), and that every read is in bounds along the axes other than
        the vector's (then only the lanes past an edge are masked)."""
        conds, rows = [], []
        for a in stmt.operands:
            for _, coef, const, size in (bounded[a.name] if a.name != t.pack else ()):
                vals = [value(coef, const, {**m, **tp}) for m in members for tp in tap_values]
                lo, hi = min(vals), max(vals) + (V - 1 if v in coef else 0)
                lin = _linear(coef, variables) or "0"
                test = [f"{lin} >= {-lo}", f"{lin} <= {size - 1 - hi}"]
                conds += test
                rows += test if v not in coef else []
        if tail:
            conds.append(f"i_{v} <= {R - V}")
        return " and ".join(conds), " and ".join(rows)

    def load(acc, point, edge, named, known):
        """Source of one vector (or broadcast scalar) of ``acc`` at ``point``
        (block member and tap values); at an edge (``edge`` true), only the
        lanes inside the array are loaded, and with ``edge == "lanes"`` only
        the vector's axis is tested (``named`` names each bound once)."""
        coef, const = flat[acc.name]
        off = value(coef, const, point) - const
        at = f"a_{acc.name}, b_{acc.name} + {off}".replace("+ -", "- ")
        oks = []
        lanes_lo, lanes_hi = "0", str(V)
        tests = [b for b in bounded[acc.name] if edge is True or (edge and v in b[1])]
        edge = edge and (bool(tests) or tail)
        for k, acoef, aconst, size in tests:
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

    args = ", ".join([f"a_{a.name}" for a in (out, *stmt.operands)] + ([INIT] if init_strides is not None else [])
                     + ([SUM] if sums else []))
    if init_strides is not None:
        icoef, iconst = _flat(out, init_strides, live)
        if icoef.get(v, 0) not in (0, 1) or iconst:
            raise ValueError(f"init strides {tuple(init_strides)} step {icoef.get(v)} along the vector index {v}")
    lines = ["import numba", *(["import numpy as np"] if t.sums_outside or t.pack else []),
             *(["from einlocal.backends.numba_drive import Tiled"] if t.parallel is not None else []),
             "from einlocal.backends.numba_simd import vsplat, vload, vload_lanes, vstore, sload, sstore, vfma, vsum"
             + (", vstore_nt, sfence, line_gap" if nt else "") + (", prefetch" if t.ahead else "")
             + (", prefetchw" if ahead_w else ""),
             "", ""]
    ind = 1

    def emit(text):
        lines.append("    " * ind + text)

    def count(n, size):
        return math.ceil(live[n] / size)

    def start(n, size):
        return tile_start(n, size, live[n])

    # The nest for one parallel tile is a function of its own, compiled alone and called by numba_drive's
    # shared parallel loop (numba's parallel passes are slow on a large loop body, and a prange loop calling
    # the tiles would compile them a second time).
    order = list(t.outer)
    inside = VECTORS_INSIDE and P is not None and not (t.streaming or t.sums_outside) and t.chunk == 1 and \
        t.vector_at is not None and t.vector_at < len(t.outer) and \
        1 < count(v, V) <= numba_rows.CHUNK_PANELS_BYTES // panel_size // itemsize
    pk_at = f" + {panel_size}*t_{v}" if inside else ""
    if t.form == "map":
        order.insert(len(order) if t.vector_at is None or inside else t.vector_at, v)
    loops = [(n, V if n == v else blocks.get(n, 1)) for n in order]
    if t.parallel is not None:
        p, psize = loops.pop(0)
        arrays = [(f"a_{out.name}", plan.out_shape, out_strides)] + \
            [(f"a_{a.name}", plan.shape[a.name], strides[a.name]) for a in stmt.operands] + \
            ([(INIT, plan.out_shape, init_strides)] if init_strides is not None else []) + \
            ([(SUM, plan.shape[S.name], sum_of[1])] if sums else [])
        lines += [f"def tiles({', '.join(f'p_{k}' for k, _, _ in arrays)}, t_{p}):"]
        carrays(emit, arrays, dtype)
        emit(start(p, psize) if t.chunk == 1 and not t.sums_outside else f"i_{p}0 = t_{p} * {t.chunk}")
        if t.pack:
            aligned_panel(emit, panel_size * (math.prod(c for _, c, _ in spread) if t.streaming
                                              else count(v, V) if inside else 1), V, dtype)
    else:
        lines += ["@numba.njit(cache=True, boundscheck=False)", f"def {KERNEL_NAME}({args}):"]
    out_coef, out_const = flat[out.name]
    out_base = f"b_{out.name} = " + _plus(_linear(out_coef, set(t.outer) | ({v} if t.form == 'map' else set())),
                                          out_const)
    # the vector's loop the tile's innermost, every member's output at one offset mod a vector: `whole_vectors`
    whole = nt and not (t.sums_outside or sums) and loops[-1:] == [(v, V)] and out_coef.get(v) == 1 and R >= V and \
        len({value(out_coef, 0, m) % V for m in members}) == 1
    if ahead_w:
        write_table(lines, [value(out_coef, 0, m) for m in members])
    if t.sums_outside:
        # scratch[r, k, v]: row r of the parallel chunk, block member k (then the sum's slots), along the vector
        M = len(members)
        W = M + len(slots)
        emit(f"acc = np.empty({t.chunk * W * R}, np.{dtype})")

        def chunk_rows():
            nonlocal ind
            emit(f"for r in range({t.chunk}):")
            ind += 1
            emit(f"i_{p} = i_{p}0 + r")
            emit(f"for t_{v} in range({count(v, V)}):")
            ind += 1
            emit(start(v, V))
            emit(f"b_acc = {W * R}*r + i_{v}")

    def pack_panel(every=False):
        """This tile's slice of the packed operand, copied into the panel in the order the body reads it
        (reads outside the operand: zeros); ``every``: each vector's, one panel each; a streaming tile's
        whole slice, its positions looped here."""
        nonlocal ind
        emit(f"# {P.name}'s slice for the tiles below, packed")
        heads = [(f"for {n} in range({c}):", first) for n, c, first in spread] if t.streaming else \
            [(f"for t_{v} in range({count(v, V)}):", start(v, V))] * every + \
            [(f"for i_{n} in range({live[n]}):", None) for n in t.loops]
        for head, first in heads:
            emit(head)
            ind += 1
            if first:
                emit(first)
        known = set(order) | {v} if t.streaming else set(order[:order.index(v) + 1]) | set(t.loops)
        coef, const = flat[P.name]
        emit(f"b_{P.name} = {_plus(_linear(coef, known), const)}")
        emit(f"b_pk = {stream_pk or _plus(_linear(pk_coef, known), 0)}{pk_at}")
        named = namer(emit, "p")
        firsts = {key(m, P): m for m in reversed(members)}
        for k, tap in enumerate(tap_values):
            for j, kk in enumerate(pkeys):
                src = load(P, {**firsts[kk], **tap}, bool(bounded[P.name]), named, known)
                emit(f"vstore(pk, b_pk + {(k * len(pkeys) + j) * pv}, {src})")
        ind -= len(heads)

    def prefetch_ahead():
        """The other operand's lines ``t.ahead`` steps of the last summed loop ahead."""
        Q = next(a for a in stmt.operands if a is not P)
        coef = flat[Q.name][0]
        at = {value(coef, 0, {**m, **tap}) + d for m in members for tap in tap_values
              for d in ((0, V - 1) if v in Q.names else (0,))}
        prefetch_lines(emit, Q.name, at, itemsize, t.ahead * coef[t.loops[-1]])

    for n, size in loops:
        if t.streaming and t.pack and n == t.outer[1]:
            pack_panel()
        if inside and n == t.outer[t.vector_at]:     # every vector's panel, before the loops sharing them
            pack_panel(every=True)
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
        if n == v and whole:
            ind += whole_vectors(emit, v, V, R, f"a_{out.name}", _plus(_linear(out_coef, set(t.outer)), out_const))
            continue
        emit(f"for t_{n} in range({count(n, size)}):")
        ind += 1
        emit(start(n, size))
        if n == v and t.pack and not t.streaming and not inside:
            pack_panel()

    def start_sums():
        if init_strides is not None and t.form == "map":
            emit(f"b_{INIT} = {_plus(_linear(icoef, set(t.outer) | {v}), 0)}")
            for k, m in enumerate(members):
                at = f"{INIT}, b_{INIT} + {value(icoef, 0, m)}"
                emit(f"s{k} = " + (f"vload({at}, {V})" if icoef.get(v) == 1 else f"vsplat(sload({at}), {V})"))
        else:
            for k in range(len(members)):
                emit(f"s{k} = vsplat({zero}, {V})")

    if sums:        # tiles of the output indices it lacks past their first value add nothing
        first = " and ".join(f"i_{e} == 0" for e in sums[0] if e in t.outer)
        emit(f"w_sum = vsplat(numba.{dtype}(1) if {first} else {zero}, {V})" if first
             else f"w_sum = vsplat(numba.{dtype}(1), {V})")
    if t.sums_outside:      # the first step starts the sums, the others go on from the scratch
        emit("if " + " and ".join(f"i_{s_} == 0" for s_ in t.sums_outside) + ":")
        ind += 1
        start_sums()
        for j in range(len(slots)):
            emit(f"u{j} = vsplat({zero}, {V})")
        ind -= 1
        emit("else:")
        ind += 1
        for k in range(W):
            emit(f"{'s' if k < M else 'u'}{k if k < M else k - M} = vload(acc, b_acc + {k * R}, {V})")
        ind -= 1
    else:
        start_sums()
    if ahead_w:
        next_block(emit, out.name, out_base.split(" = ", 1)[1], *loops[-1], live[loops[-1][0]])

    # the operand with fewer loads per tap keeps them in registers; the other streams
    A, B = stmt.operands
    n_loads = {a.name: len({key(m, a) for m in members}) for a in (A, B)}
    res, stream = (A, B) if n_loads[A.name] <= n_loads[B.name] else (B, A)

    def body(edge):
        """One step of the reduction: every tap's loads and multiply-adds,
        the taps unrolled (looped at an edge: few tiles, long bound tests).
        Each value has its own name (numba's SSA pass is slow on names
        assigned many times); the accumulators are renamed back at the end."""
        nonlocal ind
        count = itertools.count()
        named = namer(emit, "e")
        looped = edge is True and bool(t.taps)
        if looped:
            for n in t.taps:
                emit(f"for i_{n} in range({live[n]}):")
                ind += 1
        known = variables | set(t.taps) if looped else variables
        inside = dict.fromkeys(f"0 <= {_plus(_linear(c, known), k)} < {size}" for a in stmt.operands for _, c, k,
                               size in bounded[a.name] if v not in c and not set(c) & set(blocks)) if looped else {}
        if inside:      # a tap whose reads of an operand all lie outside it adds only zeros: skipped
            emit(f"if not ({' and '.join(inside)}):\n{'    ' * (ind + 1)}continue")
        for acc in (res, stream):
            coef, const = flat[acc.name]
            emit(f"b_pk = {stream_pk or _plus(_linear(pk_coef, known), 0)}{pk_at}" if acc is P
                 else f"b_{acc.name} = {_plus(_linear(coef, known), const)}")
        if t.ahead and edge is not True:
            prefetch_ahead()

        def read(acc, m, tap):
            if acc is not P:
                return load(acc, {**m, **tap}, edge, named, known)
            at = pkeys.index(key(m, P)) * pv
            if looped:      # the tap's place from the loop variables
                radix = [math.prod(live[u] for u in t.taps[k + 1:]) for k in range(len(t.taps))]
                place = _linear(dict(zip(t.taps, radix)), t.taps)
                return f"vload(pk, b_pk + ({place}) * {len(pkeys) * pv} + {at}, {V})"
            return f"vload(pk, b_pk + {tap_values.index(tap) * len(pkeys) * pv + at}, {V})"
        cur = [f"s{k}" for k in range(len(members))]
        cur_u = [f"u{j}" for j in range(len(slots))]

        def add_to_sum(m, vec):     # a vector of the summed operand, loaded: into its slot
            if sums:
                j = list(slots).index(key(m, S))
                old, cur_u[j] = cur_u[j], f"u{j}_{next(count)}"
                emit(f"{cur_u[j]} = vfma({vec}, w_sum, {old})")
        for tap in ([{}] if looped else tap_values):
            if tap:
                emit("# " + ", ".join(f"{n}={x}" for n, x in tap.items()))
            multiply_adds(emit, members, key, res, stream, lambda acc, m: read(acc, m, tap), cur, count,
                          lambda acc, m, name: add_to_sum(m, name) if acc is S else None)
        for k, name in enumerate(cur):
            if name != f"s{k}":
                emit(f"s{k} = {name}")
        for j, name in enumerate(cur_u):
            if name != f"u{j}":
                emit(f"u{j} = {name}")
        if looped:
            ind -= len(t.taps)

    def tile_body():
        """The body for tiles that read inside every operand, and for edge
        tiles.  Reads past an edge along the vector (padding along a row) in
        a tile that loops over a sum mask those lanes, taps unrolled; the
        looped edge body is left to tiles past another axis's edge (W2's
        input gradient 7.9 -> 5.6 ms on one core; without a loop, a
        depthwise layer's unrolled masked body ran 3-10% slower)."""
        cond, rows = interior()
        if not cond:
            body(False)
            return
        nonlocal ind
        lanes = t.form == "map" and rows != cond and bool(t.loops)
        # every read inside: plain loads (W3b's input gradient 0.70x, paired); else masked lanes, else each tap tested
        last = "lanes" if lanes and not rows else True
        cases = [(cond, False), *([(rows, "lanes")] if lanes and rows else []), (None, last)]
        for k, (test, kind) in enumerate(cases):
            emit("else:" if test is None else f"{'el' if k else ''}if {test}:")
            ind += 1
            body(kind)
            ind -= 1

    for n in t.loops:
        emit(f"for i_{n} in range(0, {R}, {V}):" if n == v else f"for i_{n} in range({live[n]}):")
        ind += 1
        if ahead_w and n == t.loops[0]:
            write_ahead(emit, out.name, len(members), ["0", str((V - 1) * out_coef.get(v, 1))], n, live[n])
    tile_body()
    ind -= len(t.loops)

    if t.sums_outside:
        for k in range(W):
            emit(f"vstore(acc, b_acc + {k * R}, {'s' if k < M else 'u'}{k if k < M else k - M})")
        ind -= 2 + len(t.sums_outside)      # out of the chunk's rows, its vector and the sums
        chunk_rows()                        # the finished sums, from the scratch to the output
        emit(out_base)
        for k, m in enumerate(members):
            emit(f"{store}(a_{out.name}, b_{out.name} + {value(out_coef, 0, m)}, vload(acc, b_acc + {k * R}, {V}))")
        if sums:
            emit(f"if {first}:" if first else "if True:")
            ind += 1
            emit(f"b_sum = {_plus(_linear(sums[1], set(t.outer) | {v}), sums[2])}")
            for j, m in enumerate(slots.values()):
                emit(f"vstore({SUM}, b_sum + {value(sums[1], 0, m)}, vload(acc, b_acc + {(M + j) * R}, {V}))")
            ind -= 1
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
        lines.append("    sfence()")
    if t.parallel is not None:
        tiles_count = live[p] // t.chunk if t.chunk > 1 or t.sums_outside else count(p, psize)
        lines += ["", "", f"{KERNEL_NAME} = Tiled(tiles, {tiles_count}, {dtype!r})"]
    if t.vector_at is None:     # the vector's tile loop (map form) innermost, any sums outside it before it
        order = [*t.outer, *t.sums_outside, *((v,) if t.form == "map" else ())]
    order = (*order, *t.loops)
    header = (f"# generated by einlocal.backends.numba_tiles for\n#   {plan}\n"
              f"# {t.describe(next(a.name for a in stmt.operands if a is not P) if P else None)}"
              f"{f'; {out.name} written ahead a block' if ahead_w else ''}"
              f"{f'; {count(v, V)} vectors inside, one panel each' if inside else ''}\n")
    return Kernel(header + "\n".join(lines) + "\n", tuple(a.name for a in stmt.operands), order, t.parallel, v,
                  False)
