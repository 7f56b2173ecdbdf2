"""Run an op already bound and checked: view the public arrays as the
statement's operands, run the backend, view the result back (no checks)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from .arrays import library_of, shape_of
from .backends.namespaces import namespace
from .errors import ShapeError
from .plan import Plan

__all__ = ["Call", "run_forward", "forward_runner", "run_vjp", "view", "register_rebatch"]


# op kind -> (call, batch) -> the call rebound with that batch; filled by the catalogue
_REBATCH: dict = {}


def register_rebatch(kind: str, fn) -> None:
    """How calls of ``kind`` rebind to another batch size (``Call.with_batch``)."""
    _REBATCH[kind] = fn


@dataclass(frozen=True)
class Call:
    """An op bound to argument shapes.

    ``operands``: (public argument, statement operand, the operand's shape
    in the statement); ``bias``: (argument, shape it broadcasts as against
    the statement's output) or None; ``kind``/``params`` describe catalogue
    ops for native backends."""

    kind: str
    params: tuple
    plan: Plan
    args: tuple[str, ...]
    operands: tuple[tuple[str, str, tuple[int, ...]], ...]
    out_shape: tuple[int, ...]
    bias: tuple[str, tuple[int, ...]] | None = None
    arg_shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()
    empty: bool = False      # an empty batch: ``plan`` is bound with a batch of one, nothing runs

    @property
    def param(self) -> dict:
        return dict(self.params)

    def __hash__(self) -> int:
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash((self.kind, self.params, self.plan, self.args, self.operands, self.out_shape, self.bias,
                      self.empty))
            self.__dict__["_hash"] = h
        return h

    def __getstate__(self):   # string hashes differ between processes: never pickle one
        return {k: v for k, v in self.__dict__.items() if k != "_hash"}

    def flops(self) -> int:
        extra = math.prod(self.out_shape) if self.bias else 0
        return self.plan.flops() + extra

    def with_batch(self, n: int) -> "Call | None":
        """The same op with a batch of ``n`` (x's first axis), or None where
        the op's kind has no such rebinding (an ``el.Op`` statement)."""
        rebatch = _REBATCH.get(self.kind)
        return None if rebatch is None else rebatch(self, n)

    def min_bytes(self, itemsize: int) -> int:
        """Inputs read once, the output written once."""
        return itemsize * (sum(math.prod(s) for _, s in self.arg_shapes) + math.prod(self.out_shape))


def view(library: str, a, shape, what: str, *, must_view: bool = False):
    """``a`` reshaped to ``shape`` (free for contiguous arrays).  With
    ``must_view`` (an ``out=``) a reshape that would copy is a ShapeError."""
    if tuple(a.shape) == tuple(shape):      # (shapes are ints already: no per-axis conversion on the hot path)
        return a
    if not must_view:
        return a.reshape(shape)
    v = namespace(library).view_as(a, tuple(shape))
    if v is not None:
        return v
    raise ShapeError(f"{what} of shape {shape_of(a)} cannot be viewed as {tuple(shape)} without a copy; "
                     f"pass a contiguous array")


def _statement_operands(call: Call, arrays: dict) -> dict:
    lib = library_of(next(a for a in arrays.values() if a is not None))
    return {op: view(lib, arrays[arg], shape, f"argument {arg!r}") for arg, op, shape in call.operands}


def run_forward(call: Call, backend, arrays: dict, out=None):
    """The forward pass on one backend, no checks (they are done): the
    result has the public output shape."""
    lib = library_of(arrays[call.args[0]])
    if call.empty:      # an empty batch: an empty result, nothing to compute
        x = arrays[call.args[0]]
        return out if out is not None else namespace(lib).zeros(call.out_shape, x)
    ops = _statement_operands(call, arrays)
    out_s = None if out is None else view(lib, out, call.plan.out_shape, "out=", must_view=True)
    bias = None
    if call.bias is not None and arrays.get(call.bias[0]) is not None:
        bias = namespace(lib).reshape(arrays[call.bias[0]], call.bias[1])
    y = backend.forward(call, ops, out_s, bias=bias)
    if out is not None:
        return out
    return view(lib, y, call.out_shape, "result")


def forward_runner(call: Call, backend):
    """``run_forward(call, backend, arrays)`` as a callable ``run(arrays)``
    with the views worked out once (repeated calls: `einlocal.fast`)."""
    if call.empty:
        return lambda arrays: run_forward(call, backend, arrays)
    operands = tuple((op, arg, tuple(shape)) for arg, op, shape in call.operands)
    bias_arg, bias_shape = call.bias if call.bias is not None else (None, None)
    out_shape, forward = tuple(call.out_shape), backend.forward

    def run(arrays):
        ops = {}
        for op, arg, shape in operands:
            a = arrays[arg]
            ops[op] = a if a.shape == shape else a.reshape(shape)
        bias = arrays.get(bias_arg) if bias_arg is not None else None
        y = forward(call, ops, None, bias=None if bias is None else bias.reshape(bias_shape))
        return y if y.shape == out_shape else y.reshape(out_shape)
    return run


def run_vjp(call: Call, backend, dy, arrays: dict, wrt, outs: dict | None = None) -> dict:
    """Gradients (argument -> array) on one backend with the derived
    backward statements; no checks."""
    lib = library_of(dy)
    xp = namespace(lib)
    if call.empty:
        return _empty_vjp(call, xp, dy, arrays, wrt, outs or {})
    dy_s = view(lib, dy, call.plan.out_shape, "dy")
    ops = _statement_operands(call, arrays)
    shapes = dict(call.arg_shapes)
    want = {op: arg for arg, op, _ in call.operands if arg in wrt}
    outs = outs or {}
    out_s = {op: view(lib, outs[arg], call.plan.shape[op], f"out[{arg!r}]", must_view=True)
             for op, arg in want.items() if outs.get(arg) is not None}
    want_bias = call.bias is not None and call.bias[0] in wrt and arrays.get(call.bias[0]) is not None
    b_out = outs.get(call.bias[0]) if want_bias else None
    b_view = None if b_out is None else xp.view_as(b_out, tuple(call.bias[1]))     # None: it needs a copy
    fused = backend.vjp_and_bias(call, dy_s, ops, tuple(want), out_s, call.bias[1], b_view) \
        if want and want_bias else None
    grads = fused[0] if fused is not None else backend.vjp(call, dy_s, ops, tuple(want), out_s) if want else {}
    result = {}
    for op, arg in want.items():
        g = grads[op]
        result[arg] = outs[arg] if outs.get(arg) is not None else view(lib, g, shapes[arg], f"gradient of {arg!r}")
    if want_bias:
        bshape = call.bias[1]
        axes = tuple(k for k, s in enumerate(bshape) if s == 1)
        if fused is not None and b_view is not None and fused[1] is b_view:    # summed in place
            result[call.bias[0]] = b_out
        else:
            db = xp.reshape(fused[1] if fused is not None else xp.sum(dy_s, axes), shapes[call.bias[0]])
            result[call.bias[0]] = xp.assign(b_out, db) if b_out is not None else db
    return result




def _empty_vjp(call: Call, xp, dy, arrays: dict, wrt, outs: dict) -> dict:
    """Gradients for an empty batch: zeros (empty for x)."""
    result = {}
    for arg, shape in call.arg_shapes:
        if arg in wrt and arrays.get(arg) is not None:
            o = outs.get(arg)
            z = xp.zeros(shape, dy)
            result[arg] = xp.assign(o, z) if o is not None else z
    return result
