"""Running a list of jobs: the shared references first, then one process per library (prepare, then time), or all in this process."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

from .jobs import Job
from .messages import Recorded, StepStarted
from .policy import prepares
from .references import check_references
from .runner import run_job
from .state import JobState
from .supervisor import kill, run_group, spawn

__all__ = ["run_jobs", "ISOLATION_NOTE", "IN_PROCESS_NOTE"]

ISOLATION_NOTE = ("each array library measured in its own process (thread pools never share cores "
                  "with another library's); each step killed past its deadline (>cap)")
IN_PROCESS_NOTE = "all libraries measured in one process (not isolated)"


def run_jobs(jobs: list[Job], *, isolate: bool = True, threads: int | None = None,
             progress: Callable[[str, dict], None] | None = None, prepare_workers: int | None = None) -> list[dict]:
    """Run jobs, one process per library (in job order within it) when `isolate`;
    returns every record. The float64 loops reference of the reduced checks is
    computed here, once per op and shape, and read by every job's check.
    `progress(event, info)`: "step" (info: the `Step` and the `Job`) and "job" (a job
    finished; info: the `Job` and its records).
    `prepare_workers`: processes at once in the prepare phase (default
    `prepare.PREPARE_WORKERS`; 0: no scheduler, each library's checks and warm-ups in turn)."""
    with tempfile.TemporaryDirectory(prefix="einlocal-run-") as folder:
        jobs = [job if job.inputs_dir else job.replace(inputs_dir=folder) for job in check_references(jobs, Path(folder))]
        if not isolate:
            return _in_process(jobs, threads, progress)
        return _isolated(jobs, threads, progress, prepare_workers)


def _in_process(jobs: list[Job], threads: int | None, progress) -> list[dict]:
    if threads:
        from ..timing import set_threads
        set_threads(threads)
    records: list[dict] = []
    for job in jobs:
        mine: list[dict] = []

        def emit(msg, job=job, mine=mine) -> None:
            if isinstance(msg, Recorded):
                msg.record.setdefault("isolation", IN_PROCESS_NOTE)
                mine.append(msg.record)
            elif isinstance(msg, StepStarted) and progress:
                progress("step", {"job": job, "step": msg.step})
        run_job(job, emit)
        records += mine
        if progress:
            progress("job", {"job": job, "records": mine})
    return records


def _isolated(jobs: list[Job], threads: int | None, progress, prepare_workers: int | None) -> list[dict]:
    by_library: dict[str, list[int]] = {}
    for i, job in enumerate(jobs):
        by_library.setdefault(job.library, []).append(i)
    states = [JobState() for _ in jobs]
    kinds, spawned, records = None, {}, []
    try:
        if any(prepares(job) for job in jobs):
            if prepare_workers == 0:     # no scheduler: each library's checks and warm-ups in turn
                for group in by_library.values():
                    run_group([jobs[i] for i in group], threads, None, [states[i] for i in group], ("check", "warm"))
            else:
                from .prepare import prepare

                def start_timing_processes() -> None:     # they import their library while the prepare phase ends
                    spawned.update({lib: spawn(lib, threads) for lib in by_library if lib not in spawned})
                prepare(jobs, list(by_library.values()), states, threads, progress,
                        on_idle=start_timing_processes, workers=prepare_workers)
            kinds = ("time",)
        for library, group in by_library.items():
            records += run_group([jobs[i] for i in group], threads, progress, [states[i] for i in group], kinds,
                                 first_proc=spawned.pop(library, None))
    finally:
        for proc in spawned.values():     # not used (an error on the way): stop them
            kill(proc)
            proc.wait()
    for rec in records:
        rec.setdefault("isolation", ISOLATION_NOTE)
    return records
