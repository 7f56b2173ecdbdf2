"""Peak memory of one call, measured the way each array library allows."""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
from typing import Any, Callable, NamedTuple

__all__ = [
    "Peak",
    "METHODS",
    "peak_tracemalloc",
    "peak_torch_cuda",
    "peak_cupy",
    "peak_jax",
    "peak_rss_subprocess",
    "peak_rss_in_process",
    "choose_method",
]

TRACEMALLOC = "tracemalloc"
TORCH_CUDA = "cuda max_memory_allocated"
CUPY_POOL = "cupy pool"
JAX_STATS = "jax memory_stats"
RSS = "peak RSS (subprocess)"
RSS_IN_PROCESS = "peak RSS (in the measuring process)"
METHODS = (TRACEMALLOC, TORCH_CUDA, CUPY_POOL, JAX_STATS, RSS, RSS_IN_PROCESS)


class Peak(NamedTuple):
    """Peak bytes allocated during a call above what was live before it."""

    bytes: int
    method: str  # one of METHODS, for the table


def peak_tracemalloc(fn: Callable[[], Any]) -> Peak:
    """Peak of Python-visible allocations (numpy data included) during `fn()`."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        if started:
            tracemalloc.stop()
    return Peak(max(0, peak - base), TRACEMALLOC)


def peak_torch_cuda(fn: Callable[[], Any], device: Any = None) -> Peak:
    """Peak of torch's CUDA caching allocator on `device` during `fn()`."""
    import torch

    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return Peak(max(0, torch.cuda.max_memory_allocated(device) - base), TORCH_CUDA)


def peak_cupy(fn: Callable[[], Any]) -> Peak:
    """Growth of cupy's default memory pool during `fn()`.

    The pool keeps freed blocks, so after `free_all_blocks()` its total size
    rises to the call's high-water of used bytes (an upper bound: rounding and
    fragmentation count too).
    """
    import cupy

    pool = cupy.get_default_memory_pool()
    cupy.cuda.get_current_stream().synchronize()
    pool.free_all_blocks()
    base = pool.used_bytes()
    fn()
    cupy.cuda.get_current_stream().synchronize()
    peak = max(pool.total_bytes(), pool.used_bytes())
    return Peak(max(0, peak - base), CUPY_POOL)


def peak_jax(fn: Callable[[], Any], device: Any) -> Peak:
    """Peak from `device.memory_stats()` (GPU/TPU; CPU devices have none).

    `peak_bytes_in_use` cannot be reset: if the call does not raise it, the
    figure is the earlier high-water above the current use (an upper bound).
    """
    import jax

    stats = device.memory_stats()
    if not stats or "peak_bytes_in_use" not in stats:
        raise RuntimeError(f"peak_jax: {device} has no memory_stats(); use peak_rss_subprocess")
    base = stats["bytes_in_use"]
    jax.block_until_ready(fn())
    return Peak(max(0, device.memory_stats()["peak_bytes_in_use"] - base), JAX_STATS)


_RSS_DRIVER = r"""
import json, resource, sys
def status():
    try:
        with open("/proc/self/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return {k: int(fields[k].split()[0]) * 1024 for k in ("VmHWM", "VmRSS")}
    except OSError:  # not Linux: ru_maxrss is bytes on macOS
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {"VmHWM": rss, "VmRSS": rss}
code = json.loads(sys.stdin.read())
ns = {"__name__": "__einlocal_rss__"}
exec(compile(code["setup"], "<setup>", "exec"), ns)
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    reset = True
except OSError:
    reset = False
before = status()
exec(compile(code["call"], "<call>", "exec"), ns)
after = status()
print("EINLOCAL_RSS " + json.dumps({"before": before, "after": after, "reset": reset}), flush=True)
"""


def peak_rss_subprocess(setup_code: str, call_code: str, *, timeout_s: float = 600) -> Peak:
    """Peak resident memory of `call_code` above the RSS after `setup_code`.

    Both run in one fresh `sys.executable` (same namespace). The high-water mark
    is reset after setup (Linux `/proc/self/clear_refs`), so the figure is the
    call's peak RSS minus the RSS it started from. Without the reset the
    baseline is the setup's own high-water, which can hide a smaller call peak.
    """
    proc = subprocess.run(
        [sys.executable, "-c", _RSS_DRIVER],
        input=json.dumps({"setup": setup_code, "call": call_code}),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("EINLOCAL_RSS ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"peak_rss_subprocess: child exited with {proc.returncode}:\n{proc.stderr[-2000:]}"
        )
    report = json.loads(lines[-1].split(" ", 1)[1])
    base_key = "VmRSS" if report["reset"] else "VmHWM"
    peak = report["after"]["VmHWM"] - report["before"][base_key]
    return Peak(max(0, peak), RSS)


def _proc_status() -> dict:
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    return {k: int(fields[k].split()[0]) * 1024 for k in ("VmHWM", "VmRSS")}


def peak_rss_in_process(fn: Callable[[], Any]) -> Peak:
    """Peak resident memory of `fn()` above the RSS just before it (Linux only).

    For a process that runs one library's calls (einlocal's benchmark
    children): freed heap is returned first (`malloc_trim`), the high-water
    mark is reset (`/proc/self/clear_refs`), then `fn()` runs. Memory a
    library keeps cached from earlier calls is not counted again.
    """
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _proc_status()
    except OSError as err:
        raise RuntimeError(f"peak_rss_in_process: needs Linux /proc ({err}); use peak_rss_subprocess") from err
    fn()
    after = _proc_status()
    return Peak(max(0, after["VmHWM"] - before["VmRSS"]), RSS_IN_PROCESS)


# engines that are not array libraries (generated code): device type -> method
_ENGINE_METHODS = {"numba": {"cpu": RSS}, "triton": {"cuda": TORCH_CUDA}}


def choose_method(engine: str, device: str) -> str:
    """The measuring method (one of METHODS) for an engine (an array library,
    whose class says, or a code generator) on a device.

    numpy on CPU is traced by tracemalloc; torch, jax and numba allocate outside
    it on CPU, so they need a subprocess's peak RSS.
    """
    from .backends.namespaces import LIBRARIES, namespace
    kind = device.lower().split(":")[0]
    engine = engine.lower()
    methods = namespace(engine).memory_methods if engine in LIBRARIES else _ENGINE_METHODS.get(engine, {})
    if kind not in methods:
        valid = ", ".join(f"{e}/{d}" for e in (*LIBRARIES, *_ENGINE_METHODS)
                          for d in (namespace(e).memory_methods if e in LIBRARIES else _ENGINE_METHODS[e]))
        raise ValueError(f"choose_method: no memory method for engine={engine!r} "
                         f"device={device!r}; valid: {valid}")
    return methods[kind]
