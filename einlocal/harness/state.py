"""What a job's steps have decided so far, carried from process to process: the runner's decisions and the parent's record of steps."""
from __future__ import annotations

from dataclasses import dataclass, field

from .jobs import Kill

__all__ = ["Decisions", "JobState"]


@dataclass
class Decisions:
    """What a job's steps so far decided: a process started again after a kill
    goes on from them instead of checking and timing again what it knows."""
    checked: bool = False                                   # the reduced check has run
    fail_all: tuple[str, str] | None = None                 # (status, reason) for every timed step
    fail_mode: dict = field(default_factory=dict)           # grad mode -> (status, reason)
    over_cap: dict = field(default_factory=dict)            # (pass, grad mode) -> regime where a call passed the cap
    errors: dict = field(default_factory=dict)              # "forward" / grad mode -> worst err/tol
    medians: dict = field(default_factory=dict)             # (pass, grad mode) -> median of its first regime
    full_checked: set = field(default_factory=set)          # (pass, grad mode) checked at full size

    def failure(self, pass_: str, grad_mode) -> tuple[str, str] | None:
        """(status, reason) where an earlier step ruled this pass out, else None."""
        return self.fail_all or (self.fail_mode.get(grad_mode) if pass_ != "forward" else None)

    def fail(self, pass_: str, grad_mode, reason: str) -> None:
        """Rule this pass out as failed (the forward: every pass)."""
        if pass_ == "forward":
            self.fail_all = ("failed", reason)
        else:
            self.fail_mode[grad_mode] = ("failed", reason)

    def to_json(self) -> dict:
        return {"checked": self.checked, "fail_all": self.fail_all,
                "fail_mode": [[m, list(v)] for m, v in self.fail_mode.items()],
                "over_cap": [[list(k), v] for k, v in self.over_cap.items()],
                "errors": [[k, v] for k, v in self.errors.items()],
                "medians": [[list(k), v] for k, v in self.medians.items()],
                "full_checked": sorted((list(k) for k in self.full_checked), key=str)}

    @classmethod
    def from_json(cls, d: dict | None) -> "Decisions":
        if not d:
            return cls()
        return cls(checked=bool(d["checked"]), fail_all=tuple(d["fail_all"]) if d["fail_all"] else None,
                   fail_mode={m: tuple(v) for m, v in d["fail_mode"]},
                   over_cap={tuple(k): v for k, v in d["over_cap"]}, errors={k: v for k, v in d["errors"]},
                   medians={tuple(k): v for k, v in d["medians"]},
                   full_checked={tuple(k) for k in d.get("full_checked", ())})


@dataclass
class JobState:
    """The parent's record of one job: the steps done (their keys), the steps
    killed or crashed, and its runner's last decisions (a later phase or a
    restarted process goes on from them)."""
    done: list = field(default_factory=list)
    killed: list = field(default_factory=list)         # [Kill]
    decisions: Decisions | None = None

    def mark_done(self, key) -> None:
        key = tuple(key)
        if key not in self.done:
            self.done.append(key)

    def add_kill(self, kill: Kill) -> None:
        self.killed.append(kill)
