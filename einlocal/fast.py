"""The fast path of repeated calls: a call's validity depends only on the op,
the arrays' library, shapes, dtypes and devices, the parameters, the backend
and the grad mode; with those as the key, a repeat goes straight to the
prepared call (`einlocal.call.Prepared`), re-checking only what can change
between calls (the memory budget, ``auto``'s measured choice)."""
from __future__ import annotations

from .backends.namespaces import library_of, namespace

__all__ = ["key", "lookup", "remember", "clear"]

MAX_ENTRIES = 4096
_PREPARED: dict = {}


def key(name: str, arrays: tuple, backend, grad: str, params: dict):
    """The key of a call without ``out=``, or None where it has no fast path
    (a library that gives no key, e.g. inside a trace; unhashable parameters)."""
    parts = [name, backend, grad]
    for a in arrays:
        if a is None:
            parts.append(None)
            continue
        lib = library_of(a)
        got = None if lib is None else namespace(lib).fast_key(a)
        if got is None:
            return None
        parts.append(got)
    if params:
        parts.append(tuple(params.items()))
    parts = tuple(parts)
    try:
        hash(parts)
    except TypeError:
        return None
    return parts


def lookup(k):
    """The prepared call of key ``k`` where it is still good to run: the memory
    budget still allows it, and ``auto`` still picks the same backend."""
    p = _PREPARED.get(k)
    if p is None:
        return None
    from .budget import memory_budget
    if p.nbytes and p.nbytes > memory_budget():
        return None
    if k[1] in (None, "auto"):
        from . import auto
        if auto.auto_backend(p.call, p.library, p.device, dtype=p.dtype) != p.backend.name:
            return None
    return p


def remember(k, prepared) -> None:
    if len(_PREPARED) >= MAX_ENTRIES:
        _PREPARED.clear()
    _PREPARED[k] = prepared


def clear() -> None:
    _PREPARED.clear()
