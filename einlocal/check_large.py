"""The reference of a large check: the pure-Python float64 reference takes
about a second per 100,000 multiply-adds, hours on a realistic layer.  Above
``REFERENCE_LIMIT`` multiply-adds, ``el.check`` compares against a fast
float64 lowering instead, one that first passed the pure-Python reference
on the same op reduced to a batch of one and one channel per group (the same
statement, strides, padding and spatial sizes; as ``einlocal compare``
checks at reduced shapes); the report says so.  An ``el.Op`` statement has no batch to reduce: it keeps the
pure-Python reference, announced through ``progress``."""
from __future__ import annotations

import math

import numpy as np

from .errors import EinlocalError

__all__ = ["REFERENCE_LIMIT", "FAST_REFERENCES", "large_reference", "fast_reference"]

REFERENCE_LIMIT = 3e5            # multiply-adds (forward), about 3 s of pure-Python reference in all
FAST_REFERENCES = ("bmm:numpy", "einsum:numpy", "loops:numba")


def large_reference(op, call, arrays, dy, seed, shapes, params, dtype, progress=None, limit=None, *, run_check,
                    terms, eps):
    """``fast_reference`` where the op is above ``limit`` multiply-adds
    (default ``REFERENCE_LIMIT``), else None (the pure-Python reference);
    ``progress`` hears of a pure-Python reference above the limit.
    ``run_check``, ``terms``, ``eps``: `einlocal.check`'s ``check``,
    ``_terms`` and ``_EPS`` (passed in: this module is below it)."""
    limit = REFERENCE_LIMIT if limit is None else limit
    if call.flops() <= limit:
        return None
    found = fast_reference(op, call, arrays, dy, seed, shapes, params, dtype, progress, run_check=run_check,
                           terms=terms, eps=eps)
    if found is None and progress is not None:
        progress(f"reference: pure-Python float64 loops over {call.flops():,} multiply-adds "
                 f"(about {call.flops() / 1e5:,.0f} s)")
    return found


def fast_reference(op, call, arrays: dict, dy, seed: int, shapes: dict, params: dict, dtype: str,
                   progress=None, *, run_check, terms, eps):
    """(reference outputs as ``check.reference_outputs`` gives them, the
    reference VJP error, a note for the report), or None where no fast
    lowering qualifies (the caller then runs the pure-Python reference)."""
    from . import registry
    small_shapes = reduced_shapes(op, shapes, params)
    if small_shapes is None:
        return None
    size = "batch 1, one channel per group"
    for name in FAST_REFERENCES:
        if name not in registry.available():
            continue
        if progress is not None:
            progress(f"reference: checking {name} float64 against the pure-Python reference at {size}")
        try:
            small_report = run_check(op, backends=[name], dtype="float64", seed=seed, reference_limit=math.inf,
                                 **small_shapes, **params)
        except EinlocalError:
            continue
        if not small_report.ok or small_report.rows[0].status != "pass":
            continue
        if progress is not None:
            progress(f"reference: {name} float64 at full size")
        try:
            ref = _outputs(call, name, arrays, dy, terms, float(eps["float64"]) / float(eps[dtype]))
        except EinlocalError:        # the memory guard, or a refusal at full size: the next one
            continue
        note = (f"reference: {name} in float64 at full size, which passed the pure-Python float64 reference "
                f"at {size} (worst err/tol {small_report.rows[0].worst:.2g}); the op has {call.flops():,} "
                f"multiply-adds, above the pure-Python limit of {REFERENCE_LIMIT:,.0f}")
        return ref, small_report.reference_vjp_error, note
    return None


def _outputs(call, name: str, arrays: dict, dy, count_terms, eps_ratio: float) -> dict:
    """name -> (value, scale, terms) as ``check.reference_outputs``, from
    lowering ``name`` in float64: the op is multilinear, so running it on
    |operands| gives the sum of |terms| (the scale).  The terms count is
    raised so the tolerance also holds this reference's own float64
    rounding bound."""
    from .call import forward, vjp
    absolute = {k: None if v is None else np.abs(v) for k, v in arrays.items()}

    def terms(k: int) -> float:
        return (k + 2) * (1.0 + eps_ratio) - 2
    out = {}
    has_bias = call.bias is not None and arrays.get(call.bias[0]) is not None
    y = forward(call, arrays, backend=name)
    ys = forward(call, absolute, backend=name)
    out["y"] = (y, ys, terms(count_terms(call.plan) + (1 if has_bias else 0)))
    grads = vjp(call, dy, arrays, backend=name)
    scales = vjp(call, np.abs(dy), absolute, backend=name)
    shapes = dict(call.arg_shapes)
    bplans = {arg: call.plan.backward[op] for arg, op, _ in call.operands}
    for arg, g, gs in zip(call.args, grads, scales):
        if g is None:
            continue
        k = count_terms(bplans[arg]) if arg in bplans else math.prod(call.out_shape) // math.prod(shapes[arg])
        out["d" + arg] = (g, gs, terms(k))
    return out


def reduced_shapes(op, shapes: dict, params: dict) -> dict | None:
    """The catalogue op's shapes with a batch of one and one channel per
    group (the same statement, stride, padding and dilation, the same
    spatial sizes); None for an ``el.Op`` statement."""
    from .arrays import Shaped
    x, w, b = shapes.get("x"), shapes.get("weight"), shapes.get("bias")
    if x is None or w is None or getattr(op, "name", None) not in _CHANNELS:
        return None
    g = int(params.get("groups", 1)) if op.name == "conv2d" else 1
    cin, cout = _CHANNELS[op.name](g)
    small = {"x": (1, cin, *x[2:]), "weight": (cout, w[1] if op.name == "depthwise_conv2d" else cin // g, *w[2:])}
    if b is not None:
        small["bias"] = (cout, *b[1:])
    try:
        op.bind_arrays({k: Shaped(v) for k, v in small.items()}, params)
    except EinlocalError:
        return None
    return small


# op -> groups -> (input channels, output channels) of its reduced form
_CHANNELS = {
    "conv2d": lambda g: (g, g),
    "depthwise_conv2d": lambda g: (1, 1),
    "locally_connected2d": lambda g: (1, 1),
    "locally_connected1d": lambda g: (1, 1),
}
