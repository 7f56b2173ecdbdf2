"""The memory guard: a lowering's largest intermediate against a budget,
checked before any work, so a huge broadcast product is an error, not an
out-of-memory kill."""
from __future__ import annotations

import os
import time

from .errors import MemoryBudgetError

__all__ = ["memory_budget", "set_memory_budget", "check_budget", "DEFAULT_FRACTION"]

DEFAULT_FRACTION = 0.5
_budget: int | None = None


_AVAILABLE = (0.0, 0)   # (when read, bytes): /proc/meminfo is read at most once a second


def _available_bytes() -> int:
    global _AVAILABLE
    now = time.monotonic()
    if now - _AVAILABLE[0] < 1.0:
        return _AVAILABLE[1]
    _AVAILABLE = (now, _read_available())
    return _AVAILABLE[1]


def _read_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def memory_budget() -> int:
    """Bytes one intermediate may take: ``set_memory_budget``, else the
    environment's ``EINLOCAL_MEMORY_BUDGET`` (bytes), else half the memory
    available now."""
    if _budget is not None:
        return _budget
    env = os.environ.get("EINLOCAL_MEMORY_BUDGET")
    if env:
        return int(float(env))
    return int(_available_bytes() * DEFAULT_FRACTION)


def set_memory_budget(nbytes: int | None) -> None:
    """Set the budget in bytes; None restores the default."""
    global _budget
    if nbytes is not None and nbytes <= 0:
        raise ValueError(f"set_memory_budget: the budget must be positive bytes, got {nbytes}")
    _budget = None if nbytes is None else int(nbytes)


def check_budget(backend, plan, itemsize: int, result: int = 0) -> int:
    """Raise MemoryBudgetError if what ``backend`` allocates running
    ``plan`` -- every intermediate of its lowering, plus ``result``
    elements for a result einlocal allocates (no ``out=``) -- is over the
    budget; else return those bytes."""
    allocs = [(n, what) for n, what in backend.allocations(plan) if n]
    if result:
        allocs.append((result, f"result {tuple(plan.out_shape)}"))
    nbytes = sum(n for n, _ in allocs) * itemsize
    budget = memory_budget()
    if nbytes > budget:
        largest = max(allocs, key=lambda c: c[0])[1]
        parts = "; ".join(f"{what}: {n * itemsize:,} bytes" for n, what in allocs)
        raise MemoryBudgetError(
            f"backend {backend.name} would allocate {nbytes:,} bytes ({nbytes / 2**20:,.1f} MiB; {parts}; the "
            f"largest, the {largest}), over the memory budget of {budget:,} bytes ({budget / 2**20:,.1f} MiB) "
            f"for {plan.stmt}; choose another backend or raise the budget "
            f"(el.set_memory_budget or EINLOCAL_MEMORY_BUDGET)")
    return nbytes
