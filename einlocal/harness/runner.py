"""One job's steps in this process: its checks, warm-ups and timed passes, each announced and reported as a message."""
from __future__ import annotations

import functools
import math
from typing import Callable

from ..table import make_record
from .calls import bind, pass_callable, pass_cost
from .checks import CheckFailed, full_size_check, reduced_check
from .jobs import Job, Step, build_op
from .messages import FirstReturned, Recorded, StepEnded, StepStarted
from .policy import JAX_STEADY_NOTE, compile_watched, fail_reason, killed_fields, not_timed, warms
from .state import Decisions, JobState

__all__ = ["JobRunner", "run_job", "check_job"]


def run_job(job: Job, emit: Callable, state: JobState | None = None, kinds=None, index: int = 0,
            watch=None) -> Decisions:
    """Run `job`'s steps of `kinds` (default check and time) in this process, going on from
    `state`; `emit(message)` for each step start, record and step end; returns what they decided."""
    runner = JobRunner(job, emit, state, kinds, index, watch)
    runner.run()
    return runner.decisions


def check_job(job: Job) -> tuple[str, str] | None:
    """`job`'s check at its reduced size (``check_shapes``), here: None where it passes, else
    (status, reason), which every timed step of the job would then be recorded with."""
    return run_job(job, lambda msg: None, kinds=("check",)).fail_all


def _threads_text() -> str:
    from ..timing import thread_info
    info = thread_info()
    parts = [f"{k} {v}" for k, v in info.items() if isinstance(v, int)]      # each loaded library's own count
    pools = {p.get("internal_api"): p.get("num_threads") for p in info.get("threadpools") or []}
    parts += [f"{k} {v}" for k, v in pools.items() if k]
    return ", ".join(parts)


def _memory_probe(method_fn):
    """A `measure` probe: the peak memory of one call, or None if it cannot be read
    (memory is a column, not a verdict)."""
    def probe(call):
        try:
            return method_fn(call)
        except Exception:  # noqa: BLE001
            return None
    return probe


class JobRunner:
    """The steps of one job, run in this process (`einlocal.harness` says in which order)."""

    def __init__(self, job: Job, emit: Callable, state: JobState | None = None, kinds=None, index: int = 0,
                 watch=None):
        self.job, self.emit, self.index, self.watch = job, emit, index, watch
        self.state = state or JobState()
        self.kinds = tuple(kinds) if kinds else ("check", "time")
        self.decisions = self.state.decisions or Decisions()
        self.modes = [None]

    @functools.cached_property
    def reference(self) -> dict | None:
        """The full-size reference (read at first use: once the checks are done, never)."""
        from .references import load_reference
        return load_reference(self.job.reference) if self.job.reference else None

    def _setup(self) -> None:
        import numpy as np

        from ..backends.namespaces import namespace
        from .peerfile import load_peer, peer_params
        job = self.job
        self.op = build_op(job.spec)
        self.peer = None
        if job.peer:
            self.library = job.peer["library"]
            self.backend = None
            fwd, bwd = load_peer(job.peer)
            params = {**job.params, **(job.peer.get("params") or {})}
            self.peer = (fwd, bwd, peer_params(job.peer, params, job.shapes["x"]))
            if bwd is None:
                self.decisions.fail_mode[None] = ("skipped", "the peer has no backward")
        else:
            from .. import registry
            self.backend = registry.get(job.backend)
            self.library = job.arrays or self.backend.takes[0]
            have = self.backend.grad_modes(self.library)
            self.modes = [m for m in (job.grad_modes or have) if m in have]
        self.xp = namespace(self.library)
        # shapes and dtype only: the values come in the sets below
        arrays = {n: np.empty(s, np.float64 if job.dtype == "bfloat16" else job.dtype) for n, s in job.shapes.items()}
        self.call = bind(self.op, arrays, job.params)
        self.itemsize = next(iter(arrays.values())).itemsize
        self._next = 0
        if self.backend is not None:
            self._guard()

    @functools.cached_property
    def sets(self) -> list[dict]:
        """The inputs of the timed calls (`einlocal.harness.inputs`), the first one the
        full-size reference's inputs, made at first use; each job its own copy: a backend
        that wrote into its inputs would spoil only its own."""
        from .inputs import copies_for, input_sets
        job = self.job
        nbytes = (sum(math.prod(s) for s in job.shapes.values()) + math.prod(self.call.out_shape)) * self.itemsize
        made = input_sets(tuple(job.shapes.items()), tuple(self.call.out_shape), job.dtype, job.seed,
                          copies_for(nbytes), bool(job.reference), job.inputs_dir)
        return [{n: self.xp.from_numpy(a.copy(), "cpu") for n, a in arrays.items()} for arrays in made]

    def _guard(self) -> None:
        from ..budget import check_budget
        from ..errors import MemoryBudgetError
        try:
            check_budget(self.backend, self.call.plan, self.itemsize)
        except MemoryBudgetError as e:
            self.decisions.fail_all = ("skipped", f"memory guard: {e}")
            return
        for _, op, _ in self.call.operands:
            try:
                check_budget(self.backend, self.call.plan.backward[op], self.itemsize)
            except MemoryBudgetError as e:
                for m in self.modes:
                    self.decisions.fail_mode[m] = ("skipped", f"memory guard (backward): {e}")

    def steps(self) -> list[Step]:
        """The check at reduced size, the warm-up calls, the timed passes: those of the kinds asked for."""
        job, out = self.job, []
        if job.check_shapes and "check" in self.kinds:
            out.append(Step("check", "reduced"))
        if "warm" in self.kinds and warms(job):
            out += [Step("warm", p, job.regimes[0], m) for p in job.passes
                    for m in ([None] if p == "forward" else self.modes)]
        if "time" in self.kinds:
            out += [Step("time", p, r, m) for r in job.regimes for p in job.passes
                    for m in ([None] if p == "forward" else self.modes)]
        return out

    def record(self, step: Step, **fields) -> None:
        job = self.job
        flops, min_bytes = pass_cost(self.call, step.pass_, self.itemsize) if hasattr(self, "call") else (None, None)
        rec = make_record(workload=job.workload, op=job.spec.get("op") or job.spec.get("statement", "op"),
                          shape=" ".join(f"{dict(x='x', weight='w', bias='b').get(k, k)}({','.join(map(str, v))})"
                                         for k, v in job.shapes.items()),
                          backend=job.label, **{"pass": step.pass_}, regime=step.regime, grad_mode=step.grad_mode,
                          flops=flops, min_bytes=min_bytes, peer=bool(job.peer), size=flops, dtype=job.dtype,
                          threads=_threads_text(), **fields)
        if rec.get("max_error") is None:
            errors = self.decisions.errors
            rec["max_error"] = errors.get("forward") if step.pass_ == "forward" else errors.get(step.grad_mode)
        if job.note:
            rec["note"] = job.note
        self.emit(Recorded(self.index, rec, step.key, self.decisions))

    def run(self) -> None:
        done, killed = set(self.state.done), self.state.killed
        try:
            self._setup()
        except Exception as e:  # the backend cannot even start: every timed step fails
            self.decisions.fail_all = ("failed", f"setup: {type(e).__name__}: {e}")
        for step in self.steps():
            if step.key in done or (step.kind == "check" and self.decisions.checked):
                continue
            hit = next((k for k in killed if k.step.key == step.key), None)
            cause = hit or next((k for k in killed if k.rules_out(step)), None)
            if cause is not None:
                if step.kind == "time":
                    self.record(step, **killed_fields(self.job, cause, this=hit is not None))
                continue
            if step.kind != "check" and not self.decisions.failure(step.pass_, step.grad_mode):
                self._ready(step)
            self.emit(StepStarted(self.index, step))
            if step.kind == "time":
                self._time(step)
                continue
            if step.kind == "check":
                if not self.decisions.fail_all:
                    self.decisions.fail_all = reduced_check(self.job, self.op, self.peer)
                self.decisions.checked = True
            else:
                self._warm(step)
            self.emit(StepEnded(self.index, step.key, self.decisions))

    def _ready(self, step: Step) -> None:
        """The harness's work for a warm-up or timed step, done before the step starts
        (between steps): its clock is then the backend's alone."""
        self.sets  # noqa: B018 — the input sets
        if self._checks_full_size(step):
            self.reference  # noqa: B018 — the full-size reference its first call is checked against

    def _checks_full_size(self, step: Step) -> bool:
        """Whether this step's first call is checked against the full-size reference:
        there is one, and this pass was not checked in an earlier step or regime."""
        return (bool(self.job.reference) and step.regime == self.job.regimes[0]
                and (step.pass_, step.grad_mode) not in self.decisions.full_checked)

    def _full_check(self, step: Step):
        """check(result) for the first call of this step's pass, recording its errors;
        None where nothing is left to check (`_checks_full_size`)."""
        if not self._checks_full_size(step):
            return None
        check = full_size_check(step, self.reference, self.xp.to_numpy, self.call.args, self.job.dtype)

        def checked(result) -> None:
            errors = check(result)
            if "y" in errors:
                self.decisions.errors["forward"] = errors["y"]
            grads = [v for k, v in errors.items() if k != "y"]
            if grads:
                self.decisions.errors[step.grad_mode] = max(grads)
            self.decisions.full_checked.add((step.pass_, step.grad_mode))
        return checked

    def _next_set(self):
        s = self.sets[self._next % len(self.sets)]
        self._next += 1
        return s

    def _callable(self, step: Step):
        job = self.job
        if self.peer is not None:
            from .peerfile import peer_params
            fwd, bwd, params = self.peer
            return pass_callable(step.pass_, step.regime, step.grad_mode,
                                 peer=(fwd, bwd, lambda shape: peer_params(job.peer, params, shape)))
        return pass_callable(step.pass_, step.regime, step.grad_mode, op=self.op, backend=job.backend,
                             params=job.params, xp=self.xp, call=self.call, dtype=job.dtype,
                             has=lambda a: self.sets[0].get(a) is not None)

    def _watch(self):
        return self.watch if self.watch is not None and compile_watched(self.job) else None

    def _warm(self, step: Step) -> None:
        """One untimed call of a pass at the timed size, before anything is timed: a
        JIT compiles its kernels then (into the caches on disk, which the timing
        process loads), and where there is a full-size reference the result is the
        pass's full-size check (the timed first call then checks nothing)."""
        if self.decisions.failure(step.pass_, step.grad_mode):
            return
        from ..timing import sync_for
        fn = self._callable(step)
        check = self._full_check(step)
        if check is not None:
            self._next = 0        # the reference's inputs
        watch = self._watch()
        if watch is not None:
            watch.arm()
        try:
            result = fn(self._next_set())
            sync_for(result)(result)
        except Exception as e:  # noqa: BLE001 — the timed call would fail the same way
            self.decisions.fail(step.pass_, step.grad_mode, fail_reason(step, f"first call failed: "
                                                                              f"{type(e).__name__}: {e}"))
            return
        finally:
            if watch is not None:
                watch.disarm()
        self.emit(FirstReturned(self.index))      # the call is over: its check is not on the call's clock
        if check is not None:
            try:
                check(result)
            except CheckFailed as e:
                self.decisions.fail(step.pass_, step.grad_mode, fail_reason(step, f"check failed: {e}"))

    def _time(self, step: Step) -> None:
        from ..timing import measure
        job = self.job
        skip = not_timed(job, self.decisions, step)
        if skip:
            self.record(step, status=skip[0], reason=skip[1])
            return
        fn = self._callable(step)
        check = self._full_check(step)
        probe = None
        if job.memory:
            from ..memory import choose_method, peak_rss_in_process, peak_tracemalloc
            engine = "numba" if job.backend.endswith(":numba") else self.library
            method = choose_method(engine, "cpu")
            probe = _memory_probe(peak_tracemalloc if method.startswith("tracemalloc") else peak_rss_in_process)
        if check is not None:
            self._next = 0        # the first call gets the reference's inputs
        watch = self._watch()
        compiled = [None]          # seconds of the first call spent compiling, where watched

        def first(result):         # tell the parent (its deadline moves on), then check
            if watch is not None:
                compiled[0] = watch.disarm()
            self.emit(FirstReturned(self.index))
            if check is not None:
                check(result)
        if watch is not None:
            watch.arm()
        try:
            t = measure(fn, setup=self._next_set, budget_s=float(job.budget_s), cap_s=float(job.cap_s),
                        first_call_allowance_s=float(job.first_call_allowance_s),
                        compile_s=(lambda: compiled[0]) if watch is not None else None,
                        warmup=int(job.warmup), min_reps=int(job.min_reps), check=first, probe=probe)
        except CheckFailed as e:
            reason = fail_reason(step, f"check failed: {e}")
            self.decisions.fail(step.pass_, step.grad_mode, reason)
            self.record(step, status="failed", reason=reason)
            return
        except Exception as e:  # noqa: BLE001
            self.record(step, status="failed", reason=f"{type(e).__name__}: {e}"[:400])
            return
        finally:
            if watch is not None:
                watch.disarm()
        self._timed(step, t)

    def _timed(self, step: Step, t) -> None:
        """The record of a measured step."""
        job = self.job
        if step.regime == job.regimes[0]:
            self.decisions.medians[(step.pass_, step.grad_mode)] = t.median_s
        fields = {"first_call_s": t.first_call_s, "n": t.n}
        if t.capped:   # a single call took longer than the cap
            self.decisions.over_cap[(step.pass_, step.grad_mode)] = step.regime
            self.record(step, **fields, status=">cap", reason=t.note or f"a call past the cap {job.cap_s} s")
            return
        fields.update(median_s=t.median_s, iqr_s=t.iqr_s, samples=[float(v) for v in t.times])
        if job.roofline:
            from ..machine import roofline_fraction
            flops, min_bytes = pass_cost(self.call, step.pass_, self.itemsize)
            fields["roofline_fraction"] = roofline_fraction(t.median_s, flops, min_bytes, **job.roofline)
        if t.probe is not None:
            fields.update(peak_bytes=t.probe.bytes, peak_method=t.probe.method)
        notes = [t.note] if t.note else []
        if step.regime == "steady" and self.xp.functional:
            notes.append(JAX_STEADY_NOTE)
        elif step.regime == "steady" and self.peer:
            notes.append("peers take no out=: steady is repeated calls")
        if notes:
            fields["note"] = "; ".join(notes)
        self.record(step, **fields)
