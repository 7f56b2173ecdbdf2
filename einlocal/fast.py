"""The fast path of repeated calls: a call's validity depends only on the op,
the arrays' library, shapes, dtypes and devices, the parameters, the backend
and the grad mode; with those as the key, a repeat goes straight to a
callable prepared by its first call (`einlocal.call.runner`), re-checking
only what can change between calls (the memory budget, and for ``auto``
what its choice depends on, `einlocal.auto.state`)."""
from __future__ import annotations

from .backends.namespaces import library_of, namespace
from .auto import measured_choice, state
from .budget import memory_budget
from .call import out_runner, runner

__all__ = ["key", "lookup", "remember", "clear"]

MAX_ENTRIES = 4096
# key -> (run, bytes the memory guard counted, for auto: whether its choice was measured and its state)
_PREPARED: dict = {}
_KEYERS: dict = {}          # array type -> its library's fast_key


def _keyer(a):
    kind = type(a)
    got = _KEYERS.get(kind)
    if got is None:
        lib = library_of(a)
        if lib is None:
            return None
        got = _KEYERS[kind] = namespace(lib).fast_key
    return got


def key(name: str, arrays: tuple, backend, grad: str, params: dict, out=None):
    """The key of a call, or None where it has no fast path (a library that
    gives no key, e.g. inside a trace).  ``out=`` is keyed like an input
    (its library, shape, dtype, device); the rest of its checks are made on
    every call (`einlocal.call.out_runner`).  Parameters keep their types;
    unhashable ones make a key that `lookup` and `remember` pass over."""
    parts = [name, backend, grad, out is not None]
    for a in (*arrays, out) if out is not None else arrays:
        if a is None:
            parts.append(None)
            continue
        keyer = _keyer(a)
        got = None if keyer is None else keyer(a)
        if got is None:
            return None
        parts.append(got)
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


def remember(k, prepared) -> None:
    """Keep ``prepared`` (`einlocal.call.Prepared`) for repeats of key ``k``
    (the key says whether its calls pass ``out=``)."""
    try:
        hash(k)
    except TypeError:
        return
    if len(_PREPARED) >= MAX_ENTRIES:
        _PREPARED.clear()
    measured = auto_state = None
    if k[1] in (None, "auto"):
        p = prepared
        measured = measured_choice(p.call, p.library, p.device, p.dtype) == p.backend.name
        auto_state = state(measured)
    _PREPARED[k] = (out_runner(prepared) if k[3] else runner(prepared), prepared.nbytes, measured, auto_state)


def clear() -> None:
    _PREPARED.clear()
