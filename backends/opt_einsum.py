"""Strategy ``opt_einsum``: ``opt_einsum.contract_expression`` over the window
views, the expression built once per spec and shapes and cached."""
from __future__ import annotations

import functools
import math

from .base import ArrayBackend, missing_modules
from .einsum import einsum_of_views
from .lowering import contracted_names

__all__ = ["OptEinsumBackend"]


@functools.lru_cache(maxsize=1024)
def expression(spec: str, shapes: tuple):
    import opt_einsum
    return opt_einsum.contract_expression(spec, *shapes)


class OptEinsumBackend(ArrayBackend):
    strategy = "opt_einsum"

    def unavailable(self):
        return missing_modules("opt_einsum") or super().unavailable()

    def contract(self, xp, views, out_names, ranges, out=None):
        spec = einsum_of_views(views, out_names)
        expr = expression(spec, tuple(tuple(v.shape) for v, _ in views))
        arrays = [v for v, _ in views]
        if out is not None and xp.opt_einsum_backend == "numpy":    # the one backend that takes out=
            return expr(*arrays, out=out)
        with xp.named_precision():
            result = expr(*arrays, backend=xp.opt_einsum_backend)
        return xp.assign(out, result) if out is not None else result

    def contraction_elements(self, plan):
        wins = [plan.windows[a.name] for a in plan.stmt.operands]
        shapes = tuple(w.view_shape for w in wins)
        spec = einsum_of_views([(None, w.names) for w in wins], contracted_names(plan))
        widest = max(shapes, key=math.prod)
        return max((_largest(spec, shapes), "largest opt_einsum intermediate"),
                   (math.prod(widest), f"a window copied for tensordot {widest}"))


@functools.lru_cache(maxsize=1024)
def _largest(spec, shapes):
    import opt_einsum
    _, info = opt_einsum.contract_path(spec, *shapes, shapes=True)
    return int(info.largest_intermediate)


def make(engine):
    return OptEinsumBackend(engine)
