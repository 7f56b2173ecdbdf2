"""Parse one index-notation statement into plain data: Statement, Access, Affine.

    y[n,o,h,w] += x[n,c,h*2+i-1, w+j] * wt[o,c,i,j,h,w]

An index expression is affine with integer coefficients; an index name may
repeat across operands but not within one; operand names are distinct and
not reserved.  Parsing is pure Python and cached: the same text is parsed
once.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from .errors import SpecError

__all__ = ["Affine", "Access", "Statement", "parse", "RESERVED"]

MAX_INTEGER = 2 ** 53    # the largest coefficient or constant (index arithmetic stays exact in int64)
RESERVED = frozenset({"out", "sizes", "backend", "pad", "grad", "wrt"})

_NAME = r"[A-Za-z_][A-Za-z_0-9]*"
_TOKEN = re.compile(rf"\s*(?:(?P<int>\d+)|(?P<name>{_NAME})|(?P<op>\+=|[-+*\[\],]))")


@dataclass(frozen=True)
class Affine:
    """``sum(coef * name) + const``; ``terms`` keeps the written order and
    holds no zero coefficient."""

    terms: tuple[tuple[str, int], ...]
    const: int = 0

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.terms)

    def coef(self, name: str) -> int:
        return dict(self.terms).get(name, 0)

    @property
    def alone(self) -> str | None:
        """The index name if the whole expression is that name, else None."""
        if self.const == 0 and len(self.terms) == 1 and self.terms[0][1] == 1:
            return self.terms[0][0]
        return None

    def bounds(self, ranges) -> tuple[int, int]:
        """Smallest and largest value over ``0 <= name < ranges[name]``."""
        lo = hi = self.const
        for n, a in self.terms:
            span = a * (ranges[n] - 1)
            lo += min(0, span)
            hi += max(0, span)
        return lo, hi

    def __str__(self) -> str:
        parts = []
        for n, a in self.terms:
            sign = "-" if a < 0 else "+"
            body = n if abs(a) == 1 else f"{n}*{abs(a)}"
            parts.append((sign, body))
        if self.const or not parts:
            parts.append(("-" if self.const < 0 else "+", str(abs(self.const))))
        text = "".join(f"{s}{b}" for s, b in parts)
        return text[1:] if text.startswith("+") else text


@dataclass(frozen=True)
class Access:
    """One array read or written: ``name[axes...]``."""

    name: str
    axes: tuple[Affine, ...]

    @functools.cached_property
    def names(self) -> tuple[str, ...]:
        """Index names in order of first appearance (the window view's axes)."""
        seen: dict[str, None] = {}
        for ax in self.axes:
            for n in ax.names:
                seen.setdefault(n)
        return tuple(seen)

    @functools.cached_property
    def plain(self) -> bool:
        """Every axis is one index name standing alone."""
        return all(ax.alone is not None for ax in self.axes)

    def axis_of(self, name: str) -> int:
        for k, ax in enumerate(self.axes):
            if name in ax.names:
                return k
        raise KeyError(name)

    def __str__(self) -> str:
        return f"{self.name}[{','.join(map(str, self.axes))}]"


@dataclass(frozen=True)
class Statement:
    """``out += operands[0] * operands[1] * ...`` summed over every index not
    in ``out``."""

    out: Access
    operands: tuple[Access, ...]

    @functools.cached_property
    def indices(self) -> tuple[str, ...]:
        """Every index name, output first, in order of first appearance."""
        seen: dict[str, None] = {}
        for acc in (self.out, *self.operands):
            for n in acc.names:
                seen.setdefault(n)
        return tuple(seen)

    @property
    def summed(self) -> tuple[str, ...]:
        outs = set(self.out.names)
        return tuple(n for n in self.indices if n not in outs)

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.operands)

    def operand(self, name: str) -> Access:
        for a in self.operands:
            if a.name == name:
                return a
        raise KeyError(name)

    def __str__(self) -> str:
        return f"{self.out} += {' * '.join(map(str, self.operands))}"

    def __hash__(self) -> int:   # plans are dict keys on every call: hash once
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash((self.out, self.operands))
            self.__dict__["_hash"] = h
        return h

    def __getstate__(self):   # string hashes differ between processes: never pickle one
        return {k: v for k, v in self.__dict__.items() if k != "_hash"}


def _tokens(text: str):
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise SpecError(f"cannot parse statement {text!r}: unexpected {text[pos:].strip()[:10]!r} at column {pos}")
        pos = m.end()
        kind = m.lastgroup
        yield kind, m.group(kind), pos


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.toks = list(_tokens(text))
        self.k = 0

    def fail(self, what: str):
        where = self.toks[self.k][2] if self.k < len(self.toks) else len(self.text)
        raise SpecError(f"cannot parse statement {self.text!r}: {what} near column {where}")

    def peek(self):
        return self.toks[self.k][:2] if self.k < len(self.toks) else (None, None)

    def take(self, kind=None, value=None):
        k, v = self.peek()
        if k is None or (kind and k != kind) or (value and v != value):
            self.fail(f"expected {value or kind}")
        self.k += 1
        return v

    def access(self) -> Access:
        name = self.take("name")
        self.take("op", "[")
        axes = [self.affine()]
        while self.peek() == ("op", ","):
            self.take()
            axes.append(self.affine())
        self.take("op", "]")
        return Access(name, tuple(axes))

    def affine(self) -> Affine:
        coefs: dict[str, int] = {}
        const = 0
        sign = 1
        if self.peek() in (("op", "-"), ("op", "+")):
            sign = -1 if self.take() == "-" else 1
        while True:
            name, coef = self.term()
            if name is None:
                const += sign * coef
            else:
                coefs[name] = coefs.get(name, 0) + sign * coef
            if self.peek() in (("op", "-"), ("op", "+")):
                sign = -1 if self.take() == "-" else 1
            else:
                break
        return Affine(tuple((n, a) for n, a in coefs.items() if a != 0), const)

    def term(self):
        """``INT``, ``NAME``, ``INT*NAME``, ``NAME*INT`` (or a product of ints); a factor
        after ``*`` may carry a sign (``t*-2``)."""
        coef, name = 1, None
        while True:
            kind, value = self.peek()
            if kind == "int":
                coef *= int(self.take())
            elif kind == "name":
                if name is not None:
                    self.fail(f"index expressions are affine: {name}*{value} multiplies two indices")
                name = self.take()
            else:
                self.fail("expected an index name or an integer")
            if self.peek() == ("op", "*"):
                self.take()
                while self.peek() in (("op", "-"), ("op", "+")):   # a signed factor: t*-2
                    coef *= -1 if self.take() == "-" else 1
            else:
                return name, coef

    def statement(self) -> Statement:
        out = self.access()
        self.take("op", "+=")
        operands = [self.access()]
        while self.peek() == ("op", "*"):
            self.take()
            operands.append(self.access())
        if self.k != len(self.toks):
            self.fail("unexpected text after the last operand")
        return Statement(out, tuple(operands))


def validate(stmt: Statement, text: str = "") -> Statement:
    """The rules of docs/statements.md that parsing alone does not enforce."""
    text = text or str(stmt)
    names = [a.name for a in (stmt.out, *stmt.operands)]
    for n in names:
        if n in RESERVED:
            raise SpecError(f"statement {text!r}: operand name {n!r} is reserved (reserved: {', '.join(sorted(RESERVED))})")
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise SpecError(f"statement {text!r}: operand {sorted(dup)[0]!r} appears more than once; give each array its own name")
    for acc in (stmt.out, *stmt.operands):
        for k, ax in enumerate(acc.axes):
            big = [v for v in (ax.const, *(a for _, a in ax.terms)) if abs(v) > MAX_INTEGER]
            if big:
                raise SpecError(f"statement {text!r}: {acc.name} axis {k} ({ax}) has the integer {big[0]}, beyond "
                                f"{MAX_INTEGER} (2**53): index arithmetic must stay exact in 64-bit integers")
        if not acc.axes:
            raise SpecError(f"statement {text!r}: {acc.name}[] has no axes")
        seen: dict[str, int] = {}
        for k, ax in enumerate(acc.axes):
            for n in ax.names:
                if n in seen:
                    raise SpecError(
                        f"statement {text!r}: index {n!r} repeats within operand {acc.name!r} "
                        f"(axes {seen[n]} and {k}); an index may repeat across operands, not within one")
                seen[n] = k
    return stmt


@functools.lru_cache(maxsize=1024)
def parse(text: str) -> Statement:
    """Parse and validate a statement; raises SpecError naming the problem."""
    if not isinstance(text, str):
        raise SpecError(f"a statement is a str, got {type(text).__name__}")
    return validate(_Parser(text).statement(), text)
