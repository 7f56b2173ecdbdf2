"""A run's results file while it runs: written when it starts and again as each
job finishes (atomically, so it is always a valid file of what is finished),
and read back by ``einlocal compare --resume``."""
from __future__ import annotations

import json
import threading
from pathlib import Path

__all__ = ["PartialRun", "finished_of", "job_key"]


def job_key(workload: str | None, backend: str) -> str:
    return f"{workload}|{backend}"


def finished_of(path: str | Path) -> tuple[set[str], list[dict]]:
    """(keys of the jobs a partial results file holds, their records); a file
    that is missing or not a results file holds none."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return set(), []
    if not isinstance(data, dict) or not isinstance(data.get("records"), list):
        return set(), []
    done = set(data.get("finished_jobs") or [])
    if data.get("complete"):
        done |= {job_key(r.get("workload"), r.get("backend")) for r in data["records"]}
    return done, [r for r in data["records"] if job_key(r.get("workload"), r.get("backend")) in done]


class PartialRun:
    """The results file of a run in progress: `finish(key, records)` as each job
    ends rewrites it (temp file + ``os.replace``) with every finished job's records."""

    def __init__(self, path: str | Path, head: dict, records=(), finished=()):
        self.path = Path(path)
        self.head = dict(head)
        self.records = list(records)
        self.finished = set(finished)
        self._lock = threading.Lock()
        self._write()

    def finish(self, key: str, records: list[dict]) -> None:
        with self._lock:
            self.records.extend(records)
            self.finished.add(key)
            self._write()

    def _write(self) -> None:
        from .cachedir import write_atomic
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {**self.head, "complete": False, "finished_jobs": sorted(self.finished), "records": self.records}
        write_atomic(self.path, json.dumps(data, indent=1, default=str), shared=True)
