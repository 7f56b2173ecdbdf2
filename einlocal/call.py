"""Run an op from the public entry points: check the arrays and ``out=``,
pick the backend (``auto`` included), guard memory, then run the bound call
(`einlocal.run`), recorded for the library's autodiff where it asks.

Every check happens before any work.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from . import auto, registry
from .arrays import check_same_kind, device_of, dtype_name, library_of, requires_grad, shape_of
from .backends import autodiff
from .backends.namespaces import namespace
from .budget import check_budget, memory_budget
from .errors import BackendError, ShapeError
from .run import Call, forward_runner, run_forward, run_vjp

__all__ = ["Call", "forward", "vjp", "resolve_backend", "prepare", "execute", "runner", "Prepared",
           "prepare_vjp", "execute_vjp", "vjp_runner", "PreparedVjp", "GRAD_MODES"]

GRAD_MODES = ("vjp", "autodiff")
FLOATS = ("float16", "bfloat16", "float32", "float64")


def resolve_backend(name, call: Call, library: str, device: str, dtype: str | None = None, grad: str | None = None):
    """The backend object for ``name`` ("auto" included) that can run
    ``call`` on these arrays (dtype, and grad mode where given);
    BackendError saying why not."""
    if name is None or name == "auto":
        name = auto.auto_backend(call, library, device, dtype=dtype)
        if registry.get(name).refuses(library=library, device=device, dtype=dtype, grad=grad, plan=call.plan, call=call):
            # the cached or modelled pick cannot do what this call asks: the best that can
            name = auto._unmeasured_choice(call, library, device, dtype, memory_budget() >> 24, grad)
    if not isinstance(name, str):
        raise BackendError(f"backend must be a str such as 'bmm:numpy' or 'auto', got {name!r}")
    backend = registry.get(name)
    reason = backend.refuses(library=library, device=device, dtype=dtype, plan=call.plan, call=call)
    if reason:
        raise BackendError(f"backend {name!r} cannot run {call.kind} here: {reason}")
    return backend


def _check_out(out, shape, dtype: str, library: str, device: str, inputs: dict, what: str = "out="):
    if out is None:
        return
    xp = namespace(library)
    if xp.functional or (library_of(out) is not None and namespace(library_of(out)).functional):
        raise BackendError(f"{what} cannot be used with {library} arrays, which are immutable; "
                           f"use the returned value")
    if library_of(out) != library:
        raise ShapeError(f"{what} is a {library_of(out) or type(out).__name__} array but the inputs are {library} arrays")
    if shape_of(out) != tuple(shape):
        raise ShapeError(f"{what} has shape {shape_of(out)} but the result has shape {tuple(shape)}")
    if dtype_name(out) != dtype:
        raise ShapeError(f"{what} has dtype {dtype_name(out)} but the result has dtype {dtype}")
    if device_of(out) != device:
        raise ShapeError(f"{what} is on {device_of(out)} but the inputs are on {device}")
    _check_out_state(out, shape, xp, inputs, what)


def _check_out_state(out, shape, xp, inputs: dict, what: str = "out="):
    """What a repeat's key does not prove about ``out=`` (it names its
    library, shape, dtype and device): that it is writable, asks for no
    gradient and shares no memory with an input."""
    if requires_grad(out):
        raise ShapeError(f"{what} requires grad; pass a tensor that does not")
    reason = xp.unwritable(out)
    if reason:
        raise ShapeError(f"{what} {reason}; pass a writable array of shape {tuple(shape)}")
    for name, a in inputs.items():
        if a is not None and xp.overlaps(out, a):
            raise ShapeError(f"{what} overlaps the memory of argument {name!r}; pass a separate array")


def _prepare(call: Call, arrays: dict, backend_name, what: str, grad: str | None = None):
    library, dtype, device = check_same_kind(arrays, what)
    if dtype not in FLOATS:
        raise ShapeError(f"{what}arrays have dtype {dtype}; einlocal computes in floating point "
                         f"(float16, bfloat16, float32, float64)")
    backend = resolve_backend(backend_name, call, library, device, dtype, grad)
    return backend, library, dtype, device


@dataclass(frozen=True)
class Prepared:
    """A forward call that passed every check: what running it needs, and the
    bytes the memory guard counted (a repeat re-checks them against the budget)."""

    call: Call
    backend: object
    library: str
    dtype: str
    device: str
    grad: str
    xp: object
    nbytes: int


def prepare(call: Call, arrays: dict, *, backend="auto", out=None, grad="vjp") -> Prepared:
    """Every check of a forward call, before any work."""
    if grad not in GRAD_MODES:
        raise BackendError(f"grad must be one of {GRAD_MODES}, got {grad!r}")
    backend_obj, library, dtype, device = _prepare(call, arrays, backend, "", grad)
    if grad not in backend_obj.grad_modes(library):
        raise BackendError(f"backend {backend_obj.name} has no grad={grad!r} for {library} arrays "
                           f"(it has {', '.join(backend_obj.grad_modes(library))})")
    _check_out(out, call.out_shape, dtype, library, device, arrays)
    itemsize = next(a for a in arrays.values() if a is not None).dtype.itemsize
    nbytes = 0
    if not call.empty:
        nbytes = check_budget(backend_obj, call.plan, itemsize, 0 if out is not None else math.prod(call.out_shape))
    return Prepared(call, backend_obj, library, dtype, device, grad, namespace(library), nbytes)


def execute(p: Prepared, arrays: dict, out=None):
    """Run a prepared forward call (differentiably when the arrays ask for
    gradients): the library's autodiff records the backend's own calls where
    those are its gradient (`Backend.own_autodiff`), else einlocal's
    derived backward statements are recorded as the call's gradient."""
    xp, call = p.xp, p.call
    if xp.records(arrays, p.grad):
        if out is not None:
            raise ShapeError("out= cannot be used when an input requires grad (autograd needs a fresh result)")
        if call.empty:      # nothing to compute or differentiate: the library's own way to give zeros
            return xp.record_empty(call, p.backend, arrays)
        if not p.backend.own_autodiff(p.library):
            return xp.record(call, p.backend, arrays, p.grad)
    return run_forward(call, p.backend, arrays, out)


def runner(p: Prepared):
    """``execute(p, arrays)`` (no ``out=``) as a callable ``run(arrays)``
    built once: the backend's own `Backend.runner` where it has one, else
    the generic one; the library's autodiff asked only where it could
    record something (a library with autodiff, a backend whose gradient is
    not already the library's own)."""
    run = p.backend.runner(p.call, p.library) or forward_runner(p.call, p.backend)
    if not p.xp.autodiff or (p.backend.own_autodiff(p.library) and not p.call.empty):
        return run
    records, grad = p.xp.records, p.grad

    def recorded(arrays):
        return execute(p, arrays) if records(arrays, grad) else run(arrays)
    return recorded


def out_runner(p: Prepared):
    """``execute(p, arrays, out)`` as a callable ``run(arrays, out)`` for
    repeats with ``out=``: what the key does not prove about ``out``
    (`_check_out_state`) checked on every call, by the library's quick check
    first (`Namespace.out_ok`); where it passes, the backend's own repeat
    (`Backend.out_runner`) runs the call if it has one."""
    shape, xp = tuple(p.call.out_shape), p.xp
    lean = None if p.backend.own_autodiff(p.library) else p.backend.out_runner(p.call, p.library)
    records = xp.records if xp.autodiff else None

    def run(arrays, out):
        if lean is not None and xp.out_ok(out, arrays) and (records is None or not records(arrays, p.grad)):
            got = lean(arrays, out)
            if got is not None:
                return got
        _check_out_state(out, shape, xp, arrays)
        return execute(p, arrays, out)
    return run


def forward(call: Call, arrays: dict, *, backend="auto", out=None, grad="vjp"):
    """Check everything, then run the forward pass (differentiably when the
    arrays ask for gradients)."""
    return execute(prepare(call, arrays, backend=backend, out=out, grad=grad), arrays, out)


@dataclass(frozen=True)
class PreparedVjp(Prepared):
    """A gradient call that passed every check: `Prepared`'s fields (its
    ``nbytes`` the most the memory guard counted for one backward
    statement), and the arguments whose gradients run."""

    wanted: tuple


def prepare_vjp(call: Call, dy, arrays: dict, *, backend="auto", wrt=None, out=None, grad="vjp") -> PreparedVjp:
    """Every check of a gradient call, before any work."""
    args_given = [a for a in call.args if arrays.get(a) is not None]
    wrt = tuple(args_given) if wrt is None else tuple([wrt] if isinstance(wrt, str) else wrt)
    for w in wrt:
        if w not in call.args:
            raise ShapeError(f"wrt names {w!r}, which is not an array argument (arguments: {', '.join(call.args)})")
    if grad not in GRAD_MODES:
        raise BackendError(f"grad must be one of {GRAD_MODES}, got {grad!r}")
    backend_obj, library, dtype, device = _prepare(call, {**arrays, "dy": dy}, backend, "", grad)
    if shape_of(dy) != tuple(call.out_shape):
        raise ShapeError(f"dy has shape {shape_of(dy)} but the op's output has shape {tuple(call.out_shape)}")
    if grad not in backend_obj.grad_modes(library):
        raise BackendError(f"backend {backend_obj.name} has no grad={grad!r} for {library} arrays")
    shapes = dict(call.arg_shapes)
    given = ()
    if out is not None:
        if not isinstance(out, (tuple, list)) or len(out) != len(call.args):
            raise ShapeError(f"out= for gradients must be a tuple of {len(call.args)} entries "
                             f"({', '.join(call.args)}), got {type(out).__name__}")
        given = tuple(arg for arg, o in zip(call.args, out) if o is not None)
        for arg, o in zip(call.args, out):
            if o is not None:
                _check_out(o, shapes[arg], dtype, library, device, arrays, f"out[{arg!r}]")
    itemsize = dy.dtype.itemsize
    nbytes = 0
    for arg, op, _ in call.operands:
        if arg in wrt and not call.empty:
            nbytes = max(nbytes, check_budget(backend_obj, call.plan.backward[op], itemsize,
                                              0 if arg in given else math.prod(shapes[arg])))
    wanted = tuple(w for w in wrt if arrays.get(w) is not None)
    return PreparedVjp(call, backend_obj, library, dtype, device, grad, namespace(library), nbytes, wanted)


def execute_vjp(p: PreparedVjp, dy, arrays: dict, out=None) -> tuple:
    """Run a prepared gradient call: the gradients in argument order (None
    where not asked for), written into ``out``'s entries where given."""
    call = p.call
    if not p.wanted:          # no gradient asked for: nothing to run
        return tuple(None for _ in call.args)
    outs = {} if out is None else {arg: o for arg, o in zip(call.args, out) if o is not None}
    if p.grad == "autodiff" and not call.empty:     # an empty batch's gradients are zeros, not differentiated
        grads = autodiff.vjp(call, p.backend, dy, arrays, p.wanted, p.library)
        for arg, o in outs.items():
            if arg in grads:
                grads[arg] = p.xp.assign(o, grads[arg])
    else:
        grads = run_vjp(call, p.backend, dy, arrays, p.wanted, outs)
    return tuple(grads.get(a) for a in call.args)


def vjp_runner(p: PreparedVjp):
    """``execute_vjp(p, ...)`` as a callable ``run(dy, arrays, out)`` for
    repeats: what the key does not prove about ``out``'s entries
    (`_check_out_state`) checked on every call, by the library's quick check
    first (`Namespace.out_ok`)."""
    args, shapes, xp = p.call.args, dict(p.call.arg_shapes), p.xp
    quick = xp.out_ok

    def run(dy, arrays, out):
        if out is not None:
            for arg, o in zip(args, out):
                if o is not None and not quick(o, arrays):
                    _check_out_state(o, shapes[arg], xp, arrays, f"out[{arg!r}]")
        return execute_vjp(p, dy, arrays, out)
    return run


def vjp(call: Call, dy, arrays: dict, *, backend="auto", wrt=None, out=None, grad="vjp") -> tuple:
    """Gradients of every array argument (None where the argument is None or
    not in ``wrt``), in argument order."""
    return execute_vjp(prepare_vjp(call, dy, arrays, backend=backend, wrt=wrt, out=out, grad=grad), dy, arrays, out)
