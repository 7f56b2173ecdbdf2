"""A persistent LRU cache of measured backend choices, safe across processes."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from .errors import CacheDirError

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
    versions). `get` reads a snapshot kept in memory until the file changes
    (no write per lookup); the recency of hits is written lazily, with the
    next `put`, `clear`, `flush()` or at exit. The file (`cache_dir()/choices.json` by default) holds
    `{"format": 1, "entries": {key: {"value": {...}, "used": stamp}}}`; each
    write reloads it under a lock (`<file>.lock`), applies one change, evicts
    and replaces the file atomically, so processes writing different keys keep
    each other's entries (the lock is `filelock`'s, on every platform). A
    corrupt file or a different format warns and starts empty; a file that
    cannot be read at all (a directory, no permission) warns and is left
    alone, and a write to it raises `CacheDirError` saying what to do.
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
        self._snapshot: tuple[Any, dict] | None = None  # (file signature, entries)
        self._touched: dict[str, int] = {}  # key -> stamp of hits not yet written
        self._warned: set[str] = set()
        atexit.register(self._flush_quietly)

    # -- public ---------------------------------------------------------------

    def get(self, key: Any) -> dict | None:
        """The value stored for `key`, or None; a hit marks the key as just used
        (written lazily: see the class docstring)."""
        return self.get_string(key_string(key))

    def get_string(self, k: str) -> dict | None:
        """``get`` for a key already made into its string (``key_string``)."""
        entry = self._read().get(k)
        if entry is None:
            return None
        self._touched[k] = self._stamp()
        return dict(entry["value"])

    def signature(self):
        """(inode, mtime, size) of the file now, None without one: a change
        means the entries may have changed (here or in another process)."""
        try:
            return self._signature()
        except OSError:
            return None

    def flush(self) -> None:
        """Write the recency of hits since the last write (no-op if none)."""
        if not self._touched:
            return
        with self._locked():
            entries = self._read_copy()
            if self._apply_touches(entries):
                self._write(entries)

    def put(self, key: Any, value: dict) -> None:
        """Store `value` (a JSON-able dict) for `key`, evicting beyond `max_entries`."""
        if not isinstance(value, dict):
            raise TypeError(f"ChoiceCache.put: value must be a dict, got {type(value).__name__}")
        self.put_strings({key_string(key): value})

    def put_strings(self, values: dict) -> None:
        """Store several entries at once: key string (`key_string`) -> value dict."""
        for k, value in values.items():
            if not isinstance(k, str) or not isinstance(value, dict):
                raise TypeError(f"ChoiceCache.put_strings: need str -> dict, got {type(k).__name__} -> "
                                f"{type(value).__name__}")
        values = json.loads(json.dumps(values, default=_jsonable))  # a JSON copy, checked
        with self._locked():
            entries = self._read_copy()
            self._apply_touches(entries)
            for k, value in values.items():
                entries[k] = {"value": value, "used": self._stamp()}
            by_use = sorted(entries, key=lambda name: entries[name]["used"])
            for old in by_use[: max(0, len(entries) - self.max_entries)]:
                del entries[old]
            self._write(entries)

    def remove(self, keys) -> int:
        """Remove the entries of these key strings; returns how many were there."""
        with self._locked():
            entries = self._read_copy()
            self._apply_touches(entries)
            gone = [k for k in keys if entries.pop(k, None) is not None]
            if gone:
                self._write(entries)
            return len(gone)

    def items(self) -> list[tuple[str, dict]]:
        """(key string, {"value": ..., "used": stamp}) of every entry, least recently used first."""
        entries = self._read()
        return [(k, {"value": dict(entries[k]["value"]), "used": entries[k]["used"]}) for k in self.keys()]

    def clear(self) -> None:
        """Remove every entry (the file stays, empty)."""
        with self._locked():
            self._touched.clear()
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

    def _apply_touches(self, entries: dict) -> bool:
        """Move pending hit stamps into `entries`; True if any applied."""
        touched, self._touched = self._touched, {}
        applied = False
        for k, stamp in touched.items():
            if k in entries and entries[k]["used"] < stamp:
                entries[k]["used"] = stamp
                applied = True
        return applied

    def _flush_quietly(self) -> None:
        with contextlib.suppress(Exception):
            self.flush()

    def _signature(self) -> Any:
        st = os.stat(self.path)  # FileNotFoundError when there is no file
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _stamp(self) -> int:
        """Strictly increasing in this process, comparable across processes."""
        self._last_stamp = max(time.time_ns(), self._last_stamp + 1)
        return self._last_stamp

    def _unusable(self, err: OSError) -> CacheDirError:
        what = "it is a directory" if self.path.is_dir() else (err.strerror or str(err))
        return CacheDirError(f"einlocal cannot write the choice cache {self.path}: {what}; remove or repair it, "
                             "or set EINLOCAL_CACHE_DIR to another folder")

    @contextlib.contextmanager
    def _locked(self):
        from filelock import FileLock
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(self._lock_path))
            lock.acquire()
        except OSError as err:
            raise CacheDirError(f"einlocal cannot lock the choice cache at {self._lock_path}: "
                                f"{err.strerror or err}; set EINLOCAL_CACHE_DIR to a folder you can write to") from None
        self._holding = True
        try:
            yield
        finally:
            self._holding = False
            lock.release()

    _holding = False

    def _read(self) -> dict:
        """Entries on disk; a bad file warns once and is rebuilt empty. The
        parsed file is kept while its signature (inode, mtime, size) holds:
        treat the result as read-only (writers use `_read_copy`)."""
        try:
            sig = self._signature()
            if self._snapshot is not None and self._snapshot[0] == sig:
                return self._snapshot[1]
            entries = self._parse(self.path.read_text())
        except FileNotFoundError:
            return {}
        except OSError as err:   # a directory, no permission: say so once, use no entries, touch nothing
            reason = "it is a directory" if self.path.is_dir() else (err.strerror or str(err))
            if reason not in self._warned:
                self._warned.add(reason)
                warnings.warn(f"ChoiceCache: cannot read the cache file {self.path} ({reason}); no cached choice "
                              "is used: remove or repair it, or set EINLOCAL_CACHE_DIR to another folder",
                              RuntimeWarning, stacklevel=3)
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
        self._snapshot = (sig, entries)
        stamps = [e["used"] for e in entries.values()]
        self._last_stamp = max([self._last_stamp, *stamps])
        return entries

    def _read_copy(self) -> dict:
        return {k: {"value": e["value"], "used": e["used"]} for k, e in self._read().items()}

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
        try:
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        except OSError as err:
            raise self._unusable(err) from None
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException as err:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(err, (IsADirectoryError, PermissionError)):
                raise self._unusable(err) from None
            raise
