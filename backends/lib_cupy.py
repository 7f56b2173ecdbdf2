"""cupy: its arrays, devices and streams (numpy's calls, on a CUDA device)."""
from __future__ import annotations

import sys

from ..memory import CUPY_POOL
from .lib_numpy import NumpyLike

__all__ = ["Cupy"]


class Cupy(NumpyLike):
    name = module = "cupy"
    roots = ("cupy",)
    requires = ("cupy",)
    packages = ("cupy",)
    call_overhead_s = 40e-6
    fallback = ("bmm:cupy", "einsum:cupy")
    memory_methods = {"cuda": CUPY_POOL}

    def unavailable(self) -> str | None:
        reason = super().unavailable()
        if reason is None and not self.mod.is_available():
            return "cupy is installed but no CUDA device is available (cupy.is_available() is False)"
        return reason

    def owns(self, a) -> bool:
        cupy = sys.modules.get("cupy")
        ndarray = getattr(cupy, "ndarray", None)    # None while another thread imports cupy
        return ndarray is not None and isinstance(a, ndarray)

    def device_of(self, a) -> str:
        return f"cuda:{a.device.id}"

    def cannot_device(self, device: str) -> str | None:
        if device.split(":")[0] != "cuda":
            return f"cupy arrays are on a CUDA device, not on {device}"
        return None

    def from_numpy(self, a, device: str = "cuda"):
        _, _, index = device.partition(":")
        with self.mod.cuda.Device(int(index or 0)):
            return self.mod.array(a)

    def device_name(self, device: str) -> str:
        try:
            props = self.mod.cuda.runtime.getDeviceProperties(int(device.split(":")[1]))
            return f"{device} " + props["name"].decode()
        except Exception:  # noqa: BLE001 — a name is a label, not a requirement
            return device

    def to_numpy(self, a):
        return a.get()

    def einsum(self, spec, *ops, out=None):
        result = self.mod.einsum(spec, *ops)        # cupy's einsum takes no out=
        return result if out is None else self.assign(out, result)

    def overlaps(self, a, b) -> bool:
        return bool(self.mod.shares_memory(a, b))

    def sync(self, leaves) -> list:
        return [lambda r: self.mod.cuda.get_current_stream().synchronize()]
