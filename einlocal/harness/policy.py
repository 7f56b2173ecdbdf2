"""The harness's rules as pure functions: deadlines, the first-call clock, which steps run, and why a step is not timed."""
from __future__ import annotations

from .jobs import Job, Kill, Step
from .state import Decisions

__all__ = ["START_TIMEOUT_S", "BETWEEN_STEPS_S", "CHECK_DEADLINE_S", "deadline_s", "FirstCall", "warms",
           "prepares", "prepare_cost", "compile_watched", "killed_fields", "not_timed", "fail_reason",
           "JAX_STEADY_NOTE"]

START_TIMEOUT_S = 180.0     # imports of a framework on a busy machine
# between steps: the harness's own work (a job's setup and its input sets, the process's exit),
# which is no backend's time and is never recorded >cap
BETWEEN_STEPS_S = 120.0
CHECK_DEADLINE_S = 120.0

JAX_STEADY_NOTE = ("jax has no out= (immutable arrays): its steady regime is repeated calls "
                   "whose buffers come from XLA's allocator")

# a job's share of the prepare phase, per pass that compiles, relative to jax's (its programs
# compile and run in ~0.8 s a pass on 2 cores): numba's tiled kernels take ~1.7 s a pass
COMPILE_WEIGHT = {"numba": 2.0}


def warms(job: Job) -> bool:
    """Whether a job warms up before its timing: asked to (``warm_up``), and its first calls compile."""
    return bool(job.warm_up) and float(job.first_call_allowance_s or 0) > 0


def prepares(job: Job) -> bool:
    """Whether a job has work before its timing: a reduced check, or warm-up calls."""
    return bool(job.check_shapes) or warms(job)


def prepare_cost(job: Job) -> float:
    """A job's share of the prepare phase, roughly: a check, and each pass's compile
    (in the check at the reduced size and in the warm-up at the timed size)."""
    compiles = len(job.passes) * COMPILE_WEIGHT.get(job.library, 1.0) \
        if float(job.first_call_allowance_s or 0) > 0 else 0.0
    return (1.0 + compiles) * bool(job.check_shapes) + compiles * warms(job)


def compile_watched(job: Job) -> bool:
    """Whether the child reports this job's compiles (`einlocal.compile_watch`): its first
    calls' run time is then held to the cap alone, the compile to the allowance."""
    from ..compile_watch import WATCHED
    return job.library in WATCHED and float(job.first_call_allowance_s) > 0


def deadline_s(job: Job, step: Step, first_done: bool = False) -> float:
    """How long a step may run before it is killed (and recorded >cap).

    A timed step's first call (or a warm-up step, which is one) may take the
    cap plus the compile allowance; once it has returned, the rest takes at
    most ~2x the cap (`measure` starts no call once first call + warm-up +
    repetitions pass the cap, and that last call is itself under it), plus
    one more call when memory is measured after the repetitions; past that,
    some single call must have exceeded the cap.  Each phase has
    ``kill_margin_s`` on top."""
    if step.kind == "check":
        return CHECK_DEADLINE_S
    cap, margin = float(job.cap_s), float(job.kill_margin_s)
    if not first_done:
        return cap + float(job.first_call_allowance_s) + margin
    return (3.0 if job.memory else 2.0) * cap + margin


class FirstCall:
    """The parent's clock for a watched first call: run and compile seconds apart.

    The call may run ``cap + margin`` seconds and compile for the allowance; its
    deadline is the earlier of the unwatched one (`deadline_s`) and the time its
    run seconds reach ``cap + margin``, which does not move while it compiles."""

    def __init__(self, job: Job, step: Step, now: float):
        # a warm-up too: it shares the machine, and a kill costs a fresh process and its imports
        self.limit = float(job.cap_s) + float(job.kill_margin_s)
        self.latest = now + deadline_s(job, step)
        self.ran, self.since, self.compiling = 0.0, now, False

    def change(self, compiling: bool, now: float) -> None:
        if compiling != self.compiling:
            if not self.compiling:
                self.ran += now - self.since
            self.compiling, self.since = compiling, now

    def deadline(self) -> float:
        if self.compiling:
            return self.latest
        return min(self.latest, self.since + self.limit - self.ran)

    def ran_out(self, now: float) -> bool:
        """Whether the call's run (not its compile) has reached ``cap + margin`` by `now`."""
        return not self.compiling and self.ran + now - self.since >= self.limit


def killed_fields(job: Job, kill: Kill, this: bool) -> dict:
    """The record of a timed step that a kill or crash settles: `this` when the step
    itself was killed, else one it rules out (`Kill.rules_out`)."""
    what = kill.step.describe()
    if kill.why != "killed":
        return {"status": "failed", "reason": f"the process crashed (exit {kill.rc}) during {what}"}
    if this:
        allowance = float(job.first_call_allowance_s)
        given = ("not counting up to " if compile_watched(job) else "+ ") + f"{allowance:g} s"
        return {"status": ">cap", "reason": f"killed: a single call ran past the cap {job.cap_s} s"
                                            + (f" ({given} of a first call's compiling)" if allowance else "")}
    if kill.step.kind == "warm":    # a job that prunes over the cap takes its warm-up's word
        cap, margin = float(job.cap_s), float(job.kill_margin_s)
        return {"status": ">cap", "reason": f"not run: its warm-up's call ran past {cap + margin:g} s "
                                            f"(the cap {cap:g} s + {margin:g} s) after compiling, beside "
                                            f"another process"}
    return {"status": ">cap", "reason": f"not run: {what} ran past the cap"}


def not_timed(job: Job, decisions: Decisions, step: Step) -> tuple[str, str] | None:
    """(status, reason) for a timed step that is not run, else None: an earlier step
    ruled its pass out; a call of the other regime ran past the cap; the steady
    regime in a grad mode not asked for it; a pass too slow fresh for out= to matter."""
    fail = decisions.failure(step.pass_, step.grad_mode)
    if fail:
        return fail
    key = (step.pass_, step.grad_mode)
    over = decisions.over_cap.get(key)
    if over is not None:       # one regime's call was past the cap: the other's would be too
        return ">cap", f"not run: in the {over} regime a call ran past the cap"
    modes = job.steady_grad_modes
    if step.regime == "steady" and step.grad_mode and modes is not None and step.grad_mode not in modes:
        return "skipped", (f"not run: the steady regime is timed in grad mode {', '.join(modes)} (an autodiff "
                           f"backward's buffers are the library's own; out= would add a copy)")
    slow, limit = decisions.medians.get(key), job.steady_max_s
    if slow is not None and limit is not None and step.regime == "steady" and slow > limit:
        return "skipped", (f"not run: {slow:.3g} s a call fresh (> {limit:g} s); reusing out= cannot matter "
                           f"at that cost")
    return None


def fail_reason(step: Step, what: str) -> str:
    """The reason a full-size step failed, e.g. "full-size backward[vjp] check failed: ..."."""
    return (f"full-size {step.pass_}" + (f"[{step.grad_mode}]" if step.grad_mode else "") + f" {what}")[:400]
