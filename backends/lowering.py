"""The steps every array strategy shares: window views of the operands, a
contraction (the strategy's own step), and a fold for affine-indexed outputs.

    views = [window(xp, x, plan.windows["x"]), ...]     # zero-copy when in bounds
    T = strategy.contract(xp, views, out_names, ranges) # one axis per output index
    y = T, or fold(xp, T, plan, out)                    # col2im: slice-adds per tap
"""
from __future__ import annotations

import functools
import itertools
import math


__all__ = ["window", "fold", "execute", "tap_slices", "largest_intermediate", "intermediates"]


def main_indices(win):
    """Per array axis, the index with the largest range moves along a slice
    (the axis's 'main' index); the window's other indices are taps."""
    size = dict(zip(win.names, win.view_shape))
    by_axis: dict[int, list[str]] = {}
    for n, k, _ in win.steps:
        by_axis.setdefault(k, []).append(n)
    mains = {k: max(ns, key=lambda n: size[n]) for k, ns in by_axis.items()}
    taps = tuple(n for n in win.names if n not in mains.values())
    return mains, taps


def window_by_slices(xp, a, win):
    """The window materialised from strided slices, one per tap, stacked:
    for libraries that cannot view arbitrary strides (jax), or negative ones."""
    mains, taps = main_indices(win)
    size = dict(zip(win.names, win.view_shape))
    pieces = []
    for tap in itertools.product(*(range(size[t]) for t in taps)):
        idx, flips = tap_slices(win, dict(zip(taps, tap)))
        piece = a[idx]
        pieces.append(xp.flip(piece, flips) if flips else piece)
    main_names = [mains[k] for k in sorted(mains)]
    stacked = xp.reshape(xp.stack(pieces, 0), tuple(size[n] for n in (*taps, *main_names)))
    have = [*taps, *main_names]
    return xp.permute(stacked, [have.index(n) for n in win.names])


def relayout(xp, a, order, key):
    """``a`` with the same logical shape, its memory reordered so that axes
    ``order`` run outermost to innermost: one copy, into a reused buffer."""
    from .workspace import scratch
    moved = xp.permute(a, order)
    if getattr(a, "requires_grad", False):
        buf = xp.contiguous(moved)
    else:
        buf = xp.assign(scratch(xp, key, tuple(moved.shape), a), moved)
    inverse = sorted(range(len(order)), key=lambda k: order[k])
    return xp.permute(buf, inverse)


def window(xp, a, win, layout=None, key=None):
    """The operand viewed with one axis per index name (``win.names``).

    Zero-copy strides when every read is in bounds and the library can view
    arbitrary strides; with padding, a view of one padded copy.  ``layout``
    (an axis order) first moves the array's memory into that order, for a
    strategy whose copies then read longer contiguous runs."""
    if win.padded:
        a = xp.pad(a, win.pads)
    if layout is not None and xp.has_strided:
        a = relayout(xp, a, layout, key)
    if xp.has_strided and all(c > 0 for _, _, c in win.steps):
        strides, _ = win.strides(xp.strides(a))
        return xp.as_strided(a, win.view_shape, strides, win.offsets)
    return window_by_slices(xp, a, win)


def tap_slices(win, tap: dict):
    """Index into a (padded) array for one tap assignment: a strided slice
    along each axis's main index, an integer where no index moves; and which
    result axes run backwards (negative coefficients)."""
    mains, _ = main_indices(win)
    size = dict(zip(win.names, win.view_shape))
    coef = {n: (k, c) for n, k, c in win.steps}
    starts = list(win.offsets)
    for t, v in tap.items():
        k, c = coef[t]
        starts[k] += c * v
    idx, flips = [], []
    for k, start in enumerate(starts):
        m = mains.get(k)
        if m is None:
            idx.append(start)
            continue
        c, r = coef[m][1], size[m]
        if c > 0:
            idx.append(slice(start, start + c * (r - 1) + 1, c))
        else:
            flips.append(sum(isinstance(i, slice) for i in idx))
            idx.append(slice(start + c * (r - 1), start + 1, -c))
    return tuple(idx), tuple(flips)


def _fold_order(xp, T, win, mains):
    """The memory order for the fold's buffer that follows ``T``'s: output
    axes sorted by the stride of their main index in ``T``, so each
    slice-add writes contiguous runs (the result is reordered once at the
    end, a copy the size of the output).  None where the output's own order
    already follows, or the library has no strides."""
    if not xp.has_strided or len(mains) != len(win.shape):
        return None
    stride = dict(zip(win.names, xp.strides(T)))
    order = sorted(range(len(win.shape)), key=lambda k: -abs(stride[mains[k]]))
    return None if order == list(range(len(win.shape))) else order


def fold(xp, T, plan, out=None):
    """Write ``T`` (one axis per output index) into the output through its
    affine indices: one strided slice-add per tap (col2im).  Writes outside
    the output are dropped (a padded buffer, cropped)."""
    win = plan.out_window
    mains, taps = main_indices(win)
    size = dict(zip(win.names, win.view_shape))
    main_names = [mains[k] for k in sorted(mains)]
    order = _fold_order(xp, T, win, mains)
    T = xp.permute(T, [win.names.index(n) for n in (*taps, *main_names)])
    if order is not None:
        buf = xp.zeros(tuple(win.padded_shape[k] for k in order), like=T)
    elif win.padded or out is None or xp.functional:
        buf = xp.zeros(win.padded_shape, like=T)
    else:
        buf = out
        buf[...] = 0
    for tap in itertools.product(*(range(size[t]) for t in taps)):
        idx, flips = tap_slices(win, dict(zip(taps, tap)))
        piece = T[tap] if taps else T
        if flips:
            piece = xp.flip(piece, flips)
        if order is not None:
            idx, piece = tuple(idx[k] for k in order), xp.permute(piece, order)
        buf = xp.add_slice(buf, idx, piece)
    if order is not None:
        buf = xp.permute(buf, sorted(range(len(order)), key=lambda k: order[k]))
    if win.padded:
        buf = buf[tuple(slice(a, a + s) for s, (a, _) in zip(win.shape, win.pads))]
    if out is not None and buf is not out:
        return xp.assign(out, buf)
    return xp.contiguous(buf) if order is not None else buf


def contracted_names(plan) -> tuple[str, ...]:
    """The output indices the contraction produces: those some operand
    reads (an output index no operand reads is broadcast afterwards)."""
    read = {n for w in plan.windows.values() for n in w.names}
    return tuple(n for n in plan.stmt.out.names if n in read)


@functools.lru_cache(maxsize=4096)
def _layouts(strategy, plan):
    return strategy.layouts(plan)


def execute(strategy, xp, plan, operands: dict, out=None):
    """Run one bound statement (forward or backward alike) with a strategy's
    contraction over namespace ``xp``; ``out`` is overwritten if given."""
    stmt = plan.stmt
    layouts = _layouts(strategy, plan) if xp.has_strided else {}
    views = [(window(xp, operands[a.name], plan.windows[a.name], layouts.get(a.name), (strategy.name, plan, a.name)),
              plan.windows[a.name].names) for a in stmt.operands]
    out_names = stmt.out.names
    ranges = plan.range
    present = contracted_names(plan)
    if not stmt.out.plain:    # ask for the fold's order: taps outermost
        _, taps = main_indices(plan.out_window)
        present = tuple(n for n in present if n in taps) + tuple(n for n in present if n not in taps)
    direct = stmt.out.plain and len(present) == len(out_names) and not xp.functional
    T = strategy.contract(xp, views, tuple(present), ranges, out=out if direct else None)
    if tuple(present) != tuple(out_names):
        # back to the output's index order; an index no operand reads is broadcast
        T = xp.permute(T, sorted(range(len(present)), key=lambda k: out_names.index(present[k])))
        if len(present) != len(out_names):
            T = xp.reshape(T, tuple(ranges[n] if n in present else 1 for n in out_names))
            T = xp.broadcast_to(T, tuple(ranges[n] for n in out_names))
    if not stmt.out.plain:
        return fold(xp, T, plan, out)
    if out is not None and T is not out:
        return xp.assign(out, T)
    return T


def largest_intermediate(plan, strategy_elements: int, what: str):
    """(elements, description) of the largest array a lowering creates:
    the strategy's own, a padded operand copy, or the unfolded output."""
    return max(intermediates(plan, strategy_elements, what), key=lambda c: c[0])


def intermediates(plan, strategy_elements: int, what: str) -> list:
    """[(elements, description)] of every array a lowering creates besides
    its result: the strategy's own, padded operand copies, the unfolded
    output and its padded buffer."""
    cands = [(strategy_elements, what)]
    for w in plan.windows.values():
        if w.padded:
            cands.append((math.prod(w.padded_shape), f"padded copy of {w.name} {w.padded_shape}"))
    if plan.scatter:
        cands.append((math.prod(plan.unfolded_shape()), f"unfolded output {plan.unfolded_shape()}"))
        if plan.out_window.padded:
            cands.append((math.prod(plan.out_window.padded_shape), f"padded output {plan.out_window.padded_shape}"))
    return cands
