"""The inputs of the timed calls: sets of random arrays that together exceed the last-level cache, made once per run."""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import tempfile
from pathlib import Path

__all__ = ["copies_for", "input_sets", "make_input_sets"]


def copies_for(nbytes: int) -> int:
    """How many input sets rotate so that together they exceed the last-level cache twice (1 to 4)."""
    from ..machine import llc_bytes
    llc = llc_bytes() or 32 * 2**20
    return max(1, min(4, math.ceil(2 * llc / max(nbytes, 1))))


@functools.lru_cache(maxsize=1)
def input_sets(shapes: tuple, out_shape: tuple, dtype: str, seed: int, copies: int, reference: bool,
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
    sets = make_input_sets(dict(shapes), out_shape, dtype, seed, copies, reference)
    if path is not None:
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".npz")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{f"{k}__{n}": a for k, arrs in enumerate(sets) for n, a in arrs.items() if a is not None})
        os.replace(tmp, path)
    return sets


def make_input_sets(shapes: dict, out_shape: tuple, dtype: str, seed: int, copies: int, reference: bool) -> list:
    """The sets themselves (`input_sets` reads them from the run's folder where another process made them)."""
    from ..check import random_inputs
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
