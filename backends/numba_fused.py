"""A pointwise layer's backward in one pass (`roles`, `generate`): the input's,
the weight's and the bias's gradients from one read of ``dy`` and of the input.

A layer whose output at each position reads only that position of its
operands (a 1x1 locally connected layer, ``y[n,o,h,w] += x[n,c,h,w] *
wt[o,c,h,w]``) is memory-bound, forward and backward.  Run apart, its two
gradient statements each read ``dy`` (W1: 104 MB moved, against the forward's
53); here one kernel reads it once (88 MB).  A tile is a run of positions,
the same in every array; for each image it sums ``dy * x`` into a scratch
(the weight's and the bias's gradients, summed over the images) and writes
the input's gradient, ``dy`` times the weight, from the rows of ``dy`` it
reads, in the same loop: each of its vectors a few lanes behind the loads,
so that its non-temporal stores start at a vector boundary and are whole
vector stores (`numba_simd.vstore_nt`).  Split 8-byte stores among the sums
once made one loop slower than two (W1's backward 5.5 ms with its data in
memory against 4.1); with whole vectors one loop is 3-9% faster than two
(2-core AVX-512 Xeon, medians).  Where a vector is half a cache line
(AVX2), a line's two vectors are stored one after the other.  On AMD, where
a load near a non-temporal store's page offset waits for it, the input
gradient keeps a loop of its own that reads a copy of ``dy``'s rows placed
away from that offset."""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from . import numba_tiling
from .numba_codegen import Kernel
from .numba_simd import L2_BYTES, LANES
from .numba_step import plus, whole_vectors
from .numba_tiling import flat_offsets as _coefs

__all__ = ["Roles", "pointwise", "roles", "bias_fits", "generate", "FUSED_L2_SHARE", "OUT"]

# A tile's share of the weight and its scratch of sums stay in L2 across the
# images, within 1 / FUSED_L2_SHARE of it: the longer each plane's run a tile
# (W1: 2 KB of a row of dy, x and dx at 512 positions, 32 KB at 8192), the
# better its rows stream from memory.  W1's backward, 2-core AVX-512 Xeon
# (2 MB L2), one-pass kernels alternated in one process, 31 rounds, two runs:
# 512 / 2048 / 4096 positions, its data in memory 4.16 / 3.87 / 3.63 and
# 4.13 / 3.92 / 3.71 ms, back to back 2.73 / 2.27 / 2.19 and 2.78 / 2.37 /
# 2.32 (AVX2 code: 4.50 / 4.46 / 4.41 and 4.34 / 4.16 / 4.23; 2.47 / 2.23 /
# 2.18 and 2.47 / 2.21 / 2.17); 4096 / 8192 (a sixth / a third of the L2), in
# memory 2.96 / 2.60 and 2.62 / 2.54, back to back 2.40 / 2.07 and 2.08 /
# 2.05 (AVX2 code: 3.20 / 2.55 and 3.30 / 2.63; 1.95 / 1.94 and 2.00 / 1.99).
FUSED_L2_SHARE = 3
# Where non-temporal stores stall loads (AMD: the input gradient's pass reads
# a copy of dy's rows, below) longer rows served better: W1's backward 4.65 /
# 5.24 / 5.35 ms at 512 positions a tile, 4.24 / 4.34 / 4.97 at 1024 (80 KB),
# paired, Zen 3.
FUSED_BYTES_AMD = 80 * 1024
AWAY = 512
PLACED = 1024
ONE_PASS = True       # False: every gradient statement runs on its own (for comparisons)
# On a CPU where a load waits for a non-temporal store in flight at its page
# offset (AMD, `numba_simd.NONTEMPORAL_STORES`), the input gradient's stores
# are non-temporal all the same when its pass loads nothing within AWAY bytes
# of that offset: it reads dy's rows from a copy made in the first pass, and
# the copy and the weight's panel start AWAY bytes past dx's offset.
# Where a vector is narrower than a cache line (AVX2), the input gradient's
# vectors of one line are stored one after another, each plane's (`generate`).
LINE_BYTES = 64
OUT = "@out"          # the output's key among the operands' (no operand is named so)


@dataclass(frozen=True)
class Roles:
    """How a pointwise statement's indices are used, and the tile."""

    x: str                               # the operand with the images' index (its gradient: dx)
    w: str                               # the other (the weight)
    positions: int                       # the indices every array reads, flattened: one contiguous run
    s: tuple[tuple[str, int], ...]       # in x and y only (the images): the weight gradient's sum, looped
    o: tuple[str, ...]                   # in y and the weight only: the input gradient's sum, unrolled
    c: tuple[str, ...]                   # in x and the weight only: the forward's sum, unrolled
    tile: int                            # positions a tile


def pointwise(plan) -> bool:
    """Whether `roles` can apply to ``plan`` for some strides: two
    operands, no padding, every index read by two arrays or three, some by
    all three (the positions), and each of those alone on its axes."""
    stmt = plan.stmt
    if not ONE_PASS or len(stmt.operands) != 2 or not stmt.out.plain or \
            any(p != (0, 0) for a in stmt.operands for p in plan.windows[a.name].pads):
        return False
    live = {n for n, r in plan.range.items() if r > 1}
    accs = (*stmt.operands, stmt.out)
    sets = [set(a.names) & live for a in accs]
    q = sets[0] & sets[1] & sets[2]
    return bool(q) and all(sum(n in s for s in sets) >= 2 for n in live) and \
        all(set(ax.names) & live == {n} for a in accs for ax in a.axes for n in q if n in ax.names)


def roles(plan, dtype: str, strides: dict, out_strides) -> Roles | None:
    """The roles of ``plan``'s indices, or None where the one-pass backward
    does not apply: not two operands, padding or a window, an index read
    by one array alone, the positions (indices all three read) not one
    contiguous run laid out alike in each, or too many sums to unroll."""
    stmt = plan.stmt
    if dtype not in LANES or not pointwise(plan):
        return None
    live = {n: r for n, r in plan.range.items() if r > 1}
    arrays = {a.name: _coefs(a, strides[a.name], live) for a in stmt.operands}
    arrays[OUT] = _coefs(stmt.out, out_strides, live)
    if any(const for _, const in arrays.values()):
        return None
    sets = {k: {n for n, c in coef.items() if c} for k, (coef, _) in arrays.items()}
    if any(sum(n in s for s in sets.values()) < 2 for n in live):
        return None
    a, b = (op.name for op in stmt.operands)
    q = sets[a] & sets[b] & sets[OUT]
    # the positions: the same coefficients in every array, and together one run with stride 1
    qc = {n: arrays[OUT][0][n] for n in q}
    if not q or any(arrays[k][0].get(n) != qc[n] for k in (a, b) for n in q):
        return None
    step = 1
    for n in sorted(q, key=qc.get):
        if qc[n] != step:
            return None
        step *= live[n]
    # each operand's indices shared with y alone are the other's gradient's sum: the longer is looped (x's)
    own = {k: math.prod(live[n] for n in (sets[k] - sets[j]) & sets[OUT]) for k, j in ((a, b), (b, a))}
    x, w = (a, b) if own[a] >= own[b] else (b, a)
    s = tuple((n, live[n]) for n in sorted((sets[x] & sets[OUT]) - q, key=lambda n: -arrays[OUT][0][n]))
    o = tuple(sorted((sets[w] & sets[OUT]) - q, key=lambda n: -arrays[OUT][0][n]))
    c = tuple(sorted((sets[x] & sets[w]) - q, key=lambda n: -arrays[x][0][n]))
    lanes = LANES[dtype]
    O, C = (math.prod(live[n] for n in g) for g in (o, c))
    if not s or O * C > numba_tiling.MAX_ACC or step % lanes:
        return None
    item = 4 if dtype == "float32" else 8
    per = (2 * O * C + O) * item          # a position's weight, its sums and the bias's
    budget = L2_BYTES // FUSED_L2_SHARE if numba_tiling.NONTEMPORAL else FUSED_BYTES_AMD
    tile = max(lanes, budget // per // lanes * lanes)
    least = _least_tiles()
    while step % tile or (step // tile < least and tile > lanes):
        tile -= lanes
    return Roles(x, w, step, s, o, c, tile)


def _least_tiles() -> int:
    """Tiles a pass is cut into at least: `numba_tiling.MIN_TILES`, and two
    a numba thread, so that tiles of a third of the L2 still keep every
    thread busy."""
    import numba
    return max(numba_tiling.MIN_TILES, 2 * numba.get_num_threads())


def bias_fits(plan, r: Roles, bias_strides, dy_strides) -> bool:
    """A bias's gradient with ``bias_strides`` (indexed like ``dy``, whose
    strides are ``dy_strides``) is one slot per position and per value of
    the indices only ``dy`` and the weight read: it varies with exactly
    those, its positions laid out as ``dy``'s."""
    live = {n: v for n, v in plan.range.items() if v > 1}
    coef, const = _coefs(plan.stmt.out, bias_strides, live)
    dy = _coefs(plan.stmt.out, dy_strides, live)[0]
    kept = {n for n, c in coef.items() if c}
    qs = {n for n in dy if n not in {m for m, _ in r.s} and n not in r.o}
    return not const and kept == qs | set(r.o) and all(coef[n] == dy[n] for n in qs)


def _placed(ref: str, item: int, dtype: str, buffers: dict, line: bool = False) -> list[str]:
    """Lines that make each buffer (name -> (elements, bytes)) start that
    many bytes past the page offset of the tile's first element of array
    ``ref`` (past that offset's line, with ``line``: the buffer then as
    aligned as a line)."""
    at = f"(a_{ref}.ctypes.data + {item} * q0) % 4096" + (f" // {LINE_BYTES} * {LINE_BYTES}" if line else "")
    lines = []
    for name, (n, past) in buffers.items():
        lines += [f"    {name}_ = np.empty({n + 4096 // item}, np.{dtype})",
                  f"    {name} = {name}_[(({at} + {past} - {name}_.ctypes.data) % 4096) // {item}:][:{n}]"]
    return lines


def generate(plan, r: Roles, strides: dict, grad_strides: dict, dtype: str, bias_strides=None) -> Kernel:
    """The kernel ``tiles(dx, dw[, db], dy, x, w, t)`` for roles ``r``:
    ``strides`` of the forward's operands and of ``dy`` (key `OUT`),
    ``grad_strides`` of the gradients written (keyed like the operands),
    ``bias_strides``: the bias's gradient, indexed like ``dy`` (0 along the
    images), or None for none."""
    stmt = plan.stmt
    live = {n: v for n, v in plan.range.items() if v > 1}
    ops = {a.name: a for a in stmt.operands}
    coef = {k: _coefs(ops[k], strides[k], live)[0] for k in (r.x, r.w)}
    coef[OUT] = _coefs(stmt.out, strides[OUT], live)[0]
    gcoef = {k: _coefs(ops[k], grad_strides[k], live)[0] for k in (r.x, r.w)}
    bcoef = _coefs(stmt.out, bias_strides, live)[0] if bias_strides is not None else None
    L, T = LANES[dtype], r.tile
    item = 4 if dtype == "float32" else 8
    os_ = [dict(zip(r.o, p)) for p in itertools.product(*(range(live[n]) for n in r.o))]
    cs_ = [dict(zip(r.c, p)) for p in itertools.product(*(range(live[n]) for n in r.c))]

    def off(cf, point):
        return sum(cf.get(n, 0) * v for n, v in point.items())
    big = math.prod(plan.shape[r.x]) * item >= numba_tiling.NONTEMPORAL_BYTES
    # where a load at a non-temporal store's page offset would wait for it (AMD): the input
    # gradient's pass reads its weight panel and a copy of dy's rows AWAY bytes and more off
    # that offset, which needs every plane of dx at one offset mod 1024 bytes
    away = big and not numba_tiling.NONTEMPORAL and numba_tiling.AWAY and \
        len({off(gcoef[r.x], p) * item % 1024 for p in cs_}) == 1
    nt = big and (numba_tiling.NONTEMPORAL or away)
    store = "vstore_nt" if nt else "vstore"
    # whole vector stores (`numba_step.whole_vectors`) where every plane of dx lies at one offset mod a
    # vector's bytes
    whole = nt and len({off(gcoef[r.x], p) % L for p in cs_}) == 1
    # ... and, where loads may meet the stores' page offset (not AMD), in the first loop
    merged = whole and not away
    # vectors narrower than a cache line (AVX2): the stores of a line's vectors one after another,
    # each plane's (W1's backward, its data in memory, 2 threads, AVX-512 Xeon running AVX2 code:
    # 3.98 / 3.43 / 3.55 -> 3.04 / 3.02 / 3.22 ms; back to back 2.53 -> 2.15; AVX-512: no change)
    span = max(1, LINE_BYTES // (L * item))
    span = span if merged and T % (span * L) == 0 else 1
    how = f" (non-temporal stores; its loads {AWAY} bytes and more off their page offset)" if away else \
        " (non-temporal stores)" if nt else ""

    pairs = [(i, j) for i in range(len(os_)) for j in range(len(cs_))]
    K = len(pairs) + (len(os_) if bcoef is not None else 0)
    # the merged pass (not AMD): the scratch's rows and the panel's one line apart mod 4096 bytes, from
    # PLACED bytes past x's page offset, so that no load of x, dy or dx shares its page offset with a
    # store to them in flight (4K aliasing: W1's one pass with the scratch at x's offset took 4.28 ms
    # back to back, 2.01 at 2048 bytes off it, 5.32 and 2.57 with its data in memory; AVX2 code)
    wp_at = PLACED + LINE_BYTES * K + 512      # the panel's rows after the scratch's, 512 bytes on
    placed = merged and wp_at + LINE_BYTES * len(pairs) <= 4096 - 2 * LINE_BYTES
    # else scratch rows one vector apart more than a tile: not all in one L1 set
    pitch = (-(-T * item // 4096) * 4096 + LINE_BYTES) // item if placed else T + L
    # away: the panel's and the copy's rows 1024 bytes apart mod 4096 (offsets AWAY + 1024 k off dx's)
    wpitch = (-(-T * item // 1024) + 1) * 1024 // item if away else pitch
    dx_n, dw_n = f"d{r.x}", f"d{r.w}"
    size = {k: math.prod(plan.shape[k]) for k in (r.x, r.w)}
    size[OUT] = math.prod(plan.out_shape)
    ty = f"numba.{dtype}"
    args = [f"p_{dx_n}", f"p_{dw_n}"] + (["p_db"] if bcoef is not None else []) + ["p_dy", f"p_{r.x}", f"p_{r.w}"]
    lines = [
        f"# generated by einlocal.backends.numba_fused for the gradients of",
        f"#   {stmt}  with {', '.join(f'{n}={v}' for n, v in plan.ranges)}",
        f"# one pass: {T} positions a tile, {', '.join(n for n, _ in r.s)} looped: {dw_n}"
        f"{' and the bias' if bcoef is not None else ''} summed in a scratch, "
        + (f"and {dx_n} in the same loop, from the rows of dy it reads (each vector a few lanes behind, "
           f"so its stores start at a vector boundary"
           f"{f'; a line of {span} vectors stored together' if span > 1 else ''})"
           if merged else f"then {dx_n} from the rows of dy just read")
        + f"{how}; prange over the tiles",
        "import numba",
        "import numpy as np",
        "from einlocal.backends.numba_drive import Tiled",
        "from einlocal.backends.numba_simd import vsplat, vload, vstore, vfma"
        + (", vstore_nt, sfence" if nt else "") + (", line_gap" if whole else ""),
        "",
        "",
        f"def tiles({', '.join(args)}, t_q):",
        f"    a_{dx_n} = numba.carray(p_{dx_n}, ({size[r.x]},), {ty})",
        f"    a_{dw_n} = numba.carray(p_{dw_n}, ({size[r.w]},), {ty})",
    ]
    if bcoef is not None:
        extent = 1 + sum((live[n] - 1) * c for n, c in bcoef.items())     # its elements, not dy's
        lines.append(f"    a_db = numba.carray(p_db, ({extent},), {ty})")
    lines += [
        f"    a_dy = numba.carray(p_dy, ({size[OUT]},), {ty})",
        f"    a_{r.x} = numba.carray(p_{r.x}, ({size[r.x]},), {ty})",
        f"    a_{r.w} = numba.carray(p_{r.w}, ({size[r.w]},), {ty})",
        f"    q0 = t_q * {T}",
        *(_placed(r.x, item, dtype, {"acc": (K * pitch, PLACED)}, line=True) if placed else
          [f"    acc = np.empty({K * pitch}, np.{dtype})"]),
        f"    z = vsplat({ty}(0), {L})",
        *([f"    one = vsplat({ty}(1), {L})"] if bcoef is not None else []),
        f"    for e in range(0, {T}, {L}):",
        *(f"        vstore(acc, e + {k * pitch}, z)" for k in range(K)),
        # the tile's weight, read again for every image: copied into a panel like the scratch
        # (its planes a power of two apart would share cache sets with x's, dy's and dx's)
        *(_placed(dx_n, item, dtype, {"wp": (len(pairs) * wpitch, AWAY), "dyb": (len(os_) * wpitch, AWAY)}) if away
          else _placed(r.x, item, dtype, {"wp": (len(pairs) * pitch, wp_at)}, line=True) if placed
          else [f"    wp = np.empty({len(pairs) * pitch}, np.{dtype})"]),
        f"    for e in range(0, {T}, {L}):",
        *(f"        vstore(wp, e + {k * wpitch}, vload(a_{r.w}, q0 + e + {off(coef[r.w], {**os_[i], **cs_[j]})}, {L}))"
          for k, (i, j) in enumerate(pairs)),
    ]
    ind = "    "
    for n, extent in r.s:
        lines.append(f"{ind}for i_{n} in range({extent}):")
        ind += "    "

    def base(cf):
        return " + ".join([f"{cf[n]}*i_{n}" for n, _ in r.s if cf.get(n)] + ["q0"])
    lines += [f"{ind}b_dy = {base(coef[OUT])}",
              f"{ind}b_x = {base(coef[r.x])}",
              f"{ind}b_dx = {base(gcoef[r.x])}"]
    if merged:
        lines += [f"{ind}h = line_gap(a_{dx_n}, b_dx, {L})   # lanes to the first vector boundary",
                  f"{ind}g = ({L} - h) % {L}   # {dx_n}'s vectors g lanes behind the loads: whole from h on"]
    lines += [f"{ind}# {dw_n}{' and the bias' if bcoef is not None else ''}: dy * {r.x} summed in the scratch"
              + (f"; {dx_n}: dy times {r.w}, summed over {', '.join(r.o) or '-'}" if merged else ""),
              f"{ind}for e in range(0, {T}, {L}):"]
    body = ind + "    "
    lines += [f"{body}r{i} = vload(a_dy, b_dy + e + {off(coef[OUT], p)}, {L})" for i, p in enumerate(os_)]
    lines += [f"{body}vstore(dyb, e + {i * wpitch}, r{i})" for i in range(len(os_)) if away]
    lines += [f"{body}x{j} = vload(a_{r.x}, b_x + e + {off(coef[r.x], p)}, {L})" for j, p in enumerate(cs_)]
    for k, (i, j) in enumerate(pairs):
        lines.append(f"{body}vstore(acc, e + {k * pitch}, vfma(r{i}, x{j}, vload(acc, e + {k * pitch}, {L})))")
    if bcoef is not None:
        for i in range(len(os_)):
            k = len(pairs) + i
            lines.append(f"{body}vstore(acc, e + {k * pitch}, vfma(r{i}, one, vload(acc, e + {k * pitch}, {L})))")

    def dx_vector(es, d: str, pad: str = "") -> list[str]:
        """dx's vectors at offsets ``es`` (names or ints; one or more), from
        dy's rows (named ``d0``, ``d1``, ... with ``d``; ``d0_1`` ... for the
        second vector): each plane's stores one after another."""
        es = es if isinstance(es, list) else [es]

        def at(e, k):
            return str(e + k) if isinstance(e, int) else plus(e, k)

        def dn(u, i):
            return f"{d}{i}" if len(es) == 1 else f"{d}{i}_{u}"
        out = [f"{body}{pad}{dn(u, i)} = vload(dyb, {at(e, i * wpitch)}, {L})" if away else
               f"{body}{pad}{dn(u, i)} = vload(a_dy, b_dy + {at(e, off(coef[OUT], p))}, {L})"
               for u, e in enumerate(es) for i, p in enumerate(os_)]
        for j, pc in enumerate(cs_):
            for u, e in enumerate(es):
                expr = "z"
                for i, po in enumerate(os_):
                    expr = f"vfma({dn(u, i)}, vload(wp, {at(e, pairs.index((i, j)) * wpitch)}, {L}), {expr})"
                out.append(f"{body}{pad}{store}(a_{dx_n}, b_dx + {at(e, off(gcoef[r.x], pc))}, {expr})")
        return out
    if merged:     # each vector g lanes behind (the first at 0, split), then the last, split; a line's
        fs, pad = ([f"f{u}" for u in range(span)], "    ") if span > 1 else (["f"], "")     # at its last vector
        if span > 1:
            lines.append(f"{body}if e % {span * L} == {(span - 1) * L}:")
        lines += [f"{body}{pad}{f} = max(e - {f'{(span - 1 - u) * L} - ' if u < span - 1 else ''}g, 0)"
                  for u, f in enumerate(fs)]
        lines += [*dx_vector(fs, "d", pad), f"{ind}if h:", *dx_vector(T - L, "d")]
    else:
        lines.append(f"{ind}# {dx_n}: dy times {r.w}, summed over {', '.join(r.o) or '-'}")
        if whole:
            whole_vectors(lambda x: lines.append(ind + x), "e", L, T, f"a_{dx_n}", "b_dx", index="e")
        else:
            lines.append(f"{ind}for e in range(0, {T}, {L}):")
        lines += dx_vector("e", "r")
    lines.append(f"    for e in range(0, {T}, {L}):")
    for k, (i, j) in enumerate(pairs):
        lines.append(f"        vstore(a_{dw_n}, q0 + e + {off(gcoef[r.w], {**os_[i], **cs_[j]})}, "
                     f"vload(acc, e + {k * pitch}, {L}))")
    if bcoef is not None:
        for i, p in enumerate(os_):
            k = len(pairs) + i
            lines.append(f"        vstore(a_db, q0 + e + {off(bcoef, p)}, vload(acc, e + {k * pitch}, {L}))")
    if nt:
        lines.append("    sfence()")
    lines += ["", "", f"kernel = Tiled(tiles, {r.positions // T}, {dtype!r})", ""]
    return Kernel("\n".join(lines), (r.x, r.w), tuple(n for n, _ in r.s), "positions", "positions", False)
