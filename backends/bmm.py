"""Strategy ``bmm``: permute and reshape each pair of operands to one batched
matrix multiply (OMEinsum's ``@ein``; for a shared-weight conv this is
im2col + GEMM).  Indices shared by both and kept are the batch, indices
shared and not kept are contracted, the rest are rows and columns."""
from __future__ import annotations

import math

from .base import ArrayBackend
from .workspace import scratch

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


def _by_stride(names, view_names, strides):
    """``names`` ordered outermost-first by their stride in the view, so a
    copy into matrix layout reads the longest contiguous runs."""
    st = dict(zip(view_names, strides))
    return tuple(sorted(names, key=lambda n: -abs(st[n])))


def _by_request(names, wanted, view_names, strides):
    """``names`` in the order of ``wanted`` (the result's requested order),
    those not in it after, by stride."""
    rest = _by_stride([n for n in names if n not in wanted], view_names, strides)
    return tuple(n for n in wanted if n in names) + rest


class BmmBackend(ArrayBackend):
    strategy = "bmm"

    def _matrix(self, xp, view, names, groups, ranges, key):
        """``view`` as a (batch, rows, cols) matrix stack: a free reshape when
        the permuted view allows one, else a copy into a reused buffer."""
        order = [n for g in groups for n in g]
        permuted = xp.permute(view, [names.index(n) for n in order])
        shape3 = tuple(_size(g, ranges) for g in groups)
        m = xp.view_as(permuted, shape3)
        if m is not None and (not xp.has_strided or 1 in xp.strides(m)[1:]):
            return m            # free, and BLAS can read it (a unit stride per matrix)
        if getattr(view, "requires_grad", False):   # autograd keeps it: never a reused buffer
            return xp.reshape(permuted, shape3)
        buf = scratch(xp, key, shape3, view)
        xp.assign(xp.view_as(buf, tuple(permuted.shape)), permuted)
        return buf

    def contract(self, xp, views, out_names, ranges, out=None):
        (acc, names), rest = views[0], list(views[1:])
        step = 0
        while rest:
            b, b_names = rest.pop(0)
            keep = set(out_names).union(*(ns for _, ns in rest))
            batch, rows, inner, cols, sum_a, sum_b = pair_plan(names, b_names, keep)
            if sum_a:
                acc, names = xp.sum(acc, [names.index(n) for n in sum_a]), tuple(n for n in names if n not in sum_a)
            if sum_b:
                b, b_names = xp.sum(b, [b_names.index(n) for n in sum_b]), tuple(n for n in b_names if n not in sum_b)
            if xp.has_strided:
                # shared groups follow the larger operand's memory order
                big, big_names = (acc, names) if math.prod(acc.shape) >= math.prod(b.shape) else (b, b_names)
                bst = xp.strides(big)
                batch = _by_stride(batch, big_names, bst)
                inner = _by_stride(inner, big_names, bst)
                # rows and columns land in the result: the requested order
                rows = _by_request(rows, out_names, names, xp.strides(acc))
                cols = _by_request(cols, out_names, b_names, xp.strides(b))
            # Columns the caller wants outermost (a fold's kernel taps) become
            # a batch of their own, broadcast over A: the result then holds
            # each tap's block contiguously.
            lead = ()
            if not rest and batch and xp.name == "numpy":   # (torch materialises the broadcast: slower)
                lead = tuple(n for n in out_names[:len(cols)] if n in cols)
                lead = lead[:next((k for k, n in enumerate(lead) if n != out_names[k]), len(lead))]
                cols = tuple(n for n in cols if n not in lead)
            A = self._matrix(xp, acc, names, (batch, rows, inner), ranges, (self.name, id(self), step, "A"))
            B = self._matrix(xp, b, b_names, (lead, batch, inner, cols) if lead else (batch, inner, cols),
                             ranges, (self.name, id(self), step, "B"))
            if lead:
                A = xp.reshape(A, (1, *A.shape))
            names = (*lead, *batch, *rows, *cols)
            target = None
            if out is not None and not rest and names == tuple(out_names) and not lead:
                target = xp.view_as(out, tuple(A.shape[:2]) + (B.shape[2],))
            C = xp.matmul(A, B, out=target) if target is not None else xp.matmul(A, B)
            if target is not None:
                return out
            acc = xp.reshape(C, tuple(ranges[n] for n in names))
            step += 1
        drop = [k for k, n in enumerate(names) if n not in out_names]
        if drop or len(views) == 1:   # (a lone operand is copied, never aliased)
            acc = xp.sum(acc, drop)
            names = tuple(n for n in names if n in out_names)
        result = xp.permute(acc, [names.index(n) for n in out_names])
        if out is not None:
            return xp.assign(out, result)
        return result

    def layouts(self, plan):
        """For a window that repeats its array's elements (overlapping
        kernel windows), move the axes that carry only contracted indices
        innermost (channels-last for a conv): the im2col copy then reads
        runs of kw*Cin elements instead of kw."""
        ops = plan.stmt.operands
        if len(ops) != 2:
            return {}
        wins = [plan.windows[a.name] for a in ops]
        keep = set(plan.stmt.out.names)
        _, _, inner, _, _, _ = pair_plan(wins[0].names, wins[1].names, keep)
        out = {}
        for acc, w in zip(ops, wins):
            if math.prod(w.view_shape) < 2 * math.prod(w.shape):
                continue
            only_inner = [k for k, ax in enumerate(acc.axes) if ax.names and set(ax.names) <= set(inner)]
            order = [k for k in range(len(acc.axes)) if k not in only_inner] + only_inner
            if order != list(range(len(acc.axes))):
                out[acc.name] = tuple(order)
        return out

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
