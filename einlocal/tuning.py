"""Offline tuning: rebuild the calls ``EINLOCAL_RECORD_UNTUNED`` recorded, measure each with `el.choose`, fill the choice cache."""
from __future__ import annotations

import json
from pathlib import Path

from .errors import EinlocalError
from .untuned import describe, record_of

__all__ = ["read_records", "rebuild", "tune", "RecordFileError"]


class RecordFileError(EinlocalError):
    """A record file that cannot be read."""


def read_records(path: str | Path) -> tuple[list[dict], list[str]]:
    """(the distinct records of the file, in order; a line of each that is not one)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise RecordFileError(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise RecordFileError(f"{path} is not a text file: {e}") from None
    records, bad, seen = [], [], set()
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict) or not {"op", "shapes", "params", "dtype", "library", "device"} <= record.keys():
            bad.append(f"line {n}")
            continue
        canon = json.dumps(record, sort_keys=True)
        if canon not in seen:
            seen.add(canon)
            records.append(record)
    return records, bad


def rebuild(record: dict):
    """(op, its parameters, the call) from a record, through the binding interface
    every op has; EinlocalError saying why it cannot be rebuilt."""
    from .arrays import Shaped
    from .catalogue import CATALOGUE
    from .op import Op
    spec, shapes, params = record.get("op"), record.get("shapes"), record.get("params")
    if not isinstance(spec, dict) or not isinstance(shapes, list) or not isinstance(params, dict):
        raise RecordFileError("malformed record: op and params must be objects, shapes a list of [name, shape]")
    if "op" in spec:
        if spec["op"] not in CATALOGUE:
            raise RecordFileError(f"unknown op {spec['op']!r} (ops: {', '.join(CATALOGUE)})")
        op = CATALOGUE[spec["op"]]
    elif isinstance(spec.get("statement"), str):
        op = Op(spec["statement"], pad=0 if spec.get("pad") else None)
    else:
        raise RecordFileError(f"malformed record: op {spec!r} names neither an op nor a statement")
    try:
        shaped = {k: Shaped(v) for k, v in shapes}
    except (TypeError, ValueError):
        raise RecordFileError(f"malformed record: shapes {shapes!r}") from None
    try:
        arrays, params = op.split((), {**shaped, **params})
    except TypeError as e:
        raise RecordFileError(f"malformed record: {e}") from None
    call = op.bind_arrays(arrays, params)
    if record_of(call, record["library"], record["device"], record["dtype"]) != \
            json.loads(json.dumps({k: record[k] for k in ("op", "shapes", "params", "dtype", "library", "device")})):
        raise RecordFileError("the op rebuilt from the record binds to another call")
    return op, params, call


def _arrays(record: dict, seed: int) -> dict:
    """Random arrays of the record's shapes, dtype, library and device."""
    from .arrays import dtype_name
    from .backends.namespaces import LIBRARIES, namespace
    from .check import random_inputs
    library, device, dtype = record["library"], record["device"], record["dtype"]
    if library not in LIBRARIES:
        raise RecordFileError(f"unknown array library {library!r}")
    xp = namespace(library)
    missing = xp.unavailable()
    if missing:
        raise RecordFileError(missing)
    out = {}
    for name, a in random_inputs(dict(record["shapes"]), dtype, seed).items():
        try:
            arr = xp.from_numpy(a, device)
            if dtype_name(arr) != dtype:
                arr = arr.to(getattr(xp.mod, dtype)) if library == "torch" else arr.astype(dtype)
        except Exception as e:  # noqa: BLE001 — any library's failure to place an array there
            raise RecordFileError(f"cannot make {dtype} {library} arrays on {device!r} here: "
                                  f"{type(e).__name__}: {e}") from None
        out[name] = arr
    return out


def tune(path: str | Path, *, passes=("forward",), budget_s: float = 0.1, backends=None, refresh: bool = False,
         report=None) -> list[tuple[str, str, str]]:
    """Measure every call the record file holds (`el.choose`) and cache the
    winners. Returns (description, "tuned" | "cached" | "failed", detail) per
    call; `report` is called with each as it is done."""
    from .auto import choice_cache, choice_key
    from .choose import choose
    records, bad = read_records(path)
    results = [(line, "failed", "not a recorded call") for line in bad]
    for result in results:
        if report:
            report(*result)
    for record in records:
        desc = describe(record)
        try:
            op, params, call = rebuild(record)
            key = choice_key(call, record["library"], record["dtype"], record["device"])
            entry = None if refresh else choice_cache().get(key)
            if entry and tuple(entry.get("passes", ())) == tuple(passes):
                result = (desc, "cached", entry["backend"])
            else:
                arrays = _arrays(record, seed=len(results))
                entry = choose(op, **arrays, backends=backends, passes=passes, budget_s=budget_s, refresh=refresh,
                               details=True, **params)
                t = entry["seconds"].get(entry["backend"])
                result = (desc, "tuned", entry["backend"] + (f" ({t * 1e3:.3f} ms)" if t is not None else ""))
        except EinlocalError as e:
            result = (desc, "failed", str(e))
        results.append(result)
        if report:
            report(*result)
    return results
