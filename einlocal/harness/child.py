"""A benchmark child process: start one array library, then run the jobs the parent sends, one at a time, reporting each step."""
from __future__ import annotations

import os
import sys
import threading

from .messages import Compiling, JobDone, RunJob, decode, encode
from .runner import run_job

__all__ = ["start_library", "main"]

_PRELOAD = {"numpy": "numpy", "torch": "torch", "jax": "jax.numpy", "numba": "numba", "cupy": "cupy"}


def _jax_compilation_cache() -> None:
    """XLA's persistent compilation cache under einlocal's cache dir, so a
    second benchmark run does not compile the same programs again."""
    try:
        import jax

        from ..machine import cache_dir
        jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "jax"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    except Exception:  # noqa: BLE001 — an older jax without these options: compile as usual
        pass


def start_library(library: str) -> None:
    """Import `library` and einlocal's backends on it, and start what a process's
    first use of it starts, so that a timed first call pays for its own work
    alone: numba's compiler and CPU target (~0.3 s), torch's first
    ``autograd.grad`` (it imports sympy: ~0.4 s), jax's first compile (~0.1 s)."""
    import importlib

    from .. import registry
    from ..errors import BackendError
    importlib.import_module(_PRELOAD[library])
    for name in registry.NAMES:
        if name.endswith(":" + library):
            try:
                registry.get(name)
            except BackendError:      # the jobs report it
                pass
    if library == "numba":
        import numba
        numba.njit(lambda x: x + 1)(1)
    elif library == "torch":
        import torch
        t = torch.ones(2, requires_grad=True)
        torch.autograd.grad(t.sum(), t, torch.ones(()))
    elif library == "jax":
        import jax
        jax.jit(lambda x: x + 1)(jax.numpy.ones(2)).block_until_ready()


def main(library: str | None = None, threads: int | None = None) -> int:
    """Start `library`, then run each job read from stdin (a `RunJob` line, sent when the
    last is done) and answer with its messages on stdout, until stdin ends."""
    from ..compile_watch import CompileWatch
    if threads:                      # before jax is imported: XLA reads its flags once
        from ..timing import set_threads
        set_threads(threads)
    if library == "jax":
        _jax_compilation_cache()
    if library in _PRELOAD:
        try:
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
        if msg.job.library == "jax":
            _jax_compilation_cache()
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
