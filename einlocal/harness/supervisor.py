"""The parent's side of a library's process: spawn it, feed it jobs, read its messages, kill it past a deadline, restart it."""
from __future__ import annotations

import collections
import os
import queue
import signal
import subprocess
import sys
import threading
import time

from . import policy
from .jobs import Job, Kill
from .messages import Compiling, FirstReturned, JobDone, Recorded, RunJob, StepEnded, StepStarted, decode, encode
from .state import JobState

__all__ = ["Feed", "spawn", "run_group", "kill", "stop_all", "allow_children"]


class Feed:
    """Jobs (indices) handed to a library's processes one at a time, as each asks
    for its next: a second process may take from the back while the first takes
    from the front."""

    def __init__(self, indices):
        self._todo = collections.deque(indices)
        self._lock = threading.Lock()

    def take(self, back: bool = False) -> int | None:
        with self._lock:
            if not self._todo:
                return None
            return self._todo.pop() if back else self._todo.popleft()

    def __len__(self) -> int:
        with self._lock:
            return len(self._todo)


# `python -m` would put the working directory first on the child's sys.path: drop it before any import
_CHILD = "import sys; sys.path.pop(0); import runpy; runpy.run_module('einlocal.harness.child', run_name='__main__')"


_CHILDREN: set = set()               # every child started and not yet reaped
_STOPPING = threading.Event()        # set by `stop_all`: no new child starts


def spawn(library: str, threads: int | None) -> subprocess.Popen:
    """A benchmark child for `library`'s jobs (`einlocal.harness.child`): it imports the
    library, then waits for its jobs on stdin (so it may be started early, while other work
    runs).  Nothing it imports comes from the working directory."""
    if _STOPPING.is_set():
        raise KeyboardInterrupt("the run is being stopped")
    argv = [sys.executable, "-c", _CHILD, "--library", library]
    if threads:
        argv += ["--threads", str(int(threads))]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    _CHILDREN.difference_update({p for p in _CHILDREN if p.returncode is not None})   # reaped already
    _CHILDREN.add(proc)
    return proc


def stop_all() -> int:
    """Stop the run: no child starts from now on, and every live one is killed,
    then reaped (children run in sessions of their own, so a terminal's Ctrl-C
    reaches only this process).  Returns how many were stopped."""
    _STOPPING.set()
    stopped = 0
    for proc in list(_CHILDREN):
        if proc.poll() is None:
            kill(proc)
            stopped += 1
        proc.wait()
        _close(proc)
        _CHILDREN.discard(proc)
    return stopped


def allow_children() -> None:
    """A new run may start children again (after `stop_all`)."""
    _STOPPING.clear()


def _close(proc, readers=()) -> None:
    """After a child exited: let its readers reach the end of its output, then
    close its pipes (else each stays open until the process exits)."""
    for t in readers:
        t.join(timeout=2.0)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            try:
                stream.close()
            except OSError:      # a broken stdin pipe: the child is gone either way
                pass


def kill(proc) -> None:
    """Kill a child and what it started (its own session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


def _pump(stream, lines: queue.Queue) -> None:
    try:
        for line in stream:
            lines.put(line.rstrip("\n"))
    except (OSError, ValueError):     # closed by `_close` (something the child started held it open)
        pass
    lines.put(None)


def _tail(stream, keep: list) -> None:
    try:
        for line in stream:
            keep.append(line)
            del keep[:-50]
    except (OSError, ValueError):
        pass


def run_group(jobs: list[Job], threads: int | None, progress, states: list[JobState] | None = None, kinds=None,
              first_proc: subprocess.Popen | None = None, feed: Feed | None = None, back: bool = False) -> list[dict]:
    """Run one library's jobs in a child process, which asks for each next job when it
    is done with one (`JobDone`); restart it after a kill or a crash, on the job it was
    running.  Returns the records.

    `states`: per job, updated here (a later phase goes on from it); `kinds`: the step
    kinds to run (None: check and time); `first_proc`: a child already started by
    `spawn` for these jobs' library; `feed`: the jobs (indices into `jobs`) to run,
    default all, shared with another process of the library where it takes from the
    other end (from the back when `back`)."""
    records: list[dict] = []
    by_job: dict[int, list[dict]] = {}      # each job's records, handed to progress("job") when it is done
    states = states if states is not None else [JobState() for _ in jobs]
    feed = feed if feed is not None else Feed(range(len(jobs)))
    job = feed.take(back)           # the job the child was last given (None: it was told there are no more)
    stalls = 0
    live: list = [first_proc]      # the child running now: stopped (killed, then reaped) if this run is interrupted
    try:
        while job is not None:
            proc, first_proc = (first_proc or spawn(jobs[job].library, threads)), None
            live[:] = [proc]
            lines: queue.Queue = queue.Queue()
            err_tail: list[str] = []
            readers = [threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True),
                       threading.Thread(target=_tail, args=(proc.stderr, err_tail), daemon=True)]
            for t in readers:
                t.start()

            def give(i: int | None, proc=proc) -> None:
                try:
                    if i is None:
                        proc.stdin.close()
                        return
                    proc.stdin.write(encode(RunJob(i, jobs[i], states[i], tuple(kinds) if kinds else None)) + "\n")
                    proc.stdin.flush()
                except OSError:       # the child is gone: its exit tells why
                    pass
            give(job)
            heard = False             # any message from the child yet
            current = None            # the step running now (None: between steps)
            watch = None              # its first call's run and compile seconds, where the child reports them
            deadline = time.monotonic() + policy.START_TIMEOUT_S
            outcome = "exit"
            while True:
                try:
                    line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
                except queue.Empty:
                    outcome = "timeout"
                    break
                if line is None:
                    break
                msg = decode(line)
                heard = heard or msg is not None
                if isinstance(msg, JobDone):
                    if progress:
                        progress("job", {"job": jobs[job], "records": by_job.pop(job, [])})
                    job = feed.take(back)
                    give(job)
                    current, watch, deadline = None, None, time.monotonic() + policy.BETWEEN_STEPS_S
                elif isinstance(msg, StepStarted):
                    current, now = msg.step, time.monotonic()
                    watch = (policy.FirstCall(jobs[job], current, now)
                             if current.kind in ("time", "warm") and policy.compile_watched(jobs[job]) else None)
                    deadline = watch.deadline() if watch else now + policy.deadline_s(jobs[job], current)
                    if progress:
                        progress("step", {"job": jobs[job], "step": current})
                elif isinstance(msg, Compiling) and watch is not None:
                    watch.change(msg.on, time.monotonic())
                    deadline = watch.deadline()
                elif isinstance(msg, FirstReturned) and current is not None:
                    watch = None
                    deadline = time.monotonic() + policy.deadline_s(jobs[job], current, first_done=True)
                elif isinstance(msg, (Recorded, StepEnded)):
                    if isinstance(msg, Recorded):
                        records.append(msg.record)
                        by_job.setdefault(job, []).append(msg.record)
                    states[job].decisions = msg.decisions
                    states[job].mark_done(msg.step_key)
                    if current is not None and tuple(msg.step_key) == current.key:
                        current = None        # finished: a stop now is between steps
                        watch, deadline = None, time.monotonic() + policy.BETWEEN_STEPS_S
            ran_out = outcome == "timeout" and watch is not None and watch.ran_out(time.monotonic())
            if outcome == "timeout":
                kill(proc)
            rc = proc.wait()
            _close(proc, readers)
            if job is None:           # told there were no more: whatever ended it, nothing is left undone
                break
            # killed or crashed during `job`: record what it was running, and go on with it in a new process
            if not heard:
                raise RuntimeError(f"benchmark child failed before its first step (exit {rc}):\n"
                                   + "".join(err_tail)[-3000:])
            if current is None:       # stopped between steps: nothing to blame, go on
                stalls += 1
                if stalls > 3:
                    raise RuntimeError("benchmark child keeps stopping between steps:\n" + "".join(err_tail)[-3000:])
                continue
            stalls = 0
            killed = Kill(current, "killed" if outcome == "timeout" else "crashed", rc, "".join(err_tail)[-300:])
            if current.kind == "warm":
                # only a warm-up: the timed steps find out for themselves (unless pruning takes its word), and
                # this job's other warm-ups are left to its timed first calls too: no new process for them
                if ran_out and jobs[job].prune_over_cap:
                    states[job].add_kill(killed)
                else:
                    states[job].mark_done(current.key)
                job = feed.take(back)
                continue
            states[job].add_kill(killed)
    except BaseException:
        for proc in live:
            if proc is not None and proc.poll() is None:
                kill(proc)
                proc.wait()
                _close(proc)
        raise
    if first_proc is not None:    # nothing to run: the child started for it is not needed
        kill(first_proc)
        first_proc.wait()
        _close(first_proc)
    return records
