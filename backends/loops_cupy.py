"""``loops:cupy``: the kernel plan of ``gpu_codegen`` emitted as CUDA C and run
with ``cupy.RawKernel`` on cupy arrays (float32, float64): one thread per
output element (gather) or per output-index point (atomics), the summed
loop inside; a long reduction over few outputs is split across threads
into partial sums, added up afterwards (``gpu_codegen``).  Unavailable without a CUDA device.

Options: ``deterministic`` as for ``loops:triton`` (the attribute, else
``EINLOCAL_DETERMINISTIC=1``).  ``backend.source(plan, dtype)`` prints the
CUDA C; a kernel that fails raises ``el.BackendError`` with its source.
"""
from __future__ import annotations

import math
import os

from ..errors import BackendError
from .base import Backend, missing_modules
from .gpu_codegen import INT32_LIMIT, cuda_source, kernel_plan

__all__ = ["CupyLoops", "make", "compile_ptx", "THREADS"]

THREADS = 256
_DTYPES = ("float32", "float64")


def compile_ptx(src: str, name: str, arch: str = "sm_80") -> bytes:
    """Compile CUDA C with NVRTC (no device needed); returns PTX.  Raises
    BackendError with the compiler log and the source."""
    from cupy.cuda import nvrtc
    prog = nvrtc.createProgram(src, f"{name}.cu", [], [])
    try:
        nvrtc.compileProgram(prog, [f"-arch={arch}", "-std=c++14"])
    except Exception as e:
        log = nvrtc.getProgramLog(prog)
        raise BackendError(f"loops:cupy: NVRTC failed on {name} for {arch}: {e}\n{log}\n"
                           f"--- generated source ---\n{src}") from e
    return nvrtc.getPTX(prog)


class CupyLoops(Backend):
    strategy = "loops"
    engine = "cupy"
    takes = ("cupy",)
    requires = ("cupy",)
    dtypes = _DTYPES
    compile_s = 10.0

    def __init__(self):
        self.deterministic: bool | None = None
        self._kernels: dict = {}

    def is_deterministic(self) -> bool:
        if self.deterministic is not None:
            return bool(self.deterministic)
        return os.environ.get("EINLOCAL_DETERMINISTIC", "0") not in ("", "0")

    def unavailable(self) -> str | None:
        reason = missing_modules(*self.requires)
        if reason:
            return reason
        import cupy
        if not cupy.is_available():
            return "cupy is installed but no CUDA device is available (cupy.is_available() is False)"
        return None

    def cannot(self, plan, *, library: str, device: str, call=None) -> str | None:
        reason = super().cannot(plan, library=library, device=device, call=call)
        if reason:
            return reason
        if max(math.prod(plan.out_shape), plan.iterations) > INT32_LIMIT * 64:
            return "loops:cupy: the iteration space is too large for one launch"
        return None

    def grad_modes(self, library: str) -> tuple[str, ...]:
        return ("vjp",)

    def kernel_plan(self, plan, dtype: str = "float32"):
        return kernel_plan(plan, dtype, deterministic=self.is_deterministic(), allow_dot=False, unit="thread")

    def workspace(self, plan) -> tuple[int, str]:
        return self.kernel_plan(plan).workspace()

    def source(self, plan, dtype: str = "float32") -> str:
        """The generated CUDA C for ``plan`` and ``dtype``."""
        return cuda_source(self.kernel_plan(plan, dtype))

    def execute(self, plan, operands: dict, out=None):
        import cupy
        first = next(iter(operands.values()))
        dtype = str(first.dtype)
        if dtype not in _DTYPES:
            raise BackendError(f"loops:cupy computes in {', '.join(_DTYPES)}, got {dtype}")
        kp = self.kernel_plan(plan, dtype)
        src = cuda_source(kp)
        ops = [cupy.ascontiguousarray(operands[a.name]) for a in plan.stmt.operands]
        if out is None:
            out = cupy.empty(plan.out_shape, dtype=first.dtype)
        if kp.parts > 1:
            buf = cupy.empty((kp.parts, *plan.out_shape), dtype=first.dtype)
        else:
            buf = out if out.flags.c_contiguous else cupy.empty(plan.out_shape, dtype=first.dtype)
        if kp.mode == "atomic":
            buf.fill(0)
        total = math.prod(c.extent for c in kp.coords) * kp.parts
        try:
            kernel = self._kernels.get(kp)
            if kernel is None:
                kernel = self._kernels[kp] = cupy.RawKernel(src, kp.name)
            kernel(((total + THREADS - 1) // THREADS,), (THREADS,), (*ops, buf))
        except Exception as e:
            raise BackendError(f"loops:cupy: kernel {kp.name} for {plan} failed: {type(e).__name__}: {e}\n"
                               f"--- generated source ---\n{src}") from e
        if kp.parts > 1:   # the partial sums, in a fixed order
            buf = buf.sum(axis=0)
        if buf is not out:
            out[...] = buf
        return out


def make(engine="cupy"):
    return CupyLoops()
