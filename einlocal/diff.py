"""``einlocal diff A B``: two runs compared entry by entry, the ratio of their
medians and whether the difference is significant (Mann-Whitney U)."""
from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Change", "compare_runs", "significance", "markdown", "csv", "machine_differences", "worst_slowdown",
           "ALPHA", "MIN_SAMPLES"]

ALPHA = 0.05          # a difference is significant when the test's p-value is below this
MIN_SAMPLES = 5       # fewer samples on either side: never significant


@dataclass
class Change:
    """One (workload, backend, pass, regime) entry of both runs."""

    key: tuple
    a_median: float | None
    b_median: float | None
    a_n: int
    b_n: int
    p: float | None          # None: not tested (too few samples, or missing on one side)
    verdict: str             # "slower", "faster", "not significant", "only in A", "only in B", "not timed"

    @property
    def ratio(self) -> float | None:
        if self.a_median and self.b_median is not None:
            return self.b_median / self.a_median
        return None


def significance(a: list[float], b: list[float], alpha: float = ALPHA) -> tuple[float | None, bool]:
    """(p, significant): the two-sided Mann-Whitney U test of samples ``a``
    and ``b``; with fewer than `MIN_SAMPLES` on either side, (None, False)."""
    if len(a) < MIN_SAMPLES or len(b) < MIN_SAMPLES:
        return None, False
    from scipy.stats import mannwhitneyu
    p = float(mannwhitneyu(a, b, alternative="two-sided").pvalue)
    return p, p < alpha


def _samples(rec: dict) -> list[float]:
    s = rec.get("samples")
    return [float(v) for v in s] if isinstance(s, (list, tuple)) else []


def _key(rec: dict) -> tuple:
    return (rec.get("workload"), rec.get("backend"), rec.get("pass"), rec.get("regime"), rec.get("grad_mode"))


def compare_runs(a_records: list[dict], b_records: list[dict], alpha: float = ALPHA) -> list[Change]:
    """Every entry of either run, in A's order then B's new ones."""
    a = {_key(r): r for r in a_records}
    b = {_key(r): r for r in b_records}
    out = []
    for key in [*a, *(k for k in b if k not in a)]:
        ra, rb = a.get(key), b.get(key)
        ma = ra.get("median_s") if ra and ra.get("status", "ok") == "ok" else None
        mb = rb.get("median_s") if rb and rb.get("status", "ok") == "ok" else None
        sa, sb = (_samples(ra) if ra else []), (_samples(rb) if rb else [])
        if ra is None or rb is None:
            verdict, p = ("only in B" if ra is None else "only in A"), None
        elif ma is None or mb is None:
            verdict, p = "not timed", None
        else:
            p, sig = significance(sa, sb, alpha)
            verdict = ("slower" if mb > ma else "faster") if sig else "not significant"
        out.append(Change(key, ma, mb, len(sa), len(sb), p, verdict))
    return out


def machine_differences(ma: dict | None, mb: dict | None) -> list[str]:
    """What differs between two runs' machines: CPU, cores, memory, library versions."""
    ma, mb = ma or {}, mb or {}
    diffs = [f"{k}: {ma.get(k)!r} vs {mb.get(k)!r}" for k in ("hostname", "cpu", "cores", "memory_bytes", "gpu")
             if ma.get(k) != mb.get(k)]
    va, vb = ma.get("versions") or {}, mb.get("versions") or {}
    diffs += [f"{k} {va.get(k)} vs {vb.get(k)}" for k in sorted(set(va) | set(vb)) if va.get(k) != vb.get(k)]
    return diffs


def _time(s: float | None) -> str:
    if s is None:
        return ""
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs")):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"


def _rows(changes: list[Change]) -> list[list[str]]:
    rows = []
    for c in changes:
        workload, backend, pass_, regime, mode = c.key
        ratio = c.ratio
        rows.append([str(workload), str(backend) + (f" ({mode})" if mode else ""), str(pass_), str(regime),
                     _time(c.a_median), _time(c.b_median), "" if ratio is None else f"{ratio:.3f}",
                     "" if c.p is None else f"{c.p:.2g}", f"{c.a_n} / {c.b_n}", c.verdict])
    return rows


HEADER = ["workload", "backend", "pass", "regime", "A median", "B median", "B / A", "p", "samples A / B", "verdict"]


def markdown(changes: list[Change], alpha: float = ALPHA) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + " --- |" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in _rows(changes)]
    lines += ["", f"Significant: a two-sided Mann-Whitney U test of the two runs' samples gives p < {alpha}; "
                  f"with fewer than {MIN_SAMPLES} samples on a side, a difference is never called significant."]
    return "\n".join(lines)


def csv(changes: list[Change]) -> str:
    import csv as _csv
    import io
    buf = io.StringIO()
    w = _csv.writer(buf)
    w.writerow(["workload", "backend", "pass", "regime", "grad_mode", "a_median_s", "b_median_s", "ratio", "p",
                "a_n", "b_n", "verdict"])
    for c in changes:
        w.writerow([*c.key, c.a_median, c.b_median, c.ratio, c.p, c.a_n, c.b_n, c.verdict])
    return buf.getvalue()


def worst_slowdown(changes: list[Change]) -> float:
    """The largest significant slowdown as a fraction (0.25 = 25% slower), or 0."""
    return max((c.ratio - 1.0 for c in changes if c.verdict == "slower" and c.ratio and math.isfinite(c.ratio)),
               default=0.0)
