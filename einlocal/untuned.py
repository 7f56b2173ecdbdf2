"""The calls ``backend="auto"`` found no measured choice for: appended to ``EINLOCAL_RECORD_UNTUNED``, refused under ``EINLOCAL_REQUIRE_TUNED``."""
from __future__ import annotations

import json
import os
import warnings

from .errors import BackendError

__all__ = ["on_miss", "record_of", "describe", "require_tuned", "RECORD_ENV", "REQUIRE_ENV"]

RECORD_ENV = "EINLOCAL_RECORD_UNTUNED"
REQUIRE_ENV = "EINLOCAL_REQUIRE_TUNED"
_ON, _OFF = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")

_recorded: set = set()     # (file, line) written by this process: each call once per file
_warned: set = set()


def record_of(call, library: str, device: str, dtype: str) -> dict:
    """The call as one JSON-able record: the op (what its ``spec()`` gives: a
    catalogue name, or a statement and its padding), its array shapes, its
    parameters, the dtype, the array library and the device."""
    if call.kind == "op":
        op = {"statement": str(call.plan.stmt), "pad": bool(call.plan.pad)}
        params = {"sizes": dict(call.plan.ranges)}
    else:
        op = {"op": call.kind}
        params = {k: _plain(v) for k, v in call.params if k != "multiplier"}
    return {"op": op, "shapes": [[k, list(s)] for k, s in call.arg_shapes], "params": params,
            "dtype": dtype, "library": library, "device": device}


def _plain(v):
    return [_plain(e) for e in v] if isinstance(v, (tuple, list)) else v


def describe(record: dict) -> str:
    """One line naming a recorded call: op or statement, shapes, parameters, dtype, library, device."""
    op = record.get("op") or {}
    name = op.get("op") or f"Op({op.get('statement')!r}{', pad=0' if op.get('pad') else ''})"
    shapes = " ".join(f"{k}={'x'.join(map(str, s))}" for k, s in _pairs(record.get("shapes")))
    params = " ".join(f"{k}={_compact(v)}" for k, v in (record.get("params") or {}).items())
    where = f"{record.get('dtype')} {record.get('library')} on {record.get('device')}"
    return " ".join(p for p in (name, shapes, params, where) if p)


def _pairs(shapes) -> list:
    """[[name, shape], ...] (a record's order) from that or a dict; [] if neither."""
    if isinstance(shapes, dict):
        return list(shapes.items())
    if isinstance(shapes, list) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in shapes):
        return [tuple(p) for p in shapes]
    return []


def _compact(v) -> str:
    """(1, 1) -> 1, ((1, 1), (1, 1)) -> 1; anything uneven as JSON without spaces."""
    flat = v
    while isinstance(flat, list) and flat and all(e == flat[0] for e in flat):
        flat = flat[0]
    return str(flat) if not isinstance(flat, (list, dict)) else json.dumps(v, separators=(",", ":"))


def _flag(name: str) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    raise BackendError(f"{name}={os.environ[name]!r}: expected 1 (on) or 0 (off)")


def require_tuned() -> bool:
    """Whether ``EINLOCAL_REQUIRE_TUNED`` is on (1/true/yes/on; 0/false/no/off or unset: off)."""
    return _flag(REQUIRE_ENV)


def on_miss(call, library: str, device: str, dtype: str) -> None:
    """A ``backend="auto"`` call found no usable measured choice: append it to
    the file ``EINLOCAL_RECORD_UNTUNED`` names (once per process), then, under
    ``EINLOCAL_REQUIRE_TUNED``, raise a BackendError naming it."""
    path = os.environ.get(RECORD_ENV)
    record = None
    if path:
        record = record_of(call, library, device, dtype)
        line = json.dumps(record, sort_keys=True)
        if (path, line) not in _recorded:
            _recorded.add((path, line))
            _append(path, line)
    if require_tuned():
        record = record or record_of(call, library, device, dtype)
        raise BackendError(f"backend='auto' has no measured choice for {describe(record)}, and {REQUIRE_ENV} is set: "
                           f"run el.choose on this call, or record the misses with {RECORD_ENV}=FILE and run "
                           f"`einlocal tune FILE`")


def _append(path: str, line: str) -> None:
    """Append one line under the file's lock; a file that cannot be written warns once."""
    try:
        from filelock import FileLock
        with FileLock(path + ".lock"):
            with open(path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
    except OSError as e:
        if path not in _warned:
            _warned.add(path)
            warnings.warn(f"{RECORD_ENV}={path}: cannot append to it ({e.strerror or e}); the calls that "
                          "missed the choice cache are not recorded", RuntimeWarning, stacklevel=4)
