"""`el.benchmark`: time forward / backward / both per backend, check first, measure memory and roofline.

Each array library runs in its own process (`python -m einlocal.bench`), so
thread pools (OpenMP in torch and numba, XLA, OpenBLAS) never fight, and each
step (one check or one measurement) has a deadline: a step that runs past it
is killed and recorded as ``>cap``, and the process restarts for the rest.

A job = one backend (or peer) on one op and shape. Its steps, in order:
``check reduced`` (against the float64 loops at the workload's reduced
shapes, computed once per run), where the job asks for warm-ups
(``warm_up``) and its first call compiles (numba, jax) one ``warm`` call
per pass at the timed size, then per regime the timed passes.  Checks and
warm-ups come first, for every job, in two processes at once (nothing is
timed then, so they may share the cores); their kernels land in the caches
on disk, and what they decided goes on to the timing processes, which run
one at a time.  A warm-up killed past its deadline is forgotten (the timing
decides), unless the job prunes over the cap (``prune_over_cap``) and the
call ran past cap + margin after its compile: its pass is then ``>cap``.

The first call of each pass in the first regime runs on the full-size
reference's inputs (computed once by a trusted float64 lowering) and its
result is checked against it before any other call: the full-size check
costs no call of its own, and is the warm-up's where there is one.  A
backend that fails a check or the memory guard is recorded with the reason
and never timed.  A pass whose first regime took longer than
``steady_max_s`` a call is not measured again in the steady regime (what
out= saves is noise next to it).

The parent sends a child one job (a line of JSON) at a time; the child prints
one line per step start (``EINLOCAL_STEP``), per record
(``EINLOCAL_RECORD``), when a check or warm-up step ends
(``EINLOCAL_STATE``), when a timed step's first call or a warm-up's call
returns (``EINLOCAL_FIRST``), for jax and numba when a first call starts or
stops compiling (``EINLOCAL_COMPILE``, from `einlocal.compile_watch`: the
compile then has the allowance and the run the cap), and when it is done
with a job (``EINLOCAL_NEXT``: the parent sends the next or closes its
input).  The harness's own work (a job's setup, its input sets, the
full-size reference, the process's exit) happens between steps, where the
deadline is generous: a step's clock is its backend's alone.
"""
from __future__ import annotations

import collections
import functools
import hashlib
import json
import math
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from .table import PASSES, REGIMES, make_record

__all__ = ["benchmark", "run_jobs", "make_job", "reference_file", "pass_cost", "ISOLATION_NOTE", "JAX_STEADY_NOTE"]

ISOLATION_NOTE = ("each array library measured in its own process (thread pools never share cores "
                  "with another library's); each step killed past its deadline (>cap)")
IN_PROCESS_NOTE = "all libraries measured in one process (not isolated)"
JAX_STEADY_NOTE = ("jax has no out= (immutable arrays): its steady regime is repeated calls "
                   "whose buffers come from XLA's allocator")
_STEP = "EINLOCAL_STEP "
_FIRST = "EINLOCAL_FIRST "       # a timed step's first call, or a warm-up's call, returned
_COMPILE = "EINLOCAL_COMPILE "   # the first call started ({"on": true}) or stopped compiling (CompileWatch)
_RECORD = "EINLOCAL_RECORD "
_STATE = "EINLOCAL_STATE "       # a check or warm-up step finished: what the runner knows now
_NEXT = "EINLOCAL_NEXT "         # a job is done: the parent sends the next, or closes stdin
_START_TIMEOUT_S = 180.0   # imports of a framework on a busy machine
# between steps: the harness's own work (a job's setup and its input sets, the process's exit),
# which is no backend's time and is never recorded >cap
_BETWEEN_STEPS_S = 120.0


# -- the public entry point ------------------------------------------------------------


def benchmark(op, *, backends=None, passes=("forward", "backward"), regimes=("fresh", "steady"),
              grad_modes=None, budget_s: float = 0.3, cap_s: float = 20.0, dtype: str = "float32",
              memory: bool = True, isolate: bool = True, threads: int | None = None,
              check_shapes: dict | None = None, reference: str | None = None, workload: str | None = None,
              seed: int = 0, progress: Callable[[str, dict], None] | None = None,
              steady_max_s: float | None = None, **shapes_and_params) -> list[dict]:
    """Measure backends on one op and shape; returns records (see `einlocal.table.RECORD_KEYS`).

    `op`: a catalogue op (or its name) or an `el.Op`; arrays are given as
    shapes by name (``x=(N, C, H, W), weight=(...)``), other keywords are the
    op's parameters. `backends`: names (default: every available one that can
    run the op, `loops:python` never). `passes`: "forward", "backward" (el.vjp),
    "forward+backward"; backward in each of `grad_modes` the backend has
    (default: all). `regimes`: "fresh" (new outputs each call) and "steady"
    (outputs reused through ``out=``; jax: see `JAX_STEADY_NOTE`).
    `budget_s`: timed seconds per measurement; `cap_s`: a single call past it
    is ``>cap`` (the step is killed once it runs past ~2-3x the cap); calls
    under it that together pass it stop the repetitions (median of those taken).
    `check_shapes`: reduced shapes to check each backend against the float64
    loops before timing; `reference`: a trusted float64 backend (e.g.
    "einsum:numpy") to check at full size first, or None. `isolate`: one
    process per library with deadlines (True) or everything in this process.
    `threads`: thread count for every library. Inputs rotate among copies
    that together exceed the last-level cache (fresh inputs per repetition).
    `steady_max_s`: a pass slower than this a call in the first regime is not
    timed again in the steady one (recorded skipped, with the time).
    """
    spec = op_spec(op)
    shapes, params = split_shapes(spec, shapes_and_params)
    names = list(backends) if backends is not None else default_backends(spec, shapes, params)
    ref_path = None
    tmp = None
    if reference:
        tmp = tempfile.TemporaryDirectory(prefix="einlocal-ref-")
        ref_path = reference_file(spec, shapes, params, seed, reference, Path(tmp.name) / "ref.npz")
    from .machine import roof as machine_roof
    roof = machine_roof()
    jobs = [make_job(spec, shapes, params, name, passes=passes, regimes=regimes, grad_modes=grad_modes,
                     budget_s=budget_s, cap_s=cap_s, dtype=dtype, memory=memory, seed=seed,
                     check_shapes=check_shapes, reference=ref_path, workload=workload, roofline=roof,
                     steady_max_s=steady_max_s)
            for name in names]
    try:
        return run_jobs(jobs, isolate=isolate, threads=threads, progress=progress)
    finally:
        if tmp is not None:
            tmp.cleanup()


def op_spec(op) -> dict:
    """A JSON description of `op` the child process can rebuild."""
    from .catalogue import CATALOGUE, CatalogueOp
    from .op import Op
    if isinstance(op, str) and op in CATALOGUE:
        return {"op": op}
    if isinstance(op, CatalogueOp):
        return {"op": op.name}
    if isinstance(op, Op):
        return {"statement": str(op.statement), "pad": op.pad}
    raise TypeError(f"benchmark: op must be a catalogue op, its name ({', '.join(CATALOGUE)}) or an el.Op; got {op!r}")


def split_shapes(spec: dict, shapes_and_params: dict) -> tuple[dict, dict]:
    """(array shapes, other parameters) from the keyword arguments."""
    names = ("x", "weight", "bias") if "op" in spec else _build_op(spec).inputs
    shapes = {k: tuple(v) for k, v in shapes_and_params.items() if k in names and v is not None}
    params = {k: v for k, v in shapes_and_params.items() if k not in names}
    return shapes, params


def default_backends(spec: dict, shapes: dict, params: dict) -> list[str]:
    """Every available backend that can run the op on such arrays (no framework imported
    beyond what the backends' `cannot` needs), without loops:python."""
    from . import registry
    out = []
    for name in registry.available():
        if name == "loops:python":
            continue
        b = registry.get(name)
        if not b.general and "op" not in spec:
            continue
        out.append(name)
    return out


def make_job(spec: dict, shapes: dict, params: dict, backend: str, **kw) -> dict:
    """One backend's job (JSON-able). `backend` may be "peer:<name>" with kw["peer"] set."""
    job = {"spec": spec, "shapes": {k: list(v) for k, v in shapes.items()}, "params": _jsonable(params),
           "backend": backend}
    for key, default in (("passes", ("forward", "backward")), ("regimes", ("fresh", "steady")),
                         ("grad_modes", None), ("budget_s", 0.3), ("cap_s", 20.0), ("warmup", 1), ("min_reps", 3),
                         ("dtype", "float32"),
                         ("memory", True), ("seed", 0), ("check_shapes", None), ("reference", None),
                         ("workload", None), ("roofline", None), ("peer", None), ("note", None),
                         ("kill_margin_s", 15.0), ("first_call_allowance_s", 0.0), ("steady_max_s", None),
                         ("steady_grad_modes", None), ("check_reference", None), ("inputs_dir", None),
                         ("warm_up", False), ("prune_over_cap", False)):
        value = kw.pop(key, default)
        job[key] = list(value) if isinstance(value, tuple) else value
    if kw:
        raise TypeError(f"make_job: unexpected {sorted(kw)}")
    for p in job["passes"]:
        if p not in PASSES:
            raise ValueError(f"benchmark: pass {p!r}, expected one of {PASSES}")
    for r in job["regimes"]:
        if r not in REGIMES:
            raise ValueError(f"benchmark: regime {r!r}, expected one of {REGIMES}")
    if job["check_shapes"]:
        job["check_shapes"] = {k: list(v) for k, v in job["check_shapes"].items() if v is not None}
    return job


def _jsonable(v):
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (tuple, list)):
        return [_jsonable(x) for x in v]
    return v


def _tuples(v):
    if isinstance(v, dict):
        return {k: _tuples(x) for k, x in v.items()}
    if isinstance(v, list):
        return tuple(_tuples(x) for x in v)
    return v


def _build_op(spec: dict):
    from .catalogue import CATALOGUE
    from .op import Op
    if "op" in spec:
        return CATALOGUE[spec["op"]]
    return Op(spec["statement"], pad=0 if spec.get("pad") else None)


# -- the reference, computed once per op and shape -------------------------------------------


def reference_file(spec: dict, shapes: dict, params: dict, seed: int, backend: str, path: Path) -> str:
    """Float64 forward and gradients with `backend` on `el.check`'s inputs for `seed`,
    with their scale (the statement on |operands|) and term counts, saved as .npz.

    `el.check(..., seed=seed, reference=load_reference(path))` then compares
    against it: the inputs are the same (same seed, same generator).
    """
    import numpy as np

    from . import registry
    from .call import run_forward, run_vjp
    from .check import _terms, random_inputs
    op = _build_op(spec)
    arrays = random_inputs(shapes, "float64", seed)
    call = _bind(op, arrays, params)
    dy = random_inputs({"dy": call.out_shape}, "float64", seed + 2)["dy"]
    b = registry.get(backend)
    absolute = {k: (None if a is None else np.abs(a)) for k, a in arrays.items()}
    out: dict[str, Any] = {}

    def forward_of(arrs):
        ops_only = {k: a for k, a in arrs.items() if call.bias is None or k != call.bias[0]}
        y = np.asarray(run_forward(call, b, {**ops_only, **({call.bias[0]: None} if call.bias else {})}))
        return y

    y, ys = forward_of(arrays), forward_of(absolute)
    terms = _terms(call.plan)
    if call.bias is not None and arrays.get(call.bias[0]) is not None:
        bias = arrays[call.bias[0]].reshape(call.bias[1])
        y = (y.reshape(call.plan.out_shape) + bias).reshape(call.out_shape)
        ys = (ys.reshape(call.plan.out_shape) + np.abs(bias)).reshape(call.out_shape)
        terms += 1
    out["y"] = (y, ys, terms)
    wrt = tuple(arg for arg, _, _ in call.operands)
    grads = run_vjp(call, b, dy, arrays, wrt)
    grads_abs = run_vjp(call, b, np.abs(dy), absolute, wrt)
    for arg, op_name, _ in call.operands:
        out["d" + arg] = (np.asarray(grads[arg]), np.asarray(grads_abs[arg]), _terms(call.plan.backward[op_name]))
    if call.bias is not None and arrays.get(call.bias[0]) is not None:
        dy_s = dy.reshape(call.plan.out_shape)
        axes = tuple(k for k, s in enumerate(call.bias[1]) if s == 1)
        bshape = dict(call.arg_shapes)[call.bias[0]]
        out["d" + call.bias[0]] = (dy_s.sum(axis=axes).reshape(bshape), np.abs(dy_s).sum(axis=axes).reshape(bshape),
                                   math.prod(call.plan.out_shape) // math.prod(bshape))
    return _save_reference(out, path)


def check_reference_file(spec: dict, shapes: dict, params: dict, seed: int, path: Path) -> str:
    """`el.check`'s float64 loops reference at (reduced) `shapes` for `seed`, with its
    VJP's finite-difference error, saved as .npz (`load_check_reference` reads it).

    `run_jobs` computes it once per op and shape for every job's reduced check:
    the literal loops are the slowest part of a check, and each library's process
    would otherwise compute the same values again."""
    from .check import _reference
    ref, vjp_error = _reference(_build_op(spec), seed, shapes, params)
    return _save_reference(ref, path, vjp_error=vjp_error)


def _save_reference(ref: dict, path: Path, vjp_error: float | None = None) -> str:
    import numpy as np
    flat = {}
    for name, (value, scale, n) in ref.items():
        flat[f"{name}__value"], flat[f"{name}__scale"], flat[f"{name}__terms"] = value, scale, np.array(n)
    if vjp_error is not None:
        flat["vjp_error"] = np.array(vjp_error)
    np.savez(path, **flat)
    return str(path)


def _read_reference(path: str) -> tuple[dict, float | None]:
    import numpy as np
    data = np.load(path)
    out = {}
    for n in {k.split("__")[0] for k in data.files if "__" in k}:
        value, scale = data[f"{n}__value"], data[f"{n}__scale"]
        value.flags.writeable = scale.flags.writeable = False
        out[n] = (value, scale, int(data[f"{n}__terms"]))
    return out, (float(data["vjp_error"]) if "vjp_error" in data.files else None)


@functools.lru_cache(maxsize=1)
def load_reference(path: str) -> dict:
    """The dict `el.check(reference=...)` takes, from `reference_file`'s .npz.

    Read once per process for the jobs of one workload that follow each other
    (a full-size reference is hundreds of MB); its arrays are read-only."""
    return _read_reference(path)[0]


@functools.lru_cache(maxsize=16)
def load_check_reference(path: str) -> tuple[dict, float]:
    """(reference dict, its VJP's error / tolerance) from `check_reference_file`'s .npz."""
    return _read_reference(path)


def check_references(jobs: list[dict], folder: Path) -> list[dict]:
    """`jobs` with ``check_reference`` set: one reference file in `folder` per op,
    reduced shapes, parameters and seed, computed here once."""
    paths: dict[str, str] = {}
    out = []
    for job in jobs:
        if job.get("check_shapes") and not job.get("check_reference"):
            key = json.dumps([job["spec"], job["check_shapes"], job["params"], job["seed"]], sort_keys=True)
            if key not in paths:
                shapes = {k: tuple(v) for k, v in job["check_shapes"].items()}
                paths[key] = check_reference_file(job["spec"], shapes, _tuples(job["params"]), job["seed"],
                                                  Path(folder) / f"check{len(paths)}.npz")
            job = {**job, "check_reference": paths[key]}
        out.append(job)
    return out


def _bind(op, arrays: dict, params: dict):
    from .catalogue import CatalogueOp
    if isinstance(op, CatalogueOp):
        return op.bind(arrays["x"], arrays["weight"], arrays.get("bias"), **params)
    return op._call(arrays, params.get("sizes"), None)


# -- analytic costs ---------------------------------------------------------------------------


def pass_cost(call, pass_: str, itemsize: int) -> tuple[int, int]:
    """(flops, minimum bytes) of one pass: forward from the statement; backward the
    derived statements of every array argument (dy and the inputs read once, the
    gradients written once); forward+backward the sum."""
    shapes = dict(call.arg_shapes)
    out_el = math.prod(call.out_shape)
    fwd = (call.flops(), call.min_bytes(itemsize))
    bwd_flops = sum(call.plan.backward[op].flops() for _, op, _ in call.operands)
    if call.bias is not None and call.bias[0] in shapes:
        bwd_flops += out_el
    operand_el = sum(math.prod(shapes[arg]) for arg, _, _ in call.operands)
    grads_el = sum(math.prod(s) for s in shapes.values())
    bwd = (bwd_flops, itemsize * (out_el + operand_el + grads_el))
    if pass_ == "forward":
        return fwd
    if pass_ == "backward":
        return bwd
    return fwd[0] + bwd[0], fwd[1] + bwd[1]


# -- running jobs: the parent side ----------------------------------------------------------------


def _library_of_job(job: dict) -> str:
    if job.get("peer"):
        return job["peer"]["library"]
    from . import registry
    engine = registry.engine_of(job["backend"]) if job["backend"] in registry.NAMES else "numpy"
    return {"python": "numpy", "triton": "torch"}.get(engine, engine)


def step_key(step: dict) -> tuple:
    return (step["kind"], step["pass"], step.get("regime"), step.get("grad_mode"))


def run_jobs(jobs: list[dict], *, isolate: bool = True, threads: int | None = None,
             progress: Callable[[str, dict], None] | None = None) -> list[dict]:
    """Run jobs, one process per library (in job order within it) when `isolate`;
    returns every record. The float64 loops reference of the reduced checks is
    computed here, once per op and shape, and read by every job's check.
    `progress(event, info)`: "step" (info: the step and job) and "job" (a job finished)."""
    with tempfile.TemporaryDirectory(prefix="einlocal-run-") as folder:
        jobs = [{**job, "inputs_dir": job.get("inputs_dir") or folder} for job in check_references(jobs, Path(folder))]
        return _run_jobs(jobs, isolate, threads, progress)


def _run_jobs(jobs: list[dict], isolate: bool, threads: int | None, progress) -> list[dict]:
    note = ISOLATION_NOTE if isolate else IN_PROCESS_NOTE
    records: list[dict] = []
    if not isolate:
        if threads:
            from .timing import set_threads
            set_threads(threads)
        for job in jobs:
            def emit(kind, payload, job=job):
                if kind == "record":
                    payload[0].setdefault("isolation", note)
                    records.append(payload[0])
                elif kind == "step" and progress:
                    progress("step", {"job": job, "step": payload})
            run_job(job, emit)
            if progress:
                progress("job", {"job": job})
        return records
    by_library: dict[str, list[int]] = {}
    for i, job in enumerate(jobs):
        by_library.setdefault(_library_of_job(job), []).append(i)
    states = [{"done": [], "killed": [], "runner": None} for _ in jobs]
    kinds, spawned = None, {}
    try:
        if any(_prepares(job) for job in jobs):
            def start_timing_processes() -> None:     # they import their library while the prepare phase ends
                spawned.update({lib: _spawn(lib, threads) for lib in by_library if lib not in spawned})
            _prepare(jobs, list(by_library.values()), states, threads, progress, on_idle=start_timing_processes)
            kinds = ("time",)
        for library, group in by_library.items():
            records += _run_group([jobs[i] for i in group], threads, progress, [states[i] for i in group], kinds,
                                  first_proc=spawned.pop(library, None))
    finally:
        for proc in spawned.values():     # not used (an error on the way): stop them
            _kill(proc)
            proc.wait()
    for rec in records:
        rec.setdefault("isolation", note)
    return records


# -- the prepare phase: checks and compiles, two libraries at a time --------------------------------

PREPARE_WORKERS = 2
STEAL_MIN = 2      # jobs left in a library's queue for a second process of it to be worth its start

# a job's share of the prepare phase, per pass that compiles, relative to jax's (its programs
# compile and run in ~0.8 s a pass on 2 cores): numba's tiled kernels take ~1.7 s a pass
_COMPILE_WEIGHT = {"numba": 2.0}


def _warms(job: dict) -> bool:
    """Whether a job warms up before its timing: asked to (``warm_up``), and its first calls compile."""
    return bool(job.get("warm_up")) and float(job.get("first_call_allowance_s") or 0) > 0


def _prepares(job: dict) -> bool:
    """Whether a job has work before its timing: a reduced check, or warm-up calls."""
    return bool(job.get("check_shapes")) or _warms(job)


def _prepare_cost(job: dict) -> float:
    """A job's share of the prepare phase, roughly: a check, and each pass's compile
    (in the check at the reduced size and in the warm-up at the timed size)."""
    compiles = len(job["passes"]) * _COMPILE_WEIGHT.get(_library_of_job(job), 1.0) \
        if float(job.get("first_call_allowance_s") or 0) > 0 else 0.0
    return (1.0 + compiles) * bool(job.get("check_shapes")) + compiles * _warms(job)


def _prepare(jobs: list[dict], groups: list[list[int]], states: list[dict], threads, progress,
             on_idle: Callable[[], None] | None = None) -> None:
    """Run every job's check and warm-up steps before anything is timed, in up to
    `PREPARE_WORKERS` processes at once, the costliest library first, one library
    a process (a library's thread pools take every core).  A worker with no library
    left to start helps the one with most jobs left (`STEAL_MIN` or more), from
    the back of its queue, in a second process of that library: nearly all of this
    phase is compiling, on one thread.  Nothing here is timed; what these processes
    decide (check outcomes, in `states`) and compile (kernels, in the caches on
    disk) the timing processes take over (check and warm-up steps record nothing
    themselves: a killed check is recorded by the timed steps it rules out).
    `on_idle()` runs once, when the first worker finds nothing left to do (its
    core is free)."""
    feeds = sorted(([i for i in g if _prepares(jobs[i])] for g in groups),
                   key=lambda c: -sum(_prepare_cost(jobs[i]) for i in c))
    feeds = [_Feed(c) for c in feeds if c]
    workers = max(1, min(PREPARE_WORKERS, os.cpu_count() or 1, sum(map(len, feeds))))
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
                _run_group(jobs, threads, quiet, states, ("check", "warm"), feed=feeds[k], back=back)
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


class _Feed:
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


def _compile_watched(job: dict) -> bool:
    """Whether the child reports this job's compiles (`einlocal.compile_watch`): its first
    calls' run time is then held to the cap alone, the compile to the allowance."""
    from .compile_watch import WATCHED
    return _library_of_job(job) in WATCHED and float(job.get("first_call_allowance_s", 0.0)) > 0


class _FirstCall:
    """The parent's clock for a watched first call: run and compile seconds apart.

    The call may run ``cap + margin`` seconds and compile for the allowance; its
    deadline is the earlier of the unwatched one (``_deadline_s``) and the time its
    run seconds reach ``cap + margin``, which does not move while it compiles."""

    def __init__(self, job: dict, step: dict, now: float):
        # a warm-up too: it shares the machine, and a kill costs a fresh process and its imports
        self.limit = float(job["cap_s"]) + float(job.get("kill_margin_s", 15.0))
        self.latest = now + _deadline_s(job, step)
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


def _deadline_s(job: dict, step: dict, first_done: bool = False) -> float:
    """How long a step may run before it is killed (and recorded >cap).

    A timed step's first call (or a warm-up step, which is one) may take the
    cap plus the compile allowance;
    once it has returned, the rest takes at most ~2x the cap (`measure`
    starts no call once first call + warm-up + repetitions pass the cap, and
    that last call is itself under it), plus one more call when memory is
    measured after the repetitions; past that, some single call must have
    exceeded the cap.  Each phase has ``kill_margin_s`` on top.
    """
    if step["kind"] == "check":
        return 120.0
    cap, margin = float(job["cap_s"]), float(job.get("kill_margin_s", 15.0))
    if not first_done:
        return cap + float(job.get("first_call_allowance_s", 0.0)) + margin
    return (3.0 if job.get("memory") else 2.0) * cap + margin


def _spawn(library: str, threads: int | None) -> subprocess.Popen:
    """A benchmark child for `library`'s jobs: it imports the library, then waits
    for its jobs on stdin (so it may be started early, while other work runs)."""
    argv = [sys.executable, "-m", "einlocal.bench", "--child", "--library", library]
    if threads:
        argv += ["--threads", str(int(threads))]
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _run_group(jobs: list[dict], threads: int | None, progress, state: list[dict] | None = None,
               kinds=None, first_proc: subprocess.Popen | None = None, feed: _Feed | None = None,
               back: bool = False) -> list[dict]:
    """Run one library's jobs in a child process, which asks for each next job
    when it is done with one (``EINLOCAL_NEXT``); restart it after a kill or a
    crash, on the job it was running.

    `state`: per job, the step keys done and killed and what its runner had
    decided (``_JobRunner._state``), updated here (a later phase goes on from
    it); `kinds`: the step kinds to run (None: check and time); `first_proc`:
    a child already started by `_spawn` for these jobs' library; `feed`: the
    jobs (indices into `jobs`) to run, default all, shared with another process
    of the library where it takes from the other end (from the back when `back`)."""
    records: list[dict] = []
    state = state if state is not None else [{"done": [], "killed": [], "runner": None} for _ in jobs]
    feed = feed if feed is not None else _Feed(range(len(jobs)))
    job = feed.take(back)           # the job the child was last given (None: it was told there are no more)
    stalls = 0
    while job is not None:
        proc, first_proc = (first_proc or _spawn(_library_of_job(jobs[job]), threads)), None
        lines: queue.Queue = queue.Queue()
        err_tail: list[str] = []
        threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
        threading.Thread(target=_tail, args=(proc.stderr, err_tail), daemon=True).start()

        def give(i: int | None, proc=proc) -> None:
            try:
                if i is None:
                    proc.stdin.close()
                    return
                proc.stdin.write(json.dumps({**jobs[i], "index": i, "done": state[i]["done"],
                                             "killed": state[i]["killed"], "state": state[i]["runner"],
                                             "kinds": list(kinds) if kinds else None}) + "\n")
                proc.stdin.flush()
            except OSError:       # the child is gone: its exit tells why
                pass
        give(job)
        heard = False             # any line from the child yet
        current = None            # the step running now (None: between steps)
        watch = None              # its first call's run and compile seconds, where the child reports them
        deadline = time.monotonic() + _START_TIMEOUT_S
        outcome = "exit"
        while True:
            try:
                line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                outcome = "timeout"
                break
            if line is None:
                break
            heard = heard or line.startswith("EINLOCAL_")
            if line.startswith(_NEXT):
                if progress:
                    progress("job", {"job": jobs[job]})
                job = feed.take(back)
                give(job)
                current, watch, deadline = None, None, time.monotonic() + _BETWEEN_STEPS_S
            elif line.startswith(_STEP):
                current = json.loads(line[len(_STEP):])["step"]
                now = time.monotonic()
                watch = (_FirstCall(jobs[job], current, now)
                         if current["kind"] in ("time", "warm") and _compile_watched(jobs[job]) else None)
                deadline = watch.deadline() if watch else now + _deadline_s(jobs[job], current)
                if progress:
                    progress("step", {"job": jobs[job], "step": current})
            elif line.startswith(_COMPILE) and watch is not None:
                watch.change(json.loads(line[len(_COMPILE):])["on"], time.monotonic())
                deadline = watch.deadline()
            elif line.startswith(_FIRST) and current is not None:
                watch = None
                deadline = time.monotonic() + _deadline_s(jobs[job], current, first_done=True)
            elif line.startswith((_RECORD, _STATE)):
                msg = json.loads(line[len(_RECORD if line.startswith(_RECORD) else _STATE):])
                if "record" in msg:
                    records.append(msg["record"])
                state[job]["runner"] = msg.get("state", state[job]["runner"])
                key = msg.get("step_key")
                if key is not None and key not in state[job]["done"]:
                    state[job]["done"].append(key)
                if current is not None and key == list(step_key(current)):
                    current = None        # finished: a stop now is between steps
                    watch, deadline = None, time.monotonic() + _BETWEEN_STEPS_S
        ran_out = outcome == "timeout" and watch is not None and watch.ran_out(time.monotonic())
        if outcome == "timeout":
            _kill(proc)
        rc = proc.wait()
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
        why = "killed" if outcome == "timeout" else "crashed"
        killed = {"step": current, "why": why, "rc": rc, "stderr": "".join(err_tail)[-300:]}
        if current["kind"] == "warm":
            # only a warm-up: the timed steps find out for themselves (unless pruning takes its word), and
            # this job's other warm-ups are left to its timed first calls too: no new process for them
            if ran_out and jobs[job].get("prune_over_cap"):
                state[job]["killed"].append(killed)
            else:
                state[job]["done"].append(list(step_key(current)))
            job = feed.take(back)
            continue
        state[job]["killed"].append(killed)
    if first_proc is not None:    # nothing to run: the child started for it is not needed
        _kill(first_proc)
        first_proc.wait()
    return records


def _pump(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))
    lines.put(None)


def _tail(stream, keep: list) -> None:
    for line in stream:
        keep.append(line)
        del keep[:-50]


def _kill(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)   # the child's own session: itself and what it started
    except (ProcessLookupError, PermissionError):
        proc.kill()


# -- running one job: the child side ------------------------------------------------------------------


def _implied(killed: dict, step: dict) -> bool:
    """Whether `step` cannot finish in time because `killed` did not: forward is part of
    forward and forward+backward; backward[mode] of backward[mode] and forward+backward[mode]."""
    k = killed
    if k["kind"] == "check":          # the reduced check: nothing after it was shown correct
        return True
    if k["pass"] == "forward":
        return step["pass"] in ("forward", "forward+backward") or step["kind"] == "check"
    if k["pass"] == "backward":
        return step["pass"] in ("backward", "forward+backward") and step.get("grad_mode") == k.get("grad_mode")
    return step["pass"] == "forward+backward" and step.get("grad_mode") == k.get("grad_mode")


def run_job(job: dict, emit: Callable[[str, Any], None]) -> None:
    """Run one job's steps in this process; `emit("step", step)` before each step,
    `emit("record", record)` for each record."""
    _JobRunner(job, emit).run()


def _llc_bytes() -> int:
    from .machine import llc_bytes
    return llc_bytes() or 32 * 2**20


def _threads_text() -> str:
    from .timing import thread_info
    info = thread_info()
    parts = [f"{k} {info[k]}" for k in ("torch", "numba") if k in info]
    pools = {p.get("internal_api"): p.get("num_threads") for p in info.get("threadpools") or []}
    parts += [f"{k} {v}" for k, v in pools.items() if k]
    return ", ".join(parts)


def peer_params(peer: dict, params: dict, x_shape) -> dict:
    """A peer's keyword parameters for an x of `x_shape`: with ``groups_from="x_channels"``
    (depthwise as a grouped conv) ``groups`` is x's channel count, whatever the size."""
    if peer.get("groups_from") == "x_channels":
        return {**params, "groups": int(x_shape[1])}
    return params


def load_peer(peer: dict):
    """(forward, backward or None) of a peer from bench/peers.py (loaded by path).

    Interface: the module's `PEERS` dict, name -> (forward, backward, library, op)
    or {"forward": f, "backward": g}, with f(x, weight, bias, **params) -> y and
    g(dy, x, weight, bias, **params) -> (dx, dweight, dbias); or, without `PEERS`, functions `<name>` and `<name>_backward` (or
    `<name>_vjp`). Arrays in API.md's layouts.
    """
    import importlib.util
    name = "einlocal_bench_peers_" + hashlib.sha256(str(Path(peer["path"]).resolve()).encode()).hexdigest()[:16]
    mod = sys.modules.get(name)         # one module per peers file, loaded once per process
    if mod is None:
        spec = importlib.util.spec_from_file_location(name, peer["path"])
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    table = getattr(mod, "PEERS", None)
    if isinstance(table, dict) and peer["name"] in table:
        entry = table[peer["name"]]
        if callable(entry):
            return entry, None
        if isinstance(entry, tuple):
            return entry[0], entry[1] if len(entry) > 1 else None
        return entry["forward"], entry.get("backward")
    fwd = getattr(mod, peer["name"])
    bwd = getattr(mod, peer["name"] + "_backward", None) or getattr(mod, peer["name"] + "_vjp", None)
    return fwd, bwd


class _CheckFailed(AssertionError):
    """A timed pass's first result disagrees with the full-size reference."""


def _memory_probe(method_fn):
    """A `measure` probe: the peak memory of one call, or None if it cannot
    be read (memory is a column, not a verdict)."""
    def probe(call):
        try:
            return method_fn(call)
        except Exception:  # noqa: BLE001
            return None
    return probe


class _JobRunner:
    """The steps of one job, run in this process (see the module docstring)."""

    def __init__(self, job: dict, emit):
        self.job = job
        self.emit = emit
        self.params = _tuples(job["params"])
        self.shapes = {k: tuple(v) for k, v in job["shapes"].items()}
        self.name = job["backend"]
        self.peer = job.get("peer")
        self.fail_all: tuple[str, str] | None = None      # (status, reason) for every timed step
        self.fail_mode: dict = {}                          # grad mode -> (status, reason)
        self.over_cap: dict = {}                           # (pass, grad mode) -> regime where a call passed the cap
        self.errors: dict = {}                             # "forward" / mode -> worst err/tol
        self.medians: dict = {}                            # (pass, grad mode) -> median of its first regime
        self.checked = False                               # the reduced check has run
        self.full_checked: set = set()                     # (pass, grad mode) checked at full size
        self._restore(job.get("state"))

    @functools.cached_property
    def reference(self) -> dict | None:
        """The full-size reference (read at first use: once the checks are done, never)."""
        return load_reference(self.job["reference"]) if self.job.get("reference") else None

    # -- what a restarted process carries on with ------------------------------------------

    def _state(self) -> dict:
        """What the steps so far decided (check outcome, errors, medians, caps), as JSON:
        a process started again after a kill goes on from it instead of checking and
        timing again what it already knows."""
        return {"checked": self.checked, "fail_all": self.fail_all, "full_checked": sorted(self.full_checked, key=str),
                "fail_mode": [[m, list(v)] for m, v in self.fail_mode.items()],
                "over_cap": [[list(k), v] for k, v in self.over_cap.items()],
                "errors": [[k, v] for k, v in self.errors.items()],
                "medians": [[list(k), v] for k, v in self.medians.items()]}

    def _restore(self, state: dict | None) -> None:
        if not state:
            return
        self.checked = bool(state["checked"])
        self.full_checked = {tuple(k) for k in state.get("full_checked", ())}
        self.fail_all = tuple(state["fail_all"]) if state["fail_all"] else None
        self.fail_mode = {m: tuple(v) for m, v in state["fail_mode"]}
        self.over_cap = {tuple(k): v for k, v in state["over_cap"]}
        self.errors = {k: v for k, v in state["errors"]}
        self.medians = {tuple(k): v for k, v in state["medians"]}

    # -- setup ---------------------------------------------------------------------------

    def _setup(self) -> None:
        import numpy as np

        from .backends.namespaces import namespace
        job = self.job
        self.op = _build_op(job["spec"])
        if self.peer:
            self.library = self.peer["library"]
            self.backend = None
            self.modes = [None]
            self.peer_fwd, self.peer_bwd = load_peer(self.peer)
            self.peer_params = peer_params(self.peer, {**self.params, **_tuples(self.peer.get("params") or {})},
                                           self.shapes["x"])
            if self.peer_bwd is None:
                self.fail_mode[None] = ("skipped", "the peer has no backward")
        else:
            from . import registry
            self.backend = registry.get(self.name)
            self.library = self.backend.takes[0]
            have = self.backend.grad_modes(self.library)
            self.modes = [m for m in (job["grad_modes"] or have) if m in have]
        self.xp = namespace(self.library)
        # shapes and dtype only: the values come in the sets below
        arrays = {n: np.empty(s, np.float64 if job["dtype"] == "bfloat16" else job["dtype"])
                  for n, s in self.shapes.items()}
        self.call = _bind(self.op, arrays, self.params)
        self.itemsize = arrays["x"].itemsize
        self._next = 0
        if self.backend is not None:
            self._guard()

    @functools.cached_property
    def sets(self) -> list[dict]:
        """The inputs of the timed calls: copies that together exceed the last-level
        cache (the first one the full-size reference's inputs), made at first use."""
        job = self.job
        nbytes = (sum(math.prod(s) for s in self.shapes.values()) + math.prod(self.call.out_shape)) * self.itemsize
        copies = max(1, min(4, math.ceil(2 * _llc_bytes() / max(nbytes, 1))))
        made = _input_sets(tuple(self.shapes.items()), tuple(self.call.out_shape), job["dtype"], job["seed"],
                           copies, bool(job.get("reference")), job.get("inputs_dir"))
        # each job its own copy: a backend that wrote into its inputs would spoil only its own
        return [{n: self.xp.from_numpy(a.copy(), "cpu") for n, a in arrays.items()} for arrays in made]

    def _guard(self) -> None:
        from .budget import check_budget
        from .errors import MemoryBudgetError
        try:
            check_budget(self.backend, self.call.plan, self.itemsize)
        except MemoryBudgetError as e:
            self.fail_all = ("skipped", f"memory guard: {e}")
            return
        for _, op, _ in self.call.operands:
            try:
                check_budget(self.backend, self.call.plan.backward[op], self.itemsize)
            except MemoryBudgetError as e:
                for m in self.modes:
                    self.fail_mode[m] = ("skipped", f"memory guard (backward): {e}")

    def steps(self) -> list[dict]:
        """The check at reduced size, the warm-up calls, the timed passes: those of
        the kinds the job asks for (``kinds``, by default check and time)."""
        job = self.job
        kinds = job.get("kinds") or ("check", "time")
        out = []
        if job["check_shapes"] and "check" in kinds:
            out.append({"kind": "check", "pass": "reduced"})
        if "warm" in kinds and _warms(job):
            out += [{"kind": "warm", "pass": p, "regime": job["regimes"][0], "grad_mode": m}
                    for p in job["passes"] for m in ([None] if p == "forward" else self.modes)]
        if "time" not in kinds:
            return out
        for regime in job["regimes"]:
            for pass_ in job["passes"]:
                for mode in ([None] if pass_ == "forward" else self.modes):
                    out.append({"kind": "time", "pass": pass_, "regime": regime, "grad_mode": mode})
        return out

    # -- records ------------------------------------------------------------------------------

    def record(self, step: dict, **fields) -> None:
        job = self.job
        flops, min_bytes = (pass_cost(self.call, step["pass"], self.itemsize) if hasattr(self, "call")
                            else (None, None))
        rec = make_record(workload=job["workload"], op=job["spec"].get("op", "op"),
                          shape=" ".join(f"{dict(x='x', weight='w', bias='b').get(k, k)}({','.join(map(str, v))})"
                                         for k, v in self.shapes.items()),
                          backend=self.name, **{"pass": step["pass"]}, regime=step["regime"],
                          grad_mode=step.get("grad_mode"), flops=flops, min_bytes=min_bytes,
                          peer=bool(self.peer), size=flops, dtype=job["dtype"], threads=_threads_text(),
                          **fields)
        if rec.get("max_error") is None:
            err = self.errors.get("forward") if step["pass"] == "forward" else self.errors.get(step.get("grad_mode"))
            rec["max_error"] = err
        if job.get("note"):
            rec["note"] = job["note"]
        self.emit("record", (rec, list(step_key(step)), self._state()))

    # -- run --------------------------------------------------------------------------------

    def run(self) -> None:
        job = self.job
        done = {tuple(k) for k in job.get("done", [])}
        killed = job.get("killed", [])
        try:
            self._setup()
        except Exception as e:  # the backend cannot even start: every timed step fails
            self.modes = self.modes if hasattr(self, "modes") else [None]
            self.fail_all = ("failed", f"setup: {type(e).__name__}: {e}")
        for step in self.steps():
            key = step_key(step)
            if key in done or (step["kind"] == "check" and self.checked):
                continue
            hit = next((k for k in killed if step_key(k["step"]) == key), None)
            if hit is not None:
                if step["kind"] == "time":
                    self.record(step, **self._killed_fields(hit, hit))
                continue
            cause = next((k for k in killed if _implied(k["step"], step)), None)
            if cause is not None:
                if step["kind"] == "time":
                    self.record(step, **self._killed_fields(cause, None))
                continue
            if step["kind"] != "check" and not self._failure(step):
                self._ready(step)
            self.emit("step", step)
            if step["kind"] == "time":
                self._time(step)
                continue
            if step["kind"] == "check":
                self._check(step)
            else:
                self._warm(step)
            self.emit("state", (list(key), self._state()))

    def _ready(self, step: dict) -> None:
        """The harness's work for a warm-up or timed step, done before the step starts
        (between steps): its clock is then the backend's alone."""
        self.sets  # noqa: B018 — the input sets
        if self._checks_full_size(step):
            self.reference  # noqa: B018 — the full-size reference its first call is checked against

    def _killed_fields(self, k: dict, this) -> dict:
        what = f"{k['step']['kind']} {k['step']['pass']}" + (f"[{k['step']['grad_mode']}]"
                                                            if k["step"].get("grad_mode") else "")
        if k["why"] == "killed":
            if this is not None:
                allowance = float(self.job.get("first_call_allowance_s", 0))
                given = ("not counting up to " if _compile_watched(self.job) else "+ ") + f"{allowance:g} s"
                return {"status": ">cap", "reason": f"killed: a single call ran past the cap {self.job['cap_s']} s"
                                                    + (f" ({given} of a first call's compiling)" if allowance else "")}
            if k["step"]["kind"] == "warm":    # a job that prunes over the cap takes its warm-up's word
                cap, margin = float(self.job["cap_s"]), float(self.job.get("kill_margin_s", 15.0))
                return {"status": ">cap", "reason": f"not run: its warm-up's call ran past {cap + margin:g} s "
                                                    f"(the cap {cap:g} s + {margin:g} s) after compiling, beside "
                                                    f"another process"}
            return {"status": ">cap", "reason": f"not run: {what} ran past the cap"}
        reason = f"the process crashed (exit {k['rc']}) during {what}"
        return {"status": "failed", "reason": reason}

    # -- checks -------------------------------------------------------------------------------

    def _check(self, step: dict) -> None:
        """The check at reduced size (every grad mode, out= poisoned), against the loops."""
        if self.fail_all:
            return
        job = self.job
        shapes = {k: tuple(v) for k, v in job["check_shapes"].items()}
        modes = tuple(job["grad_modes"]) if job.get("grad_modes") else None
        ref = None
        try:
            if job.get("check_reference"):
                ref, vjp_error = load_check_reference(job["check_reference"])
                if not vjp_error <= 1.0:
                    raise AssertionError(f"the reference's VJP is {vjp_error:.3g} x tolerance off its finite "
                                         f"difference")
            if self.peer:
                self._check_peer(shapes, ref)
            else:
                from .check import check
                report = check(self.op, backends=[self.name], dtype=job["dtype"], seed=job["seed"],
                               grad_modes=modes, reference=ref, **shapes, **self.params)
                row = report.rows[0]
                if row.status == "skipped":
                    self.fail_all = ("skipped", row.reason)
                    return
                if row.status == "fail":
                    raise AssertionError(row.reason or ", ".join(f"{k} {v:.3g} x tol" for k, v in row.errors.items()
                                                                 if v > 1))
        except Exception as e:  # noqa: BLE001 — any failure means: never timed
            self.fail_all = ("failed", f"check at reduced size failed: {type(e).__name__}: {e}"[:400])
        self.checked = True

    def _checks_full_size(self, step: dict) -> bool:
        """Whether this step's first call is checked against the full-size reference:
        there is one, and this pass was not checked in an earlier step or regime."""
        return (bool(self.job.get("reference")) and step["regime"] == self.job["regimes"][0]
                and (step["pass"], step.get("grad_mode")) not in self.full_checked)

    def _full_check(self, step: dict):
        """A `measure` check for the first call of this step's pass: its result
        against the full-size reference; None where nothing is left to check
        (`_checks_full_size`)."""
        if not self._checks_full_size(step):
            return None
        key = [step["pass"], step.get("grad_mode")]
        from .check import _compare
        ref, dtype, args = self.reference, self.job["dtype"], self.call.args

        def compare(result):
            if step["pass"] == "forward":
                ys, grads = result, None
            elif step["pass"] == "backward":
                ys, grads = None, result
            else:
                ys, grads = result
            errors = {}
            if ys is not None:
                errors["y"] = _compare(self.xp.to_numpy(ys), *ref["y"], dtype)
            for name, g in zip(args, grads or ()):
                if g is not None and "d" + name in ref:
                    errors["d" + name] = _compare(self.xp.to_numpy(g), *ref["d" + name], dtype)
            bad = {k: v for k, v in errors.items() if not v <= 1.0}
            if bad:
                raise _CheckFailed(", ".join(f"{k} {v:.3g} x tolerance" for k, v in bad.items()))
            if "y" in errors:
                self.errors["forward"] = errors["y"]
            grads_err = [v for k, v in errors.items() if k != "y"]
            if grads_err:
                self.errors[step.get("grad_mode")] = max(grads_err)
            self.full_checked.add(tuple(key))
        return compare

    def _check_peer(self, shapes: dict, ref: dict | None = None) -> dict:
        """The peer's forward and backward at ``shapes`` against the loops
        (`ref`: their outputs on these inputs, computed once per run)."""
        import numpy as np

        from .check import _compare, random_inputs, reference_outputs
        job = self.job
        arrays = random_inputs(shapes, "float64", job["seed"])
        call = _bind(self.op, arrays, self.params)
        dy = random_inputs({"dy": call.out_shape}, "float64", job["seed"] + 2)["dy"]
        ref = ref if ref is not None else reference_outputs(call, arrays, dy)
        conv = {n: (None if a is None else self.xp.from_numpy(a.astype(job["dtype"]), "cpu")) for n, a in arrays.items()}
        kw = peer_params(self.peer, self.peer_params, arrays["x"].shape)
        y = self.peer_fwd(conv["x"], conv["weight"], conv.get("bias"), **kw)
        errors = {"y": _compare(self.xp.to_numpy(y), *ref["y"], job["dtype"])}
        if self.peer_bwd is not None:
            grads = self.peer_bwd(self.xp.from_numpy(dy.astype(job["dtype"]), "cpu"), conv["x"], conv["weight"],
                                  conv.get("bias"), **kw)
            for n, g in zip(("x", "weight", "bias"), grads):
                if conv.get(n) is not None:
                    errors["d" + n] = _compare(np.asarray(self.xp.to_numpy(g)), *ref["d" + n], job["dtype"])
        bad = {k: v for k, v in errors.items() if not v <= 1.0}
        if bad:
            raise AssertionError(", ".join(f"{k} {v:.3g} x tolerance" for k, v in bad.items()))
        return errors

    # -- timing -------------------------------------------------------------------------------

    def _next_set(self):
        s = self.sets[self._next % len(self.sets)]
        self._next += 1
        return s

    def _callable(self, pass_: str, regime: str, mode):
        """fn(set) for one pass and regime."""
        steady = regime == "steady" and self.library != "jax" and not self.peer
        params = self.params
        if self.peer:
            fwd_p, bwd_p, params = self.peer_fwd, self.peer_bwd, self.peer_params

            peer = self.peer

            def fwd(s):
                return fwd_p(s["x"], s["weight"], s.get("bias"), **peer_params(peer, params, s["x"].shape))

            def bwd(s):
                return bwd_p(s["dy"], s["x"], s["weight"], s.get("bias"), **peer_params(peer, params, s["x"].shape))
        else:
            op, name, xp = self.op, self.name, self.xp
            y_out = xp.from_numpy(_zeros(self.call.out_shape, self.job["dtype"]), "cpu") if steady else None
            g_out = (tuple(None if self.sets[0].get(a) is None else
                           xp.from_numpy(_zeros(dict(self.call.arg_shapes)[a], self.job["dtype"]), "cpu")
                           for a in self.call.args) if steady else None)

            def fwd(s):
                return op(s["x"], s["weight"], s.get("bias"), backend=name, out=y_out, **params)

            def bwd(s):
                return op.vjp(s["dy"], s["x"], s["weight"], s.get("bias"), backend=name, grad=mode or "vjp",
                              out=g_out, **params)
        if pass_ == "forward":
            return fwd
        if pass_ == "backward":
            return bwd
        return lambda s: (fwd(s), bwd(s))

    def _failure(self, step: dict) -> tuple[str, str] | None:
        """(status, reason) where an earlier step ruled this pass out, else None."""
        return self.fail_all or (self.fail_mode.get(step["grad_mode"]) if step["pass"] != "forward" else None)

    def _fail(self, step: dict, what: str) -> str:
        """Rule this pass out (the forward: every pass) as failed; returns the reason."""
        reason = (f"full-size {step['pass']}" + (f"[{step['grad_mode']}]" if step.get("grad_mode") else "")
                  + f" {what}")[:400]
        if step["pass"] == "forward":
            self.fail_all = ("failed", reason)
        else:
            self.fail_mode[step.get("grad_mode")] = ("failed", reason)
        return reason

    def _warm(self, step: dict) -> None:
        """One untimed call of a pass at the timed size, before anything is timed: a
        JIT compiles its kernels then (into the caches on disk, which the timing
        process loads), and where there is a full-size reference the result is the
        pass's full-size check (the timed first call then checks nothing)."""
        if self._failure(step):
            return
        from .timing import sync_for
        fn = self._callable(step["pass"], step["regime"], step.get("grad_mode"))
        check = self._full_check(step)
        if check is not None:
            self._next = 0        # the reference's inputs
        watch = _WATCH if _WATCH is not None and _compile_watched(self.job) else None
        if watch is not None:
            watch.arm()
        try:
            result = fn(self._next_set())
            sync_for(result)(result)
        except Exception as e:  # noqa: BLE001 — the timed call would fail the same way
            self._fail(step, f"first call failed: {type(e).__name__}: {e}")
            return
        finally:
            if watch is not None:
                watch.disarm()
        self.emit("first", step)      # the call is over: its check is not on the call's clock
        if check is not None:
            try:
                check(result)
            except _CheckFailed as e:
                self._fail(step, f"check failed: {e}")

    def _time(self, step: dict) -> None:
        from .timing import measure
        job = self.job
        fail = self._failure(step)
        if fail:
            self.record(step, status=fail[0], reason=fail[1])
            return
        key = (step["pass"], step.get("grad_mode"))
        over = self.over_cap.get(key)
        if over is not None:   # one regime's call was past the cap: the other's would be too
            self.record(step, status=">cap", reason=f"not run: in the {over} regime a call ran past the cap")
            return
        modes = job.get("steady_grad_modes")
        if step["regime"] == "steady" and step.get("grad_mode") and modes is not None \
                and step["grad_mode"] not in modes:
            self.record(step, status="skipped", reason=f"not run: the steady regime is timed in grad mode "
                                                        f"{', '.join(modes)} (an autodiff backward's buffers are the "
                                                        f"library's own; out= would add a copy)")
            return
        slow, limit = self.medians.get(key), job.get("steady_max_s")
        if slow is not None and limit is not None and step["regime"] == "steady" and slow > limit:
            self.record(step, status="skipped", reason=f"not run: {slow:.3g} s a call fresh (> {job['steady_max_s']:g}"
                                                        f" s); reusing out= cannot matter at that cost")
            return
        fn = self._callable(step["pass"], step["regime"], step.get("grad_mode"))
        check = self._full_check(step)
        probe = None
        if job["memory"]:
            from .memory import choose_method, peak_rss_in_process, peak_tracemalloc
            engine = "numba" if self.name.endswith(":numba") else self.library
            method = choose_method(engine, "cpu")
            probe = _memory_probe(peak_tracemalloc if method.startswith("tracemalloc") else peak_rss_in_process)
        if check is not None:
            self._next = 0        # the first call gets the reference's inputs

        watch = _WATCH if _WATCH is not None and _compile_watched(job) else None
        compiled = [None]          # seconds of the first call spent compiling, where watched

        def first(result):         # tell the parent (its deadline moves on), then check
            if watch is not None:
                compiled[0] = watch.disarm()
            self.emit("first", step)
            if check is not None:
                check(result)
        if watch is not None:
            watch.arm()
        try:
            t = measure(fn, setup=self._next_set, budget_s=float(job["budget_s"]), cap_s=float(job["cap_s"]),
                        first_call_allowance_s=float(job.get("first_call_allowance_s", 0.0)),
                        compile_s=(lambda: compiled[0]) if watch is not None else None,
                        warmup=int(job.get("warmup", 1)), min_reps=int(job.get("min_reps", 3)),
                        check=first, probe=probe)
        except _CheckFailed as e:
            self.record(step, status="failed", reason=self._fail(step, f"check failed: {e}"))
            return
        except Exception as e:  # noqa: BLE001
            self.record(step, status="failed", reason=f"{type(e).__name__}: {e}"[:400])
            return
        finally:
            if watch is not None:
                watch.disarm()
        if step["regime"] == job["regimes"][0]:
            self.medians[key] = t.median_s
        fields = {"first_call_s": t.first_call_s, "n": t.n}
        if t.capped:   # a single call took longer than the cap
            self.over_cap[(step["pass"], step.get("grad_mode"))] = step["regime"]
            fields.update(status=">cap", reason=t.note or f"a call past the cap {job['cap_s']} s")
            self.record(step, **fields)
            return
        fields.update(median_s=t.median_s, iqr_s=t.iqr_s)
        if job.get("roofline"):
            from .machine import roofline_fraction
            flops, min_bytes = pass_cost(self.call, step["pass"], self.itemsize)
            fields["roofline_fraction"] = roofline_fraction(t.median_s, flops, min_bytes, **job["roofline"])
        if t.probe is not None:
            fields.update(peak_bytes=t.probe.bytes, peak_method=t.probe.method)
        notes = [t.note] if t.note else []
        if step["regime"] == "steady" and self.library == "jax":
            notes.append(JAX_STEADY_NOTE)
        elif step["regime"] == "steady" and self.peer:
            notes.append("peers take no out=: steady is repeated calls")
        if notes:
            fields["note"] = "; ".join(notes)
        self.record(step, **fields)


@functools.lru_cache(maxsize=1)
def _input_sets(shapes: tuple, out_shape: tuple, dtype: str, seed: int, copies: int, reference: bool,
                folder: str | None = None) -> list[dict]:
    """`copies` sets of random inputs and ``dy`` (numpy, `dtype`), the first one
    `el.check`'s float64 inputs for `seed` when `reference` (`shapes` in argument
    order: one generator draws them in turn): read once per process for the jobs
    of one workload that follow each other, and made once per run: the first
    process to need them saves them in `folder`, where the others read them."""
    import numpy as np
    path = None
    if folder is not None and dtype != "bfloat16":
        key = json.dumps([shapes, out_shape, dtype, seed, copies, reference])
        path = Path(folder) / f"inputs-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
        if path.exists():
            data = np.load(path)
            return [{n.split("__", 1)[1]: data[n] for n in data.files if n.startswith(f"{k}__")} for k in range(copies)]
    sets = _make_input_sets(dict(shapes), out_shape, dtype, seed, copies, reference)
    if path is not None:
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".npz")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{f"{k}__{n}": a for k, arrs in enumerate(sets) for n, a in arrs.items() if a is not None})
        os.replace(tmp, path)
    return sets


def _make_input_sets(shapes: dict, out_shape: tuple, dtype: str, seed: int, copies: int, reference: bool) -> list:
    from .check import random_inputs
    sets = []
    for k in range(copies):
        if k == 0 and reference:   # the reference's own inputs: the first call is checked
            arrs = {n: a.astype(dtype) for n, a in random_inputs(shapes, "float64", seed).items()}
            arrs["dy"] = random_inputs({"dy": out_shape}, "float64", seed + 2)["dy"].astype(dtype)
        else:
            arrs = random_inputs(shapes, dtype, seed + 10 + k)
            arrs["dy"] = random_inputs({"dy": out_shape}, dtype, seed + 20 + k)["dy"]
        sets.append(arrs)
    return sets


def _zeros(shape, dtype):
    import numpy as np
    return np.zeros(shape, dtype=dtype)


def _jax_compilation_cache() -> None:
    """XLA's persistent compilation cache under einlocal's cache dir, so a
    second benchmark run does not compile the same programs again."""
    try:
        import jax
        from .machine import cache_dir
        jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "jax"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    except Exception:  # noqa: BLE001 — an older jax without these options: compile as usual
        pass


_WATCH = None    # the child's CompileWatch on its main thread (None in the parent and in-process runs)


_PRELOAD = {"numpy": "numpy", "torch": "torch", "jax": "jax.numpy", "numba": "numba", "cupy": "cupy"}


def _start_library(library: str) -> None:
    """Import `library` and einlocal's backends on it, and start what a process's
    first use of it starts, so that a timed first call pays for its own work
    alone: numba's compiler and CPU target (~0.3 s), torch's first
    ``autograd.grad`` (it imports sympy: ~0.4 s), jax's first compile (~0.1 s)."""
    import importlib

    from . import registry
    from .errors import BackendError
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


def _child_main(library: str | None = None, threads: int | None = None) -> int:
    global _WATCH
    from .compile_watch import CompileWatch
    if threads:                      # before jax is imported: XLA reads its flags once
        from .timing import set_threads
        set_threads(threads)
    if library == "jax":
        _jax_compilation_cache()
    if library in _PRELOAD:
        try:
            _start_library(library)
        except Exception:  # noqa: BLE001 — only a head start: the jobs meet whatever failed, and report it
            pass
    # keep library chatter away from the protocol
    real_stdout = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    lock = threading.Lock()        # the watch's thread writes too

    def write(line: str) -> None:
        with lock:
            real_stdout.write(line + "\n")
            real_stdout.flush()
    _WATCH = CompileWatch(lambda on: write(_COMPILE + json.dumps({"on": on})))
    while True:                    # a job a line, each sent when the last is done; no more at end of input
        line = sys.stdin.readline()
        if not line:
            return 0
        job = json.loads(line)
        j = job.pop("index")
        if str(job.get("backend", "")).endswith(":jax") or "jax" in str(job.get("peer") or ""):
            _jax_compilation_cache()

        def emit(kind, obj, j=j):
            if kind == "step":
                write(_STEP + json.dumps({"job": j, "step": obj}))
            elif kind == "first":
                write(_FIRST + json.dumps({"job": j}))
            elif kind == "state":
                key, state = obj
                write(_STATE + json.dumps({"job": j, "step_key": key, "state": state}, default=str))
            else:
                rec, key, state = obj
                write(_RECORD + json.dumps({"job": j, "record": rec, "step_key": key, "state": state}, default=str))
        run_job(job, emit)
        write(_NEXT + json.dumps({"job": j}))


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--child"] and len(args) % 2 == 1:
        opts = dict(zip(args[1::2], args[2::2]))
        if set(opts) <= {"--library", "--threads"}:
            rc = _child_main(opts.get("--library"), int(opts["--threads"]) if "--threads" in opts else None)
            sys.stdout.flush()
            sys.stderr.flush()
            # every line and file is written: skip the interpreter's teardown (torch's takes ~0.5 s,
            # and the next library's timing waits for this process to end)
            os._exit(rc)
    sys.exit("usage: python -m einlocal.bench --child [--library NAME] [--threads N]  "
             "(internal: run benchmark jobs read from stdin)")
