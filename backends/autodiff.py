"""``grad="autodiff"`` for ``el.vjp``: the library differentiates the forward
lowering (torch autograd, ``jax.vjp``), for comparison with the derived
backward statements.  Each library's class holds its own hook."""
from __future__ import annotations

from .namespaces import namespace

__all__ = ["vjp"]


def vjp(call, backend, dy, arrays: dict, wrt, library: str) -> dict:
    return namespace(library).autodiff_vjp(call, backend, dy, arrays, wrt)
