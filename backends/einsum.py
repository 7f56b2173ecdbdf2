"""Strategy ``einsum``: the library's own einsum over the window views."""
from __future__ import annotations

import math
import string

from .base import ArrayBackend

__all__ = ["EinsumBackend", "einsum_of_views"]


def einsum_of_views(views, out_names) -> str:
    """The einsum string for views labelled with index names."""
    names = []
    for _, ns in views:
        names.extend(n for n in ns if n not in names)
    letter = dict(zip(names, string.ascii_letters))
    ins = ",".join("".join(letter[n] for n in ns) for _, ns in views)
    return f"{ins}->{''.join(letter[n] for n in out_names)}"


class EinsumBackend(ArrayBackend):
    strategy = "einsum"

    def __init__(self, engine: str):
        super().__init__(engine)
        # a library whose einsum is one loop of products: no copies, a small share of the matmul rate
        self.efficiency = 0.03 if self.xp.einsum_loops else None

    def contract(self, xp, views, out_names, ranges, out=None):
        return xp.einsum(einsum_of_views(views, out_names), *(v for v, _ in views), out=out)

    def contraction_elements(self, plan):
        if self.xp.einsum_loops:   # the loop writes the output only
            return 0, "none"
        # the frameworks lower einsum to permute+reshape+bmm, copying operands
        sizes = [(math.prod(w.view_shape), f"{w.name} window {w.view_shape}") for w in plan.windows.values()]
        return max(sizes)


def make(engine):
    return EinsumBackend(engine)
