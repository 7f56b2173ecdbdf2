"""The figures, read from matplotlib's objects: a bar per backend relative to
the fastest, forward and backward side by side, a line per backend per sweep."""
import pytest

pytest.importorskip("matplotlib")

from einlocal import plots  # noqa: E402
from einlocal.table import make_record  # noqa: E402


def rec(workload, backend, pass_, median, **kw):
    return make_record(workload=workload, backend=backend, **{"pass": pass_}, median_s=median, iqr_s=median / 10,
                       **kw)


RECORDS = [rec("W1", "bmm:numpy", "forward", 2e-3), rec("W1", "einsum:numpy", "forward", 1e-3),
           rec("W1", "peer:unfold", "forward", 4e-3), rec("W1", "bmm:numpy", "backward", 3e-3),
           rec("W1", "einsum:numpy", "backward", 6e-3),
           rec("W2", "bmm:numpy", "forward", 1.0),
           make_record(workload="W2", backend="broadcast:numpy", status=">cap", reason="over the cap")]


def _bars(ax):
    return sorted(((t.get_text(), p.get_width()) for t, p in zip(ax.get_yticklabels(), ax.patches)))


def test_a_workload_has_a_bar_per_backend_relative_to_the_fastest():
    fig = plots.workload_figure(RECORDS, "W1")
    fwd, bwd = fig.axes
    assert fwd.get_title().startswith("forward") and bwd.get_title().startswith("backward")
    assert _bars(fwd) == [("bmm:numpy", 2.0), ("einsum:numpy", 1.0), ("peer:unfold", 4.0)]
    assert _bars(bwd) == [("bmm:numpy", 1.0), ("einsum:numpy", 2.0)]
    assert fwd.get_xscale() == "log" and "fastest" in fwd.get_xlabel()
    colours = {t.get_text(): p.get_facecolor() for t, p in zip(fwd.get_yticklabels(), fwd.patches)}
    assert colours["peer:unfold"] != colours["bmm:numpy"]          # peers marked
    (errorbars,) = [c for c in fwd.containers if type(c).__name__ == "ErrorbarContainer"]
    assert len(errorbars.lines[2][0].get_segments()) == 3          # the q1-q3 spread of each bar


def test_the_overview_never_joins_workloads_and_leaves_out_what_did_not_run():
    fig = plots.overview_figure(RECORDS)
    titles = [ax.get_title() for ax in fig.axes]
    assert [t.split(" (")[0] for t in titles] == ["W1 forward", "W1 backward", "W2 forward"]
    for ax in fig.axes:     # bars only: the one drawn line is the vertical "fastest" mark, the rest error-bar caps
        drawn = [line for line in ax.lines if line.get_linestyle() not in ("None", "")]
        assert len(drawn) == 1 and len(set(drawn[0].get_xdata())) == 1
    w2 = fig.axes[2]
    assert _bars(w2) == [("bmm:numpy", 1.0)]


def test_a_sweep_has_a_line_per_backend_against_the_swept_value():
    recs = [rec(f"dw[N={n}]", b, p, t * n, sweep_of="dw", sweep={"N": n}, samples=[t * n * f for f in
                                                                                     (0.9, 1.0, 1.0, 1.1, 1.2)])
            for n in (1, 4, 16) for b, t in (("bmm:numpy", 1e-3), ("einsum:numpy", 2e-3))
            for p in ("forward", "backward")]
    assert plots.sweeps(recs) == {"dw": "N"}
    fig = plots.sweep_figure(recs, "dw")
    fwd = fig.axes[0]
    assert fwd.get_xlabel() == "N" and fwd.get_yscale() == "log"
    lines = {line.get_label(): line for line in fwd.lines}
    assert sorted(lines) == ["bmm:numpy", "einsum:numpy"]
    assert list(lines["bmm:numpy"].get_xdata()) == [1, 4, 16]
    assert list(lines["einsum:numpy"].get_ydata()) == pytest.approx([2e-3, 8e-3, 32e-3])
    assert len(fwd.collections) == 2                      # a q1-q3 band per backend


def test_write_plots_writes_the_overview_and_one_file_per_sweep(tmp_path):
    recs = RECORDS + [rec("dw[N=1]", "bmm:numpy", "forward", 1e-3, sweep_of="dw", sweep={"N": 1}),
                      rec("dw[N=2]", "bmm:numpy", "forward", 2e-3, sweep_of="dw", sweep={"N": 2})]
    written = plots.write_plots(recs, tmp_path)
    assert [p.name for p in written] == ["results.png", "results-sweep-dw.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in written)
