"""Saved runs: a per-machine history of results files (``compare --save NAME``),
listed by ``einlocal runs`` and named in ``einlocal diff``."""
from __future__ import annotations

import json
import re
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from .errors import EinlocalError

__all__ = ["history_dir", "save", "saved", "resolve", "run_stamp", "RunError"]


class RunError(EinlocalError):
    """A results file or saved run that cannot be read or found."""


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:80] or "machine"


def machine_slug(machine: dict | None = None) -> str:
    """The folder name of a machine's history: host and CPU."""
    if machine is None:
        from .machine import _cpu_model
        import socket
        machine = {"hostname": socket.gethostname(), "cpu": _cpu_model()}
    return _slug(f"{machine.get('hostname', '?')}-{machine.get('cpu', '?')}")


def history_dir(folder: str | Path | None = None) -> Path:
    """The root of the history: ``folder``, else ``<cache dir>/history``."""
    if folder is not None:
        return Path(folder)
    from .machine import cache_dir
    return cache_dir() / "history"


def run_stamp(cwd: str | Path | None = None) -> dict:
    """What a run records about when and from what it ran: the date (UTC),
    einlocal's version and, inside a git checkout, ``git describe``."""
    from . import __version__
    stamp = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "einlocal": __version__,
             "commit": None}
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"], capture_output=True, text=True,
                             timeout=10, cwd=cwd or Path(__file__).resolve().parent)
        if out.returncode == 0:
            stamp["commit"] = out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return stamp


def save(run: dict, name: str, folder: str | Path | None = None) -> Path:
    """Store ``run`` (a results dict) as ``name`` in its machine's history;
    a run of that name is replaced."""
    if not name or _slug(name) != name:
        raise RunError(f"--save NAME must be letters, digits, '.', '_' or '-', got {name!r}")
    target = history_dir(folder) / machine_slug(run.get("machine") or None) / f"{name}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    from .cachedir import write_atomic
    write_atomic(target, json.dumps({**run, "name": name}, indent=1, default=str))
    return target


def saved(folder: str | Path | None = None) -> list[dict]:
    """Every saved run, oldest first: name, date, commit, machine, workloads, path."""
    root = history_dir(folder)
    out = []
    for path in sorted(root.glob("*/*.json")) if root.is_dir() else ():
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        machine = data.get("machine") or {}
        workloads = sorted({str(r.get("workload")) for r in data.get("records", []) if r.get("workload")})
        out.append({"name": data.get("name", path.stem), "date": data.get("date"), "commit": data.get("commit"),
                    "machine": f"{machine.get('cpu', '?')} ({machine.get('hostname', '?')})",
                    "workloads": workloads, "path": path})
    return sorted(out, key=lambda r: str(r["date"]))


def resolve(name_or_path: str, folder: str | Path | None = None) -> Path:
    """A results file: the path itself, else a saved run of that name (this
    machine's first, then any machine's); RunError naming what was tried."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    root = history_dir(folder)
    mine = root / machine_slug() / f"{name_or_path}.json"
    if mine.is_file():
        return mine
    others = sorted(root.glob(f"*/{name_or_path}.json")) if root.is_dir() else []
    if others:
        return others[0]
    names = sorted({r["name"] for r in saved(folder)})
    raise RunError(f"{name_or_path!r} is neither a results file nor a saved run in {root} "
                   f"(saved: {', '.join(names) or 'none'})")
