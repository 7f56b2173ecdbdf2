"""The prepare phase's scheduler: every job's checks and warm-ups, two libraries at a time, an idle worker helping the busiest library."""
from __future__ import annotations

import os
import threading
from typing import Callable

from .jobs import Job
from .policy import prepare_cost, prepares
from .state import JobState
from .supervisor import Feed, run_group

__all__ = ["prepare", "PREPARE_WORKERS", "STEAL_MIN"]

PREPARE_WORKERS = 2
STEAL_MIN = 2      # jobs left in a library's queue for a second process of it to be worth its start


def prepare(jobs: list[Job], groups: list[list[int]], states: list[JobState], threads, progress,
            on_idle: Callable[[], None] | None = None, workers: int | None = None) -> None:
    """Run every job's check and warm-up steps before anything is timed, in up to
    `workers` (default `PREPARE_WORKERS`) processes at once, the costliest library
    first, one library a process (a library's thread pools take every core).  A
    worker with no library left to start helps the one with most jobs left
    (`STEAL_MIN` or more), from the back of its queue, in a second process of that
    library: nearly all of this phase is compiling, on one thread.  Nothing here is
    timed; what these processes decide (in `states`) and compile (kernels, in the
    caches on disk) the timing processes take over (check and warm-up steps record
    nothing themselves: a killed check is recorded by the timed steps it rules out).
    With one worker this is the same as running each library's group in turn.
    `on_idle()` runs once, when the first worker finds nothing left to do (its core is free)."""
    feeds = sorted(([i for i in g if prepares(jobs[i])] for g in groups),
                   key=lambda c: -sum(prepare_cost(jobs[i]) for i in c))
    feeds = [Feed(c) for c in feeds if c]
    wanted = PREPARE_WORKERS if workers is None else workers
    workers = max(1, min(wanted, os.cpu_count() or 1, sum(map(len, feeds))))
    running = [0] * len(feeds)          # processes at work on each library's feed
    lock = threading.Lock()
    idle = [on_idle]

    def next_feed() -> tuple[int, bool] | None:
        with lock:
            for k, feed in enumerate(feeds):
                if not running[k] and len(feed):
                    running[k] += 1
                    return k, False
            left = [(len(feed), k) for k, feed in enumerate(feeds) if running[k] == 1]
            if left and max(left)[0] >= STEAL_MIN:
                k = max(left)[1]
                running[k] += 1
                return k, True
            call, idle[0] = idle[0], None
        if call is not None:
            call()
        return None

    def quiet(event: str, info: dict) -> None:     # step descriptions only: jobs are counted when timed
        if progress and event == "step":
            with lock:
                progress(event, info)

    errors: list[BaseException] = []

    def work() -> None:
        while not errors:
            got = next_feed()
            if got is None:
                return
            k, back = got
            try:
                run_group(jobs, threads, quiet, states, ("check", "warm"), feed=feeds[k], back=back)
            except BaseException as e:  # noqa: BLE001 — raised in the caller's thread below
                errors.append(e)
                return
            finally:
                with lock:
                    running[k] -= 1

    pool = [threading.Thread(target=work, daemon=True) for _ in range(workers)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if errors:
        raise errors[0]
    if idle[0] is not None:
        idle[0]()
