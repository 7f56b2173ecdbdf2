"""A fake array library for the tests, registered in one place (conftest.py):
numpy's arrays as a type of their own, so that every registry-parametrized
test also runs each array strategy on a library einlocal was not written for."""
from __future__ import annotations

import functools
import sys
import types

import numpy as np

from einlocal.backends.lib_numpy import NumpyLike
from einlocal.backends.namespaces import NUMPY_CALLS
from einlocal.memory import TRACEMALLOC

NAME = "fakenp"


class FakeArray(np.ndarray):
    """numpy's array, owned by another library: einlocal must keep the two apart."""


def _wrap(fn):
    @functools.wraps(fn)
    def call(*args, **kwargs):
        r = fn(*args, **kwargs)
        return r.view(FakeArray) if type(r) is np.ndarray else r
    return call


def _module():
    """The library's module: numpy's calls, returning FakeArrays (importable
    by name, as opt_einsum imports the libraries it dispatches to)."""
    mod = types.ModuleType(f"einlocal_test_{NAME}")
    for n in (*NUMPY_CALLS, "tensordot", "transpose"):
        if n != "lib":
            setattr(mod, n, _wrap(getattr(np, n)))
    strided = functools.partial(np.lib.stride_tricks.as_strided, subok=True)
    mod.lib = types.SimpleNamespace(stride_tricks=types.SimpleNamespace(as_strided=strided))
    mod.shares_memory = np.shares_memory
    sys.modules[mod.__name__] = mod
    return mod


class FakeNumpy(NumpyLike):
    name = NAME
    module = "numpy"
    roots = (__name__.split(".")[0],)      # the module FakeArray lives in
    opt_einsum_backend = f"einlocal_test_{NAME}"
    memory_methods = {"cpu": TRACEMALLOC}
    fallback = (f"bmm:{NAME}", f"einsum:{NAME}")

    @functools.cached_property
    def mod(self):
        return _module()

    def __init__(self):
        super().__init__()
        self.mod     # importable before opt_einsum asks for it

    def owns(self, a) -> bool:
        return isinstance(a, FakeArray)

    def from_numpy(self, a, device: str = "cpu"):
        return np.array(a).view(FakeArray)

    def to_numpy(self, a):
        return np.asarray(a).view(np.ndarray)

    def overlaps(self, a, b) -> bool:
        return bool(np.shares_memory(a, b))
