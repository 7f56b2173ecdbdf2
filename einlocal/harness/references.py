"""The references a run checks against, computed once and shared through files: full size (a float64 lowering) and reduced (the loops)."""
from __future__ import annotations

import functools
import json
from pathlib import Path

from .jobs import Job, build_op

__all__ = ["reference_file", "check_reference_file", "load_reference", "load_check_reference", "check_references"]


def reference_file(spec: dict, shapes: dict, params: dict, seed: int, backend: str, path: Path) -> str:
    """Float64 forward and gradients with `backend` on `el.check`'s inputs for `seed`,
    with their scale and term counts (`einlocal.reference.reference_outputs`), saved
    as .npz; `load_reference` reads it for `el.check(reference=...)` (same seed, same inputs)."""
    from .. import registry
    from ..check import random_inputs
    from ..reference import reference_outputs
    from .calls import bind
    arrays = random_inputs(shapes, "float64", seed)
    call = bind(build_op(spec), arrays, params)
    dy = random_inputs({"dy": call.out_shape}, "float64", seed + 2)["dy"]
    return _save(reference_outputs(call, arrays, dy, backend=registry.get(backend)), path)


def check_reference_file(spec: dict, shapes: dict, params: dict, seed: int, path: Path) -> str:
    """`el.check`'s float64 loops reference at (reduced) `shapes` for `seed`, with its
    VJP's finite-difference error, saved as .npz (`load_check_reference` reads it):
    the literal loops are the slowest part of a check, and each library's process
    would otherwise compute the same values again."""
    from ..check import _reference
    ref, vjp_error = _reference(build_op(spec), seed, shapes, params)
    return _save(ref, path, vjp_error=vjp_error)


def _save(ref: dict, path: Path, vjp_error: float | None = None) -> str:
    import numpy as np
    flat = {}
    for name, (value, scale, n) in ref.items():
        flat[f"{name}__value"], flat[f"{name}__scale"], flat[f"{name}__terms"] = value, scale, np.array(n)
    if vjp_error is not None:
        flat["vjp_error"] = np.array(vjp_error)
    np.savez(path, **flat)
    return str(path)


def _read(path: str) -> tuple[dict, float | None]:
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
    """The dict `el.check(reference=...)` takes, from `reference_file`'s .npz: read once per
    process for the jobs of one workload that follow each other (a full-size reference is
    hundreds of MB); its arrays are read-only."""
    return _read(path)[0]


@functools.lru_cache(maxsize=16)
def load_check_reference(path: str) -> tuple[dict, float]:
    """(reference dict, its VJP's error / tolerance) from `check_reference_file`'s .npz."""
    return _read(path)


def check_references(jobs: list[Job], folder: Path) -> list[Job]:
    """`jobs` with ``check_reference`` set: one reference file in `folder` per op,
    reduced shapes, parameters and seed, computed here once."""
    paths: dict[str, str] = {}
    out = []
    for job in jobs:
        if job.check_shapes and not job.check_reference:
            key = json.dumps([job.spec, job.check_shapes, job.params, job.seed], sort_keys=True, default=str)
            if key not in paths:
                paths[key] = check_reference_file(job.spec, job.check_shapes, job.params, job.seed,
                                                  Path(folder) / f"check{len(paths)}.npz")
            job = job.replace(check_reference=paths[key])
        out.append(job)
    return out
