"""``loops:triton``: Triton kernels generated from the bound statement (see
``gpu_codegen`` and ``gpu_triton``), forward and every backward statement,
for CUDA torch tensors (CPU tensors only under the Triton interpreter,
TRITON_INTERPRET=1).

Options, read at each call:

- ``deterministic``: the atomic-free path (the inverse-map gather) for the
  statements that would use atomics.  On when the backend's attribute
  ``deterministic`` is True, or when it is None (the default) and either
  ``EINLOCAL_DETERMINISTIC=1`` is set or
  ``torch.use_deterministic_algorithms(True)`` is in force.
- ``tl.dot`` precision for float32: "tf32" when
  ``torch.backends.cuda.matmul.allow_tf32`` is True, else "ieee" (torch's
  default), unless the attribute ``precision`` says otherwise.

``backend.source(plan, dtype)`` prints the generated kernel; a kernel that
fails to compile or launch raises ``el.BackendError`` with its source.
"""
from __future__ import annotations

import math
import os
import sys
import tempfile

from .. import cachedir
from ..errors import BackendError, CacheDirError
from .base import Backend, missing_modules
from .gpu_codegen import INT32_LIMIT, kernel_plan
from .gpu_triton import triton_source

__all__ = ["TritonLoops", "make", "compile_for", "compile_many", "resource_usage", "load_kernel"]

_DTYPES = ("float16", "bfloat16", "float32", "float64")


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


class TritonLoops(Backend):
    strategy = "loops"
    engine = "triton"
    takes = ("torch",)
    requires = ("triton", "torch")
    dtypes = _DTYPES
    compile_s = 10.0

    def __init__(self):
        self.deterministic: bool | None = None
        self.precision: str | None = None
        self._kernels: dict = {}

    # -- options ----------------------------------------------------------------

    def is_deterministic(self) -> bool:
        if self.deterministic is not None:
            return bool(self.deterministic)
        if os.environ.get("EINLOCAL_DETERMINISTIC", "0") not in ("", "0"):
            return True
        import torch
        return torch.are_deterministic_algorithms_enabled()

    def dot_precision(self) -> str:
        if self.precision is not None:
            return self.precision
        import torch
        return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"

    # -- capability -------------------------------------------------------------

    def unavailable(self) -> str | None:
        return missing_modules(*self.requires)

    def cannot_device(self, device: str) -> str | None:
        if not device.startswith("cuda") and not (device == "cpu" and interpreting()):
            return (f"loops:triton runs on CUDA tensors (CPU tensors only under the Triton interpreter, "
                    f"TRITON_INTERPRET=1); got device {device}")
        return None

    def cannot(self, plan, *, library: str, device: str, call=None) -> str | None:
        reason = super().cannot(plan, library=library, device=device, call=call)
        if reason:
            return reason
        reason = self.cannot_device(device)
        if reason:
            return reason
        sizes = [math.prod(s) for _, s in plan.shapes] + [math.prod(plan.out_shape), plan.iterations]
        if max(sizes) > INT32_LIMIT:
            return f"loops:triton indexes with int32; {max(sizes)} elements exceed {INT32_LIMIT}"
        return None

    def grad_modes(self, library: str) -> tuple[str, ...]:
        return ("vjp",)

    def workspace(self, plan) -> tuple[int, str]:
        return kernel_plan(plan, "float16", deterministic=self.is_deterministic()).workspace()

    # -- kernels ----------------------------------------------------------------

    def kernel_plan(self, plan, dtype: str = "float32"):
        return kernel_plan(plan, dtype, deterministic=self.is_deterministic(), precision=self.dot_precision())

    def source(self, plan, dtype: str = "float32") -> str:
        """The generated Triton source for ``plan`` and ``dtype``."""
        return triton_source(self.kernel_plan(plan, dtype))

    def _kernel(self, kp):
        fn = self._kernels.get(kp)
        if fn is None:
            src = triton_source(kp)
            fn = load_kernel(kp.name, src)
            self._kernels[kp] = fn
        return fn

    def execute(self, plan, operands: dict, out=None):
        import torch
        first = next(iter(operands.values()))
        dtype = str(first.dtype).rsplit(".", 1)[-1]
        if dtype not in _DTYPES:
            raise BackendError(f"loops:triton computes in {', '.join(_DTYPES)}, got {dtype}")
        kp = self.kernel_plan(plan, dtype)
        src = triton_source(kp)
        try:
            kernel = self._kernel(kp)
        except CacheDirError:
            raise
        except Exception as e:   # a syntax or import error in generated code
            raise BackendError(f"loops:triton: kernel for {plan} failed to load: {e}\n--- generated source ---\n{src}") from e
        ops = [operands[a.name].contiguous() for a in plan.stmt.operands]
        if out is None:
            out = torch.empty(plan.out_shape, dtype=first.dtype, device=first.device)
        buf_dtype = getattr(torch, kp.out_dtype)
        direct = out.is_contiguous() and out.dtype == buf_dtype and kp.parts == 1
        if kp.parts > 1:
            buf = torch.empty((kp.parts, *plan.out_shape), dtype=buf_dtype, device=first.device)
        elif kp.mode == "atomic":
            buf = out.zero_() if direct else torch.zeros(plan.out_shape, dtype=buf_dtype, device=first.device)
        else:
            buf = out if direct else torch.empty(plan.out_shape, dtype=buf_dtype, device=first.device)
        try:
            kernel[kp.grid()](*ops, buf, num_warps=kp.num_warps)
        except Exception as e:
            raise BackendError(f"loops:triton: kernel {kp.name} for {plan} failed: {type(e).__name__}: {e}\n"
                               f"--- generated source ---\n{src}") from e
        if kp.parts > 1:   # the partial sums, in a fixed order
            buf = buf.sum(0)
        if buf is not out:
            out.copy_(buf)
        return out


def kernel_dir() -> str:
    """Where generated kernel sources are written (Triton reads a kernel's
    source from its file): ``einlocal.machine.cache_dir()/triton_kernels``,
    made 0700 and checked to be the user's own (``einlocal.cachedir``)."""
    return str(cachedir.folder("triton_kernels"))


def write_kernel(name: str, src: str) -> str:
    """Write ``src`` to ``<kernel_dir>/<name>.py`` (atomically, unless it
    holds ``src`` already); its path."""
    return str(cachedir.write_code(os.path.join(kernel_dir(), f"{name}.py"), src))


def _import_kernel(name: str, path: str):
    """The kernel ``name`` of the module file ``path``, imported from that
    path once its folders are checked (``cachedir.load_module``)."""
    return getattr(cachedir.load_module(f"einlocal_kernels.{name}", path), name)


def load_kernel(name: str, src: str):
    """The kernel ``name`` defined by ``src`` (Triton reads a kernel's source
    from its file, so it is written first)."""
    return _import_kernel(name, write_kernel(name, src))


_TL_SIG = {"float16": "*fp16", "bfloat16": "*bf16", "float32": "*fp32", "float64": "*fp64"}


def compile_for(kp, capability: int) -> dict:
    """Compile one kernel ahead of time for ``GPUTarget("cuda", capability,
    32)`` (no GPU needed); see ``compile_many``."""
    return compile_many([(kp, capability)])[0]


def compile_many(items) -> list[dict]:
    """Compile ``(kernel plan, capability)`` pairs ahead of time (no GPU
    needed).  Each result: name, capability, shared (bytes, from the compile
    metadata), registers / stack / local (``cuobjdump -res-usage`` on the
    cubin), num_warps, cubin.  Under the interpreter the compiler runs in a
    subprocess without it (the interpreter patches triton.language
    process-wide).  A kernel that does not compile raises BackendError with
    its source."""
    import json
    import subprocess
    jobs, sources = [], []
    for kp, cc in items:
        src = triton_source(kp)
        path = write_kernel(kp.name, src)
        sig = {f"p_{a.name}": _TL_SIG[kp.dtype] for a in kp.plan.stmt.operands}
        sig["p_out"] = _TL_SIG[kp.out_dtype]
        jobs.append({"name": kp.name, "path": path, "signature": sig, "capability": int(cc),
                     "num_warps": kp.num_warps})
        sources.append(src)
    if interpreting():
        env = {**os.environ, "TRITON_INTERPRET": "0"}
        proc = subprocess.run([sys.executable, "-m", "einlocal.backends.loops_triton"], input=json.dumps(jobs),
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise BackendError(f"loops:triton: the compiler subprocess failed:\n{proc.stderr[-4000:]}")
        results = json.loads(proc.stdout)
    else:
        results = _compile_jobs(jobs)
    for res, src in zip(results, sources):
        if "error" in res:
            raise BackendError(f"loops:triton: {res['name']} does not compile for sm_{res['capability']}: "
                               f"{res['error']}\n--- generated source ---\n{src}")
        res["cubin"] = bytes.fromhex(res["cubin"])
    return results


def _compile_jobs(jobs: list) -> list:
    """Compile in this process (not under the interpreter)."""
    from triton import compile as triton_compile
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    results = []
    for job in jobs:
        res = {"name": job["name"], "capability": job["capability"], "num_warps": job["num_warps"]}
        try:
            fn = _import_kernel(job["name"], job["path"])
            compiled = triton_compile(ASTSource(fn, job["signature"]),
                                      target=GPUTarget("cuda", job["capability"], 32),
                                      options={"num_warps": job["num_warps"]})
            cubin = compiled.asm["cubin"]
            res.update(shared=int(compiled.metadata.shared), **resource_usage(cubin), cubin=cubin.hex())
        except Exception as e:   # reported with the source by compile_many
            res["error"] = f"{type(e).__name__}: {e}"
        results.append(res)
    return results


def resource_usage(cubin: bytes) -> dict:
    """registers, stack and local bytes of the first kernel in a cubin, from
    ``cuobjdump -res-usage`` (Triton's bundled copy, else one on PATH)."""
    import re
    import shutil
    import subprocess
    tool = None
    try:
        import triton.backends.nvidia as nvidia
        cand = os.path.join(os.path.dirname(nvidia.__file__), "bin", "cuobjdump")
        tool = cand if os.path.exists(cand) else None
    except ImportError:
        pass
    tool = tool or shutil.which("cuobjdump")
    if tool is None:
        raise BackendError("cuobjdump is not available to read register counts")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", text)
    if m is None:
        raise BackendError(f"cannot read the resource usage from cuobjdump:\n{text}")
    return {"registers": int(m.group(1)), "stack": int(m.group(2)), "local": int(m.group(4))}


def make(engine="triton"):
    return TritonLoops()


if __name__ == "__main__":   # the ahead-of-time compiler, for compile_many under the interpreter
    import json
    json.dump(_compile_jobs(json.load(sys.stdin)), sys.stdout)
