"""einlocal ops as torch autograd functions: the backward runs the derived
backward statements on the same backend, and only for the inputs autograd
asks for (``needs_input_grad``: a first layer never pays for dx)."""
from __future__ import annotations

import torch


__all__ = ["wants_grad", "apply"]


def wants_grad(arrays: dict) -> bool:
    """Whether autograd records a call on these tensors (every one a torch tensor: checked before)."""
    return torch.is_grad_enabled() and any(a is not None and a.requires_grad for a in arrays.values())


class _EinlocalFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, call, backend, names, *tensors):
        from ..run import run_forward
        ctx.call, ctx.backend, ctx.names = call, backend, names
        ctx.save_for_backward(*tensors)
        return run_forward(call, backend, dict(zip(names, tensors)))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        from ..run import run_vjp
        tensors = ctx.saved_tensors
        wrt = tuple(n for n, need in zip(ctx.names, ctx.needs_input_grad[3:]) if need)
        grads = run_vjp(ctx.call, ctx.backend, dy.contiguous(), dict(zip(ctx.names, tensors)), wrt)
        return (None, None, None, *(grads.get(n) for n in ctx.names))


def apply(call, backend, arrays: dict, grad: str):
    """The forward pass, recorded for autograd."""
    from ..run import run_forward
    if grad == "autodiff":     # torch differentiates the forward lowering itself
        return run_forward(call, backend, arrays)
    names = tuple(n for n in call.args if arrays.get(n) is not None)
    return _EinlocalFunction.apply(call, backend, names, *(arrays[n] for n in names))
