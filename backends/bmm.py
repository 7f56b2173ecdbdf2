"""Strategy ``bmm``: permute and reshape each pair of operands to one batched
matrix multiply (OMEinsum's ``@ein``; for a shared-weight conv this is
im2col + GEMM).  Indices shared by both and kept are the batch, indices
shared and not kept are contracted, the rest are rows and columns."""
from __future__ import annotations

import math

from .base import ArrayBackend

__all__ = ["BmmBackend", "pair_plan"]


def pair_plan(a_names, b_names, keep):
    """Split the indices of a pair: (batch, rows, inner, cols, sum_a, sum_b)."""
    sum_a = tuple(n for n in a_names if n not in b_names and n not in keep)
    sum_b = tuple(n for n in b_names if n not in a_names and n not in keep)
    batch = tuple(n for n in a_names if n in b_names and n in keep)
    inner = tuple(n for n in a_names if n in b_names and n not in keep)
    rows = tuple(n for n in a_names if n not in b_names and n in keep)
    cols = tuple(n for n in b_names if n not in a_names and n in keep)
    return batch, rows, inner, cols, sum_a, sum_b


def _size(names, ranges):
    return math.prod(ranges[n] for n in names)


class BmmBackend(ArrayBackend):
    strategy = "bmm"

    def contract(self, xp, views, out_names, ranges, out=None):
        (acc, names), rest = views[0], list(views[1:])
        while rest:
            b, b_names = rest.pop(0)
            keep = set(out_names).union(*(ns for _, ns in rest))
            batch, rows, inner, cols, sum_a, sum_b = pair_plan(names, b_names, keep)
            if sum_a:
                acc, names = xp.sum(acc, [names.index(n) for n in sum_a]), tuple(n for n in names if n not in sum_a)
            if sum_b:
                b, b_names = xp.sum(b, [b_names.index(n) for n in sum_b]), tuple(n for n in b_names if n not in sum_b)
            A = xp.reshape(xp.permute(acc, [names.index(n) for n in (*batch, *rows, *inner)]),
                           (_size(batch, ranges), _size(rows, ranges), _size(inner, ranges)))
            B = xp.reshape(xp.permute(b, [b_names.index(n) for n in (*batch, *inner, *cols)]),
                           (_size(batch, ranges), _size(inner, ranges), _size(cols, ranges)))
            names = (*batch, *rows, *cols)
            acc = xp.reshape(xp.matmul(A, B), tuple(ranges[n] for n in names))
        drop = [k for k, n in enumerate(names) if n not in out_names]
        if drop or len(views) == 1:   # (a lone operand is copied, never aliased)
            acc = xp.sum(acc, drop)
            names = tuple(n for n in names if n in out_names)
        result = xp.permute(acc, [names.index(n) for n in out_names])
        if out is not None:
            return xp.assign(out, result)
        return result

    def contraction_elements(self, plan):
        ranges = plan.range
        out_names = plan.stmt.out.names
        wins = [plan.windows[a.name] for a in plan.stmt.operands]
        best = (0, "none")
        names = wins[0].names
        for k, w in enumerate(wins[1:], 1):
            keep = set(out_names).union(*(x.names for x in wins[k + 1:]))
            batch, rows, inner, cols, sum_a, sum_b = pair_plan(names, w.names, keep)
            cands = [(_size((*batch, *rows, *inner), ranges), f"{plan.stmt.operands[0].name} as (batch, rows, inner) matrix"),
                     (_size((*batch, *inner, *cols), ranges), f"{w.name} as (batch, inner, cols) matrix"),
                     (_size((*batch, *rows, *cols), ranges), "matmul result")]
            best = max([best, *cands], key=lambda c: c[0])
            names = (*batch, *rows, *cols)
        return best


def make(engine):
    return BmmBackend(engine)
