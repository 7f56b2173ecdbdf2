"""The choice cache as a tool: list its entries, export them with a header, import them checked, prune and clear."""
from __future__ import annotations

import json
import time
from pathlib import Path

from .errors import EinlocalError

__all__ = ["EXPORT_FORMAT", "rows", "unusable_here", "export", "import_file", "prune", "clear"]

EXPORT_FORMAT = "einlocal-choices/1"
_KEY_PARTS = 9   # statement, shapes, output shape, padding, dtype, library, device name, versions, einlocal version


class CacheFileError(EinlocalError):
    """An export file that cannot be read or is not an einlocal export."""


def _cache(cache=None):
    if cache is not None:
        return cache
    from .auto import choice_cache
    return choice_cache()


def _key(k: str) -> list | None:
    try:
        key = json.loads(k)
    except ValueError:
        return None
    return key if isinstance(key, list) and len(key) == _KEY_PARTS else None


def _dims(shape) -> str:
    return "x".join(str(s) for s in shape)


def describe(key: list | None, value: dict) -> str:
    """Op name (or statement), shapes, parameters, dtype, library and device of an entry."""
    from .untuned import describe as describe_record
    op = value.get("op") if isinstance(value.get("op"), dict) else None
    shapes = value.get("shapes")
    if key is None:
        return "(not an einlocal choice key)"
    stmt, key_shapes, _, pad, dtype, library, device_name = key[:7]
    if op is None:       # an entry without its description: the statement and shapes of its key
        op = {"statement": stmt, "pad": pad}
    if not isinstance(shapes, list):
        shapes = key_shapes
    params = value.get("params") if isinstance(value.get("params"), dict) else {}
    record = {"op": op, "shapes": shapes, "params": params, "dtype": dtype, "library": library,
              "device": value.get("device") or device_name}
    return describe_record(record)


def _devices_match(library: str, device_name: str) -> bool:
    from .auto import _device_name
    device = "cpu" if device_name == "cpu" or device_name.startswith("cpu ") else device_name.split(" ")[0]
    return _device_name(library, device) == device_name


def unusable_here(key: list | None, value) -> str | None:
    """Why an entry cannot serve ``backend="auto"`` on this machine, or None: another
    einlocal or library version, another device, a backend that is not available."""
    from . import __version__, registry
    from .auto import _versions
    from .backends.namespaces import LIBRARIES, namespace
    if key is None:
        return "not an einlocal choice key"
    if not isinstance(value, dict) or not isinstance(value.get("backend"), str):
        return "no backend in the entry"
    _, _, _, _, dtype, library, device_name, versions, version = key
    if version != __version__:
        return f"made by einlocal {version}, this is einlocal {__version__}"
    if library not in LIBRARIES:
        return f"unknown array library {library!r}"
    missing = namespace(library).unavailable()
    if missing:
        return missing
    here = {n: v for n, v in _versions(library)}
    there = {n: v for n, v in versions} if isinstance(versions, list) and all(
        isinstance(p, list) and len(p) == 2 for p in versions) else None
    if there is None:
        return "malformed library versions"
    if there != here:
        diff = [f"{n} {there.get(n)} there, {here.get(n)} here" for n in sorted({*here, *there})
                if there.get(n) != here.get(n)]
        return "other library versions: " + ", ".join(diff)
    if not isinstance(device_name, str) or not _devices_match(library, device_name):
        return f"measured on {device_name!r}, not a device here"
    backend = value["backend"]
    if backend not in registry.NAMES:
        return f"unknown backend {backend!r}"
    if backend not in registry.available():
        return f"backend {backend} is not available here: {registry.unavailable().get(backend)}"
    return None


def _when(value: dict) -> str:
    measured = value.get("measured")
    return measured.replace("T", " ").rstrip("Z")[:16] if isinstance(measured, str) else "-"


def _ms(value: dict) -> str:
    seconds = value.get("seconds")
    t = seconds.get(value.get("backend")) if isinstance(seconds, dict) else None
    return f"{t * 1e3:.3f} ms" if isinstance(t, (int, float)) else "-"


def rows(cache=None) -> list[str]:
    """One line per entry, least recently used first: op (or statement), shapes,
    parameters, dtype, library, device, the backend chosen, its measured time, the
    date it was measured, and why it cannot be used here if so."""
    out = []
    for k, entry in _cache(cache).items():
        key, value = _key(k), entry["value"]
        line = f"{describe(key, value)}  ->  {value.get('backend')}  {_ms(value)}  {_when(value)}"
        why = unusable_here(key, value)
        out.append(line + (f"  [not used here: {why}]" if why else ""))
    return out


def export(path: str | Path, cache=None) -> int:
    """Write every entry to ``path`` with a header (format, einlocal version, date,
    machine, library versions); returns how many."""
    from . import __version__
    from .cachedir import write_atomic
    from .machine import machine_info
    items = _cache(cache).items()
    info = machine_info()
    header = {"format": EXPORT_FORMAT, "einlocal": __version__,
              "exported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": {k: info.get(k) for k in ("hostname", "cpu", "cores", "memory_bytes", "platform", "python",
                                                   "gpu")},
              "versions": info.get("versions")}
    entries = [{"key": json.loads(k), "value": e["value"]} for k, e in items]
    try:
        write_atomic(path, json.dumps({"header": header, "entries": entries}, indent=1, sort_keys=True) + "\n", shared=True)
    except OSError as e:
        raise CacheFileError(f"cannot write {path}: {e.strerror or e}") from None
    return len(entries)


def read_export(path: str | Path) -> tuple[dict, list]:
    """(header, entries) of an export file; CacheFileError if unreadable or not one."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise CacheFileError(f"cannot read {path}: {e.strerror or e}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise CacheFileError(f"{path} is not JSON: {e}") from None
    header = data.get("header") if isinstance(data, dict) else None
    if not isinstance(header, dict) or header.get("format") != EXPORT_FORMAT or \
            not isinstance(data.get("entries"), list):
        raise CacheFileError(f"{path} is not an einlocal choices export (no header with format {EXPORT_FORMAT!r}; "
                             "make one with `einlocal cache export FILE`)")
    return header, data["entries"]


def import_file(path: str | Path, cache=None, replace: bool = False) -> tuple[dict, list]:
    """Read an export; accept each entry that this machine can use and store the
    accepted ones. Returns (header, [(description, accepted, reason), ...])."""
    from .choice_cache import key_string
    cache = _cache(cache)
    header, entries = read_export(path)
    local = dict(cache.items())
    verdicts, accepted = [], {}
    for n, item in enumerate(entries):
        if not isinstance(item, dict) or not isinstance(item.get("value"), dict):
            verdicts.append((f"entry {n}", False, "malformed: no key and value"))
            continue
        key, value = item.get("key"), item["value"]
        key = key if isinstance(key, list) and len(key) == _KEY_PARTS else None
        desc = describe(key, value)
        why = unusable_here(key, value)
        if why is None:
            k = key_string(key)
            mine = local.get(k, {}).get("value", {}).get("backend")
            if k in accepted:
                why = "a second entry for the same key in the file"
            elif mine == value["backend"]:
                why = f"already cached here with {mine}"
            elif mine is not None and not replace:
                why = f"cached here with {mine}, kept (--replace takes the file's)"
        if why is None:
            accepted[key_string(key)] = value
            verdicts.append((desc, True, f"{value['backend']} ({_ms(value)}, measured {_when(value)})"))
        else:
            verdicts.append((desc, False, why))
    if accepted:
        cache.put_strings(accepted)
    return header, verdicts


def prune(cache=None, unused_days: float | None = None) -> list[tuple[str, str]]:
    """Remove the entries this machine cannot use (`unusable_here`), and with
    `unused_days` those not used for that many days; returns (description, reason)."""
    cache = _cache(cache)
    now = time.time_ns()
    gone, out = [], []
    for k, entry in cache.items():
        key, value = _key(k), entry["value"]
        why = unusable_here(key, value)
        if why is None and unused_days is not None and now - entry["used"] > unused_days * 86400e9:
            why = f"not used for {(now - entry['used']) / 86400e9:.1f} days"
        if why:
            gone.append(k)
            out.append((describe(key, value), why))
    if gone:
        cache.remove(gone)
    return out


def clear(cache=None) -> int:
    """Remove every entry; returns how many there were."""
    cache = _cache(cache)
    n = len(cache)
    cache.clear()
    return n
