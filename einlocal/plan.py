"""Bind a statement to shapes: solve every index range (docs/statements.md),
validate every read and write, and describe each operand's window view.

A ``Plan`` is plain, hashable data; binding is cached, so the same statement
and shapes never plan twice.  Nothing here touches an array.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from .derive import backward, einsum_spec, gather, write_conflicts
from .errors import ShapeError
from .spec import Access, Statement

__all__ = ["Plan", "Window", "bind"]


def _ax(acc: Access, k: int) -> str:
    return f"{acc.name} axis {k} ({acc.axes[k]})"


@dataclass(frozen=True)
class Window:
    """How to view one (possibly padded) operand with one axis per index.

    ``pads[k]`` = (before, after) zeros on axis k; ``offsets[k]`` = the
    constant of axis k, shifted by the padding; ``steps[name]`` = (axis,
    coefficient)."""

    name: str
    shape: tuple[int, ...]            # the array's own shape
    names: tuple[str, ...]            # the view's axes
    view_shape: tuple[int, ...]
    pads: tuple[tuple[int, int], ...]
    offsets: tuple[int, ...]
    steps: tuple[tuple[str, int, int], ...]   # (name, axis, coefficient)

    @property
    def padded(self) -> bool:
        return any(a or b for a, b in self.pads)

    @property
    def padded_shape(self) -> tuple[int, ...]:
        return tuple(s + a + b for s, (a, b) in zip(self.shape, self.pads))

    def strides(self, array_strides) -> tuple[tuple[int, ...], int]:
        """Element strides of the view and its element offset, given the
        (padded) array's element strides."""
        by_name = {n: (ax, c) for n, ax, c in self.steps}
        strides = tuple(by_name[n][1] * array_strides[by_name[n][0]] for n in self.names)
        offset = sum(o * s for o, s in zip(self.offsets, array_strides))
        return strides, offset


@dataclass(frozen=True)
class Plan:
    """A statement bound to shapes."""

    stmt: Statement
    ranges: tuple[tuple[str, int], ...]
    shapes: tuple[tuple[str, tuple[int, ...]], ...]   # operand -> shape
    out_shape: tuple[int, ...]
    pad: bool

    @property
    def range(self) -> dict[str, int]:
        return dict(self.ranges)

    @property
    def shape(self) -> dict[str, tuple[int, ...]]:
        return dict(self.shapes)

    @functools.cached_property
    def windows(self) -> dict[str, Window]:
        return {a.name: _window(a, self.shape[a.name], self.range, self.pad) for a in self.stmt.operands}

    @functools.cached_property
    def out_window(self) -> Window:
        """The output seen as a window: what a fold writes into."""
        return _window(self.stmt.out, self.out_shape, self.range, self.pad)

    @property
    def einsum(self) -> str:
        return einsum_spec(self.stmt)

    @functools.cached_property
    def conflicts(self):
        return write_conflicts(self.stmt, self.range)

    @property
    def scatter(self) -> bool:
        """The output is written through an affine index (needs a fold)."""
        return not self.stmt.out.plain

    @property
    def iterations(self) -> int:
        return math.prod(r for _, r in self.ranges)

    def unfolded_shape(self) -> tuple[int, ...]:
        """Shape of the contraction's result: one axis per output index."""
        r = self.range
        return tuple(r[n] for n in self.stmt.out.names)

    def flops(self) -> int:
        """Multiply-adds counted as len(operands) flops per iteration."""
        return len(self.stmt.operands) * self.iterations

    def min_elements(self) -> int:
        """Elements of every operand read once and the output written once."""
        return sum(math.prod(s) for _, s in self.shapes) + math.prod(self.out_shape)

    @functools.cached_property
    def backward(self) -> dict[str, "Plan"]:
        """Operand name -> the plan of its gradient statement."""
        shapes = self.shape
        out = {}
        for acc, st in zip(self.stmt.operands, backward(self.stmt)):
            bshapes = {st.operands[0].name: self.out_shape}
            bshapes.update({a.name: shapes[a.name] for a in st.operands[1:]})
            out[acc.name] = bind(st, _freeze(bshapes), self.ranges, shapes[acc.name], self.pad)
        return out

    @functools.cached_property
    def gather(self) -> "Plan | None":
        """A scatter's gather form (``derive.gather``), bound to the same
        shapes with zeros read outside operands; None for a plain output or
        where no gather form exists."""
        if not self.scatter:
            return None
        stmt = gather(self.stmt, self.range, self.shape)
        if stmt is None:
            return None
        out_names = set(stmt.out.names)
        sizes = tuple((n, r) for n, r in self.ranges if n not in out_names)
        try:
            return bind(stmt, self.shapes, sizes, self.out_shape, True)
        except ShapeError:   # the rewrite left the solved index alone on an axis of another size
            return None

    def __hash__(self) -> int:   # hash once: plans key every cache
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash((self.stmt, self.ranges, self.shapes, self.out_shape, self.pad))
            self.__dict__["_hash"] = h
        return h

    def __getstate__(self):   # string hashes differ between processes: never pickle one
        return {k: v for k, v in self.__dict__.items() if k != "_hash"}

    def __str__(self) -> str:
        r = ", ".join(f"{n}={v}" for n, v in self.ranges)
        return f"{self.stmt}  with {r}" + ("  (pad=0)" if self.pad else "")


def _window(acc: Access, shape, ranges, pad: bool) -> Window:
    pads, offsets, steps = [], [], []
    for k, ax in enumerate(acc.axes):
        lo, hi = ax.bounds(ranges)
        before = max(0, -lo) if pad else 0
        after = max(0, hi - (shape[k] - 1)) if pad else 0
        pads.append((before, after))
        offsets.append(ax.const + before)
        steps.extend((n, k, a) for n, a in ax.terms)
    names = acc.names
    return Window(acc.name, tuple(shape), names, tuple(ranges[n] for n in names),
                  tuple(pads), tuple(offsets), tuple(steps))


def _freeze(d):
    return tuple(sorted((k, tuple(v)) for k, v in d.items()))


def _largest_range(u: str, ax, size: int, ranges) -> int:
    """The largest R such that ``ax`` stays below ``size`` for 0 <= u < R
    (and above 0 when u's coefficient is negative)."""
    a = ax.coef(u)
    lo, hi = ax.bounds({**ranges, u: 1})
    return (size - 1 - hi) // a + 1 if a > 0 else lo // (-a) + 1


def _solve_ranges(stmt: Statement, shapes, sizes, out_shape) -> dict[str, int]:
    """The range rules of docs/statements.md, in order: standing-alone axes, ``sizes=``,
    ``out=``'s shape, the largest in-bounds range; else a ShapeError."""
    accesses = list(stmt.operands)
    if out_shape is not None:
        accesses.append(stmt.out)
    full = dict(shapes)
    if out_shape is not None:
        full[stmt.out.name] = out_shape
    ranges: dict[str, int] = {}
    where: dict[str, str] = {}
    for acc in accesses:
        for k, ax in enumerate(acc.axes):
            n = ax.alone
            if n is None:
                continue
            size = full[acc.name][k]
            if n in ranges and ranges[n] != size:
                raise ShapeError(f"index {n!r} has size {ranges[n]} from {where[n]} but {size} from {_ax(acc, k)}")
            ranges[n] = size
            where[n] = _ax(acc, k)
    for n, size in (sizes or {}).items():
        if n not in stmt.indices:
            raise ShapeError(f"sizes= names index {n!r}, which {stmt} does not use (indices: {', '.join(stmt.indices)})")
        if not isinstance(size, int) or isinstance(size, bool):
            raise ShapeError(f"sizes[{n!r}] must be an int, got {size!r}")
        if n in ranges and ranges[n] != size:
            raise ShapeError(f"sizes[{n!r}] = {size} disagrees with {where[n]}, which has size {ranges[n]}")
        ranges[n] = size
        where[n] = "sizes="
    # Tullio's rule: the largest range in which every read stays in bounds.
    changed = True
    while changed:
        changed = False
        for acc in accesses:
            for k, ax in enumerate(acc.axes):
                unknown = [n for n in ax.names if n not in ranges]
                if len(unknown) != 1:
                    continue
                u = unknown[0]
                # every axis that bounds u with all else known; take the tightest
                cands = [_largest_range(u, ax2, full[acc2.name][k2], ranges)
                         for acc2 in accesses for k2, ax2 in enumerate(acc2.axes)
                         if u in ax2.names and all(n in ranges for n in ax2.names if n != u)]
                ranges[u] = min(cands)
                where[u] = f"the largest in-bounds range ({_ax(acc, k)})"
                changed = True
    missing = [n for n in stmt.indices if n not in ranges]
    if missing:
        raise ShapeError(
            f"no range for index {', '.join(repr(m) for m in missing)} in {stmt}: "
            f"it stands alone on no axis and no in-bounds range can be inferred; pass sizes={{{missing[0]!r}: ...}} or out=")
    for n in stmt.indices:
        if ranges[n] <= 0:
            raise ShapeError(f"index {n!r} gets the non-positive range {ranges[n]} from {where[n]} in {stmt}")
    return ranges


@functools.lru_cache(maxsize=4096)
def bind(stmt: Statement, shapes, sizes=(), out_shape=None, pad: bool = False) -> Plan:
    """Bind ``stmt`` to operand shapes (a tuple of (name, shape) pairs).

    ``sizes`` are (index, range) pairs; ``out_shape`` is the output's shape
    when known (from ``out=``, or a gradient's operand).  Raises ShapeError
    naming the operand, axis and numbers.
    """
    shapes = dict(shapes)
    for acc in stmt.operands:
        if acc.name not in shapes:
            raise ShapeError(f"operand {acc.name!r} of {stmt} is missing (given: {', '.join(shapes) or 'none'})")
        if len(shapes[acc.name]) != len(acc.axes):
            raise ShapeError(f"operand {acc.name!r} has {len(shapes[acc.name])} axes {tuple(shapes[acc.name])}, "
                             f"but {acc} indexes {len(acc.axes)}")
    extra = set(shapes) - set(stmt.inputs)
    if extra:
        raise ShapeError(f"{stmt} has no operand {sorted(extra)[0]!r} (operands: {', '.join(stmt.inputs)})")
    if out_shape is not None:
        out_shape = tuple(out_shape)
        if len(out_shape) != len(stmt.out.axes):
            raise ShapeError(f"out= has {len(out_shape)} axes {out_shape}, but {stmt.out} has {len(stmt.out.axes)}")
    ranges = _solve_ranges(stmt, shapes, dict(sizes), out_shape)
    for acc in stmt.operands:
        for k, ax in enumerate(acc.axes):
            lo, hi = ax.bounds(ranges)
            size = shapes[acc.name][k]
            if max(-lo, hi) >= 2 ** 62:
                raise ShapeError(f"{_ax(acc, k)} reads {lo}..{hi}: beyond 64-bit index arithmetic (2**62)")
            if (lo < 0 or hi >= size) and not pad:
                raise ShapeError(
                    f"{_ax(acc, k)} reads {lo}..{hi} but has size {size} (valid 0..{size - 1}); "
                    f"pass pad=0 to read zeros outside the array")
    if out_shape is None:
        dims = []
        for k, ax in enumerate(stmt.out.axes):
            if ax.alone is None:
                raise ShapeError(f"output {_ax(stmt.out, k)} is not a single index, so its size is unknown: pass out=")
            dims.append(ranges[ax.alone])
        out_shape = tuple(dims)
    else:
        for k, ax in enumerate(stmt.out.axes):
            lo, hi = ax.bounds(ranges)
            if (lo < 0 or hi >= out_shape[k]) and not pad:
                raise ShapeError(f"output {_ax(stmt.out, k)} writes {lo}..{hi} but has size {out_shape[k]}; "
                                 f"pass pad=0 to drop writes outside the array")
    ordered = tuple((n, ranges[n]) for n in stmt.indices)
    return Plan(stmt, ordered, tuple((a.name, tuple(shapes[a.name])) for a in stmt.operands), out_shape, bool(pad))
