"""When a thread is compiling (XLA, numba/LLVM) rather than running: its Python stack, sampled.

A benchmark's first call includes its JIT's compile, and the compile may take
longer than the cap on a call.  Instead of allowing the whole first call a
fixed allowance, the benchmark child samples its main thread's stack every few
milliseconds and tells its parent when a compile starts and ends, so the
parent holds the rest of the call (the run) to the cap alone.

The stack is read from the innermost frame outwards; the first frame that names
a compile or a run decides.  XLA's compile, MLIR lowering and jaxpr tracing are
compiling; executing an XLA program (`pxla.ExecuteReplicated.__call__`,
`block_until_ready`) is running, even inside an eager `jax.vjp` trace.  numba's
and llvmlite's Python code only runs while numba compiles or loads a cached
kernel (a compiled kernel's call has no Python frame of theirs).  Compiles of
the other libraries are not recognised: `WATCHED` lists where this was checked.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Callable

__all__ = ["WATCHED", "CompileWatch", "compiling"]

# the backends' libraries (`Backend.takes[0]`, or "numba" for the loops:numba engine) whose compiles this sees
WATCHED = ("jax", "numba")

# (path fragment, function name or None for any): the innermost match decides
_RUN = (("jax/_src/interpreters/pxla.py", "__call__"), ("jax/_src/array.py", "block_until_ready"),
        ("jax/_src/api.py", "block_until_ready"))
_COMPILE = (("jax/_src/compiler.py", None), ("jax/_src/compilation_cache.py", None),
            ("jax/_src/interpreters/mlir.py", None), ("jax/_src/interpreters/partial_eval.py", None),
            ("/numba/", None), ("/llvmlite/", None))


def compiling(frame) -> bool:
    """Whether the stack ending in `frame` (innermost) is compiling."""
    while frame is not None:
        code = frame.f_code
        path = code.co_filename.replace("\\", "/")
        for fragment, name in _RUN:
            if fragment in path and name == code.co_name:
                return False
        for fragment, name in _COMPILE:
            if fragment in path and (name is None or name == code.co_name):
                return True
        frame = frame.f_back
    return False


class CompileWatch:
    """Samples thread `thread_id` (default: the one that makes the watch) while armed and
    calls `on_change(compiling: bool)` from its own daemon thread on every change.

        watch = CompileWatch(report); watch.arm(); ...first call...; seconds = watch.disarm()

    `disarm()` returns the seconds sampled as compiling since `arm()`.
    """

    def __init__(self, on_change: Callable[[bool], None], *, period_s: float = 0.005, thread_id: int | None = None):
        self.on_change = on_change
        self.period_s = period_s
        self.thread_id = thread_id if thread_id is not None else threading.get_ident()
        self._armed = threading.Event()
        self._lock = threading.Lock()
        self._state = False
        self._since = 0.0
        self._compiled = 0.0
        threading.Thread(target=self._loop, name="einlocal-compile-watch", daemon=True).start()

    def arm(self) -> None:
        with self._lock:
            self._state, self._since, self._compiled = False, time.monotonic(), 0.0
        self._armed.set()

    def disarm(self) -> float:
        self._armed.clear()
        with self._lock:        # reports are made under the lock: none comes after this one
            if self._state:
                self._compiled += time.monotonic() - self._since
                self._state = False
                self.on_change(False)
            return self._compiled

    def _loop(self) -> None:
        while True:
            self._armed.wait()
            frame = sys._current_frames().get(self.thread_id)
            now_compiling = compiling(frame)
            del frame
            with self._lock:
                if self._armed.is_set() and now_compiling != self._state:
                    now = time.monotonic()
                    if self._state:
                        self._compiled += now - self._since
                    self._state, self._since = now_compiling, now
                    self.on_change(now_compiling)
            time.sleep(self.period_s)
