"""``el.backends(op, like=x)``: which backends can run an op on such arrays."""
from __future__ import annotations

from . import registry
from .arrays import device_of, library_of

__all__ = ["backends_for"]


def backends_for(op=None, like=None, params=None) -> list[str]:
    names = list(registry.available())
    if op is None and like is None:
        return names
    arrays = like if isinstance(like, dict) else {"x": like} if like is not None else {}
    first = next((a for a in arrays.values() if a is not None), None)
    library = library_of(first) if first is not None else None
    device = device_of(first) if first is not None else "cpu"
    call = None
    if op is not None and isinstance(like, dict):
        call = _bind(op, like, params or {})
    out = []
    for name in names:
        b = registry.get(name)
        if library is not None and library not in b.takes:
            continue
        if call is not None and b.cannot(call.plan, library=library, device=device, call=call):
            continue
        if call is None and op is not None and not b.general and not _native_has(b, op):
            continue
        out.append(name)
    return out


def _native_has(backend, op) -> bool:
    kinds = getattr(backend, "kinds", ())
    return getattr(op, "name", None) in kinds


def _bind(op, arrays: dict, params: dict):
    return op.bind_arrays(arrays, params)
