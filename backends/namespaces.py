"""The array namespaces the strategies are written against: the dozen calls
they make, bound once per library (numpy, cupy, torch, jax)."""
from __future__ import annotations

import functools
import importlib

__all__ = ["namespace", "NUMPY_CALLS", "Namespace"]

# Every module-level call NumpyLike makes on its module; a test asserts cupy
# has them all, so the cupy lowerings are checked without a GPU.
NUMPY_CALLS = ("einsum", "matmul", "pad", "zeros", "empty", "flip", "broadcast_to",
               "ascontiguousarray", "multiply", "stack", "array", "lib", "reshape")


class Namespace:
    """Calls shared by every library; subclasses fill in the differences."""

    name = "?"
    has_strided = True       # can view memory with arbitrary strides
    functional = False       # arrays are immutable (jax): slice-adds return new arrays

    def __init__(self, mod):
        self.mod = mod

    def from_numpy(self, a, device: str = "cpu"):
        """A new array of this library holding numpy array ``a`` (used by the
        harness to create inputs; never called on user data)."""
        raise NotImplementedError

    def to_numpy(self, a):
        return a

    def permute(self, a, perm):
        perm = tuple(perm)
        return a if perm == tuple(range(len(perm))) else self.transpose(a, perm)


class NumpyLike(Namespace):
    """numpy and cupy."""

    def __init__(self, mod, name):
        super().__init__(mod)
        self.name = name
        self._strided = (mod.lib.stride_tricks.as_strided)

    def from_numpy(self, a, device: str = "cpu"):
        return self.mod.array(a)

    def to_numpy(self, a):
        return a.get() if self.name == "cupy" else a

    def strides(self, a):
        return tuple(s // a.itemsize for s in a.strides)

    def as_strided(self, a, shape, strides, offset_index):
        base = a[tuple(slice(o, None) for o in offset_index)]
        return self._strided(base, shape=shape, strides=tuple(s * a.itemsize for s in strides))

    def pad(self, a, pads):
        return self.mod.pad(a, pads)

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




class Torch(Namespace):
    name = "torch"

    def from_numpy(self, a, device: str = "cpu"):
        return self.mod.from_numpy(a.copy()).to(device)

    def to_numpy(self, a):
        return a.detach().cpu().numpy()

    def strides(self, a):
        return tuple(a.stride())

    def as_strided(self, a, shape, strides, offset_index):
        off = a.storage_offset() + sum(o * s for o, s in zip(offset_index, a.stride()))
        return self.mod.as_strided(a, shape, strides, off)

    def pad(self, a, pads):
        out = self.mod.zeros(tuple(s + p + q for s, (p, q) in zip(a.shape, pads)), dtype=a.dtype, device=a.device)
        out[tuple(slice(p, p + s) for s, (p, _) in zip(a.shape, pads))] = a
        return out

    def einsum(self, spec, *ops, out=None):
        r = self.mod.einsum(spec, *ops)
        return self.assign(out, r) if out is not None else r

    def matmul(self, a, b, out=None):
        return self.mod.matmul(a, b, out=out) if out is not None else self.mod.matmul(a, b)

    def reshape(self, a, shape):
        return a.reshape(shape)

    def view_as(self, a, shape):
        try:
            return a.view(shape)
        except RuntimeError:
            return None

    def transpose(self, a, perm):
        return a.permute(*perm)

    def sum(self, a, axes):
        return a.sum(dim=tuple(axes)) if axes else a.clone()

    def zeros(self, shape, like):
        return self.mod.zeros(shape, dtype=like.dtype, device=like.device)

    def empty(self, shape, like):
        return self.mod.empty(shape, dtype=like.dtype, device=like.device)

    def flip(self, a, axes):
        return self.mod.flip(a, dims=tuple(axes))

    def stack(self, arrays, axis):
        return self.mod.stack(arrays, dim=axis)

    def broadcast_to(self, a, shape):
        return a.expand(shape)

    def contiguous(self, a):
        return a.contiguous()

    def add_slice(self, dst, idx, src):
        dst[idx] += src
        return dst

    def assign(self, out, src):
        out.copy_(src)
        return out

    def mul(self, a, b, out=None):
        return self.mod.mul(a, b, out=out) if out is not None else a * b




class Jax(Namespace):
    name = "jax"
    has_strided = False
    functional = True

    def from_numpy(self, a, device: str = "cpu"):
        return self.mod.asarray(a)

    def to_numpy(self, a):
        import numpy
        return numpy.asarray(a)

    def pad(self, a, pads):
        return self.mod.pad(a, pads)

    def einsum(self, spec, *ops, out=None):
        return self.mod.einsum(spec, *ops, precision="highest")

    def matmul(self, a, b, out=None):
        return self.mod.matmul(a, b, precision="highest")

    def reshape(self, a, shape):
        return a.reshape(shape)

    def view_as(self, a, shape):
        return a.reshape(shape)

    def transpose(self, a, perm):
        return a.transpose(perm)

    def sum(self, a, axes):
        return a.sum(axis=tuple(axes)) if axes else a

    def zeros(self, shape, like):
        return self.mod.zeros(shape, dtype=like.dtype)

    empty = zeros

    def flip(self, a, axes):
        return self.mod.flip(a, axis=axes)

    def stack(self, arrays, axis):
        return self.mod.stack(arrays, axis=axis)

    def broadcast_to(self, a, shape):
        return self.mod.broadcast_to(a, shape)

    def contiguous(self, a):
        return a

    def add_slice(self, dst, idx, src):
        return dst.at[idx].add(src)

    def assign(self, out, src):
        raise TypeError("jax arrays cannot be written in place")

    def mul(self, a, b, out=None):
        return a * b




@functools.lru_cache(maxsize=None)
def namespace(library: str) -> Namespace:
    """The namespace of 'numpy', 'cupy', 'torch' or 'jax' (imports it)."""
    if library in ("numpy", "cupy"):
        return NumpyLike(importlib.import_module(library), library)
    if library == "torch":
        return Torch(importlib.import_module("torch"))
    if library == "jax":
        return Jax(importlib.import_module("jax.numpy"))
    raise KeyError(library)
