"""Source-writing pieces the register-tile writers share (``numba_tiles``,
``numba_rows``, ``numba_fused``): affine offsets, a tile's first index,
the arrays from their pointers, a tile's block members and taps, the packed
panel's layout (a streaming tile's too), the loop over vectors whose
non-temporal stores start at a vector boundary, the lines to prefetch (an
operand's ahead, the next block's outputs for a write), and one step of
the reduction (the loads of both operands and every accumulator's
multiply-add)."""
from __future__ import annotations

import itertools
import math
import re

__all__ = ["linear", "plus", "tile_start", "whole_vectors", "stream_panel", "carrays", "points", "key", "panel",
           "namer", "aligned_panel", "line_starts", "prefetch_lines", "next_block", "write_table", "write_ahead",
           "multiply_adds"]


def linear(coef: dict, variables) -> str:
    """The variable part of an affine expression, as source ('' for none)."""
    parts = [f"{c}*i_{n}" if c != 1 else f"i_{n}" for n, c in coef.items() if n in variables and c]
    return " + ".join(parts).replace("+ -", "- ")


def plus(expr: str, const: int) -> str:
    if not expr:
        return str(const)
    return expr if const == 0 else f"{expr} + {const}".replace("+ -", "- ")


def tile_start(n: str, size: int, total: int) -> str:
    """The first index of tile t_n of ``size`` over ``total`` (the last tile shifted back inside)."""
    if size == 1:
        return f"i_{n} = t_{n}"
    return f"i_{n} = t_{n} * {size}" if total % size == 0 else f"i_{n} = min(t_{n} * {size}, {total - size})"


def whole_vectors(emit, n: str, V: int, total: int, array: str, base: str, index: str = "") -> int:
    """Open (``emit``) the loop over the vectors along ``n`` (``total`` long,
    at least V) whose non-temporal stores go to ``array`` from element
    ``base`` along n: h lanes in lies a vector boundary, so the vectors from
    there store whole (`numba_simd.vstore_nt`), the first at 0 and the last
    at ``total - V`` split; those write lanes the others write too, with the
    same values.  ``index`` (``i_n`` by default) is the vector's first
    index.  Returns the indent it adds (1)."""
    emit(f"h = line_gap({array}, {base}, {V})   # lanes to the first vector boundary")
    emit(f"for t_{n} in range({math.ceil(total / V)} + (h > 0)):")
    emit(f"    {index or f'i_{n}'} = min(max(t_{n} * {V} + h - ({V} if h else 0), 0), {total - V})")
    return 1


def stream_panel(t, live: dict, blocks: dict, R: int, V: int, size: int) -> tuple[list, int, str]:
    """A streaming tile's panel (`numba_tiling.STREAM_PACK`): its loops (each
    ``(tile variable, count, first index line)``: the inner blocks, the
    rows, the vectors along v, R long), the distance between its rows (one a
    tap and distinct vector, all of v long, so a vector reads it at any
    position: `whole_vectors`), and the panel's offset for a position."""
    spread = [(f"t_{u}", math.ceil(live[u] / blocks.get(u, 1)), tile_start(u, blocks.get(u, 1), live[u]))
              for u in t.outer[2:]] + ([("r", t.chunk, f"i_{t.parallel} = i_{t.parallel}0 + r")] if t.chunk > 1
                                       else []) + [(f"t_{t.vector}", math.ceil(R / V), tile_start(t.vector, V, R))]
    radix = [math.prod(c for _, c, _ in spread[k + 1:]) for k in range(len(spread))]
    at = [f"{size * r}*{n}" for r, (n, _, _) in zip(radix, spread[:-1])] + [f"i_{t.vector}"]
    return spread, math.ceil(R / V) * V, " + ".join(at)


def carrays(emit, arrays, dtype: str) -> None:
    """Each array ``(name, shape, element strides)`` from its pointer ``p_name``,
    from its first element to its last."""
    for name, shape, st in arrays:
        extent = 1 + sum((n - 1) * abs(k) for n, k in zip(shape, st))
        emit(f"{name} = numba.carray(p_{name}, ({extent},), numba.{dtype})")


def points(sizes: dict) -> list[dict]:
    """Every assignment of the indices ``sizes`` names (index -> range), as dicts."""
    return [dict(zip(sizes, m)) for m in itertools.product(*(range(n) for n in sizes.values()))]


def key(m: dict, acc) -> tuple:
    """The part of block member ``m`` operand ``acc`` depends on (its distinct vectors)."""
    return tuple(sorted((u, m[u]) for u in m if u in acc.names))


def panel(members, taps, P, loops, live: dict, V: int) -> tuple[list, dict, int]:
    """The packed operand ``P``'s panel: its distinct vectors in a tile, each
    loop's coefficient in a panel offset (per step of the summed loops, per
    tap, per distinct vector), and the panel's size in elements."""
    pkeys = list(dict.fromkeys(key(m, P) for m in members))
    coef, size = {}, len(taps) * len(pkeys) * V
    for n in reversed(loops):
        coef[n], size = size, size * live[n]
    return pkeys, coef, size


def namer(emit, prefix: str):
    """``named(expr)``: a name for ``expr``, emitted once (``emit``) and reused."""
    names: dict[str, str] = {}

    def named(expr):
        if expr not in names:
            names[expr] = f"{prefix}{len(names)}"
            emit(f"{names[expr]} = {expr}")
        return names[expr]
    return named


def aligned_panel(emit, size: int, V: int, dtype: str) -> None:
    """``pk``: ``size`` elements of scratch, aligned to a vector."""
    itemsize = 4 if dtype == "float32" else 8
    emit(f"pk_ = np.empty({size + V}, np.{dtype})")
    emit(f"pk = pk_[(-(pk_.ctypes.data // {itemsize})) % {V}:][:{size}]")


def line_starts(points, itemsize: int) -> list[int]:
    """Element offsets, one per cache line or so (a base's alignment is unknown)."""
    kept: list[int] = []
    for x in sorted(points):
        if not kept or x - kept[-1] >= 64 // itemsize:
            kept.append(x)
    return kept


def prefetch_lines(emit, name: str, offsets, itemsize: int, step: int) -> None:
    """Prefetch ``a_<name>`` at ``b_<name>`` plus ``step`` plus each of
    ``offsets``, one a cache line or so."""
    for x in line_starts(offsets, itemsize):
        emit(f"prefetch(a_{name}, b_{name} + {x + step})")


def next_block(emit, out: str, base: str, n: str, size: int, total: int) -> None:
    """``bn_<out>``: the output's base ``base`` at block loop ``t_n``'s next
    tile; past the last, the last again where ``tile_start`` clamps, else a
    block past the end (only ever prefetched: harmless)."""
    emit(tile_start(n, size, total).replace(f"t_{n}", f"(t_{n} + 1)").replace(f"i_{n} =", f"j_{n} =", 1))
    emit(f"bn_{out} = " + re.sub(rf"\bi_{n}\b", f"j_{n}", base))


def write_table(lines: list, offsets: list[int]) -> None:
    """``PW``: the block members' output offsets (``write_ahead``), a module
    constant put before the kernel's function in ``lines``.  An array, which
    numba bakes into the code and indexes with a load: a tuple indexed by the
    loop variable became a jump table inside the summed loop, whose registers
    then spilled (W2's weight gradient: 7.60 / 9.27 -> 6.25 / 8.11 ms, Zen 3)."""
    at = next(k for k, line in enumerate(lines) if line.startswith(("def ", "@")))
    lines[at:at] = [f"PW = np.array(({', '.join(map(str, offsets))},), np.int64)", "", ""]
    if "import numpy as np" not in lines:
        lines.insert(1, "import numpy as np")


def write_ahead(emit, out: str, members: int, ends: list[str], step: str, steps: int) -> None:
    """Inside a step of summed loop ``i_step`` (``steps`` of them): ask for
    the lines the next block of outputs will be stored to, owned
    (``prefetchw``), a few members a step, so that they arrive while this
    block's sums run and its stores do not wait for each line's
    read-for-ownership.  Member k's lines: ``bn_<out> + PW[k]`` plus each
    of ``ends`` (a hint: it never faults, so a base past the end is harmless)."""
    per = math.ceil(members / steps)
    for j in range(per):
        k = f"{per}*i_{step} + {j}" if per > 1 else f"i_{step}"
        pad = ""
        if per * steps > members:
            emit(f"if {k} < {members}:")
            pad = "    "
        for e in ends:
            emit(f"{pad}prefetchw(a_{out}, bn_{out} + PW[{k}]{' + ' + e if e != '0' else ''})")


def multiply_adds(emit, members, key, res, stream, read, cur: list, count, loaded=None) -> None:
    """For block members ``members``: each distinct vector of operand ``res``
    (``key(m, res)``) loaded once into a register, then each of ``stream``
    loaded as it is first used and multiplied into every accumulator that
    uses it.  ``read(acc, m)`` is a load's source, ``cur`` the accumulators'
    current names (renamed here: numba's SSA pass is slow on names assigned
    many times), ``count`` the name counter; ``loaded(acc, m, name)`` sees
    every load."""
    regs = {}
    for m in members:
        if key(m, res) not in regs:
            regs[key(m, res)] = f"r{next(count)}"
            emit(f"{regs[key(m, res)]} = {read(res, m)}")
            if loaded:
                loaded(res, m, regs[key(m, res)])
    done = set()
    for m in members:
        if key(m, stream) in done:
            continue
        done.add(key(m, stream))
        q = f"q{next(count)}"
        emit(f"{q} = {read(stream, m)}")
        if loaded:
            loaded(stream, m, q)
        for k, m2 in enumerate(members):
            if key(m2, stream) == key(m, stream):
                new = f"s{k}_{next(count)}"
                emit(f"{new} = vfma({regs[key(m2, res)]}, {q}, {cur[k]})")
                cur[k] = new
