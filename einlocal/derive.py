"""Mechanical derivations from a statement: its einsum form, its backward
statements, and the write-conflict analysis that decides how to lower them.
"""
from __future__ import annotations

import functools
import itertools
import math
import string
from dataclasses import dataclass

from .spec import Access, Affine, Statement

__all__ = ["letters", "einsum_spec", "backward", "gather", "grad_name", "WriteConflicts", "write_conflicts"]


def letters(stmt: Statement) -> dict[str, str]:
    """Map index names to einsum letters: a one-letter name keeps its letter
    when it is free, other names take the next unused letter."""
    used: set[str] = set()
    mapping: dict[str, str] = {}
    for n in stmt.indices:
        if len(n) == 1 and n in string.ascii_letters and n not in used:
            mapping[n] = n
            used.add(n)
    pool = (c for c in string.ascii_lowercase + string.ascii_uppercase if c not in used)
    for n in stmt.indices:
        if n not in mapping:
            try:
                mapping[n] = next(pool)
            except StopIteration:
                raise ValueError(f"statement {stmt} has more than 52 indices; einsum cannot name them") from None
    return mapping


def einsum_spec(stmt: Statement) -> str:
    """The einsum over window views: each operand contributes one axis per
    index name (in order of first appearance), the output likewise."""
    L = letters(stmt)
    ins = ",".join("".join(L[n] for n in a.names) for a in stmt.operands)
    return f"{ins}->{''.join(L[n] for n in stmt.out.names)}"


def grad_name(name: str, taken) -> str:
    g = "d" + name
    while g in taken:
        g = "d" + g
    return g


@functools.lru_cache(maxsize=1024)
def backward(stmt: Statement) -> tuple[Statement, ...]:
    """One statement per input: swap the input with the output gradient.

    ``y[...] += x[A] * w[B]``  gives  ``dx[A] += dy[...] * w[B]`` and
    ``dw[B] += dy[...] * x[A]``.  Writes outside the gradient's bounds are
    dropped, mirroring zero reads.
    """
    taken = {a.name for a in (stmt.out, *stmt.operands)}
    dy = Access(grad_name(stmt.out.name, taken), stmt.out.axes)
    out = []
    for k, acc in enumerate(stmt.operands):
        others = tuple(a for j, a in enumerate(stmt.operands) if j != k)
        out.append(Statement(Access(grad_name(acc.name, taken), acc.axes), (dy, *others)))
    return tuple(out)


def _substitute(ax: Affine, subs: dict) -> Affine:
    """``ax`` with each index in ``subs`` replaced by its affine expression."""
    coefs: dict[str, int] = {}
    const = ax.const
    for n, a in ax.terms:
        if n in subs:
            for m, b in subs[n].terms:
                coefs[m] = coefs.get(m, 0) + a * b
            const += a * subs[n].const
        else:
            coefs[n] = coefs.get(n, 0) + a
    return Affine(tuple((n, a) for n, a in coefs.items() if a), const)


def gather(stmt: Statement, ranges, shapes) -> Statement | None:
    """A scatter rewritten to iterate over its output's elements, or None.

    An output axis ``h + i - 1`` is solved for its index of the largest
    range (``h = p - i + 1``), which must have coefficient +-1; the new index
    takes the old one's name, and every operand axis reads through the
    solution::

        dx[n,c,h+i-1,w+j-1] += dy[n,o,h,w] * wt[o,c,i,j,h,w]
        dx[n,c,h,w] += dy[n,o,h-i+1,w-j+1] * wt[o,c,i,j,h-i+1,w-j+1]

    Each element is then written by one sum (no conflicts, parallel over any
    output index), and reads outside an operand are zeros.  That the solved
    index keeps its range needs an operand axis where it stands alone with
    exactly that size (dy's, for a gradient): reading zeros there is the
    range test.  None where a written axis has no such index (a stride > 1
    would need a divisibility test, and solving for a kernel tap instead
    would loop over every output position) or an index is solved twice.
    """
    out = stmt.out
    if out.plain:
        return None
    subs: dict[str, Affine] = {}
    for k, ax in enumerate(out.axes):
        if ax.alone is not None:
            continue
        elsewhere = {n for j, a in enumerate(out.axes) if j != k for n in a.names}
        if any(n in elsewhere or n in subs for n in ax.names):
            return None
        m, a = max(ax.terms, key=lambda t: ranges[t[0]])
        if abs(a) != 1 or not any(b.alone == m and shapes[acc.name][kb] == ranges[m]
                                  for acc in stmt.operands for kb, b in enumerate(acc.axes)):
            return None
        # ax = a*m + rest = p  =>  m = a*p - a*rest   (a = +-1), p named m
        subs[m] = Affine(((m, a),) + tuple((n, -a * c) for n, c in ax.terms if n != m), -a * ax.const)
    new_out = Access(out.name, tuple(Affine(((subs_name(ax, subs), 1),)) if ax.alone is None else ax
                                     for ax in out.axes))
    operands = tuple(Access(acc.name, tuple(_substitute(b, subs) for b in acc.axes)) for acc in stmt.operands)
    return Statement(new_out, operands)


def subs_name(ax: Affine, subs: dict) -> str:
    """The solved index of a written axis (the name its new index takes)."""
    return next(n for n in ax.names if n in subs)


def _injective(axis: Affine, ranges) -> bool:
    """Whether ``axis`` maps distinct points of its names' ranges to distinct
    values (exact for one or two names, enumerated for more)."""
    terms = [(n, a) for n, a in axis.terms if ranges[n] > 1]
    if len(terms) <= 1:
        return True
    if len(terms) == 2:
        (n1, a1), (n2, a2) = terms
        g = math.gcd(a1, a2)
        # a1*d1 + a2*d2 = 0 has the smallest nonzero solution d1 = a2/g, d2 = -a1/g
        return abs(a2) // g >= ranges[n1] or abs(a1) // g >= ranges[n2]
    total = math.prod(ranges[n] for n, _ in terms)
    if total > 2_000_000:
        return False  # conservative: assume a conflict
    seen = set()
    for pt in itertools.product(*(range(ranges[n]) for n, _ in terms)):
        v = sum(a * p for (_, a), p in zip(terms, pt))
        if v in seen:
            return False
        seen.add(v)
    return True


@dataclass(frozen=True)
class WriteConflicts:
    """Can two iterations of a statement write the same output element?

    - ``reduced``: indices absent from the output; iterations that differ
      only in them always write the same element (an ordinary reduction).
    - ``overlapping``: output axes (position, expression) whose affine map is
      not injective over the ranges: windows that overlap, as in the input
      gradient of a conv with stride < kernel extent.
    - ``parallel``: output indices over which a loop may run in parallel: two
      iterations that differ in such an index never write the same element.
    """

    statement: str
    reduced: tuple[str, ...]
    overlapping: tuple[tuple[int, str], ...]
    parallel: tuple[str, ...]

    @property
    def conflict(self) -> bool:
        """True when some element is written by more than one iteration."""
        return bool(self.reduced or self.overlapping)

    @property
    def scatter(self) -> bool:
        """True when the conflict comes from overlapping affine writes (the
        case report 2's hand-written gradient got wrong)."""
        return bool(self.overlapping)

    def __str__(self) -> str:
        lines = [f"write conflicts of {self.statement}:",
                 f"  reduced (absent from the output): {', '.join(self.reduced) or '-'}",
                 f"  overlapping output axes: {', '.join(f'{k}: {e}' for k, e in self.overlapping) or '-'}",
                 f"  safe to parallelise over: {', '.join(self.parallel) or '-'}"]
        return "\n".join(lines)


def write_conflicts(stmt: Statement, ranges=None) -> WriteConflicts:
    """The analysis, exact for bound ranges; without ranges every range is
    taken as large (conservative)."""
    if ranges is None:
        ranges = {n: 1 << 20 for n in stmt.indices}
    ranges = dict(ranges)
    reduced = tuple(n for n in stmt.summed if ranges[n] > 1)
    overlapping = tuple((k, str(ax)) for k, ax in enumerate(stmt.out.axes) if not _injective(ax, ranges))
    bad_axes = {k for k, _ in overlapping}
    parallel = tuple(n for n in stmt.out.names if stmt.out.axis_of(n) not in bad_axes)
    return WriteConflicts(str(stmt), reduced, overlapping, parallel)
