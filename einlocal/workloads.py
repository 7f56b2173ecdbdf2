"""Workloads as data: op (or statement), shapes, params, dtype, peers, reduced
and quick sizes. The report workloads (docs/workloads.md) are a workload file
shipped in the package (`workloads.toml`); users bring their own (`einlocal
compare --workloads-file`).

W1, W2, W3a, W3b and W5 are catalogue ops. W4 (ragged sets) lives in
`einlocal.ragged`; `ragged_workload()` returns its description when that
module exists (interface: `einlocal.ragged.workload(**kw)` returning a dict
or object with `callables` -> {strategy: {pass: fn()}}; see `compare.py`).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from .workload_file import Workload, load, shape_text

__all__ = ["Workload", "WORKLOADS", "get", "ragged_workload", "shape_text", "REPORT_FILE", "load_file"]

REPORT_FILE = Path(__file__).with_name("workloads.toml")


def load_file(path) -> dict[str, Workload]:
    """Workload id -> workload, from a workload file (`einlocal.workload_file`)."""
    return {w.id: w for w in load(path)}


def _report() -> dict[str, Workload]:
    """The report workloads, read from the shipped file at first use (not at
    import: ``import einlocal`` does not pay for it), then kept as ``WORKLOADS``."""
    table = globals().get("WORKLOADS")
    if table is None:
        table = globals()["WORKLOADS"] = load_file(REPORT_FILE)
    return table


def __getattr__(name: str):
    if name == "WORKLOADS":
        return _report()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get(workload_id: str) -> Workload:
    """The workload called `workload_id` (case-insensitive); ShapeError (a ValueError) listing the ids."""
    from .errors import ShapeError
    table = _report()
    for key, w in table.items():
        if key.lower() == str(workload_id).lower():
            return w
    raise ShapeError(f"unknown workload {workload_id!r}; valid: {', '.join(table)}"
                     + (", W4" if ragged_available() else ""))


def ragged_available() -> bool:
    """Whether `einlocal.ragged` exists and exposes `workload()`."""
    if importlib.util.find_spec("einlocal.ragged") is None:
        return False
    import einlocal.ragged as ragged
    return callable(getattr(ragged, "workload", None))


def ragged_workload(**kw):
    """W4 from `einlocal.ragged.workload(**kw)`, or None where that module is absent."""
    if not ragged_available():
        return None
    import einlocal.ragged as ragged
    return ragged.workload(**kw)
