"""Figures that answer "which backend is fastest here": per workload, each
backend's time relative to the fastest; per sweep, time against the swept value."""
from __future__ import annotations

import statistics
from pathlib import Path

__all__ = ["workload_figure", "overview_figure", "sweep_figure", "write_plots", "sweeps"]

PASSES = ("forward", "backward")
PEER_COLOUR, BACKEND_COLOUR = "C1", "C0"


def _ok(rec: dict) -> bool:
    return rec.get("status", "ok") == "ok" and rec.get("median_s") is not None


def _regime(records: list[dict]) -> str | None:
    regimes = {r.get("regime") for r in records if _ok(r)}
    return "fresh" if "fresh" in regimes else next(iter(regimes), None)


def _spread(rec: dict) -> tuple[float, float]:
    """(q1, q3) of the record's samples, else the median -/+ half its IQR."""
    samples = rec.get("samples")
    if isinstance(samples, (list, tuple)) and len(samples) >= 4:
        q = statistics.quantiles([float(s) for s in samples], n=4)
        return q[0], q[2]
    m, iqr = rec["median_s"], rec.get("iqr_s") or 0.0
    return max(m - iqr / 2, m * 1e-3), m + iqr / 2


def _times(records: list[dict], workload: str) -> dict[str, dict[str, dict]]:
    """pass -> backend -> record, for one workload (one regime; backward in vjp mode)."""
    regime = _regime([r for r in records if r.get("workload") == workload])
    out: dict[str, dict[str, dict]] = {}
    for r in records:
        if (r.get("workload") == workload and _ok(r) and r.get("regime") == regime
                and r.get("grad_mode") in (None, "vjp") and r.get("pass") in PASSES):
            out.setdefault(r["pass"], {})[r["backend"]] = r
    return out


def _bars(ax, by_backend: dict[str, dict], title: str) -> None:
    """One horizontal bar per backend: its median over the fastest's (log
    scale), the q1-q3 spread as an error bar, peers in their own colour."""
    fastest = min(r["median_s"] for r in by_backend.values())
    names = sorted(by_backend, key=lambda n: by_backend[n]["median_s"])
    rel = [by_backend[n]["median_s"] / fastest for n in names]
    spread = [_spread(by_backend[n]) for n in names]
    err = [[max(0.0, v - q1 / fastest) for v, (q1, _) in zip(rel, spread)],
           [max(0.0, q3 / fastest - v) for v, (_, q3) in zip(rel, spread)]]
    colours = [PEER_COLOUR if n.startswith("peer:") else BACKEND_COLOUR for n in names]
    ax.barh(range(len(names)), rel, xerr=err, color=colours, alpha=0.85, capsize=2, left=0)
    ax.set_yticks(range(len(names)), names, fontsize="x-small")
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlim(0.8, max(2.0, max(rel) * 1.5))
    ax.axvline(1.0, color="k", linewidth=0.6)
    ax.set_xlabel("time / fastest (log)")
    ax.set_title(f"{title} (fastest {_fmt_s(fastest)})", fontsize="small")
    ax.grid(True, axis="x", which="both", alpha=0.3)


def _fmt_s(s: float) -> str:
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs")):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s * 1e9:.3g} ns"


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def workload_figure(records: list[dict], workload: str):
    """One workload: forward and backward side by side, a bar per backend."""
    times = _times(records, workload)
    passes = [p for p in PASSES if p in times]
    if not passes:
        return None
    rows = max(len(times[p]) for p in passes)
    height = 1.4 + 0.22 * rows
    fig = _figure(5.2 * len(passes), height)
    for i, pass_ in enumerate(passes):
        _bars(fig.add_subplot(1, len(passes), i + 1), times[pass_], pass_)
    fig.suptitle(f"{workload}: time relative to the fastest (peers in orange)", fontsize="medium")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / height))
    return fig


def overview_figure(records: list[dict]):
    """Every workload in one figure: a row per workload, forward and backward
    side by side (no line ever joins two workloads)."""
    workloads = list(dict.fromkeys(r["workload"] for r in records if _ok(r) and r.get("workload")))
    workloads = [w for w in workloads if _times(records, w)]
    if not workloads:
        return None
    heights = [max(len(b) for b in _times(records, w).values()) for w in workloads]
    height = sum(1.1 + 0.2 * h for h in heights) + 0.4
    fig = _figure(11.0, height)
    grid = fig.add_gridspec(len(workloads), 2, height_ratios=heights)
    for k, w in enumerate(workloads):
        times = _times(records, w)
        for j, pass_ in enumerate(PASSES):
            if pass_ in times:
                _bars(fig.add_subplot(grid[k, j]), times[pass_], f"{w} {pass_}")
    fig.suptitle("time relative to the fastest backend of each workload and pass (peers in orange)",
                 fontsize="medium")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / height))
    return fig


def sweeps(records: list[dict]) -> dict[str, str]:
    """Sweep id -> the swept name, from records that carry ``sweep_of`` and ``sweep``."""
    out = {}
    for r in records:
        if r.get("sweep_of") and isinstance(r.get("sweep"), dict) and len(r["sweep"]) == 1:
            out[r["sweep_of"]] = next(iter(r["sweep"]))
    return out


def sweep_figure(records: list[dict], sweep_of: str):
    """Time against the swept value, a line per backend with its q1-q3 band,
    forward and backward side by side (one sweep: one workload's variants)."""
    name = sweeps(records).get(sweep_of)
    if name is None:
        return None
    mine = [r for r in records if r.get("sweep_of") == sweep_of and _ok(r) and r.get("grad_mode") in (None, "vjp")]
    regime = _regime(mine)
    passes = [p for p in PASSES if any(r.get("pass") == p for r in mine)]
    if not passes:
        return None
    fig = _figure(5.2 * len(passes) + 2.5, 4.2)
    handles = {}
    labels = sorted({r["backend"] for r in mine})
    for i, pass_ in enumerate(passes):
        ax = fig.add_subplot(1, len(passes), i + 1)
        for k, label in enumerate(labels):
            pts = sorted((float(r["sweep"][name]), r) for r in mine
                         if r["backend"] == label and r.get("pass") == pass_ and r.get("regime") == regime)
            if not pts:
                continue
            xs = [x for x, _ in pts]
            (line,) = ax.plot(xs, [r["median_s"] for _, r in pts], marker="o", color=f"C{k % 10}", label=label,
                              linewidth=1)
            lo_hi = [_spread(r) for _, r in pts]
            ax.fill_between(xs, [q1 for q1, _ in lo_hi], [q3 for _, q3 in lo_hi], color=f"C{k % 10}", alpha=0.2)
            handles.setdefault(label, line)
        ax.set_xscale("log" if min(float(r["sweep"][name]) for r in mine) > 0 else "linear")
        ax.set_yscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel("median time (s)")
        ax.set_title(f"{sweep_of} {pass_}", fontsize="small")
        ax.grid(True, which="both", alpha=0.3)
    fig.legend([handles[k] for k in labels if k in handles], [k for k in labels if k in handles],
               loc="center right", fontsize="x-small", frameon=False)
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    return fig


def _file_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)


def write_plots(records: list[dict], outdir: str | Path, name: str = "results") -> list[Path]:
    """``<name>.png`` (every workload) and ``<name>-sweep-<id>.png`` per sweep, in ``outdir``."""
    outdir = Path(outdir)
    written = []
    fig = overview_figure(records)
    if fig is not None:
        written.append(outdir / f"{name}.png")
        fig.savefig(written[-1], dpi=100)
    for sweep_of in sweeps(records):
        fig = sweep_figure(records, sweep_of)
        if fig is not None:
            written.append(outdir / f"{name}-sweep-{_file_name(sweep_of)}.png")
            fig.savefig(written[-1], dpi=100)
    return written
