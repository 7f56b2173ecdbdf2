"""Measurement records (plain dicts) and their tables: markdown, CSV, plot, results files."""

from __future__ import annotations

import csv as _csv
import io
import json
import math
import re
from pathlib import Path
from typing import Any, Iterable

__all__ = [
    "RECORD_KEYS",
    "make_record",
    "load_run",
    "load_records",
    "markdown",
    "csv",
    "plot",
    "write_results",
]

# One record = one (workload, backend, pass, regime) measurement. Times in
# seconds, memory in bytes; None where not measured.
RECORD_KEYS = (
    "workload",  # "W2"
    "op",  # "locally_connected2d"
    "shape",  # "x(100,16,28,28) w(16,16,3,3,26,26)"
    "backend",  # "bmm:torch"
    "pass",  # "forward" | "backward" | "forward+backward"
    "regime",  # "fresh" (new outputs each call) | "steady" (out= reused)
    "status",  # "ok" | "failed" | "skipped" | ">cap"
    "reason",  # why failed / skipped / capped
    "median_s",
    "iqr_s",
    "n",  # timed repetitions
    "first_call_s",  # compile + first run
    "peak_bytes",
    "peak_method",  # memory.METHODS
    "min_bytes",  # analytic minimum: inputs read once, output written once
    "flops",
    "roofline_fraction",  # roofline time / median_s
    "max_error",  # against the float64 reference
    "grad_mode",  # "vjp" | "autodiff" | None
    "samples",  # every timed repetition's seconds (what einlocal diff tests)
)
PASSES = ("forward", "backward", "forward+backward")
PASS_LABEL = {"forward": "forward", "backward": "backward", "forward+backward": "fwd+bwd"}
PASS_SHORT = {"forward": "fwd", "backward": "bwd", "forward+backward": "f+b"}
REGIMES = ("fresh", "steady")
REGIME_LABEL = {"fresh": "fresh outputs", "steady": "steady (out= reused)"}
STATUSES = ("ok", "failed", "skipped", ">cap")
SPREAD_FLAG = 0.10  # flag iqr/median above this
_UNITS = ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs"), (1e-9, "ns"))


def make_record(**fields: Any) -> dict:
    """A record with every RECORD_KEYS key (None where not given), checked.

    Defaults: pass "forward", regime "fresh", status "ok", reason "".
    Keys outside RECORD_KEYS are kept (e.g. "size" for plots).
    """
    rec = {key: None for key in RECORD_KEYS}
    rec.update({"pass": "forward", "regime": "fresh", "status": "ok", "reason": ""})
    rec.update(fields)
    for key, allowed in (("pass", PASSES), ("regime", REGIMES), ("status", STATUSES)):
        if rec[key] not in allowed:
            raise ValueError(f"make_record: {key}={rec[key]!r}, expected one of {allowed}")
    return rec


# -- loading ------------------------------------------------------------------------


def load_run(path: str | Path) -> dict:
    """`{"command", "machine", "date", "commit", "records"}` from einlocal's JSON or pytest-benchmark's."""
    data = json.loads(Path(path).read_text())
    if isinstance(data, dict) and "records" in data:
        records = [make_record(**r) for r in data["records"]]
        return {**{k: data.get(k) for k in ("command", "machine", "date", "commit", "einlocal")}, "records": records}
    if isinstance(data, dict) and "benchmarks" in data:
        records = [_from_pytest_benchmark(b) for b in data["benchmarks"]]
        commit = (data.get("commit_info") or {}).get("id")
        return {"command": None, "machine": data.get("machine_info"), "date": data.get("datetime"),
                "commit": commit, "records": records}
    raise ValueError(f"load_run: {path} is neither einlocal results (a 'records' key) "
                     "nor pytest-benchmark JSON (a 'benchmarks' key)")


def load_records(path: str | Path) -> list[dict]:
    """The records of `load_run(path)`."""
    return load_run(path)["records"]


_PASS_WORDS = {
    "forward": "forward", "fwd": "forward",
    "backward": "backward", "bwd": "backward", "grad": "backward",
    "forward+backward": "forward+backward", "fwd+bwd": "forward+backward",
    "fwdbwd": "forward+backward", "forward_backward": "forward+backward", "both": "forward+backward",
}


def _tokens(text: str) -> list[str]:
    return [t for t in re.split(r"[\[\]\-,/ ]+", text) if t]


def _from_pytest_benchmark(bench: dict) -> dict:
    """One pytest-benchmark entry as a record: extra_info first, then params, then the name."""
    extra = bench.get("extra_info") or {}
    params = bench.get("params") or {}
    name = bench.get("name", "")
    base, _, param_text = name.partition("[")
    tokens = _tokens(param_text or str(bench.get("param") or ""))

    def pick(*keys: str) -> Any:
        for source in (extra, params):
            for key in keys:
                if source.get(key) is not None:
                    return source[key]
        return None

    pass_ = pick("pass", "pass_", "direction")
    if pass_ is None:
        pass_ = next((_PASS_WORDS[t.lower()] for t in tokens + _tokens(base.replace("_", "-"))
                      if t.lower() in _PASS_WORDS), "forward")
    pass_ = _PASS_WORDS.get(str(pass_).lower(), pass_)
    regime = pick("regime") or ("steady" if "steady" in name.lower() else "fresh")
    workload = pick("workload") or bench.get("group")
    if workload is None:
        found = re.search(r"(?:^|_)[wW](\d+[a-z]?)(?:_|$|\[)", name)
        workload = f"W{found.group(1)}" if found else base
    backend = pick("backend")
    if backend is None:
        rest = [t for t in tokens if t.lower() not in _PASS_WORDS and t not in REGIMES]
        backend = "-".join(rest) or base
    stats = bench.get("stats") or {}
    rec = make_record(
        workload=str(workload),
        op=pick("op") or re.sub(r"^test_", "", base),
        shape=str(pick("shape") or ""),
        backend=str(backend),
        **{"pass": pass_},
        regime=regime,
        median_s=stats.get("median"),
        iqr_s=stats.get("iqr"),
        n=stats.get("rounds"),
        samples=stats.get("data"),     # with --benchmark-save-data (or --benchmark-json of pytest-benchmark >= 4)
    )
    for key in RECORD_KEYS:
        if key in extra and key not in ("workload", "op", "shape", "backend", "pass", "regime"):
            rec[key] = extra[key]
    # the names einlocal's pytest fixture (einlocal_bench) records under
    for theirs, ours in (("roofline", "roofline_fraction"), ("bytes", "min_bytes")):
        if extra.get(theirs) is not None and rec.get(ours) is None:
            rec[ours] = extra[theirs]
    if extra.get("check_tolerance") and rec.get("max_error") is None:
        rec["max_error"] = extra["check_error"] / extra["check_tolerance"]
    if not rec["shape"] and isinstance(extra.get("shapes"), dict):
        rec["shape"] = " ".join(f"{k}({','.join(str(d) for d in v)})" for k, v in extra["shapes"].items())
    return rec


# -- formatting -------------------------------------------------------------------


def _fmt(value: float, sig: int = 3) -> str:
    """`sig` significant figures, never scientific, integer digits kept."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    decimals = max(0, sig - 1 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"


def _unit(seconds: Iterable[float]) -> tuple[float, str]:
    smallest = min(seconds, default=1.0)
    return next(((s, u) for s, u in _UNITS if smallest >= s), _UNITS[-1])


def _ok(rec: dict) -> bool:
    return rec.get("status") == "ok" and rec.get("median_s") is not None


def _rows(records: list[dict]) -> dict[str, dict[str, dict]]:
    """Row label -> {pass: record}. A backend with two grad modes gets a row per mode,
    each showing the shared forward."""
    by_backend: dict[str, list[dict]] = {}
    for rec in records:
        by_backend.setdefault(rec["backend"], []).append(rec)
    rows: dict[str, dict[str, dict]] = {}
    for backend, recs in by_backend.items():
        modes = list(dict.fromkeys(r.get("grad_mode") for r in recs if r.get("grad_mode")))
        for mode in modes if len(modes) > 1 else [modes[0] if modes else None]:
            label = f"{backend} [{mode}]" if mode else backend
            rows[label] = {r["pass"]: r for r in recs
                           if len(modes) <= 1 or r.get("grad_mode") in (None, mode)}
    return rows


def _per_pass(row: dict, passes: list[str], cell) -> str:
    cells = [cell(row[p]) if p in row else None for p in passes]
    if all(c is None for c in cells):
        return ""
    return " / ".join(c if c is not None else "—" for c in cells)


def _memory_cell(rec: dict) -> str | None:
    peak = rec.get("peak_bytes")
    if peak is None:
        return None
    text = _fmt(peak / 2**20)
    if rec.get("min_bytes"):
        text += f" (×{_fmt(peak / rec['min_bytes'], 2)})"
    return text


def _roofline_cell(rec: dict) -> str | None:
    frac = rec.get("roofline_fraction")
    return None if frac is None else f"{_fmt(100 * frac, 2)}%"


def _markdown_table(records: list[dict]) -> str:
    rows = _rows(records)
    passes = [p for p in PASSES if any(r["pass"] == p for r in records)]
    scale, unit = _unit(r["median_s"] for r in records if _ok(r))
    best = {p: min((r["median_s"] for r in records if r["pass"] == p and _ok(r)), default=None)
            for p in passes}

    def time_cell(rec: dict | None) -> str:
        if rec is None:
            return ""
        if not _ok(rec):
            return rec.get("status") or ""
        text = _fmt(rec["median_s"] / scale)
        if rec["median_s"] == best[rec["pass"]]:
            text = f"**{text}**"
        spread = (rec.get("iqr_s") or 0) / rec["median_s"] if rec["median_s"] > 0 else 0
        if spread > SPREAD_FLAG:
            text += f" (! {100 * spread:.0f}%)"
        return text

    def sort_key(item):
        row = item[1]
        return tuple(row[p]["median_s"] if p in row and _ok(row[p]) else math.inf for p in passes)

    short = " / ".join(PASS_SHORT[p] for p in passes)
    header = ["backend", *(f"{PASS_LABEL[p]} ({unit})" for p in passes),
              f"peak MiB (×min) {short}", f"% roofline {short}", "max error", "notes"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for label, row in sorted(rows.items(), key=sort_key):
        errors = [r["max_error"] for r in row.values() if r.get("max_error") is not None]
        notes = _status_notes(row, passes)
        cells = [label, *(time_cell(row.get(p)) for p in passes),
                 _per_pass(row, passes, _memory_cell), _per_pass(row, passes, _roofline_cell),
                 f"{max(errors):.1e}" if errors else "", "; ".join(notes)]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    methods = sorted({r["peak_method"] for r in records if r.get("peak_method")})
    foot = []
    if methods:
        foot.append(f"Peak memory by {', '.join(methods)}; ×min = peak / the op's minimum bytes.")
    if any(r.get("max_error") is not None for r in records):
        foot.append("Max error: the worst |error| / tolerance against the float64 reference (≤ 1 passes).")
    if any(str(r.get("backend", "")).startswith("peer:") for r in records):
        foot.append("peer: = a recipe from the user reports or the library's own op, shown for comparison.")
    foot += sorted({str(r["note"]) for r in records if r.get("note") and r["note"] != "peer"})
    if foot:
        lines.append("")
        lines.extend(foot)
    return "\n".join(lines)


def _status_notes(row: dict, passes) -> list[str]:
    """The notes of a row's failed, skipped and >cap passes, one per distinct (status, reason):
    "skipped: why" when every pass shares it, else "fwd / bwd >cap: why"."""
    groups: dict[tuple, list[str]] = {}
    for p in passes:
        if p in row and row[p].get("status") != "ok":
            groups.setdefault((row[p]["status"], row[p].get("reason") or ""), []).append(PASS_SHORT[p])
    shown = [p for p in passes if p in row]
    notes = []
    for (status, reason), which in groups.items():
        who = "" if len(which) == len(shown) and len(groups) == 1 else " / ".join(which) + " "
        notes.append(f"{who}{status}: {reason}".rstrip(": "))
    return notes


def markdown(records: list[dict], *, title: str | None = None) -> str:
    """One table per workload (and op, shape), separate for each regime.

    A row per backend (and grad mode); time columns per pass with the best in
    bold and `(! 23%)` where iqr/median > 10%; peak memory, % roofline, max
    error; the status and reason of failed, skipped and >cap cells.
    """
    groups: dict[tuple, list[dict]] = {}
    for rec in records:
        key = (rec.get("workload"), rec.get("op"), rec.get("shape"), rec.get("regime") or "fresh")
        groups.setdefault(key, []).append(rec)
    parts = [f"# {title}"] if title else []
    for (workload, op, shape, regime), recs in groups.items():
        name = " · ".join(str(x) for x in (workload, op, shape) if x and (x == workload or str(x) not in str(workload)))
        parts.append(f"## {name} — {REGIME_LABEL.get(regime, regime)}")
        parts.append(_markdown_table(recs))
    return "\n\n".join(parts) + "\n"


def csv(records: list[dict]) -> str:
    """One line per record: RECORD_KEYS, then any other keys, sorted."""
    extra = sorted({k for r in records for k in r} - set(RECORD_KEYS))
    out = io.StringIO()
    writer = _csv.DictWriter(out, fieldnames=[*RECORD_KEYS, *extra], lineterminator="\n")
    writer.writeheader()
    for rec in records:
        writer.writerow({k: ("" if v is None else v) for k, v in rec.items()})
    return out.getvalue()


# -- plot ---------------------------------------------------------------------------


def plot(records: list[dict], path_png: str | Path) -> Path | None:
    """Every workload's backends relative to its fastest, forward and backward
    side by side (`einlocal.plots.overview_figure`); None (no file) when
    nothing ran."""
    from .plots import overview_figure
    fig = overview_figure(records)
    if fig is None:
        return None
    fig.savefig(path_png, dpi=100)
    return Path(path_png)


# -- results files ------------------------------------------------------------------


def _machine_text(machine: Any) -> str:
    if not isinstance(machine, dict):
        return str(machine)
    parts = [str(machine[k]) for k in ("cpu", "hostname") if machine.get(k)]
    if machine.get("cores"):
        parts.append(f"{machine['cores']} cores")
    if machine.get("memory_bytes"):
        parts.append(f"{machine['memory_bytes'] / 2**30:.0f} GiB")
    if machine.get("gpu"):
        parts.append(str(machine["gpu"]))
    versions = machine.get("versions") or {}
    libs = ", ".join(f"{k} {v}" for k, v in versions.items() if v)
    return "; ".join(parts) + (f" — {libs}" if libs else "")


def write_results(
    records: list[dict], outdir: str | Path, *, command: str, machine: Any, name: str = "results",
    notes: Iterable[str] = (),
) -> dict[str, Path]:
    """Write `<name>.md`, `.csv`, `.json` and `.png` (if anything plots) into `outdir`.

    The markdown starts with the command that regenerates it, the machine and
    `notes` (how the run was made); the figures are `einlocal.plots.write_plots`'s.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = {ext: outdir / f"{name}.{ext}" for ext in ("md", "csv", "json")}
    head = f"Regenerate with:\n\n    {command}\n\nMachine: {_machine_text(machine)}\n\n"
    head += "".join(f"- {n}\n" for n in notes) + ("\n" if notes else "")
    paths["md"].write_text(head + markdown(records))
    paths["csv"].write_text(csv(records))
    from .runs import run_stamp
    run = {"command": command, "machine": machine, **run_stamp(), "records": list(records)}
    paths["json"].write_text(json.dumps(run, indent=1, default=str))
    from .plots import write_plots
    for png in write_plots(records, outdir, name):     # results.png, then results-sweep-<id>.png
        paths["png" if png.stem == name else png.stem] = png
    return paths
