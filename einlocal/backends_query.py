"""``el.backends(op, like=x)``: which backends can run an op on such arrays."""
from __future__ import annotations

from . import registry
from .arrays import device_of, dtype_name, library_of

__all__ = ["backends_for"]


def backends_for(op=None, like=None, params=None) -> list[str]:
    """Each backend's own checks (`Backend.refuses`: library, device,
    dtype, and the bound op where ``like`` gives every array), so every name
    returned runs the op on such arrays."""
    names = list(registry.available())
    if op is None and like is None:
        return names
    arrays = like if isinstance(like, dict) else {"x": like} if like is not None else {}
    first = next((a for a in arrays.values() if a is not None), None)
    library = library_of(first) if first is not None else None
    device = device_of(first) if first is not None else "cpu"
    dtype = dtype_name(first) if first is not None else None
    call = None
    if op is not None and isinstance(like, dict):
        call = _bind(op, like, params or {})
    out = []
    for name in names:
        b = registry.get(name)
        if library is not None and b.refuses(library=library, device=device, dtype=dtype,
                                             plan=None if call is None else call.plan, call=call):
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
