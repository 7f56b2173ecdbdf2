"""torch: its tensors, devices, autograd and threads, and the array calls on them."""
from __future__ import annotations

import contextlib
import sys

from ..memory import RSS, TORCH_CUDA
from .namespaces import Namespace

__all__ = ["Torch"]


class Torch(Namespace):
    name = module = "torch"
    roots = ("torch",)
    requires = ("torch",)
    packages = ("torch",)
    autodiff = True
    dtypes = ("float16", "bfloat16", "float32", "float64")
    call_overhead_s = 30e-6
    fallback = ("bmm:torch", "einsum:torch")
    memory_methods = {"cpu": RSS, "cuda": TORCH_CUDA}

    def owns(self, a) -> bool:
        torch = sys.modules.get("torch")
        tensor = getattr(torch, "Tensor", None)     # None while another thread imports torch
        return tensor is not None and isinstance(a, tensor)

    def fast_key(self, a):
        return (type(a), a.shape, a.dtype, a.device)

    def device_of(self, a) -> str:
        d = a.device
        return d.type if d.index is None else f"{d.type}:{d.index}"

    def device_name(self, device: str) -> str:
        try:
            return f"{device} " + self.mod.cuda.get_device_name(self.mod.device(device))
        except Exception:  # noqa: BLE001 — a name is a label, not a requirement
            return device

    def gpu_name(self) -> str | None:
        return self.mod.cuda.get_device_name() if self.loaded() and self.mod.cuda.is_available() else None

    def requires_grad(self, a) -> bool:
        return bool(a.requires_grad)

    def overlaps(self, a, b) -> bool:
        sa, sb = a.untyped_storage(), b.untyped_storage()
        if sa.data_ptr() != sb.data_ptr():
            return False

        def span(t):      # same storage: compare the element ranges each covers
            lo = t.storage_offset()
            return lo, lo + sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride()))
        (l1, h1), (l2, h2) = span(a), span(b)
        return not (h1 < l2 or h2 < l1)

    def sync(self, leaves) -> list:
        devices = []
        for a in leaves:
            if getattr(a, "is_cuda", False) and a.device not in devices:
                devices.append(a.device)
        if not devices:
            return []
        import torch
        return [lambda r, d=d: torch.cuda.synchronize(d) for d in devices]

    def records(self, arrays: dict, grad: str) -> bool:
        return self.mod.is_grad_enabled() and any(a is not None and a.requires_grad for a in arrays.values())

    def cannot_device(self, device: str) -> str | None:
        if device.partition(":")[0] == "cuda":
            if not self.mod.cuda.is_available():
                return f"torch sees no CUDA device (torch.cuda.is_available() is False); asked for {device}"
            index = int(device.partition(":")[2] or 0)
            if index >= self.mod.cuda.device_count():
                return f"torch sees {self.mod.cuda.device_count()} CUDA devices; asked for {device}"
        return None

    @contextlib.contextmanager
    def full_precision(self):
        """torch's TF32 switches off (cuBLAS matmuls and cuDNN convolutions
        round float32 inputs to 10 mantissa bits where they are on; cuDNN's
        is on by default), restored after."""
        torch = self.mod
        flags = torch.backends.cuda.matmul, torch.backends.cudnn
        saved = [f.allow_tf32 for f in flags]
        try:
            for f in flags:
                f.allow_tf32 = False
            yield
        finally:
            for f, s in zip(flags, saved):
                f.allow_tf32 = s

    def cuda_events(self, a) -> bool:
        return bool(getattr(a, "is_cuda", False))

    def record(self, call, backend, arrays: dict, grad: str):
        from . import autograd_torch
        return autograd_torch.apply(call, backend, arrays, grad)

    def autodiff_vjp(self, call, backend, dy, arrays: dict, wrt) -> dict:
        from ..run import run_forward
        torch = self.mod
        leaves = {n: (a.detach().requires_grad_(n in wrt) if a is not None else None) for n, a in arrays.items()}
        with torch.enable_grad():
            y = run_forward(call, backend, leaves)
            grads = torch.autograd.grad(y, [leaves[n] for n in wrt], dy)
        return dict(zip(wrt, grads))

    def threads(self) -> int | None:
        return self.mod.get_num_threads() if self.loaded() else None

    def set_threads(self, n: int):
        if not self.loaded():
            return None
        self.mod.set_num_threads(n)
        return n

    def preload(self) -> None:
        """torch's first ``autograd.grad`` imports sympy (~0.4 s): do it now."""
        t = self.mod.ones(2, requires_grad=True)
        self.mod.autograd.grad(t.sum(), t, self.mod.ones(()))

    def from_numpy(self, a, device: str = "cpu"):
        return self.mod.from_numpy(a.copy()).to(device)

    def from_numpy_as(self, a, dtype: str, device: str = "cpu"):
        return self.mod.from_numpy(a.copy()).to(device=device, dtype=getattr(self.mod, dtype))

    def to_numpy(self, a):
        a = a.detach().cpu()
        return (a.float() if a.dtype == self.mod.bfloat16 else a).numpy()   # numpy has no bfloat16

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
