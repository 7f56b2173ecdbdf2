"""``grad="autodiff"`` for ``el.vjp``: the library differentiates the forward
lowering (torch autograd, ``jax.vjp``), for comparison with the derived
backward statements."""
from __future__ import annotations

__all__ = ["vjp"]


def vjp(call, backend, dy, arrays: dict, wrt, library: str) -> dict:
    from ..call import run_forward
    if library == "torch":
        import torch
        leaves = {n: (a.detach().requires_grad_(n in wrt) if a is not None else None) for n, a in arrays.items()}
        with torch.enable_grad():
            y = run_forward(call, backend, leaves)
            grads = torch.autograd.grad(y, [leaves[n] for n in wrt], dy)
        return dict(zip(wrt, grads))
    if library == "jax":
        import jax
        names = tuple(n for n in call.args if arrays.get(n) is not None)
        fixed = {n: arrays[n] for n in names if n not in wrt}

        def f(*xs):
            return run_forward(call, backend, {**fixed, **dict(zip(wrt, xs))})

        _, pullback = jax.vjp(f, *(arrays[n] for n in wrt))
        return dict(zip(wrt, pullback(dy)))
    raise ValueError(f"grad='autodiff' needs torch or jax arrays, not {library}")
