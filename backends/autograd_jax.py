"""einlocal ops under jax transformations: ``jax.grad``/``jax.vjp`` run the
derived backward statements (a ``custom_vjp``), one traced function per
call and backend."""
from __future__ import annotations

import functools

import jax

__all__ = ["apply"]


@functools.lru_cache(maxsize=512)
def _differentiable(call, backend, names):
    from ..call import run_forward, run_vjp

    @jax.custom_vjp
    def op(*xs):
        return run_forward(call, backend, dict(zip(names, xs)))

    def fwd(*xs):
        return op(*xs), xs

    def bwd(xs, dy):
        grads = run_vjp(call, backend, dy, dict(zip(names, xs)), names)
        return tuple(grads[n] for n in names)

    op.defvjp(fwd, bwd)
    return op


def apply(call, backend, arrays: dict):
    names = tuple(n for n in call.args if arrays.get(n) is not None)
    return _differentiable(call, backend, names)(*(arrays[n] for n in names))
