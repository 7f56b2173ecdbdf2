"""A persistent LRU cache of measured backend choices, safe across processes."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no cross-process lock
    fcntl = None

__all__ = ["ChoiceCache", "key_string", "FORMAT_VERSION"]

FORMAT_VERSION = 1


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    raise TypeError(f"ChoiceCache: key part {obj!r} of type {type(obj).__name__} is not JSON-able")


def key_string(key: Any) -> str:
    """Stable string for a JSON-able key (tuples become lists, dict keys sorted)."""
    return json.dumps(key, sort_keys=True, separators=(",", ":"), default=_jsonable)


class ChoiceCache:
    """`get(key) -> dict | None`, `put(key, value)`; at most `max_entries`, least recently used evicted.

    A key is a JSON-able tuple (statement, shapes, dtype, device name, library
    versions). The file (`cache_dir()/choices.json` by default) holds
    `{"format": 1, "entries": {key: {"value": {...}, "used": stamp}}}`; each
    write reloads it under a lock (`<file>.lock`), applies one change, evicts
    and replaces the file atomically, so processes writing different keys keep
    each other's entries. An unreadable file or a different format warns and
    starts empty.
    """

    def __init__(self, path: str | os.PathLike | None = None, max_entries: int = 512):
        if path is None:
            from .machine import cache_dir

            path = cache_dir() / "choices.json"
        if max_entries < 1:
            raise ValueError(f"ChoiceCache: max_entries must be >= 1, got {max_entries}")
        self.path = Path(path)
        self.max_entries = max_entries
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._last_stamp = 0

    # -- public ---------------------------------------------------------------

    def get(self, key: Any) -> dict | None:
        """The value stored for `key`, or None; a hit marks the key as just used."""
        k = key_string(key)
        if k not in self._read():
            return None
        with self._locked():
            entries = self._read()
            if k not in entries:
                return None
            entries[k]["used"] = self._stamp()
            self._write(entries)
            return entries[k]["value"]

    def put(self, key: Any, value: dict) -> None:
        """Store `value` (a JSON-able dict) for `key`, evicting beyond `max_entries`."""
        if not isinstance(value, dict):
            raise TypeError(f"ChoiceCache.put: value must be a dict, got {type(value).__name__}")
        k = key_string(key)
        value = json.loads(json.dumps(value, default=_jsonable))  # a JSON copy, checked
        with self._locked():
            entries = self._read()
            entries[k] = {"value": value, "used": self._stamp()}
            by_use = sorted(entries, key=lambda name: entries[name]["used"])
            for old in by_use[: max(0, len(entries) - self.max_entries)]:
                del entries[old]
            self._write(entries)

    def clear(self) -> None:
        """Remove every entry (the file stays, empty)."""
        with self._locked():
            self._write({})

    def __len__(self) -> int:
        return len(self._read())

    def __contains__(self, key: Any) -> bool:
        return key_string(key) in self._read()

    def keys(self) -> list[str]:
        """Key strings, least recently used first."""
        entries = self._read()
        return sorted(entries, key=lambda name: entries[name]["used"])

    # -- file -----------------------------------------------------------------

    def _stamp(self) -> int:
        """Strictly increasing in this process, comparable across processes."""
        self._last_stamp = max(time.time_ns(), self._last_stamp + 1)
        return self._last_stamp

    @contextlib.contextmanager
    def _locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "a") as lock:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)
            self._holding = True
            try:
                yield
            finally:
                self._holding = False
                if fcntl is not None:
                    fcntl.flock(lock, fcntl.LOCK_UN)

    _holding = False

    def _read(self) -> dict:
        """Entries on disk; a bad file warns once and is rebuilt empty."""
        try:
            entries = self._parse(self.path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as err:
            warnings.warn(f"ChoiceCache: unreadable cache file {self.path} ({err}); "
                          "rebuilding it empty", RuntimeWarning, stacklevel=3)
            if self._holding:
                self._write({})
            else:
                with self._locked():
                    try:  # another process may have rebuilt it meanwhile
                        return self._parse(self.path.read_text())
                    except (ValueError, FileNotFoundError):
                        self._write({})
            return {}
        stamps = [e["used"] for e in entries.values()]
        self._last_stamp = max([self._last_stamp, *stamps])
        return entries

    @staticmethod
    def _parse(text: str) -> dict:
        """Entries from the file's text; ValueError if corrupt or another format."""
        data = json.loads(text)  # JSONDecodeError is a ValueError
        if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
            found = data.get("format") if isinstance(data, dict) else None
            raise ValueError(f"format {found!r}, expected {FORMAT_VERSION}")
        entries = data.get("entries")
        if not isinstance(entries, dict) or not all(
            isinstance(e, dict) and {"value", "used"} <= e.keys() for e in entries.values()
        ):
            raise ValueError("malformed entries")
        return entries

    def _write(self, entries: dict) -> None:
        """Replace the file atomically (temp file in the same folder + os.replace)."""
        data = {"format": FORMAT_VERSION, "entries": entries}
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
