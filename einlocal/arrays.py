"""Recognise arrays of every library without importing any framework: which
library an array belongs to, its dtype name and device (each library's own
class answers; `einlocal.backends.namespaces`)."""
from __future__ import annotations

from .backends.namespaces import LIBRARIES, library_of, namespace
from .errors import ShapeError

__all__ = ["library_of", "dtype_name", "device_of", "shape_of", "requires_grad", "is_tracer", "check_same_kind",
           "Shaped"]


class Shaped:
    """A stand-in for an array where only its shape matters (binding an op to shapes)."""

    def __init__(self, shape):
        self.shape = tuple(int(s) for s in shape)

    def __repr__(self) -> str:
        return f"Shaped({self.shape})"


def dtype_name(a) -> str:
    """'float32', 'float64', ... for any supported array."""
    return str(a.dtype).rsplit(".", 1)[-1]


def device_of(a) -> str:
    """'cpu', 'cuda:0', ... (jax: the platform and id of its first device; 'traced' inside a trace)."""
    lib = library_of(a)
    return "cpu" if lib is None else namespace(lib).device_of(a)


def shape_of(a) -> tuple[int, ...]:
    return tuple(map(int, a.shape))


def requires_grad(a) -> bool:
    lib = library_of(a)
    return lib is not None and namespace(lib).requires_grad(a)


def is_tracer(a) -> bool:
    """True for a value inside a trace (jax's jit, grad, vmap)."""
    lib = library_of(a)
    return lib is not None and namespace(lib).is_tracer(a)


def check_same_kind(arrays: dict, what: str = "") -> tuple[str, str, str]:
    """Every array of one library, dtype and device; returns them.
    Raises ShapeError naming the two arguments that differ."""
    first = None
    for name, a in arrays.items():
        if a is None:
            continue
        lib = library_of(a)
        if lib is None:
            raise ShapeError(f"argument {name!r} is a {type(a).__module__}.{type(a).__name__}, not an array "
                             f"of {', '.join(LIBRARIES)}")
        kind = (lib, dtype_name(a), device_of(a))
        if first is None:
            first = (name, kind)
            continue
        fname, fkind = first
        if kind[0] != fkind[0]:
            raise ShapeError(f"{what}argument {name!r} is a {kind[0]} array but {fname!r} is a {fkind[0]} array; "
                             f"einlocal never copies between libraries")
        if kind[1] != fkind[1]:
            raise ShapeError(f"{what}argument {name!r} has dtype {kind[1]} but {fname!r} has dtype {fkind[1]}")
        if kind[2] != fkind[2] and "traced" not in (kind[2], fkind[2]):
            raise ShapeError(f"{what}argument {name!r} is on device {kind[2]} but {fname!r} is on {fkind[2]}; "
                             f"einlocal never copies between devices")
    if first is None:
        raise ShapeError(f"{what}no array argument given")
    return first[1]
