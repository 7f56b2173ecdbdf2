"""`einlocal compare`: workloads (the report workloads, or a workload file's), every available backend and peer, checked then timed; tables and figures under results/."""
from __future__ import annotations

import importlib.util
import shlex
import sys
import tempfile
import threading
from pathlib import Path

from .backends.namespaces import namespace
from .harness import ISOLATION_NOTE, Job, op_spec, reference_file, run_jobs
from .harness.peerfile import load_peers, peer_for, peer_info
from . import workloads as _workloads
from .workloads import Workload, ragged_workload

__all__ = ["compare", "Settings", "SETTINGS", "QUICK", "load_peers", "trusted_reference"]

REFERENCE_CANDIDATES = ("einsum:numpy", "bmm:numpy")


class Settings(dict):
    """Run settings: passes, regimes, budget_s, cap_s, memory, full_check (at the timed size, against a
    trusted float64 lowering), reduced_check (every backend against the loops at the reduced size), prune_over_cap
    (not run: a backend the cost model puts far over the cap, and a pass whose warm-up call ran past the cap and
    the kill margin after compiling), steady_max_s (a pass slower than this a call fresh is not timed again steady),
    steady_grad_modes (the backward's grad modes timed steady)."""

    __getattr__ = dict.__getitem__


SETTINGS = Settings(passes=("forward", "backward"), regimes=("fresh", "steady"), grad_modes=None, budget_s=0.1,
                    cap_s=2.0, warmup=1, min_reps=3, memory=True, full_check=True, prune_over_cap=False,
                    kill_margin_s=2.0, ragged_sets=1000, first_call_allowance_s=10.0,
                    steady_max_s=0.5, steady_grad_modes=("vjp",))
# --quick: each workload at its quick sizes (the report workloads: the batch divided by 8), every library, forward and backward[vjp]
# only, fresh regime, small budgets, a 0.5 s cap per call (see `einlocal.timing.measure`), and the
# cost model's two likeliest array strategies per library, a peer that makes a native backend's
# very call left to that backend.  Each timed kernel is checked at the size
# it is timed at, against a float64 lowering that passed the loops' check at the reduced size; the
# backends are not checked again at the reduced size (a JIT would compile a second set of kernels);
# each backend runs on its own library's arrays only (not also as loops:numba[jax]: `Backend.also_on`)
QUICK = Settings(passes=("forward", "backward"), regimes=("fresh",), grad_modes=("vjp",), budget_s=0.05, cap_s=0.5,
                 warmup=0, min_reps=1, memory=False, full_check=True, reduced_check=False, prune_over_cap=True,
                 kill_margin_s=1.0, ragged_sets=125, per_library=2,
                 first_call_allowance_s=10.0, dedupe_peers=True, warm_up=True, also_on=False)
# the cost model runs optimistic on this machine (4x and more for broadcast and einsum lowerings), and a
# backward costs 2-3 forwards: --quick skips a backend whose estimated forward passes this share of the cap
PRUNE_SHARE = 0.25


# -- the reference --------------------------------------------------------------------------------


def trusted_reference(w: Workload) -> tuple[str | None, str]:
    """(backend, why): the float64 lowering with the smallest intermediates (forward and
    backward) that passes the check against the loops at the reduced size."""
    from . import registry
    from .check import check
    from .errors import EinlocalError
    call = _call_of(w)
    if not w.reduced:
        return None, "no reduced shapes to check a float64 lowering against the loops at"
    ranked = []
    for name in REFERENCE_CANDIDATES:
        if name not in registry.available():
            continue
        b = registry.get(name)
        size = b.workspace(call.plan)[0] + sum(b.workspace(p)[0] for p in call.plan.backward.values())
        ranked.append((size, name))
    for _, name in sorted(ranked):
        try:
            report = check(w.op_fn(), backends=[name], dtype="float64", seed=1, **w.reduced, **w.params)
        except EinlocalError:
            continue
        if report.ok:
            return name, f"{name} in float64, checked against loops:python at {w.sized(True).shape}"
    return None, "no float64 lowering passed the reduced check"


def reference_files(workloads: list[Workload], folder: Path) -> dict[str, tuple[str | None, str]]:
    """Workload id -> (its full-size reference file, or None; why): each workload's
    `trusted_reference` and its float64 outputs at the timed size, two workloads at a
    time in forked processes (nothing is being timed yet), or one after the other in
    this process where a library that cannot be forked is loaded (jax: its threads)."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor
    workers = max(1, min(2, len(workloads), os.cpu_count() or 1))
    from .backends.namespaces import loaded_libraries
    if workers == 1 or not all(lib.fork_safe for lib in loaded_libraries()):
        return {w.id: _reference_of(w, folder) for w in workloads}
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        futures = {w.id: pool.submit(_reference_of, w, folder) for w in workloads}
        return {k: f.result() for k, f in futures.items()}


def _reference_of(w: Workload, folder: Path) -> tuple[str | None, str]:
    name, why = trusted_reference(w)
    if name is None:
        return None, why
    return reference_file(op_spec(w.op_fn()), w.shapes, w.params, 0, name, Path(folder) / f"{w.id}.npz"), why


# -- compare ------------------------------------------------------------------------------------------


def _call_of(w: Workload):
    """`w`'s op bound to its shapes, no arrays allocated."""
    from .arrays import Shaped
    return w.op_fn().bind_arrays({k: Shaped(v) for k, v in w.shapes.items() if v is not None}, dict(w.params))


def _estimated_over(w: Workload, name: str, seconds: float) -> bool:
    """Whether the cost model puts one forward call of `name` over `seconds`."""
    from . import registry
    from .choose import estimate_seconds
    if name.startswith("peer:"):
        return False
    b = registry.get(name)
    return estimate_seconds(_call_of(w), name, b.takes[0], 4) > seconds


def _top_per_library(w: Workload, names, k: int) -> set:
    """Every non-array backend, and the `k` array-strategy backends of each
    library that the cost model expects fastest on `w`."""
    from . import registry
    from .choose import estimate_seconds
    call = _call_of(w)
    keep, by_lib = set(), {}
    for name in names:
        b = registry.get(name)
        if b.strategy not in registry.ARRAY_STRATEGIES:
            keep.add(name)
            continue
        by_lib.setdefault(b.takes[0], []).append((estimate_seconds(call, name, b.takes[0], 4), name))
    for cands in by_lib.values():
        keep.update(n for _, n in sorted(cands)[:k])
    return keep


def compare(workloads=None, *, workloads_file=None, quick: bool = False, reduced: bool = False, backends=None,
            peers: bool = True, peers_file: str | Path | None = None, threads: int | None = None,
            outdir: str | Path | None = "results", command: str | None = None, show_progress: bool = True,
            console=None, resume: bool = False, save: str | None = None, history=None,
            **overrides) -> tuple[list[dict], dict]:
    """Run workloads, every backend checked then timed; returns (records, written paths).

    `workloads`: ids (default: every workload of the file, and W4 when the file is the
    report workloads' and `einlocal.ragged` exists), or `Workload` objects;
    `workloads_file`: a workload file (TOML, docs/workloads.md; default the report workloads);
    `quick`: smaller budgets, the fresh regime, each workload at its `quick` values,
    each backend checked at its timed size only, backends the cost model puts far over the cap
    skipped; `reduced`: the workloads at their reduced shapes (for tests); `peers`: time the
    peers (`einlocal.peers`, or those of `peers_file`, a peers module's path); `backends`:
    names or prefixes (default: every available one); `overrides`: any `Settings` key.
    Writes results.md/.csv/.json and the figures into `outdir` (None: nothing); results.json
    is written when the run starts and again as each job finishes, and `resume` goes on from
    it, skipping the jobs it holds.  `save`: also keep the run as that name in the
    per-machine history (`einlocal.runs`, under `history`).
    """
    from . import registry
    from .harness.supervisor import allow_children
    from .machine import machine_info, roof as machine_roof, roof_text
    from .partial import PartialRun, finished_of, job_key
    from .runs import run_stamp
    settings = Settings({**(QUICK if quick else SETTINGS), **overrides})
    chosen, want_ragged = _chosen(workloads, workloads_file)
    names = [n for n in registry.available() if n != "loops:python"]
    if backends:
        names = [n for n in names if any(n == b or n.startswith(b) for b in backends)]
    peer_table = load_peers(peers_file) if peers else {}
    roof = machine_roof()
    tmp = tempfile.TemporaryDirectory(prefix="einlocal-compare-")
    jobs, pre = [], []
    notes = [ISOLATION_NOTE, roof_text(roof)]
    sized = [w0.sized(True) if reduced else w0.quick_sized() if quick else w0 for w0 in chosen]
    done, kept = finished_of(Path(outdir) / "results.json") if resume and outdir is not None else (set(), [])
    references = reference_files([w for w in sized if not _all_done(w, names, done)], Path(tmp.name)) \
        if settings.full_check else {}
    for w in sized:
        spec = op_spec(w.op_fn())
        ref_path = None
        if settings.full_check and w.id in references:
            ref_path, why = references[w.id]
            notes.append(f"{w.id}: checked at the timed size against {why}" if ref_path is not None
                         else f"{w.id}: {why}; checked at reduced size only")
        common = dict(passes=settings.passes, regimes=settings.regimes, grad_modes=settings.get("grad_modes"),
                      budget_s=settings.budget_s, warmup=settings.get("warmup", 1),
                      min_reps=settings.get("min_reps", 3),
                      cap_s=settings.cap_s, dtype=w.dtype, memory=settings.memory, seed=0,
                      check_shapes=(w.reduced or None) if settings.get("reduced_check", True) or ref_path is None
                      else None,
                      workload=w.id, roofline=roof,
                      kill_margin_s=settings.get("kill_margin_s", 8.0),
                      first_call_allowance_s=settings.get("first_call_allowance_s", 0.0),
                      steady_max_s=settings.get("steady_max_s"),
                      steady_grad_modes=settings.get("steady_grad_modes"), warm_up=settings.get("warm_up", False),
                      prune_over_cap=settings.get("prune_over_cap", False))
        timed = set()
        for name in names:
            if job_key(w.id, name) in done:
                timed.add(name)
                continue
            b = registry.get(name)
            call_ok = _can_run(w, b)
            if call_ok is not None:
                pre.append(_skip_records(w, name, settings, call_ok))
                continue
            if settings.get("per_library") and name not in _top_per_library(w, names, settings["per_library"]):
                pre.append(_skip_records(w, name, settings, f"--quick times the cost model's "
                                         f"{settings['per_library']} likeliest array strategies per library "
                                         f"(with natives, loops and peers); einlocal compare times every backend"))
                continue
            if settings.prune_over_cap and _estimated_over(w, name, PRUNE_SHARE * settings.cap_s):
                pre.append(_skip_records(w, name, settings, f"cost model: forward over {PRUNE_SHARE:g}x the cap "
                                         f"{settings.cap_s:g} s, backward far over it (--quick): not run"))
                continue
            jobs.append(Job(spec, w.shapes, w.params, name, reference=ref_path, **_allowance(common, b.compile_s)))
            timed.add(name)
            for lib in b.also_on:        # the same backend run another way on another library's arrays
                if job_key(w.id, f"{name}[{lib}]") in done:
                    continue
                why = namespace(lib).unavailable() or _can_run(w, b, lib) or (
                    None if settings.get("also_on", True) else
                    f"--quick runs {name} on {b.takes[0]} arrays only; einlocal compare times it on {lib} arrays too")
                if why:
                    pre.append(_skip_records(w, f"{name}[{lib}]", settings, why))
                    continue
                jobs.append(Job(spec, w.shapes, w.params, name, reference=ref_path, arrays=lib,
                                **_allowance(common, max(b.compile_s, namespace(lib).compile_s))))
        for wanted in (w.peers if w.op else ()):       # peers are recipes for catalogue ops
            peer = peer_for(wanted, peer_table)
            if peer is None or job_key(w.id, f"peer:{peer}") in done:
                continue
            info = peer_info(w.op, peer_table[peer])
            if backends and not any(f"peer:{peer}".startswith(b) or b == "peer" for b in backends):
                continue
            if settings.get("dedupe_peers") and info.get("same_as") in timed:
                pre.append(_skip_records(w, f"peer:{peer}", settings, f"the same library call as "
                                         f"{info['same_as']}, timed here (--quick); einlocal compare times both"))
                continue
            compile_s = namespace(info["library"]).compile_s if info["library"] in registry.ENGINES else 0.0
            jobs.append(Job(spec, w.shapes, w.params, f"peer:{peer}", peer=info, reference=ref_path,
                            note="peer", **_allowance({**common, "regimes": ("fresh",)}, compile_s)))
    if quick:
        notes.append(f"--quick: each workload at its quick sizes (the shapes say so), the cost "
                     f"model's {settings.get('per_library')} likeliest array strategies per library, fresh regime, "
                     f"backward in vjp mode only, {settings.budget_s:g} s budgets, a {settings.cap_s:g} s cap, "
                     f"each backend checked at the size it is timed at (not again at the reduced size)")
    cmd = command or "einlocal compare" + (" --quick" if quick else "")
    info = machine_info()
    info["notes"] = notes
    head = {"command": cmd, "machine": info, **run_stamp()}
    records = kept + [r for group in pre for r in group]
    partial = PartialRun(Path(outdir) / "results.json", head, records, done) if outdir is not None else None
    # what this process imports after the jobs (W4's library, the plot's), it imports while they check
    preload = threading.Thread(target=_preload, args=(want_ragged, outdir is not None), daemon=True)
    preload.start()
    allow_children()
    records += _run_with_progress(jobs, threads, show_progress, console, partial)
    preload.join()
    if want_ragged and not (done and any(r.get("workload") == "W4" for r in kept)):
        records += _ragged_records(settings, reduced)
    tmp.cleanup()
    _mark_sweeps(records, sized)
    paths = {}
    if outdir is not None:
        from .table import write_results
        paths = write_results(records, outdir, command=cmd, machine=info, name="results", notes=notes)
    if save:
        from .runs import save as save_run
        paths["saved"] = save_run({"command": cmd, "machine": info, **run_stamp(), "records": records}, save, history)
    return records, paths


def _chosen(workloads, workloads_file) -> tuple[list[Workload], bool]:
    """(the workloads to run, whether W4 runs too)."""
    from .workloads import load_file
    if workloads and all(isinstance(w, Workload) for w in workloads):
        return list(workloads), False
    table = load_file(workloads_file) if workloads_file is not None else _workloads.WORKLOADS
    if not workloads:
        return list(table.values()), workloads_file is None
    ids = [str(i) for i in workloads]
    want_ragged = workloads_file is None and any(i.upper() == "W4" for i in ids)
    chosen = []
    for i in ids:
        if workloads_file is None and i.upper() == "W4":
            continue
        found = [w for k, w in table.items() if k.lower() == i.lower() or (w.sweep_of or "").lower() == i.lower()]
        if not found:
            from .errors import ShapeError
            raise ShapeError(f"unknown workload {i!r}; valid: {', '.join(table)}"
                             + (", W4" if workloads_file is None else ""))
        chosen += found
    return chosen, want_ragged


def _all_done(w: Workload, names, done: set) -> bool:
    from .partial import job_key
    return bool(done) and all(job_key(w.id, n) in done for n in names)


def _mark_sweeps(records: list[dict], workloads: list[Workload]) -> None:
    """Each record of a swept workload carries the sweep it belongs to and its values (for the plots)."""
    by_id = {w.id: w for w in workloads if w.sweep_of}
    for r in records:
        w = by_id.get(r.get("workload"))
        if w is not None:
            r["sweep_of"], r["sweep"] = w.sweep_of, dict(w.sweep)


def _preload(ragged: bool, plot: bool) -> None:
    """Import torch (W4 runs on it here) and matplotlib (results.png) ahead of their use."""
    import importlib
    for module, wanted in (("torch", ragged), ("matplotlib.figure", plot), ("matplotlib.backends.backend_agg", plot)):
        if wanted and importlib.util.find_spec(module.split(".")[0]) is not None:
            try:
                importlib.import_module(module)
            except Exception:  # noqa: BLE001 — the use itself reports it
                pass


def _allowance(common: dict, compile_s: float) -> dict:
    """The job settings with a first call's compile allowance cut to what the
    backend compiles (``Backend.compile_s``: numba, Triton, jax's jit); a
    backend that compiles nothing gets none: its slow first call is just slow,
    and is capped as such."""
    return {**common, "first_call_allowance_s": min(common.get("first_call_allowance_s", 0.0), compile_s)}


def _can_run(w: Workload, b, library: str | None = None) -> str | None:
    """Why backend `b` cannot run workload `w` on `library`'s arrays (default: its own library's), or None."""
    call = _call_of(w)
    return b.cannot(call.plan, library=library or b.takes[0], device="cpu", call=call)


def _skip_records(w: Workload, name: str, settings: Settings, reason: str) -> list[dict]:
    from .table import make_record
    peer = {"peer": True, "note": "peer"} if name.startswith("peer:") else {}
    return [make_record(workload=w.id, op=w.op_name, shape=w.shape, backend=name, **{"pass": p}, regime=r,
                        status="skipped", reason=reason, dtype=w.dtype, **peer)
            for r in settings.regimes for p in settings.passes]


def _run_with_progress(jobs: list[Job], threads, show: bool, console, partial=None) -> list[dict]:
    """Run the jobs (a progress bar where `show`), each finished job's records
    written to the partial results file as it ends."""
    from .partial import job_key

    def keep(event: str, info: dict) -> None:
        if event == "job" and partial is not None:
            partial.finish(job_key(info["job"].workload, info["job"].label), info.get("records", []))
    if not show or not jobs:
        return run_jobs(jobs, threads=threads, progress=keep)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as bar:
        task = bar.add_task("starting", total=len(jobs))

        def progress(event: str, info: dict) -> None:
            job = info["job"]
            keep(event, info)
            if event == "job":
                bar.advance(task)
            else:
                step = info["step"]
                what = step.describe() + (f" {step.regime}" if step.regime else "")
                bar.update(task, description=f"{job.workload} {job.label}: {what}")
        records = run_jobs(jobs, threads=threads, progress=progress)
        bar.update(task, completed=len(jobs), description="done")
    return records


# -- W4: ragged sets, from einlocal.ragged --------------------------------------------------------------


def _ragged_records(settings: Settings, reduced: bool) -> list[dict]:
    """Time `einlocal.ragged.workload()`'s callables (fresh regime) if that module exists,
    at n_i in 20..40 and at n_i = 1.

    Interface used: the workload has `calls` = {(strategy, pass): fn()} (or a dict
    {strategy: {pass: fn}} under `callables`); fn() runs one pass and returns its result.
    """
    from .table import make_record
    from .timing import measure
    out = []
    n_sets = 20 if reduced else settings.get("ragged_sets", 1000)
    for label, n_range in (("n_i 20-40", (20, 40)), ("n_i = 1", (1, 1))):
        shape = f"{n_sets} sets, {label}, images (n_i,1,16,16), conv2d 5x5 1->4, per-set mean"
        try:
            w = ragged_workload(n_sets=n_sets, n_range=n_range)
        except Exception as e:  # noqa: BLE001
            return [make_record(workload="W4", op="ragged", shape=shape, backend="ragged", status="failed",
                                reason=f"einlocal.ragged.workload(): {type(e).__name__}: {e}"[:300])]
        if w is None:
            return []
        get_ = (lambda k: w.get(k)) if isinstance(w, dict) else (lambda k: getattr(w, k, None))
        calls = get_("calls") or {}
        if not calls:
            calls = {(s, p): f for s, by_pass in (get_("callables") or {}).items() for p, f in by_pass.items()}
        for (strategy, pass_), fn in calls.items():
            base = dict(workload="W4", op="ragged", shape=shape, backend=f"ragged:{strategy}", **{"pass": pass_},
                        isolation="measured in the compare process")
            try:
                t = measure(fn, budget_s=settings.budget_s, cap_s=settings.cap_s)
            except Exception as e:  # noqa: BLE001
                out.append(make_record(**base, status="failed", reason=f"{type(e).__name__}: {e}"[:300]))
                continue
            if t.capped:
                out.append(make_record(**base, status=">cap", reason=t.note, first_call_s=t.first_call_s))
            else:
                out.append(make_record(**base, median_s=t.median_s, iqr_s=t.iqr_s, n=t.n,
                                       first_call_s=t.first_call_s, **({"note": t.note} if t.note else {})))
    return out


def command_line(argv=None) -> str:
    """The command that produced a run, for the results header."""
    args = sys.argv[1:] if argv is None else argv
    return "einlocal " + " ".join(shlex.quote(a) for a in args)
