"""``loops:numba``: loop nests generated from the statement (``numba_codegen``)
and compiled with numba, parallel on CPU; numpy arrays and CPU torch tensors.

Generated modules are written to ``einlocal.machine.cache_dir()/numba/<hash>.py``
(hash of the source and the numba version) and imported from there with
``cache=True``, so a second process loads the compiled kernel from numba's
file cache instead of compiling it again.  Products and sums are computed in
the arrays' own dtype (float32 accumulates in float32, as the other
backends do).
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
import time

from ..errors import BackendError
from .base import Backend
from .numba_codegen import KERNEL_NAME, generate

__all__ = ["NumbaLoops", "make", "STATS"]

# process-wide counts: kernels compiled here, and kernels loaded from numba's file cache
STATS = {"compiled": 0, "loaded": 0}
_DTYPES = ("float32", "float64")


def _module_path(source: str):
    import numba
    from ..machine import cache_dir
    key = hashlib.sha256(f"{source}\nnumba {numba.__version__}\npython {sys.version}".encode()).hexdigest()[:24]
    folder = cache_dir() / "numba"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"k_{key}.py", key


def _import_kernel(source: str):
    """The jitted function of ``source``, from a module file written once
    (atomically) to the cache directory: numba's ``cache=True`` needs a file."""
    path, key = _module_path(source)
    if not path.exists():
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(source)
        os.replace(tmp, path)
    name = f"einlocal_numba_{key}"
    mod = sys.modules.get(name)
    if mod is None:
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        sys.modules[name] = mod
    return getattr(mod, KERNEL_NAME)


def _strides(a) -> tuple[int, ...]:
    return tuple(s // a.itemsize for s in a.strides)


class NumbaLoops(Backend):
    strategy = "loops"
    engine = "numba"
    takes = ("numpy", "torch")
    requires = ("numba",)

    def __init__(self):
        self._kernels: dict = {}          # (plan, out strides) -> (Kernel, dispatcher)
        self.compile_seconds: dict = {}   # (plan, signature) -> seconds of compiling or loading
        self.cache_hits: dict = {}        # (plan, signature) -> loaded from the file cache

    def cannot(self, plan, *, library: str, device: str, call=None) -> str | None:
        reason = super().cannot(plan, library=library, device=device, call=call)
        if reason:
            return reason
        if device != "cpu":
            return f"{self.name} runs on the CPU; the arrays are on {device}"
        return None

    def grad_modes(self, library: str) -> tuple[str, ...]:
        return ("vjp",)       # torch cannot differentiate through a compiled loop nest

    def workspace(self, plan) -> tuple[int, str]:
        return 0, "none (loops read and write in place; padding is clipped loop ranges)"

    def kernel(self, plan, out_strides=None):
        """The generated ``Kernel`` (``.source``) for ``plan``."""
        return self._compiled(plan, out_strides)[0]

    def source(self, plan, out_strides=None) -> str:
        """The generated source for ``plan``, printable."""
        return self.kernel(plan, out_strides).source

    def _compiled(self, plan, out_strides):
        key = (plan, None if out_strides is None else tuple(out_strides))
        hit = self._kernels.get(key)
        if hit is None:
            k = generate(plan, out_strides)
            try:
                fn = _import_kernel(k.source)
            except Exception as e:   # a syntax error in generated code, a failed import
                raise BackendError(f"loops:numba could not build the kernel for {plan}: {type(e).__name__}: {e}\n"
                                   f"--- generated source ---\n{k.source}") from e
            hit = self._kernels[key] = (k, fn)
        return hit

    def execute(self, plan, operands: dict, out=None):
        """Run one bound statement on numpy arrays or CPU torch tensors;
        ``out`` (same library) is overwritten and returned."""
        first = next(iter(operands.values()))
        torch_in = type(first).__module__.startswith("torch")
        arrays = [_numpy(operands[a.name], a.name) for a in plan.stmt.operands]
        dtype = arrays[0].dtype
        if dtype.name not in _DTYPES:
            raise BackendError(f"loops:numba computes in float32 or float64; operand {plan.stmt.operands[0].name!r} "
                               f"has dtype {dtype.name}")
        import numpy as np
        if out is None:
            out_np = np.empty(plan.out_shape, dtype=dtype)
            result = None
        else:
            out_np = _numpy(out, "out")
            result = out
        c_order = out_np.flags.c_contiguous
        k, fn = self._compiled(plan, None if c_order else _strides(out_np))
        args = (out_np, *arrays)
        self._ensure_compiled(plan, k, fn, args)
        try:
            fn(*args)
        except Exception as e:
            raise BackendError(f"loops:numba failed running {plan}: {type(e).__name__}: {e}\n"
                               f"--- generated source ---\n{k.source}") from e
        if result is not None:
            return result
        if torch_in:
            import torch
            return torch.from_numpy(out_np)
        return out_np

    def _ensure_compiled(self, plan, k, fn, args):
        """Compile (or load from the file cache) for these argument types,
        timing it apart from the run."""
        import numba
        sig = tuple(numba.typeof(a) for a in args)
        rec = (plan, sig)
        if rec in self.compile_seconds:
            return
        hits_before = sum(fn.stats.cache_hits.values())
        t0 = time.perf_counter()
        try:
            fn.compile(sig)
        except Exception as e:
            raise BackendError(f"loops:numba failed compiling {plan} for {sig}: {type(e).__name__}: {e}\n"
                               f"--- generated source ---\n{k.source}") from e
        self.compile_seconds[rec] = time.perf_counter() - t0
        loaded = sum(fn.stats.cache_hits.values()) > hits_before
        self.cache_hits[rec] = loaded
        STATS["loaded" if loaded else "compiled"] += 1


def _numpy(a, what: str):
    """A numpy view of a numpy array or CPU torch tensor (no copy)."""
    mod = type(a).__module__
    if mod.startswith("torch"):
        if a.device.type != "cpu":
            raise BackendError(f"loops:numba takes CPU torch tensors; {what!r} is on {a.device}")
        return a.detach().numpy()
    return a


def make(engine: str = "numba"):
    return NumbaLoops()
