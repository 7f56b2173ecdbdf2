"""The machine's roofline numbers (copy bandwidth, matmul rate), measured once and cached."""

from __future__ import annotations

import functools
import json
import os
import platform
import socket
import sys
import time
from importlib import metadata
from pathlib import Path

from .cachedir import root as _root
from .cachedir import write_atomic

__all__ = [
    "cache_dir",
    "copy_bandwidth",
    "cache_copy_bandwidth",
    "llc_bytes",
    "cache_bytes",
    "matmul_rate",
    "roof",
    "machine_info",
    "roofline_time",
    "roofline_fraction",
]

_ENGINES = ("numba", "triton", "opt_einsum")     # the packages behind backends that are not array libraries


def _packages() -> tuple[str, ...]:
    """Every package whose version a run records: each array library's, then the engines'."""
    from .backends.namespaces import LIBRARIES, namespace
    names = [p for lib in LIBRARIES for p in namespace(lib).packages]
    return tuple(dict.fromkeys([*names, *_ENGINES]))


def cache_dir() -> Path:
    """`$EINLOCAL_CACHE_DIR`, else the per-user cache folder (`~/.cache/einlocal`
    on Linux): made with mode 0700 if missing, and refused (`CacheDirError`)
    unless it is the user's own and writable by no one else; see `einlocal.cachedir`."""
    return _root()


def cpu_fields(cpuinfo: str = "/proc/cpuinfo") -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo ({} where there is none)."""
    fields: dict[str, str] = {}
    try:
        with open(cpuinfo) as f:
            for line in f:
                if not line.strip():
                    break                       # the first processor is enough
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def _cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's name, with its family, model and widest x86 vector unit where
    /proc/cpuinfo says (a VM may show only "AMD EPYC" for hosts of different
    generations, whose memory-bound kernels run 2-3x apart)."""
    fields = cpu_fields(cpuinfo)
    name = fields.get("model name") or platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    extra = [f"family {fields['cpu family']} model {fields['model']}"] if "cpu family" in fields else []
    simd = next((label for flag, label in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("sse2", "SSE2"))
                 if flag in flags), None)
    extra += [simd] if simd else []
    return f"{name} ({', '.join(extra)})" if extra else name


def _memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _version(name: str) -> str | None:
    """The installed version of ``name``: a distribution, or a module that
    ships under another distribution's name (e.g. one built per CUDA version)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        for dist in _distributions().get(name, ()):
            try:
                return metadata.version(dist)
            except metadata.PackageNotFoundError:
                pass
        return None


@functools.lru_cache(maxsize=1)
def _distributions() -> dict:
    return metadata.packages_distributions()


_ROOF_VERSION = 2   # 2: rates from the best of the repeats, not their median


def _machine_key() -> str:
    return f"{socket.gethostname()}|{_cpu_model()}|numpy {_version('numpy')}|roof {_ROOF_VERSION}"


def _cache_path() -> Path:
    return cache_dir() / "machine.json"


def _cached(name: str, measure, refresh: bool) -> float:
    """`measure()` once per machine key and `name`, kept in machine.json."""
    path = _cache_path()
    key = _machine_key()
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            data = {}
    except (OSError, ValueError):
        data = {}
    entry = data.get(key, {})
    if not refresh and isinstance(entry.get(name), (int, float)):
        return float(entry[name])
    value = float(measure())
    data.setdefault(key, {})[name] = value
    write_atomic(path, json.dumps(data, indent=1, sort_keys=True))
    return value


def _best_time(fn, repeats: int) -> float:
    """The fastest of ``repeats`` calls after a first one (page faults, the
    library's start): a roof is the best the machine reaches, and a median
    would count every other tenant's interference against it."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def copy_bandwidth(nbytes: int = 256 * 2**20, *, repeats: int = 5, refresh: bool = False) -> float:
    """Bytes/s of `np.copyto` into a reused buffer: (read + written) / best time."""

    def run() -> float:
        import numpy as np

        src = np.ones(nbytes // 4, dtype=np.float32)
        dst = np.empty_like(src)
        return 2 * src.nbytes / _best_time(lambda: np.copyto(dst, src), repeats)

    return _cached(f"copy_bandwidth:{nbytes}", run, refresh)


def cache_bytes(level: int, sysfs: str = "/sys/devices/system/cpu/cpu0/cache") -> int | None:
    """The size of cpu0's level-``level`` data (or unified) cache, as Linux's
    sysfs gives it, or None where it does not say."""
    for index in sorted(Path(sysfs).glob("index*")):
        try:
            if int((index / "level").read_text()) != level or (index / "type").read_text().strip() == "Instruction":
                continue
            text = (index / "size").read_text().strip()
            return int(text[:-1]) * {"K": 2**10, "M": 2**20, "G": 2**30}[text[-1]] if text[-1] in "KMG" else int(text)
        except (OSError, ValueError, IndexError):
            continue
    return None


def llc_bytes() -> int | None:
    """The last-level cache's size (level 3, else level 2), or None where the system does not say."""
    return cache_bytes(3) or cache_bytes(2)


def cache_copy_bandwidth(*, repeats: int = 50, refresh: bool = False) -> float | None:
    """`copy_bandwidth` of a copy whose source and destination together fill half the
    last-level cache (so both stay in it); None where its size is unknown."""
    llc = llc_bytes()
    if not llc:
        return None
    nbytes = llc // 4 // 4096 * 4096
    return copy_bandwidth(nbytes, repeats=repeats, refresh=refresh)


def roof(refresh: bool = False) -> dict:
    """The roofline's parameters for `roofline_fraction`: the copy bandwidth of DRAM
    (`bandwidth`) and of the last-level cache (`cache_bandwidth`, for ops whose
    bytes fit in its `cache_bytes`), and the matmul rate (`rate`), measured once."""
    return {"bandwidth": copy_bandwidth(refresh=refresh), "rate": matmul_rate(refresh=refresh),
            "cache_bandwidth": cache_copy_bandwidth(refresh=refresh), "cache_bytes": llc_bytes()}


def roof_text(r: dict) -> str:
    """How `roofline_fraction` reads with roof `r`, for a table's notes."""
    copy = f"{r['bandwidth'] / 1e9:.1f} GB/s (DRAM)"
    if r.get("cache_bandwidth") and r.get("cache_bytes"):
        copy += (f", or {r['cache_bandwidth'] / 1e9:.1f} GB/s (last-level cache) where the min bytes fit in its "
                 f"{r['cache_bytes'] / 2**20:.0f} MiB")
    return (f"% roofline = roofline time / measured time; roofline time = max(flops / {r['rate'] / 1e9:.0f} GFLOP/s "
            f"(float32 matmul), min bytes / copy bandwidth); min bytes = the inputs read once and the output written "
            f"once; copy bandwidth = {copy}")


def matmul_rate(n: int = 2048, *, repeats: int = 7, refresh: bool = False) -> float:
    """FLOP/s of a float32 n x n `np.matmul` into `out=` (2 n^3 flops), its best of `repeats`."""

    def run() -> float:
        import numpy as np

        rng = np.random.default_rng(0)
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        out = np.empty_like(a)
        return 2 * n**3 / _best_time(lambda: np.matmul(a, b, out=out), repeats)

    return _cached(f"matmul_rate:{n}", run, refresh)


def machine_info() -> dict:
    """CPU, cores, memory, hostname, library versions, GPU (if torch is loaded), threads."""
    from .timing import thread_info

    info = {
        "hostname": socket.gethostname(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_bytes": _memory_bytes(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "versions": {name: _version(name) for name in _packages()},
        "gpu": None,
        "threads": thread_info(),
    }
    from .backends.namespaces import loaded_libraries
    info["gpu"] = next((g for lib in loaded_libraries() if (g := lib.gpu_name())), None)
    return info


def roofline_time(flops: float, min_bytes: float, *, bandwidth: float, rate: float,
                  cache_bandwidth: float | None = None, cache_bytes: int | None = None) -> float:
    """Lower bound on time: max(flops / rate, min_bytes / bandwidth), the bandwidth
    being `cache_bandwidth` where given and `min_bytes` fit in `cache_bytes`."""
    if cache_bandwidth and cache_bytes and min_bytes <= cache_bytes:
        bandwidth = max(bandwidth, cache_bandwidth)
    return max(flops / rate, min_bytes / bandwidth)


def roofline_fraction(time_s: float, flops: float, min_bytes: float, **roof_params) -> float:
    """roofline_time / time_s: 1.0 means at the machine's limit (`roof()`'s keys)."""
    return roofline_time(flops, min_bytes, **roof_params) / time_s
