"""Strategy ``broadcast``: align the window views over every index, multiply
by broadcasting, sum the reduced axes (TensorCast's ``@reduce``).  Its
product tensor spans the whole iteration space: the memory guard's case."""
from __future__ import annotations

from .base import ArrayBackend

__all__ = ["BroadcastBackend"]


class BroadcastBackend(ArrayBackend):
    strategy = "broadcast"

    def grad_modes(self, library: str) -> tuple[str, ...]:
        # jax: no grad="autodiff".  XLA:CPU (jaxlib 0.10) segfaults running the
        # transpose of this multiply-sum for float32: it emits two YNNPACK
        # reduce fusions ("__ynn_fusion") that read one broadcast cotangent
        # and broadcast an operand parameter inside the fusion; float64, the
        # eager vjp, and XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=
        # are all fine.  Per-jit compiler_options would avoid it, but jax
        # refuses them on a jit nested in a vjp or in the user's jit, and no
        # rewriting of the forward changed the transposed program.  The
        # derived backward (grad="vjp") runs one statement per jit and works.
        if library == "jax":
            return ("vjp",)
        return super().grad_modes(library)

    def contract(self, xp, views, out_names, ranges, out=None):
        every = list(out_names)
        for _, ns in views:
            every.extend(n for n in ns if n not in every)
        product = None
        for v, ns in views:
            order = sorted(range(len(ns)), key=lambda k: every.index(ns[k]))
            v = xp.permute(v, order)
            have = [ns[k] for k in order]
            v = xp.reshape(v, tuple(ranges[n] if n in have else 1 for n in every))
            product = v if product is None else xp.mul(product, v)
        summed = tuple(k for k, n in enumerate(every) if n not in out_names)
        product = xp.broadcast_to(product, tuple(ranges[n] for n in every)) if not summed else product
        return xp.sum(product, summed)

    def contraction_elements(self, plan):
        shape = tuple(r for _, r in plan.ranges)
        return plan.iterations, f"broadcast product {shape}"


def make(engine):
    return BroadcastBackend(engine)
