"""jax: its arrays and tracers, devices, transformations, and the array calls on them."""
from __future__ import annotations

import sys

from ..memory import JAX_STATS, RSS
from .namespaces import Namespace

__all__ = ["Jax"]


class Jax(Namespace):
    name = "jax"
    module = "jax.numpy"
    roots = ("jax", "jaxlib")
    requires = ("jax",)
    packages = ("jax", "jaxlib")
    has_strided = False
    functional = True
    fork_safe = False        # XLA's threads: a forked child can deadlock
    autodiff = True
    dtypes = ("float16", "bfloat16", "float32", "float64")
    call_overhead_s = 60e-6
    compile_s = 4.0          # XLA compiling one op's forward or backward program on a 2-core CPU
    fallback = ("einsum:jax", "bmm:jax")
    memory_methods = {"cpu": RSS, "gpu": JAX_STATS, "cuda": JAX_STATS}

    def loaded(self) -> bool:
        return "jax" in sys.modules

    def owns(self, a) -> bool:
        jax = sys.modules.get("jax")
        array = getattr(jax, "Array", None)         # None while another thread imports jax
        return array is not None and isinstance(a, array)

    def device_of(self, a) -> str:
        try:
            dev = sorted(a.devices(), key=lambda d: d.id)[0]
            return f"{dev.platform}:{dev.id}" if dev.platform != "cpu" else "cpu"
        except Exception:  # a tracer has no devices
            return "traced"

    def trace_device(self) -> str:
        import jax
        dev = jax.devices()[0]
        return f"{dev.platform}:{dev.id}" if dev.platform != "cpu" else "cpu"

    def is_tracer(self, a) -> bool:
        core = sys.modules.get("jax.core") or sys.modules["jax"].core
        return isinstance(a, core.Tracer)

    def jit(self, fn):
        import jax
        return jax.jit(fn)

    def sync(self, leaves) -> list:
        import jax
        return [jax.block_until_ready]

    def records(self, arrays: dict, grad: str) -> bool:
        return grad == "vjp"      # with "autodiff", jax differentiates the forward lowering itself

    def record(self, call, backend, arrays: dict, grad: str):
        from . import autograd_jax
        return autograd_jax.apply(call, backend, arrays)

    def record_empty(self, call, backend, arrays: dict):
        """A constant (empty) result: jax differentiates it to zeros itself."""
        from ..run import run_forward
        return run_forward(call, backend, arrays)

    def autodiff_vjp(self, call, backend, dy, arrays: dict, wrt) -> dict:
        import jax

        from ..run import run_forward
        names = tuple(n for n in call.args if arrays.get(n) is not None)
        fixed = {n: arrays[n] for n in names if n not in wrt}

        def f(*xs):
            return run_forward(call, backend, {**fixed, **dict(zip(wrt, xs))})

        _, pullback = jax.vjp(f, *(arrays[n] for n in wrt))
        return dict(zip(wrt, pullback(dy)))

    def set_threads(self, n: int):
        """XLA reads its flags once, at import: set them only before that."""
        if self.loaded():
            return None
        import os
        kept = [f for f in os.environ.get("XLA_FLAGS", "").split()
                if not f.startswith(("--xla_cpu_multi_thread_eigen", "intra_op_parallelism_threads"))]
        os.environ["XLA_FLAGS"] = " ".join(
            kept + ["--xla_cpu_multi_thread_eigen=false", f"intra_op_parallelism_threads={n}"])
        return os.environ["XLA_FLAGS"]

    def persistent_cache(self, folder) -> None:
        """XLA's persistent compilation cache, every program kept."""
        import jax
        try:
            jax.config.update("jax_compilation_cache_dir", str(folder))
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
            jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
        except Exception:  # noqa: BLE001 — an older jax without these options: compile as usual
            pass

    def preload(self) -> None:
        """jax's first compile (~0.1 s)."""
        import jax
        jax.jit(lambda x: x + 1)(self.mod.ones(2)).block_until_ready()

    def cannot_device(self, device: str) -> str | None:
        if device.partition(":")[0] not in ("cpu", "cuda", "gpu"):
            return None         # "traced" (inside a trace), or a device einlocal does not place arrays on
        try:
            self._device(device)
        except (RuntimeError, IndexError) as e:
            return f"jax has no device {device} here ({type(e).__name__}: {str(e).splitlines()[0]})"
        return None

    def _device(self, device: str):
        """jax's device for a name: "cpu", or "cuda" / "gpu" with an optional ":index"."""
        import jax
        kind, _, index = device.partition(":")
        return jax.devices("cpu" if kind == "cpu" else "gpu")[int(index or 0)]

    def from_numpy(self, a, device: str = "cpu"):
        import jax
        return jax.device_put(a, self._device(device))

    def from_numpy_as(self, a, dtype: str, device: str = "cpu"):
        import jax
        return jax.device_put(self.mod.asarray(a, dtype=dtype), self._device(device))

    def x64(self) -> bool:
        """Whether jax computes float64 (its 64-bit mode; off by default)."""
        if self.loaded():
            return bool(sys.modules["jax"].config.jax_enable_x64)
        import os
        return os.environ.get("JAX_ENABLE_X64", "").lower() in ("1", "true", "yes", "on")

    def lacks(self, dtype: str) -> str | None:
        if dtype == "float64" and not self.x64():
            return ("jax computes float64 only with 64-bit mode on (JAX_ENABLE_X64=1, or "
                    "jax.config.update('jax_enable_x64', True)); without it float64 becomes float32")
        return super().lacks(dtype)

    def to_numpy(self, a):
        import numpy
        return numpy.asarray(a)

    def pad(self, a, pads):
        return self.mod.pad(a, pads)

    def named_precision(self):
        """float32 matmuls as float32: with no precision named, jax's rounds
        their inputs to TF32 or bfloat16 on a GPU."""
        import jax
        return jax.default_matmul_precision("highest")

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
