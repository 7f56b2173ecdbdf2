"""The float64 reference of a bound call: its output and gradients, each with its scale and term count."""
from __future__ import annotations

import math

import numpy as np

__all__ = ["reference_outputs", "terms"]


def terms(plan) -> int:
    """At most how many terms add into one output element: the summed
    ranges, times the taps that can overlap for an affine-indexed output."""
    r = plan.range
    summed = math.prod(r[n] for n in plan.stmt.summed)
    return summed * (_overlap(plan) if plan.scatter else 1)


def _overlap(plan) -> int:
    """How many taps can land on one output element (the product of tap ranges)."""
    from .backends.lowering import main_indices
    _, taps = main_indices(plan.out_window)
    r = plan.range
    return math.prod(r[t] for t in taps) if taps else 1


def _evaluator(call, backend):
    """(forward(ops), gradients(dy, ops)) on statement operands in float64: the
    literal loops (`backend` None) or a float64 lowering (a registry backend)."""
    names = tuple(op for _, op, _ in call.operands)
    if backend is None:
        from .backends.loops_python import reference

        def forward(ops):
            return reference(call.plan, ops)

        def gradients(dy_s, ops):
            out = {}
            for op in names:
                bplan = call.plan.backward[op]
                bops = {bplan.stmt.operands[0].name: dy_s, **{a.name: ops[a.name] for a in bplan.stmt.operands[1:]}}
                out[op] = reference(bplan, bops)
            return out
        return forward, gradients

    def forward(ops):
        return np.asarray(backend.forward(call, ops, None, bias=None))

    def gradients(dy_s, ops):
        return {op: np.asarray(g) for op, g in backend.vjp(call, dy_s, ops, names, {}).items()}
    return forward, gradients


def reference_outputs(call, arrays: dict, dy, backend=None) -> dict:
    """The float64 forward and gradients of `call` on `arrays` (by argument name)
    and `dy`, with their scale (the statement run on |operands|) and term
    counts: name ("y", "dx", "dweight", ...) -> (value, scale, terms).

    `backend`: None for the literal loops (exact, small shapes only), or a
    registry backend that computes in float64 (a full-size reference)."""
    ops = {op: np.asarray(arrays[arg], np.float64).reshape(shape) for arg, op, shape in call.operands}
    absolute = {op: np.abs(a) for op, a in ops.items()}
    dy_s = np.asarray(dy, np.float64).reshape(call.plan.out_shape)
    forward, gradients = _evaluator(call, backend)
    out = {}
    y, ys = forward(ops), forward(absolute)
    n = terms(call.plan)
    has_bias = call.bias is not None and arrays.get(call.bias[0]) is not None
    if has_bias:
        b = np.asarray(arrays[call.bias[0]], np.float64).reshape(call.bias[1])
        y, ys, n = y.reshape(call.plan.out_shape) + b, ys.reshape(call.plan.out_shape) + np.abs(b), n + 1
    out["y"] = (y.reshape(call.out_shape), ys.reshape(call.out_shape), n)
    shapes = dict(call.arg_shapes)
    grads, grads_abs = gradients(dy_s, ops), gradients(np.abs(dy_s), absolute)
    for arg, op, _ in call.operands:
        out["d" + arg] = (grads[op].reshape(shapes[arg]), grads_abs[op].reshape(shapes[arg]),
                          terms(call.plan.backward[op]))
    if has_bias:
        axes = tuple(k for k, s in enumerate(call.bias[1]) if s == 1)
        bshape = shapes[call.bias[0]]
        out["d" + call.bias[0]] = (dy_s.sum(axis=axes).reshape(bshape), np.abs(dy_s).sum(axis=axes).reshape(bshape),
                                   math.prod(call.plan.out_shape) // math.prod(bshape))
    return out
