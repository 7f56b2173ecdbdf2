"""The bound statements of a test case (an op, its shapes and params), for
the tests that look at each statement's kernel: the forward first, then
every backward statement.  The arrays are zeros: only their shapes count."""
from __future__ import annotations

import numpy as np

import einlocal as el


def statement_plans(op, kw: dict) -> list:
    """``op`` bound to ``kw`` (shapes under the operands' names, the rest
    params); an ``el.Op`` takes its shapes as they are."""
    if isinstance(op, el.Op):
        plan = op.bind(**kw)
    else:
        arrays = {k: np.zeros(v) for k, v in kw.items() if k in ("x", "weight")}
        plan = op.bind(arrays["x"], arrays["weight"], **{k: v for k, v in kw.items() if k not in arrays}).plan
    return [plan, *plan.backward.values()]
