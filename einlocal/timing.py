"""Time one callable: first call, warm-up, budgeted repetitions, median and spread."""

from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = [
    "Timing",
    "WallClock",
    "CudaEventClock",
    "measure",
    "sync_for",
    "no_sync",
    "thread_info",
    "set_threads",
]


@dataclass(frozen=True)
class Timing:
    """Result of `measure`. Times in seconds; `times` are the timed repetitions.

    `capped` is True when a single call (the first call, a warm-up call or a
    repetition) took longer than `cap_s`; then `median_s` is a lower bound
    (the first call's time when it was that call, `times` empty). When the
    cap's total ran out before `min_reps` repetitions, the measurement is not
    capped: `median_s` is the median of what was measured (`n` may be 1, or
    the first call alone when no repetition fitted) and `note` says so.
    """

    median_s: float
    iqr_s: float
    q1_s: float
    q3_s: float
    n: int
    first_call_s: float
    capped: bool
    times: tuple[float, ...] = field(repr=False)
    note: str = ""
    probe: Any = field(default=None, repr=False)

    @property
    def spread(self) -> float:
        """IQR relative to the median (0.1 = 10%)."""
        return self.iqr_s / self.median_s if self.median_s > 0 else 0.0


# -- clocks ---------------------------------------------------------------------
# A clock has `start() -> token` and `stop(token) -> seconds`. `measure` calls
# start(), fn, sync(result), stop(token): the synchroniser always runs before
# the end time is read.


class WallClock:
    """Host wall-clock time (`time.perf_counter`)."""

    def start(self) -> float:
        return time.perf_counter()

    def stop(self, token: float) -> float:
        return time.perf_counter() - token


class CudaEventClock:
    """GPU time between two CUDA events recorded on the current stream.

    `event_factory()` makes an event with `record()`, `synchronize()` and
    `elapsed_time(end) -> ms`; by default `torch.cuda.Event(enable_timing=True)`.
    Tests pass a fake factory.
    """

    def __init__(self, event_factory: Callable[[], Any] | None = None):
        if event_factory is None:
            import torch

            def event_factory():
                return torch.cuda.Event(enable_timing=True)

        self._event = event_factory

    def start(self) -> Any:
        begin = self._event()
        begin.record()
        return begin

    def stop(self, token: Any) -> float:
        end = self._event()
        end.record()
        end.synchronize()
        return token.elapsed_time(end) / 1e3


# -- synchronisation ---------------------------------------------------------------


def no_sync(result: Any) -> None:
    """Synchroniser for host-only results."""


def _leaves(tree: Any):
    if isinstance(tree, dict):
        for value in tree.values():
            yield from _leaves(value)
    elif isinstance(tree, (list, tuple)):
        for value in tree:
            yield from _leaves(value)
    elif tree is not None:
        yield tree


def _libraries(sample: Any) -> dict:
    """The array libraries of the leaves of ``sample`` -> those leaves."""
    from .backends.namespaces import library_of, namespace
    found: dict = {}
    for leaf in _leaves(sample):
        lib = library_of(leaf)
        if lib is not None:
            found.setdefault(namespace(lib), []).append(leaf)
    return found


def sync_for(sample: Any) -> Callable[[Any], None]:
    """The synchroniser for results like `sample` (an array or a tuple/list/dict tree):
    each array library's own wait for its device work (torch CUDA: synchronize each
    device seen; jax: `block_until_ready`; cupy: the current stream); numpy and
    torch CPU need nothing."""
    steps = [step for lib, leaves in _libraries(sample).items() for step in lib.sync(leaves)]
    if not steps:
        return no_sync
    if len(steps) == 1:
        return steps[0]

    def sync(result: Any) -> None:
        for step in steps:
            step(result)

    return sync


def _default_clock(sample: Any) -> WallClock | CudaEventClock:
    if any(lib.cuda_events(leaf) for lib, leaves in _libraries(sample).items() for leaf in leaves):
        return CudaEventClock()
    return WallClock()


# -- measure ---------------------------------------------------------------------


def _quartiles(times: list[float]) -> tuple[float, float, float]:
    if len(times) == 1:
        return times[0], times[0], times[0]
    q1, q2, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return q1, q2, q3


# a first call over the cap by no more than this many caps gets one more call (see `measure`)
FIRST_CALL_RETRY = 2.0


def measure(
    fn: Callable[..., Any],
    *,
    setup: Callable[[], Any] | None = None,
    sync: Callable[[Any], None] | None = None,
    budget_s: float = 0.5,
    warmup: int = 1,
    min_reps: int = 3,
    max_reps: int = 10_000,
    cap_s: float | None = None,
    clock: Any = None,
    first_call_allowance_s: float = 0.0,
    compile_s: Callable[[], float | None] | None = None,
    check: Callable[[Any], None] | None = None,
    probe: Callable[[Callable[[], Any]], Any] | None = None,
) -> Timing:
    """Time `fn` like triton's do_bench, on wall-clock by default.

    Each call is `fn(setup())` when `setup` is given (run outside the timed
    region: fresh inputs per repetition), else `fn()`. `sync(result)` runs inside
    the timed region; None picks `sync_for(first result)`. The first call is
    timed alone (`first_call_s`, compile time included), then `warmup` untimed
    calls, then repetitions until `budget_s` of timed work and `min_reps` reps
    (at most `max_reps`). `cap_s`: the longest a single call may take. A call past it ends the
    measurement with `capped=True` (no repetitions after a first call past it).
    First call + warm-up + repetitions together are also held to about `cap_s`:
    once their total passes it, no further call starts, and the result is the
    median of the repetitions taken so far (or the first call alone, n=1, when
    none fitted), not capped, with a `note`.
    `clock`: `WallClock()`, `CudaEventClock()`, or None (CUDA events when the
    first result is a CUDA torch tensor, else wall-clock).
    `first_call_allowance_s`: extra time the first call may take beyond the cap
    (a JIT's compile), not counted in the cap's total.  A first call past cap +
    allowance by at most `FIRST_CALL_RETRY` x the cap is followed by one more
    call, and only that one past the cap too makes the result ``>cap``: a
    library's first use of a pass (thread pools, caches, page faults) is not
    the pass's cost.
    `compile_s()`: the seconds the first call spent compiling, where known (asked
    after `check`; an `einlocal.compile_watch.CompileWatch`): the allowance then
    credits only those.
    `check(result)`: called with the first call's result, untimed, before any
    other call; an exception it raises ends the measurement (a wrong result
    is never timed further).
    `probe(call)`: runs the first warm-up call as `probe(call)` (a memory
    probe around one call), untimed; its value is `Timing.probe`. With
    `warmup=0` it runs after the repetitions instead.
    """
    if max_reps < 1 or min_reps < 0 or warmup < 0:
        raise ValueError(f"measure: need max_reps >= 1, min_reps >= 0, warmup >= 0; "
                         f"got {max_reps}, {min_reps}, {warmup}")

    def call(timer: Any) -> float:
        arg = (setup(),) if setup is not None else ()
        token = timer.start()
        result = fn(*arg)
        sync(result)  # always before the end time is read
        return timer.stop(token)

    first_clock = clock if clock is not None else WallClock()
    arg = (setup(),) if setup is not None else ()
    token = first_clock.start()
    result = fn(*arg)
    if sync is None:
        sync = sync_for(result)
    sync(result)
    first = first_clock.stop(token)
    if clock is None:
        clock = _default_clock(result)
    if check is not None:
        check(result)
    del result, arg
    probed = None

    def run_probe() -> float:
        nonlocal probed
        arg = (setup(),) if setup is not None else ()
        t0 = time.perf_counter()
        probed = probe(lambda: sync(fn(*arg)))
        return time.perf_counter() - t0

    def over(dt: float) -> bool:
        return cap_s is not None and dt > cap_s

    allowance, spent_compiling = first_call_allowance_s, compile_s() if compile_s is not None else None
    if spent_compiling is not None:
        allowance = min(allowance, spent_compiling)
    times: list[float] = []
    spent = 0.0
    if over(first - allowance):
        note = (f"first call {first:.3g} s > cap {cap_s:g} s"
                + (f" + {spent_compiling:.3g} s compiling" if spent_compiling is not None
                   else f" + {first_call_allowance_s:g} s for compiling" if first_call_allowance_s else ""))
        if first - allowance > FIRST_CALL_RETRY * cap_s:
            return Timing(first, 0.0, first, first, 0, first, True, (), note)
        # a little past the cap: perhaps the library's own first-use costs (threads, caches, page
        # faults); the next call decides, and is the first repetition (it warmed up nothing new)
        dt = call(clock)
        if over(dt):
            return Timing(dt, 0.0, dt, dt, 0, first, True, (), f"{note}, and the next {dt:.3g} s")
        times, spent, warmup = [dt], dt, 0
        total = dt
        retried = f"first call {first:.3g} s past the cap {cap_s:g} s, the next {dt:.3g} s"
    else:
        total = max(0.0, first - allowance)
        retried = ""
    for k in range(warmup):
        dt = run_probe() if (k == 0 and probe is not None) else call(clock)
        total += dt
        if over(dt):
            return Timing(dt, 0.0, dt, dt, 0, first, True, (), f"a warm-up call {dt:.3g} s > cap {cap_s:g} s",
                          probed)
        if over(total):   # no time left for a repetition: the first call is the only sample
            return Timing(first, 0.0, first, first, 1, first, False, (first,),
                          f"n=1: the first call only (no repetition within the cap {cap_s:g} s)", probed)

    note = ""
    while len(times) < max_reps and (spent < budget_s or len(times) < min_reps):
        dt = call(clock)
        times.append(dt)
        spent += dt
        total += dt
        if over(dt):
            q1, median, q3 = _quartiles(times)
            return Timing(median, q3 - q1, q1, q3, len(times), first, True, tuple(times),
                          f"a repetition {dt:.3g} s > cap {cap_s:g} s", probed)
        if over(total):
            if len(times) < min_reps:
                note = f"n={len(times)}: repetitions stopped at the cap's total ({cap_s:g} s)"
            break
    if probe is not None and warmup == 0:
        run_probe()
    q1, median, q3 = _quartiles(times)
    note = "; ".join(n for n in (retried, note) if n)
    return Timing(median, q3 - q1, q1, q3, len(times), first, False, tuple(times), note, probed)


# -- threads -------------------------------------------------------------------------

_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")
_thread_limits: Any = None  # threadpoolctl limits kept alive by set_threads


def thread_info() -> dict:
    """Thread counts of every loaded library, and the environment that sets them.

    Keys: `threadpools` (threadpoolctl: user_api, internal_api, version,
    num_threads, and architecture: the CPU kernels a BLAS picked, as
    OpenBLAS's "SkylakeX" or "Haswell"), `torch` / `numba` (only if
    already imported), `env`.
    """
    info: dict = {"threadpools": [], "env": {}}
    try:
        import threadpoolctl

        for pool in threadpoolctl.threadpool_info():
            keys = ("user_api", "internal_api", "prefix", "version", "num_threads", "architecture")
            info["threadpools"].append({k: pool.get(k) for k in keys})
    except ImportError:
        info["threadpools"] = None
    from .backends.namespaces import loaded_libraries
    for lib in loaded_libraries():
        n = lib.threads()
        if n is not None:
            info[lib.name] = n
    if "numba" in sys.modules:
        info["numba"] = sys.modules["numba"].get_num_threads()
    for name in (*_THREAD_ENV, "XLA_FLAGS"):
        if name in os.environ:
            info["env"][name] = os.environ[name]
    return info


def set_threads(n: int) -> dict:
    """Use `n` threads in every library; returns what was set.

    Env vars (OMP/MKL/OPENBLAS/NUMBA) are set for libraries not yet loaded;
    loaded BLAS/OpenMP pools are limited with threadpoolctl (kept alive);
    each array library sets itself (`Namespace.set_threads`: torch if
    imported; jax's XLA_FLAGS only before it is imported, as XLA reads them
    once), and numba if imported.
    """
    global _thread_limits
    if n < 1:
        raise ValueError(f"set_threads: n must be >= 1, got {n}")
    done: dict = {}
    for name in _THREAD_ENV:
        os.environ[name] = str(n)
    done["env"] = list(_THREAD_ENV)
    try:
        import threadpoolctl

        if _thread_limits is not None:
            _thread_limits.restore_original_limits()
        _thread_limits = threadpoolctl.threadpool_limits(limits=n)
        done["threadpoolctl"] = True
    except ImportError:
        done["threadpoolctl"] = False
    from .backends.namespaces import LIBRARIES, namespace
    for name in LIBRARIES:      # each library sets itself, or what it reads when imported later
        what = namespace(name).set_threads(n)
        if what is not None:
            done[name] = what
    if "numba" in sys.modules:
        numba = sys.modules["numba"]
        done["numba"] = min(n, numba.config.NUMBA_NUM_THREADS)
        numba.set_num_threads(done["numba"])
    return done
