"""Generate the Python source of a numba loop nest from a bound statement
(a ``Plan``): plan -> ``Kernel`` (source text, loop order, parallel index).

The nest for ``y[n,o,h,w] += x[n,c,h+i,w+j] * wt[o,c,i,j,h,w]``::

    for n in prange(N):                 # an index no two iterations share a write on
      for o, h:                          # the other output indices
        y[n,o,h,:] = 0                   # the block the inner loop writes, zeroed in cache
        for c, i, j:                     # reductions, outside the inner loop
          t = wt[...]-free product of the scalars bound so far
          for w in range(...):           # the output's contiguous axis: vectorised
            y[n,o,h,w] += x[n,c,h+i,w+j] * wt[o,c,i,j,h,w]

- Indices of range 1 are the constant 0 (no loop).
- The dot form, where the output's contiguous axis is short (< 16) and a
  reduction is long (a depthwise weight's gradient): output loops outside,
  the reduction innermost into a local accumulator of the output's dtype
  (``fastmath`` reassociation only, so numba vectorises the sum).
- ``prange`` runs only over an index of ``plan.conflicts.parallel``.
- An output written through affine indices (a scatter: the input gradient of
  a conv) is zeroed first and accumulated by loops over the statement's own
  indices, parallel over an index the writes do not share (the batch).
- With ``pad=0``, out-of-bounds reads and writes are removed by clipping the
  range of the innermost loop of each affine axis (no test in the loop).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Kernel", "generate"]

KERNEL_NAME = "kernel"


@dataclass(frozen=True)
class Kernel:
    """Generated source and the decisions it encodes."""

    source: str
    args: tuple[str, ...]          # statement operand names, in call order after the output
    order: tuple[str, ...]         # loop order, outermost first
    parallel: str | None           # the prange index, or None
    inner: str | None              # the innermost (vectorised) index
    prezero: bool                  # the whole output is zeroed before the loops

    def __str__(self) -> str:
        return self.source


def _var(name: str) -> str:
    return f"i_{name}"


def _arr(name: str) -> str:
    return f"a_{name}"


def _affine(ax, live: dict, skip: str | None = None) -> str:
    """Source text of an affine axis expression over loop variables; indices
    of range 1 are 0; ``skip`` leaves one index out (for a bound)."""
    parts = []
    for n, a in ax.terms:
        if n == skip or n not in live:
            continue
        parts.append(_var(n) if a == 1 else f"{a}*{_var(n)}")
    if ax.const or not parts:
        parts.append(str(ax.const))
    return " + ".join(parts).replace("+ -", "- ")


def _c_strides(shape) -> tuple[int, ...]:
    return tuple(math.prod(shape[k + 1:]) for k in range(len(shape)))


def _inner_index(plan, live: dict, out_strides) -> str | None:
    """The index that moves along the output's contiguous axis (smallest
    stride among axes that move), the one the innermost loop runs over."""
    out = plan.stmt.out
    best = None
    for k, ax in enumerate(out.axes):
        moving = [n for n, _ in ax.terms if n in live]
        if not moving:
            continue
        main = max(moving, key=lambda n: live[n])
        key = (abs(out_strides[k]), -k)
        if best is None or key < best[0]:
            best = (key, main)
    if best is not None:
        return best[1]
    return None


def _parallel_index(plan, live: dict, inner: str | None) -> str | None:
    """An index of ``plan.conflicts.parallel`` standing alone on an output
    axis (so its slice of the output can be zeroed inside the parallel loop):
    the first, in output-axis order, with at least 8 iterations, else the
    largest."""
    out = plan.stmt.out
    cands = []
    for ax in out.axes:
        n = ax.alone
        if n is None and len([m for m, _ in ax.terms if m in live]) == 1 and ax.const == 0:
            m, a = next((m, a) for m, a in ax.terms if m in live)
            n = m if a == 1 else None
        if n is not None and n in live and n != inner and n in plan.conflicts.parallel:
            cands.append(n)
    if not cands:
        return None
    for n in cands:
        if live[n] >= 8:
            return n
    return max(cands, key=lambda n: live[n])


def _plain(acc, live: dict) -> bool:
    """Every axis is one live index with coefficient 1, or the constant 0
    (after indices of range 1 became 0)."""
    for ax in acc.axes:
        moving = [(n, a) for n, a in ax.terms if n in live]
        if ax.const != 0 or len(moving) > 1 or (moving and moving[0][1] != 1):
            return False
    return True


def _order(plan, live: dict, parallel, inner, out_strides) -> list[str]:
    """Parallel index, the other output indices, reductions, then the inner
    index.  Output indices go outermost first by how many operand rows a
    step of them moves to (the rows the loops below read): an index the
    largest operand does not depend on runs inside one it does, so those
    rows are read once from memory and again from cache (a 2-channel output
    reads each input row for both channels while it is cached); ties by the
    output's strides, largest first."""
    stmt = plan.stmt
    out = stmt.out
    axis_order = sorted(range(len(out.axes)), key=lambda k: -abs(out_strides[k]))
    outer = []
    for k in axis_order:
        moving = sorted((n for n, _ in out.axes[k].terms if n in live), key=lambda n: -live[n])
        outer.extend(n for n in moving if n not in (parallel, inner) and n not in outer)
    summed = [n for n in stmt.indices if n in live and n not in outer and n not in (parallel, inner)]
    below = set(summed)

    def rows(a):
        on_inner = {n for ax in a.axes if inner in ax.names for n in ax.names}
        return math.prod(live[n] for n in a.names if n in below and n not in on_inner)
    cost = {u: sum(rows(a) for a in stmt.operands if u in a.names) for u in outer}
    outer.sort(key=lambda u: -cost[u])          # stable: ties keep the stride order
    order = ([parallel] if parallel else []) + outer + summed + ([inner] if inner else [])
    return order


def _reduction_inner(stmt, live, summed) -> str:
    """The reduction run innermost in the dot form: the longest summed index
    on some operand's last axis (contiguous), else the longest."""
    on_last = [n for n in summed if any(n in a.axes[-1].names for a in stmt.operands)]
    return max(on_last or summed, key=lambda n: live[n])


def _bounds(ax, size: int, live: dict, m: str) -> tuple[str, str]:
    """Loop bounds on index ``m`` keeping ``0 <= ax < size`` given the outer
    indices: (lower, upper-exclusive) source expressions."""
    a = ax.coef(m)
    rest = _affine(ax, live, skip=m)
    if a == 1:
        return f"-({rest})", f"{size} - ({rest})"
    if a > 0:   # a*m + rest in [0, size-1]
        lo = f"-(({rest}) // {a})"
        hi = f"({size - 1} - ({rest})) // {a} + 1"
    else:       # rest - b*m in [0, size-1]
        b = -a
        lo = f"-(({size - 1} - ({rest})) // {b})"
        hi = f"({rest}) // {b} + 1"
    return lo, hi


INIT = "init_"   # the optional last argument: the output's starting values (a bias, broadcast)


def generate(plan, out_strides=None, *, fastmath: bool = False, init: bool = False) -> Kernel:
    """The loop nest for ``plan`` as source text; ``out_strides`` (element
    strides of the output, default C order) choose the innermost loop.
    ``init``: the kernel takes one more array, of the output's shape, that
    the sums start from instead of zero (a plain output only)."""
    stmt = plan.stmt
    out = stmt.out
    ranges = plan.range
    live = {n: r for n, r in ranges.items() if r > 1}
    out_strides = tuple(out_strides) if out_strides is not None else _c_strides(plan.out_shape)
    inner = _inner_index(plan, live, out_strides)
    parallel = _parallel_index(plan, live, inner)
    plain_out = _plain(out, live)
    summed = [n for n in stmt.summed if n in live]
    # the dot form: a short contiguous output axis (a depthwise weight's
    # gradient) with long reductions: all output loops outside, the longest
    # reduction innermost into a local accumulator (reassociated: vectorised)
    dot = plain_out and bool(summed) and (inner is None or live[inner] < 16) and max(live[n] for n in summed) >= 16
    if dot:
        red = _reduction_inner(stmt, live, summed)
        order = _order(plan, live, parallel, red, out_strides)
        fastmath = fastmath or {"reassoc", "contract"}
    else:
        order = _order(plan, live, parallel, inner, out_strides)
    depth = {n: d for d, n in enumerate(order)}

    # clipping constraints (pad=0): attach each out-of-bounds-capable axis to
    # its innermost loop
    clips: dict[str, list[tuple[str, str]]] = {n: [] for n in order}
    shapes = plan.shape
    accesses = [(acc, shapes[acc.name]) for acc in stmt.operands] + [(out, plan.out_shape)]
    for acc, shape in accesses:
        for k, ax in enumerate(acc.axes):
            lo, hi = ax.bounds(ranges)
            if lo >= 0 and hi < shape[k]:
                continue
            moving = [n for n, _ in ax.terms if n in live]
            if not moving:    # a constant axis out of bounds: nothing is ever read or written
                clips.setdefault("__empty__", []).append(("0", "0"))
                continue
            m = max(moving, key=lambda n: depth[n])
            clips[m].append(_bounds(ax, shape[k], live, m))

    # where the output's block is zeroed: before the first reduction loop
    # (plain outputs whose outer loops are never clipped), else all up front
    n_outer = len([n for n in order if n in out.names]) - (0 if dot or not inner else 1)
    fill_depth = n_outer   # loops [0, fill_depth) are output loops; the block is order[fill_depth:]
    clipped_outer = any(clips[n] for n in order[:fill_depth])
    has_summed = any(n not in out.names for n in order)
    prezero = not plain_out or clipped_outer or "__empty__" in clips
    block_fill = not dot and not prezero and (has_summed or any(clips[n] for n in order[fill_depth:]))
    assign = not prezero and not block_fill   # each element written exactly once
    # a parallel loop zeroes its own slice unless clipping skips some slices
    zero_in_parallel = prezero and parallel is not None and not clips[parallel]

    # hoisted scalar loads: each operand at the loop that binds its last index
    load_depth = {}
    for acc in stmt.operands:
        names = [n for n in acc.names if n in live]
        load_depth[acc.name] = max((depth[n] for n in names), default=-1)
    last = len(order) - 1

    def access(acc) -> str:
        return f"{_arr(acc.name)}[{', '.join(_affine(ax, live) for ax in acc.axes)}]"

    lines = []
    head = "@numba.njit(cache=True, parallel={}, fastmath={}, boundscheck=False)".format(
        parallel is not None, fastmath if not isinstance(fastmath, set) else "{%s}" % ", ".join(
            repr(f) for f in sorted(fastmath)))
    if init and not plain_out:
        raise ValueError(f"init= needs a plain output; {plan.stmt.out} is written through affine indices")
    args = [_arr(out.name)] + [_arr(a.name) for a in stmt.operands] + ([INIT] if init else [])
    lines += [head, f"def {KERNEL_NAME}({', '.join(args)}):"]
    ind = "    "
    start = (lambda idx: f"{INIT}[{idx}]") if init else (lambda idx: "0")
    whole = INIT if init else "0"    # the whole start array: numba lowers no `init_[...]` of a read-only one
    if "__empty__" in clips:
        lines.append(ind + f"{_arr(out.name)}[...] = {whole}")
        lines.append(ind + "return")
    elif prezero and not zero_in_parallel:
        lines.append(ind + f"{_arr(out.name)}[...] = {whole}")

    product: list[str] = []
    pending = [acc for acc in stmt.operands if load_depth[acc.name] < 0]
    for acc in pending:
        lines.append(ind + f"v_{acc.name} = {access(acc)}")
        product.append(f"v_{acc.name}")
    if len(product) > 1:
        lines.append(ind + f"p_top = {' * '.join(product)}")
        product = ["p_top"]

    level = 1
    for d, n in enumerate(order):
        if d == fill_depth and block_fill:
            _emit_fill(lines, ind * level, out, order[fill_depth:], live, start)
        if d == fill_depth and dot:
            first = start(", ".join(_affine(ax, live) for ax in out.axes)) if init else \
                f"{_arr(out.name)}.dtype.type(0)"
            lines.append(ind * level + f"acc = {first}")
        lo_hi = clips.get(n, [])
        lo = "0" if not lo_hi else "max(0, " + ", ".join(lo for lo, _ in lo_hi) + ")"
        hi = str(live[n]) if not lo_hi else f"min({live[n]}, " + ", ".join(hi for _, hi in lo_hi) + ")"
        rng = "numba.prange" if n == parallel else "range"
        args_r = hi if lo == "0" else f"{lo}, {hi}"
        lines.append(ind * level + f"for {_var(n)} in {rng}({args_r}):")
        level += 1
        if n == parallel and zero_in_parallel:
            idx = ", ".join(_var(n) if n in ax.names else ":" for ax in out.axes)
            lines.append(ind * level + f"{_arr(out.name)}[{idx}] = {start(idx)}")
        if d == last:
            break
        loaded = [acc for acc in stmt.operands if load_depth[acc.name] == d]
        for acc in loaded:
            lines.append(ind * level + f"v_{acc.name} = {access(acc)}")
            product.append(f"v_{acc.name}")
        if loaded and len(product) > 1:
            lines.append(ind * level + f"p_{d} = {' * '.join(product)}")
            product = [f"p_{d}"]

    if not order and block_fill:
        _emit_fill(lines, ind * level, out, [], live, start)
    inline = [access(acc) for acc in stmt.operands if load_depth[acc.name] == last and last >= 0]
    term = " * ".join(product + inline) or "1.0"
    if dot:
        lines.append(ind * level + f"acc += {term}")
        lines.append(ind * (fill_depth + 1) + f"{access(out)} = acc")
    elif assign and init:
        lines.append(ind * level + f"{access(out)} = {start(', '.join(_affine(ax, live) for ax in out.axes))} + {term}")
    else:
        lines.append(ind * level + f"{access(out)} {'=' if assign else '+='} {term}")
    src = "import numba\n\n\n" + "\n".join(lines) + "\n"
    header = f"# generated by einlocal.backends.numba_codegen for\n#   {plan}\n# loop order: {', '.join(order) or '-'}; " \
             f"prange over: {parallel or '-'}; parallel-safe: {', '.join(plan.conflicts.parallel) or '-'}\n"
    return Kernel(header + src, tuple(a.name for a in stmt.operands), tuple(order), parallel, inner, prezero)


def _emit_fill(lines, ind, out, block, live, start):
    """Set the output block the loops ``block`` write to its starting values
    (plain output: only the block's output indices move)."""
    idx = ", ".join(":" if any(n in block for n, _ in ax.terms if n in live) else _affine(ax, live)
                    for ax in out.axes)
    lines.append(ind + f"{_arr(out.name)}[{idx}] = {start(idx)}")
