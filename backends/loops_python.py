"""``loops:python``: the reference.  Plain Python loops in float64 that follow
the statement literally; every other backend is measured against it.  Small
shapes only."""
from __future__ import annotations

import itertools
import math

import numpy as np

from .base import Backend

__all__ = ["reference", "PythonLoops"]


def _addressing(acc, shape, index_pos):
    """Per axis: (constant, ((position in the iteration point, coefficient), ...), size)."""
    strides = [math.prod(shape[k + 1:]) for k in range(len(shape))]
    axes = tuple((ax.const, tuple((index_pos[n], a) for n, a in ax.terms), size, stride)
                 for ax, size, stride in zip(acc.axes, shape, strides))
    return axes


def _offset(axes, pt):
    off = 0
    for const, terms, size, stride in axes:
        v = const
        for pos, a in terms:
            v += a * pt[pos]
        if v < 0 or v >= size:
            return -1
        off += v * stride
    return off


def reference(plan, operands: dict, *, absolute: bool = False) -> np.ndarray:
    """The statement evaluated by loops in float64 (on |operands| when
    ``absolute``: the scale of the rounding error a result may carry)."""
    stmt = plan.stmt
    ranges = plan.range
    index_pos = {n: k for k, n in enumerate(stmt.indices)}
    data, addr = [], []
    for acc in stmt.operands:
        a = np.asarray(operands[acc.name], dtype=np.float64)
        data.append((np.abs(a) if absolute else a).ravel().tolist())
        addr.append(_addressing(acc, a.shape, index_pos))
    out_addr = _addressing(stmt.out, plan.out_shape, index_pos)
    y = [0.0] * math.prod(plan.out_shape)
    for pt in itertools.product(*(range(ranges[n]) for n in stmt.indices)):
        term = 1.0
        for d, ax in zip(data, addr):
            off = _offset(ax, pt)
            if off < 0:          # a padded read: zero
                break
            term *= d[off]
        else:
            off = _offset(out_addr, pt)
            if off >= 0:         # writes outside the output are dropped
                y[off] += term
    return np.array(y, dtype=np.float64).reshape(plan.out_shape)


class PythonLoops(Backend):
    strategy = "loops"
    engine = "python"
    takes = ("numpy",)

    def grad_modes(self, library):
        return ("vjp",)

    def execute(self, plan, operands, out=None):
        dtype = next(iter(operands.values())).dtype
        y = reference(plan, operands).astype(dtype)
        if out is not None:
            out[...] = y
            return out
        return y


def make(engine="python"):
    return PythonLoops()
