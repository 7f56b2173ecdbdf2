"""Recognise arrays of every library without importing any framework: which
library an array belongs to, its dtype name and device."""
from __future__ import annotations

import sys

import numpy as np

from .errors import ShapeError

__all__ = ["library_of", "dtype_name", "device_of", "shape_of", "requires_grad", "is_tracer"]


def library_of(a) -> str | None:
    """'numpy', 'torch', 'jax', 'cupy', or None for anything else."""
    if isinstance(a, np.ndarray):
        return "numpy"
    mod = type(a).__module__ or ""
    root = mod.split(".", 1)[0]
    if root == "torch" and "torch" in sys.modules and isinstance(a, sys.modules["torch"].Tensor):
        return "torch"
    if root in ("jax", "jaxlib") and "jax" in sys.modules and isinstance(a, sys.modules["jax"].Array):
        return "jax"
    if root == "cupy" and "cupy" in sys.modules and isinstance(a, sys.modules["cupy"].ndarray):
        return "cupy"
    return None


def dtype_name(a) -> str:
    """'float32', 'float64', ... for any supported array."""
    return str(a.dtype).rsplit(".", 1)[-1]


def device_of(a) -> str:
    """'cpu', 'cuda:0', ... (jax: the platform and id of its first device)."""
    lib = library_of(a)
    if lib == "torch":
        d = a.device
        return d.type if d.index is None else f"{d.type}:{d.index}"
    if lib == "jax":
        try:
            dev = sorted(a.devices(), key=lambda d: d.id)[0]
            return f"{dev.platform}:{dev.id}" if dev.platform != "cpu" else "cpu"
        except Exception:  # a tracer has no devices
            return "traced"
    if lib == "cupy":
        return f"cuda:{a.device.id}"
    return "cpu"


def shape_of(a) -> tuple[int, ...]:
    return tuple(int(s) for s in a.shape)


def requires_grad(a) -> bool:
    return library_of(a) == "torch" and bool(a.requires_grad)


def is_tracer(a) -> bool:
    """True for a jax value inside a trace (jit, grad, vmap)."""
    if "jax" not in sys.modules:
        return False
    core = sys.modules.get("jax.core") or sys.modules["jax"].core
    return isinstance(a, core.Tracer)


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
                             f"of numpy, torch, jax or cupy")
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
