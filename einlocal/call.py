"""Run an op: a ``Call`` binds public arguments to a plan; ``forward`` and
``vjp`` check the arrays, pick the backend, guard memory, then run it.

Every check happens before any work.  The public arrays are viewed as the
statement's operands (channel axes reshaped for free), the backend runs the
statement, and the bias, if any, is added after.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from . import registry
from .arrays import check_same_kind, device_of, dtype_name, library_of, requires_grad, shape_of
from .budget import check_budget
from .errors import BackendError, ShapeError
from .plan import Plan

__all__ = ["Call", "forward", "vjp", "resolve_backend", "GRAD_MODES"]

GRAD_MODES = ("vjp", "autodiff")


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

    @property
    def param(self) -> dict:
        return dict(self.params)

    def __hash__(self) -> int:
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash((self.kind, self.params, self.plan, self.args, self.operands, self.out_shape, self.bias))
            self.__dict__["_hash"] = h
        return h

    def __getstate__(self):   # string hashes differ between processes: never pickle one
        return {k: v for k, v in self.__dict__.items() if k != "_hash"}

    def flops(self) -> int:
        extra = math.prod(self.out_shape) if self.bias else 0
        return self.plan.flops() + extra

    def min_bytes(self, itemsize: int) -> int:
        """Inputs read once, the output written once."""
        return itemsize * (sum(math.prod(s) for _, s in self.arg_shapes) + math.prod(self.out_shape))


def _view(xp_lib, a, shape, what: str, *, must_view: bool = False):
    """``a`` reshaped to ``shape`` (free for contiguous arrays).  With
    ``must_view`` (an ``out=``) a reshape that would copy is a ShapeError."""
    if shape_of(a) == tuple(shape):
        return a
    if not must_view:
        return a.reshape(shape)
    if xp_lib == "torch":
        try:
            return a.view(shape)
        except RuntimeError:
            pass
    elif xp_lib in ("numpy", "cupy"):
        from .backends.namespaces import namespace
        v = namespace(xp_lib).view_as(a, tuple(shape))
        if v is not None:
            return v
    raise ShapeError(f"{what} of shape {shape_of(a)} cannot be viewed as {tuple(shape)} without a copy; "
                     f"pass a contiguous array")


def _auto(call: Call, library: str, device: str, dtype: str | None = None) -> str:
    from .choose import auto_backend
    return auto_backend(call, library, device, dtype=dtype)


def resolve_backend(name, call: Call, library: str, device: str, dtype: str | None = None):
    """The backend object for ``name`` ("auto" included) that can run
    ``call`` on these arrays; BackendError saying why not."""
    if name is None or name == "auto":
        name = _auto(call, library, device, dtype)
    if not isinstance(name, str):
        raise BackendError(f"backend must be a str such as 'bmm:numpy' or 'auto', got {name!r}")
    backend = registry.get(name)
    reason = backend.cannot(call.plan, library=library, device=device, call=call)
    if reason:
        raise BackendError(f"backend {name!r} cannot run {call.kind} here: {reason}")
    return backend


def _check_out(out, shape, dtype: str, library: str, device: str, inputs: dict, what: str = "out="):
    if out is None:
        return
    if library == "jax" or library_of(out) == "jax":
        raise BackendError(f"{what} cannot be used with jax arrays, which are immutable; use the returned value")
    if library_of(out) != library:
        raise ShapeError(f"{what} is a {library_of(out) or type(out).__name__} array but the inputs are {library} arrays")
    if shape_of(out) != tuple(shape):
        raise ShapeError(f"{what} has shape {shape_of(out)} but the result has shape {tuple(shape)}")
    if dtype_name(out) != dtype:
        raise ShapeError(f"{what} has dtype {dtype_name(out)} but the result has dtype {dtype}")
    if device_of(out) != device:
        raise ShapeError(f"{what} is on {device_of(out)} but the inputs are on {device}")
    if requires_grad(out):
        raise ShapeError(f"{what} requires grad; pass a tensor that does not")
    for name, a in inputs.items():
        if a is not None and _overlaps(out, a, library):
            raise ShapeError(f"{what} overlaps the memory of argument {name!r}; pass a separate array")


def _overlaps(a, b, library: str) -> bool:
    if library == "numpy":
        import numpy as np
        return np.shares_memory(a, b)
    if library == "torch":
        sa, sb = a.untyped_storage(), b.untyped_storage()
        if sa.data_ptr() != sb.data_ptr():
            return False
        # same storage: compare the element ranges each covers
        def span(t):
            lo = t.storage_offset()
            hi = lo + sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride()))
            return lo, hi
        (l1, h1), (l2, h2) = span(a), span(b)
        return not (h1 < l2 or h2 < l1)
    if library == "cupy":
        import cupy
        return cupy.shares_memory(a, b)
    return False


def _statement_operands(call: Call, arrays: dict) -> dict:
    lib = library_of(next(a for a in arrays.values() if a is not None))
    return {op: _view(lib, arrays[arg], shape, f"argument {arg!r}") for arg, op, shape in call.operands}


def run_forward(call: Call, backend, arrays: dict, out=None):
    """The forward pass on one backend, no checks (they are done): the
    result has the public output shape."""
    from .backends.namespaces import namespace
    lib = library_of(arrays[call.args[0]])
    ops = _statement_operands(call, arrays)
    out_s = None if out is None else _view(lib, out, call.plan.out_shape, "out=", must_view=True)
    bias = None
    if call.bias is not None and arrays.get(call.bias[0]) is not None:
        bias = namespace(lib).reshape(arrays[call.bias[0]], call.bias[1])
    y = backend.forward(call, ops, out_s, bias=bias)
    if out is not None:
        return out
    return _view(lib, y, call.out_shape, "result")


def run_vjp(call: Call, backend, dy, arrays: dict, wrt, outs: dict | None = None) -> dict:
    """Gradients (argument -> array) on one backend with the derived
    backward statements; no checks."""
    from .backends.namespaces import namespace
    lib = library_of(dy)
    xp = namespace(lib)
    dy_s = _view(lib, dy, call.plan.out_shape, "dy")
    ops = _statement_operands(call, arrays)
    shapes = dict(call.arg_shapes)
    want = {op: arg for arg, op, _ in call.operands if arg in wrt}
    outs = outs or {}
    out_s = {op: _view(lib, outs[arg], call.plan.shape[op], f"out[{arg!r}]", must_view=True)
             for op, arg in want.items() if outs.get(arg) is not None}
    grads = backend.vjp(call, dy_s, ops, tuple(want), out_s)
    result = {}
    for op, arg in want.items():
        g = grads[op]
        result[arg] = outs[arg] if outs.get(arg) is not None else _view(lib, g, shapes[arg], f"gradient of {arg!r}")
    if call.bias is not None and call.bias[0] in wrt and arrays.get(call.bias[0]) is not None:
        bshape = call.bias[1]
        axes = tuple(k for k, s in enumerate(bshape) if s == 1)
        db = xp.reshape(xp.sum(dy_s, axes), shapes[call.bias[0]])
        o = outs.get(call.bias[0])
        result[call.bias[0]] = xp.assign(o, db) if o is not None else db
    return result


def _prepare(call: Call, arrays: dict, backend_name, what: str):
    library, dtype, device = check_same_kind(arrays, what)
    if dtype not in ("float16", "bfloat16", "float32", "float64"):
        raise ShapeError(f"{what}arrays have dtype {dtype}; einlocal computes in floating point "
                         f"(float16, bfloat16, float32, float64)")
    backend = resolve_backend(backend_name, call, library, device, dtype)
    return backend, library, dtype, device


def forward(call: Call, arrays: dict, *, backend="auto", out=None, grad="vjp"):
    """Check everything, then run the forward pass (differentiably when the
    arrays ask for gradients)."""
    if grad not in GRAD_MODES:
        raise BackendError(f"grad must be one of {GRAD_MODES}, got {grad!r}")
    backend_obj, library, dtype, device = _prepare(call, arrays, backend, "")
    if grad not in backend_obj.grad_modes(library):
        raise BackendError(f"backend {backend_obj.name} has no grad={grad!r} for {library} arrays "
                           f"(it has {', '.join(backend_obj.grad_modes(library))})")
    _check_out(out, call.out_shape, dtype, library, device, arrays)
    itemsize = next(a for a in arrays.values() if a is not None).dtype.itemsize
    check_budget(backend_obj, call.plan, itemsize)
    if library == "torch":
        from .backends import autograd_torch
        if autograd_torch.wants_grad(arrays):
            if out is not None:
                raise ShapeError("out= cannot be used when an input requires grad (autograd needs a fresh result)")
            return autograd_torch.apply(call, backend_obj, arrays, grad)
    if library == "jax" and grad == "vjp":
        from .backends import autograd_jax
        return autograd_jax.apply(call, backend_obj, arrays)
    return run_forward(call, backend_obj, arrays, out)


def vjp(call: Call, dy, arrays: dict, *, backend="auto", wrt=None, out=None, grad="vjp") -> tuple:
    """Gradients of every array argument (None where the argument is None or
    not in ``wrt``), in argument order."""
    args_given = [a for a in call.args if arrays.get(a) is not None]
    wrt = tuple(args_given) if wrt is None else tuple([wrt] if isinstance(wrt, str) else wrt)
    for w in wrt:
        if w not in call.args:
            raise ShapeError(f"wrt names {w!r}, which is not an array argument (arguments: {', '.join(call.args)})")
    backend_obj, library, dtype, device = _prepare(call, {**arrays, "dy": dy}, backend, "")
    if shape_of(dy) != tuple(call.out_shape):
        raise ShapeError(f"dy has shape {shape_of(dy)} but the op's output has shape {tuple(call.out_shape)}")
    if grad not in backend_obj.grad_modes(library):
        raise BackendError(f"backend {backend_obj.name} has no grad={grad!r} for {library} arrays")
    outs = {}
    if out is not None:
        if not isinstance(out, (tuple, list)) or len(out) != len(call.args):
            raise ShapeError(f"out= for gradients must be a tuple of {len(call.args)} entries "
                             f"({', '.join(call.args)}), got {type(out).__name__}")
        shapes = dict(call.arg_shapes)
        for arg, o in zip(call.args, out):
            if o is not None:
                _check_out(o, shapes[arg], dtype, library, device, arrays, f"out[{arg!r}]")
                outs[arg] = o
    itemsize = dy.dtype.itemsize
    for arg, op, _ in call.operands:
        if arg in wrt:
            check_budget(backend_obj, call.plan.backward[op], itemsize)
    wanted = tuple(w for w in wrt if arrays.get(w) is not None)
    if grad == "autodiff":
        from .backends import autodiff
        grads = autodiff.vjp(call, backend_obj, dy, arrays, wanted, library)
        for arg, o in outs.items():
            if arg in grads:
                grads[arg] = namespace_assign(library, o, grads[arg])
    else:
        grads = run_vjp(call, backend_obj, dy, arrays, wanted, outs)
    return tuple(grads.get(a) for a in call.args)


def namespace_assign(library, out, value):
    from .backends.namespaces import namespace
    return namespace(library).assign(out, value)
