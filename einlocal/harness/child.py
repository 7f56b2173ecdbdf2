"""A benchmark child process: start one array library, then run the jobs the parent sends, one at a time, reporting each step."""
from __future__ import annotations

import os
import sys
import threading

from .messages import Compiling, JobDone, RunJob, decode, encode
from .runner import run_job

__all__ = ["start_library", "main"]

def _persistent_cache(library: str) -> None:
    """The library's persistent compilation cache under einlocal's cache dir
    (where it has one: XLA's), so a second run does not compile again."""
    from ..backends.namespaces import LIBRARIES, namespace
    if library in LIBRARIES:
        from ..machine import cache_dir
        namespace(library).persistent_cache(cache_dir() / library)


def start_library(library: str) -> None:
    """Import `library` (an array library, or a code generator's engine) and
    einlocal's backends on it, and start what a process's first use of it
    starts, so that a timed first call pays for its own work alone: numba's
    compiler and CPU target (~0.3 s), torch's first ``autograd.grad`` (it
    imports sympy: ~0.4 s), jax's first compile (~0.1 s).  Each library's
    class (`Namespace.preload`) and each backend (`preload`) knows its own."""
    from .. import registry
    from ..backends.namespaces import LIBRARIES, namespace
    from ..errors import BackendError
    if library in LIBRARIES:
        namespace(library).preload()
    for name in registry.NAMES:
        if registry.engine_of(name) == library:
            try:
                backend = registry.get(name)
            except BackendError:      # the jobs report it
                continue
            backend.preload()


def main(library: str | None = None, threads: int | None = None) -> int:
    """Start `library`, then run each job read from stdin (a `RunJob` line, sent when the
    last is done) and answer with its messages on stdout, until stdin ends."""
    from ..compile_watch import CompileWatch
    if threads:                      # before jax is imported: XLA reads its flags once
        from ..timing import set_threads
        set_threads(threads)
    if library:
        try:
            _persistent_cache(library)
            start_library(library)
        except Exception:  # noqa: BLE001 — only a head start: the jobs meet whatever failed, and report it
            pass
    # keep library chatter away from the protocol
    real_stdout = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    lock = threading.Lock()        # the watch's thread writes too

    def emit(msg) -> None:
        with lock:
            real_stdout.write(encode(msg) + "\n")
            real_stdout.flush()
    watch = CompileWatch(lambda on: emit(Compiling(on)))
    while True:
        line = sys.stdin.readline()
        if not line:
            return 0
        msg = decode(line.rstrip("\n"))
        if not isinstance(msg, RunJob):
            continue
        if msg.job.library != library:
            _persistent_cache(msg.job.library)
        run_job(msg.job, emit, msg.state, msg.kinds, msg.index, watch)
        emit(JobDone(msg.index))


if __name__ == "__main__":
    args = sys.argv[1:]
    opts = dict(zip(args[::2], args[1::2]))
    if len(args) % 2 or not set(opts) <= {"--library", "--threads"}:
        sys.exit("usage: python -m einlocal.harness.child [--library NAME] [--threads N]  "
                 "(internal: run benchmark jobs read from stdin)")
    rc = main(opts.get("--library"), int(opts["--threads"]) if "--threads" in opts else None)
    sys.stdout.flush()
    sys.stderr.flush()
    # every line and file is written: skip the interpreter's teardown (torch's takes ~0.5 s,
    # and the next library's timing waits for this process to end)
    os._exit(rc)
