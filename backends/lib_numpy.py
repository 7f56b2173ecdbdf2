"""numpy: its arrays, and the numpy-like calls numpy and cupy share."""
from __future__ import annotations

from ..memory import TRACEMALLOC
from .namespaces import Namespace

__all__ = ["NumpyLike", "Numpy"]


class NumpyLike(Namespace):
    """The calls numpy's API gives: numpy itself, and libraries that copy it."""

    def from_numpy(self, a, device: str = "cpu"):
        return self.mod.array(a)

    def strides(self, a):
        return tuple(s // a.itemsize for s in a.strides)

    def unwritable(self, a) -> str | None:
        if not getattr(a.flags, "writeable", True):      # cupy's arrays have no read-only flag
            return "is read-only"
        return super().unwritable(a)

    def as_strided(self, a, shape, strides, offset_index):
        base = a[tuple(slice(o, None) for o in offset_index)]
        return self.mod.lib.stride_tricks.as_strided(base, shape=shape, strides=tuple(s * a.itemsize for s in strides))

    def pad(self, a, pads):
        """Zero padding: zeros, then one copy of ``a`` into them (what
        ``np.pad`` does in constant mode, without its per-call Python)."""
        out = self.mod.zeros(tuple(s + lo + hi for s, (lo, hi) in zip(a.shape, pads)), a.dtype)
        out[tuple(slice(lo, lo + s) for s, (lo, _) in zip(a.shape, pads))] = a
        return out

    def einsum(self, spec, *ops, out=None):
        return self.mod.einsum(spec, *ops, out=out, optimize=False)

    def matmul(self, a, b, out=None):
        return self.mod.matmul(a, b, out=out)

    def reshape(self, a, shape):
        return a.reshape(shape)

    def view_as(self, a, shape):
        """``a`` reshaped without a copy, or None where that needs one."""
        try:
            return self.mod.reshape(a, shape, copy=False)
        except ValueError:
            return None
        except TypeError:   # no copy= keyword (numpy < 2.1, cupy)
            v = a.view()
            try:
                v.shape = shape
            except AttributeError:
                return None
            return v

    def transpose(self, a, perm):
        return a.transpose(perm)

    def sum(self, a, axes):
        return a.sum(axis=tuple(axes)) if axes else a.copy()

    def zeros(self, shape, like):
        return self.mod.zeros(shape, dtype=like.dtype)

    def empty(self, shape, like):
        return self.mod.empty(shape, dtype=like.dtype)

    def flip(self, a, axes):
        return self.mod.flip(a, axis=axes)

    def stack(self, arrays, axis):
        return self.mod.stack(arrays, axis=axis)

    def broadcast_to(self, a, shape):
        return self.mod.broadcast_to(a, shape)

    def contiguous(self, a):
        return self.mod.ascontiguousarray(a)

    def add_slice(self, dst, idx, src):
        dst[idx] += src
        return dst

    def assign(self, out, src):
        out[...] = src
        return out

    def mul(self, a, b, out=None):
        return self.mod.multiply(a, b, out=out)


class Numpy(NumpyLike):
    name = module = "numpy"
    roots = ("numpy",)
    packages = ("numpy",)
    call_overhead_s = 15e-6
    einsum_loops = True      # einsum(optimize=False) is numpy's C loop
    fallback = ("bmm:numpy", "einsum:numpy")
    memory_methods = {"cpu": TRACEMALLOC}

    def owns(self, a) -> bool:
        import numpy
        return isinstance(a, numpy.ndarray)

    def cannot_device(self, device: str) -> str | None:
        return None if device == "cpu" else f"numpy arrays are on the CPU, not on {device}"

    def fast_key(self, a):
        return (type(a), a.shape, a.dtype)

    def overlaps(self, a, b) -> bool:
        return bool(self.mod.shares_memory(a, b))

    def out_ok(self, out, inputs: dict) -> bool:
        if not out.flags.writeable or any(st == 0 and n > 1 for n, st in zip(out.shape, out.strides)):
            return False
        shares = self.mod.shares_memory
        return not any(a is not None and shares(out, a) for a in inputs.values())
