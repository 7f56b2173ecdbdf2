"""`el.benchmark`: time forward / backward / both per backend on one op and shape, each checked first (`einlocal.harness` runs it)."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

from .harness import Job, op_spec, reference_file, run_jobs, split_shapes

__all__ = ["benchmark", "default_backends"]


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
    (outputs reused through ``out=``; jax: repeated calls).
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
    _validate(spec, shapes, params, backends, passes, regimes, dtype)
    names = list(backends) if backends is not None else default_backends(spec)
    from .machine import roof as machine_roof
    roof = machine_roof()
    with tempfile.TemporaryDirectory(prefix="einlocal-ref-") as tmp:
        ref_path = reference_file(spec, shapes, params, seed, reference, Path(tmp) / "ref.npz") if reference else None
        jobs = [Job(spec, shapes, params, name, passes=passes, regimes=regimes, grad_modes=grad_modes,
                    budget_s=budget_s, cap_s=cap_s, dtype=dtype, memory=memory, seed=seed, check_shapes=check_shapes,
                    reference=ref_path, workload=workload, roofline=roof, steady_max_s=steady_max_s)
                for name in names]
        return run_jobs(jobs, isolate=isolate, threads=threads, progress=progress)


def default_backends(spec: dict) -> list[str]:
    """Every available backend that can run the op (a general one for an `el.Op`), without loops:python."""
    from . import registry
    out = []
    for name in registry.available():
        if name == "loops:python":
            continue
        if not registry.get(name).general and "op" not in spec:
            continue
        out.append(name)
    return out


def _validate(spec: dict, shapes: dict, params: dict, backends, passes, regimes, dtype: str) -> None:
    """Every argument of `benchmark` checked before any process starts: the op
    binds to the shapes and parameters, the backends exist, the passes,
    regimes and dtype are ones einlocal knows; a named einlocal error if not."""
    from . import registry
    from .arrays import Shaped
    from .errors import BackendError, ShapeError
    from .harness import build_op
    from .table import PASSES, REGIMES
    build_op(spec).bind_arrays({k: Shaped(v) for k, v in shapes.items()}, dict(params))
    for name in backends or ():
        if name not in registry.NAMES:
            raise BackendError(f"benchmark: unknown backend {name!r}; valid names: {', '.join(registry.NAMES)}")
    for what, given, valid in (("passes", passes, PASSES), ("regimes", regimes, REGIMES)):
        bad = [v for v in given if v not in valid]
        if bad or not given:
            raise ShapeError(f"benchmark: {what}={tuple(given)!r}: {bad[0] if bad else 'none given'!r} is not one of "
                             f"{', '.join(valid)}")
    if dtype not in ("float16", "bfloat16", "float32", "float64"):
        raise ShapeError(f"benchmark: dtype={dtype!r}; einlocal computes in float16, bfloat16, float32 or float64")
