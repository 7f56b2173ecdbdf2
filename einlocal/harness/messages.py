"""The lines between the parent and a benchmark child, as dataclasses: `encode` writes one, `decode` reads one."""
from __future__ import annotations

import json
from dataclasses import dataclass

from .jobs import Job, Kill, Step
from .state import Decisions, JobState

__all__ = ["RunJob", "StepStarted", "FirstReturned", "Compiling", "Recorded", "StepEnded", "JobDone",
           "encode", "decode"]


@dataclass
class RunJob:
    """Parent to child: run this job's steps of these kinds (None: check and time),
    going on from what its earlier steps did and decided."""
    index: int
    job: Job
    state: JobState
    kinds: tuple | None = None


@dataclass
class StepStarted:
    """A step starts: its deadline starts now."""
    job: int
    step: Step


@dataclass
class FirstReturned:
    """A timed step's first call, or a warm-up's call, returned."""
    job: int


@dataclass
class Compiling:
    """The first call started (``on``) or stopped compiling (`einlocal.compile_watch`)."""
    on: bool


@dataclass
class Recorded:
    """A timed step's record, and what the runner knows after it."""
    job: int
    record: dict
    step_key: tuple
    decisions: Decisions


@dataclass
class StepEnded:
    """A check or warm-up step finished: what the runner knows now."""
    job: int
    step_key: tuple
    decisions: Decisions


@dataclass
class JobDone:
    """A job is done: the parent sends the next, or closes the child's input."""
    job: int


_PREFIX = {RunJob: "EINLOCAL_JOB ", StepStarted: "EINLOCAL_STEP ", FirstReturned: "EINLOCAL_FIRST ",
           Compiling: "EINLOCAL_COMPILE ", Recorded: "EINLOCAL_RECORD ", StepEnded: "EINLOCAL_STATE ",
           JobDone: "EINLOCAL_NEXT "}


def _payload(msg) -> dict:
    if isinstance(msg, RunJob):
        s = msg.state
        return {"index": msg.index, "job": msg.job.to_json(), "kinds": list(msg.kinds) if msg.kinds else None,
                "done": [list(k) for k in s.done], "killed": [k.to_json() for k in s.killed],
                "decisions": s.decisions.to_json() if s.decisions else None}
    if isinstance(msg, StepStarted):
        return {"job": msg.job, "step": list(msg.step.key)}
    if isinstance(msg, (FirstReturned, JobDone)):
        return {"job": msg.job}
    if isinstance(msg, Compiling):
        return {"on": msg.on}
    out = {"job": msg.job, "step_key": list(msg.step_key), "decisions": msg.decisions.to_json()}
    if isinstance(msg, Recorded):
        out["record"] = msg.record
    return out


def encode(msg) -> str:
    """One line (no newline) for `msg`."""
    return _PREFIX[type(msg)] + json.dumps(_payload(msg), default=str)


def decode(line: str):
    """The message on `line`, or None for any other line (a library's chatter)."""
    for cls, prefix in _PREFIX.items():
        if line.startswith(prefix):
            d = json.loads(line[len(prefix):])
            break
    else:
        return None
    if cls is RunJob:
        state = JobState([tuple(k) for k in d["done"]], [Kill.from_json(k) for k in d["killed"]],
                         Decisions.from_json(d["decisions"]) if d["decisions"] else None)
        return RunJob(d["index"], Job.from_json(d["job"]), state, tuple(d["kinds"]) if d["kinds"] else None)
    if cls is StepStarted:
        return StepStarted(d["job"], Step.of(d["step"]))
    if cls in (FirstReturned, JobDone):
        return cls(d["job"])
    if cls is Compiling:
        return Compiling(bool(d["on"]))
    decisions = Decisions.from_json(d["decisions"])
    if cls is Recorded:
        return Recorded(d["job"], d["record"], tuple(d["step_key"]), decisions)
    return StepEnded(d["job"], tuple(d["step_key"]), decisions)
