"""einlocal ops under jax transformations, as one jax primitive.

``jax.jvp`` (forward mode), ``jax.grad``/``jax.vjp`` (reverse mode), ``jit``
and ``vmap`` all work.  The op is linear in each array argument, so

    jvp:        d op(x, w) + db = op(dx, w) + op(x, dw) + db
    transpose:  of op(., w) is the derived backward statement for dx,
                of op(x, .) the one for dweight (``run_vjp``)

Each tangent term is the same primitive (without the bias), so reverse mode
transposes it with the derived backward statements, and forward mode simply
evaluates it; higher orders compose (the rule is bilinear).  ``vmap`` folds a
batch of inputs into the op's batch axis where it can (catalogue ops, only
``x`` batched), else maps the primitive over the batch (``lax.map``).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

__all__ = ["apply", "einlocal_p"]

# Parameters of every bind: call (the Call), backend (the Backend object),
# names (the public arguments given, in order: x, weight[, bias]).
einlocal_p = Primitive("einlocal")


def apply(call, backend, arrays: dict):
    """The forward pass, differentiable in both modes."""
    names = tuple(n for n in call.args if arrays.get(n) is not None)
    return einlocal_p.bind(*(arrays[n] for n in names), call=call, backend=backend, names=names)


# -- evaluation ------------------------------------------------------------------

def _forward(*xs, call, backend, names):
    from einlocal.run import run_forward
    return run_forward(call, backend, dict(zip(names, xs)))


@functools.lru_cache(maxsize=512)
def _jitted_forward(call, backend, names):
    return jax.jit(functools.partial(_forward, call=call, backend=backend, names=names))


def _impl(*xs, call, backend, names):
    return _jitted_forward(call, backend, names)(*xs)


def _abstract(*avals, call, backend, names):
    return jax.core.ShapedArray(tuple(call.out_shape), avals[0].dtype)


einlocal_p.def_impl(_impl)
einlocal_p.def_abstract_eval(_abstract)
mlir.register_lowering(einlocal_p, mlir.lower_fun(_forward, multiple_results=False))


# -- forward mode: the op applied to each tangent ----------------------------------

def _jvp(primals, tangents, *, call, backend, names):
    y = einlocal_p.bind(*primals, call=call, backend=backend, names=names)
    linear = tuple(n for n in names if n != "bias")
    terms = []
    for k, (name, t) in enumerate(zip(names, tangents)):
        if type(t) is ad.Zero:
            continue
        if name == "bias":
            # the bias broadcasts against the statement's output, as in run_forward
            terms.append(jnp.broadcast_to(jnp.reshape(t, call.bias[1]), call.plan.out_shape).reshape(y.shape))
            continue
        args = [t if j == k else primals[j] for j, n in enumerate(names) if n != "bias"]
        terms.append(einlocal_p.bind(*args, call=call, backend=backend, names=linear))
    if not terms:
        return y, ad.Zero.from_primal_value(y)
    return y, functools.reduce(lambda a, b: a + b, terms)


ad.primitive_jvps[einlocal_p] = _jvp


# -- reverse mode: the derived backward statements ---------------------------------

@functools.lru_cache(maxsize=512)
def _jitted_grad(call, backend, names, wrt):
    """ct, defined arguments -> gradient of argument ``wrt`` (jitted, so the
    placeholder for the unknown argument costs nothing)."""
    from einlocal.run import run_vjp
    shapes = dict(call.arg_shapes)

    def grad(ct, *defined):
        arrays = dict(zip((n for n in names if n != wrt), defined))
        arrays[wrt] = jnp.zeros(shapes[wrt], ct.dtype)
        return run_vjp(call, backend, ct, arrays, (wrt,))[wrt]
    return jax.jit(grad)


def _transpose(ct, *xs, call, backend, names):
    undefined = [n for n, x in zip(names, xs) if ad.is_undefined_primal(x)]
    if len(undefined) != 1 or "bias" in names:
        raise NotImplementedError(f"einlocal: transpose with respect to {undefined} of {names}")
    wrt = undefined[0]
    k = names.index(wrt)
    if type(ct) is ad.Zero:
        g = ad.Zero(xs[k].aval)
    else:
        g = _jitted_grad(call, backend, names, wrt)(ct, *(x for x in xs if not ad.is_undefined_primal(x)))
    return [g if j == k else None for j in range(len(xs))]


ad.primitive_transposes[einlocal_p] = _transpose


# -- vmap ----------------------------------------------------------------------------

def _batch(axis_data, xs, dims, *, call, backend, names):
    if all(d is None for d in dims):
        return einlocal_p.bind(*xs, call=call, backend=backend, names=names), None
    xs = [x if d is None else jnp.moveaxis(x, d, 0) for x, d in zip(xs, dims)]
    batched = {n for n, d in zip(names, dims) if d is not None}
    folded = _fold_batch(call, backend, names, xs) if batched == {"x"} else None
    if folded is not None:
        return folded, 0
    idx = [j for j, d in enumerate(dims) if d is not None]

    def one(slices):
        args = list(xs)
        for j, s in zip(idx, slices):
            args[j] = s
        return einlocal_p.bind(*args, call=call, backend=backend, names=names)
    return jax.lax.map(one, [xs[j] for j in idx]), 0


def _fold_batch(call, backend, names, xs):
    """An op with only x batched, whose kind rebinds to another batch
    (catalogue ops): (B, N, ...) runs as (B*N, ...)."""
    x = xs[0]
    B, N = x.shape[:2]
    big = call.with_batch(B * N)
    if big is None:
        return None
    x2 = x.reshape((B * N,) + x.shape[2:])
    y = einlocal_p.bind(x2, *xs[1:], call=big, backend=backend, names=names)
    return y.reshape((B, N) + y.shape[1:])


batching.fancy_primitive_batchers[einlocal_p] = _batch
