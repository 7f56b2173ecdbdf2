"""The fast path of repeated calls: a call's validity depends only on the op,
the arrays' library, shapes, dtypes and devices, the parameters, the backend
and the grad mode (for gradients also ``dy`` and ``wrt``); with those as the
key, a repeat goes straight to a callable prepared by its first call
(`einlocal.call.runner`, `einlocal.call.vjp_runner`), re-checking only what
can change between calls (the memory budget, and for ``auto`` what its
choice depends on, `einlocal.auto.state`)."""
from __future__ import annotations

import numpy as np

from .backends.namespaces import library_of, namespace
from .auto import measured_choice, state
from .budget import memory_budget
from .call import execute, execute_vjp, out_runner, runner, vjp_runner

__all__ = ["key", "vjp_key", "lookup", "remember", "remember_vjp", "forward", "gradients", "clear"]

MAX_ENTRIES = 4096
# key -> (run, bytes the memory guard counted, for auto: whether its choice was measured and its state)
_PREPARED: dict = {}
_KEYERS: dict = {}          # array type -> its library's fast_key
_NDARRAY = np.ndarray


def _keyer(a):
    kind = type(a)
    got = _KEYERS.get(kind)
    if got is None:
        lib = library_of(a)
        if lib is None:
            return None
        got = _KEYERS[kind] = namespace(lib).fast_key
    return got


def _array_keys(parts: list, arrays) -> bool:
    """Append each array's key (None for None) to ``parts``; False where an
    array has none (no fast path)."""
    for a in arrays:
        if a is None:
            parts.append(None)
            continue
        kind = type(a)
        if kind is _NDARRAY:            # numpy's key (`Numpy.fast_key`) without a call: repeats follow other work,
            parts.append((kind, a.shape, a.dtype))      # and each call then costs microseconds
            continue
        keyer = _keyer(a)
        got = None if keyer is None else keyer(a)
        if got is None:
            return False
        parts.append(got)
    return True


def key(name: str, arrays: tuple, backend, grad: str, params: dict, out=None):
    """The key of a call, or None where it has no fast path (a library that
    gives no key, e.g. inside a trace).  ``out=`` is keyed like an input
    (its library, shape, dtype, device); the rest of its checks are made on
    every call (`einlocal.call.out_runner`).  Parameters keep their types;
    unhashable ones make a key that `lookup` and `remember` pass over."""
    parts = [name, backend, grad, out is not None]
    if not _array_keys(parts, (*arrays, out) if out is not None else arrays):
        return None
    if params:
        parts.append(tuple((k, _typed(v)) for k, v in params.items()))
    return tuple(parts)


def vjp_key(name: str, dy, arrays: tuple, backend, grad: str, params: dict, wrt=None, out=None):
    """`key` of a gradient call: ``dy`` keyed like an input, ``wrt`` as
    given (a name or a sequence of names), and ``out``'s entries like
    inputs; None where there is no fast path (an ``out`` or ``wrt`` that is
    not a tuple or list, which the first call's checks refuse)."""
    if out is not None and not isinstance(out, (tuple, list)):
        return None
    if wrt is not None and not isinstance(wrt, str):
        if not isinstance(wrt, (tuple, list)):
            return None
        wrt = tuple(wrt)
    parts = ["vjp", name, backend, grad, wrt, None if out is None else len(out)]
    if not _array_keys(parts, (dy, *arrays) if out is None else (dy, *arrays, *out)):
        return None
    if params:
        parts.append(tuple((k, _typed(v)) for k, v in params.items()))
    return tuple(parts)


def _typed(v):
    """``v`` for a key, its type kept where equality would lose it (2.0 == 2,
    True == 1: a float or bool stride must fail its check, not find an int's)."""
    t = type(v)
    if t is int or t is str:
        return v
    if t is tuple:
        for e in v:
            if type(e) is not int:
                return t, tuple(_typed(e) for e in v)
        return v                # ints only (the common case, kept as it is)
    if t is list:
        return t, tuple(_typed(e) for e in v)
    return t, v


def lookup(k):
    """The prepared callable ``run(arrays)`` (``run(arrays, out)`` for a
    key with ``out=``) of key ``k`` where it is still
    good to run: the memory budget still allows it, and ``auto``'s state is
    unchanged; else None."""
    try:
        entry = _PREPARED.get(k)
    except TypeError:       # an unhashable parameter (a list): no fast path
        return None
    if entry is None:
        return None
    run, nbytes, measured, auto_state = entry
    if nbytes and nbytes > memory_budget():
        return None
    if auto_state is not None and state(measured) != auto_state:
        return None
    return run


def _keep(k, prepared, run, asked) -> None:
    """Keep ``run`` for key ``k``; ``asked``: the backend the call named
    (``auto``'s pick is followed: `lookup` drops it once its state changes)."""
    try:
        hash(k)
    except TypeError:
        return
    if len(_PREPARED) >= MAX_ENTRIES:
        _PREPARED.clear()
    measured = auto_state = None
    if asked in (None, "auto"):
        p = prepared
        measured = measured_choice(p.call, p.library, p.device, p.dtype) == p.backend.name
        auto_state = state(measured)
    _PREPARED[k] = (run, prepared.nbytes, measured, auto_state)


def remember(k, prepared) -> None:
    """Keep ``prepared`` (`einlocal.call.Prepared`) for repeats of key ``k``
    (the key says whether its calls pass ``out=``)."""
    _keep(k, prepared, out_runner(prepared) if k[3] else runner(prepared), k[1])


def remember_vjp(k, prepared) -> None:
    """Keep ``prepared`` (`einlocal.call.PreparedVjp`) for repeats of
    gradient key ``k`` (`vjp_key`)."""
    _keep(k, prepared, vjp_runner(prepared), k[2])


def forward(k, arrays: dict, out, prepare):
    """A forward call of key ``k`` (None: no fast path): its repeat where
    `lookup` has one, else ``prepare()`` (every check, an
    `einlocal.call.Prepared`) kept for repeats and run."""
    run = None if k is None else lookup(k)
    if run is not None:          # a repeat: its checks hold, by the key
        return run(arrays) if out is None else run(arrays, out)
    prepared = prepare()
    if k is not None:
        remember(k, prepared)
    return execute(prepared, arrays, out)


def gradients(k, dy, arrays: dict, out, prepare) -> tuple:
    """`forward` for a gradient call of key ``k`` (`vjp_key`): ``prepare()``
    gives an `einlocal.call.PreparedVjp`; the gradients in argument order."""
    run = None if k is None else lookup(k)
    if run is not None:
        return run(dy, arrays, out)
    prepared = prepare()
    if k is not None:
        remember_vjp(k, prepared)
    return execute_vjp(prepared, dy, arrays, out)


def clear() -> None:
    _PREPARED.clear()
