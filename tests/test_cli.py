"""The einlocal command, run in-process with tiny shapes."""
import json
import re

import pytest

from einlocal.cli import main

LC = ["locally_connected2d", "--x", "2,3,6,6", "--weight", "4,3,3,3,4,4"]


def test_backends_lists_available_and_unavailable(capsys):
    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    assert "available:" in out and "bmm:numpy" in out and "unavailable:" in out


def test_check_passes_and_prints_the_report(capsys):
    assert main(["check", *LC, "--backends", "bmm:numpy,einsum:numpy", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "bmm:numpy" in out and "pass" in out


def test_check_exits_non_zero_on_a_failure(monkeypatch, capsys):
    from einlocal import registry
    good = registry.get("bmm:numpy")

    class Wrong(type(good)):
        def execute(self, plan, operands, out=None):
            return 3 * super().execute(plan, operands, None)

    wrong = Wrong("numpy")
    real = registry.get
    monkeypatch.setattr(registry, "get", lambda n: wrong if n == "bmm:numpy" else real(n))
    assert main(["check", *LC, "--backends", "bmm:numpy", "--seed", "2"]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_bench_then_table(tmp_path, capsys):
    assert main(["bench", *LC, "--backends", "einsum:numpy", "--budget", "0.005", "--regimes", "fresh",
                 "--in-process", "--out", str(tmp_path)]) == 0
    assert "einsum:numpy" in capsys.readouterr().out
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["command"].startswith("einlocal bench") and len(data["records"]) == 2
    assert main(["table", str(tmp_path / "bench.json")]) == 0
    out = capsys.readouterr().out
    assert "Regenerate with: einlocal bench" in out and "einsum:numpy" in out
    assert main(["table", str(tmp_path / "bench.json"), "--csv"]) == 0
    assert capsys.readouterr().out.startswith("workload,op,shape,backend")


def test_choose_prints_the_winner(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EINLOCAL_CACHE_DIR", str(tmp_path))
    import importlib
    importlib.import_module("einlocal.auto")._cache_state.clear()
    assert main(["choose", "depthwise_conv2d", "--x", "1,2,6,6", "--weight", "4,1,3,3", "--padding", "1",
                 "--backends", "bmm:numpy,einsum:numpy", "--budget", "0.003"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last in ("bmm:numpy", "einsum:numpy")
    assert (tmp_path / "choices.json").exists()


def test_compare_quick_on_reduced_workloads(tmp_path, capsys):
    assert main(["compare", "--quick", "--reduced", "--workloads", "W3a,W5", "--backends", "bmm:numpy",
                 "--no-peers", "--no-progress", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "W3a" in out and "W5" in out
    md = (tmp_path / "results.md").read_text()
    assert md.startswith("Regenerate with:") and "einlocal compare --quick" in md
    assert {p.name for p in tmp_path.iterdir()} >= {"results.md", "results.csv", "results.json"}


@pytest.mark.parametrize("name", ["loops:numba", "loops:triton", "loops:cupy"])
def test_source_prints_each_generated_statement(name, capsys):
    from einlocal import registry
    reason = registry.unavailable().get(name)
    if reason and "not installed" in reason:
        pytest.skip(f"{name}: {reason}")
    assert main(["source", *LC, "--backend", name]) == 0
    out = capsys.readouterr().out
    heads = [line for line in out.splitlines() if line.startswith("# ===== ")]
    assert [h.split(",")[1].split(":")[0].strip() for h in heads] == ["forward", "dx", "dweight"], heads
    assert "y[n,o,h,w] += x[n,c,h+i,w+j] * wt[o,c,i,j,h,w]" in heads[0]
    assert len(out.splitlines()) > 3 * 8      # each statement's code, not only its heading
    assert main(["source", *LC, "--pass", "dweight", "--backend", name]) == 0
    assert capsys.readouterr().out.count("# ===== ") == 1


def test_source_rejects_what_it_cannot_print(capsys):
    assert main(["source", *LC, "--backend", "einsum:numpy"]) == 2
    assert "generates no code" in capsys.readouterr().err
    assert main(["source", *LC, "--pass", "dwt"]) == 2
    assert "--pass 'dwt': the generated statements of locally_connected2d are forward, dx, dweight" in \
        capsys.readouterr().err


BAD_CALLS = {
    "check-shape": (["check", "conv2d", "--x", "1,4,8,8", "--weight", "6,3,3,3"], "ShapeError", "Cin"),
    "choose-shape": (["choose", "conv2d", "--x", "1,4,8,8", "--weight", "6,3,3,3"], "ShapeError", "Cin"),
    "bench-shape": (["bench", "conv2d", "--x", "1,4,8,8", "--weight", "6,3,3,3", "--in-process"], "ShapeError", "Cin"),
    "unknown-op": (["check", "conv3d", "--x", "1,4,8,8", "--weight", "6,4,3,3"], "ShapeError", "unknown op"),
    "unknown-backend": (["check", *LC, "--backends", "nope"], "BackendError", "'nope' names no backend"),
    "unknown-workload": (["compare", "--workloads", "W99", "--quick", "--no-write", "--no-progress"], "ShapeError",
                         "unknown workload 'W99'"),
    "missing-table": (["table", "/nonexistent/results.json"], "ShapeError", "cannot read /nonexistent/results.json"),
    "bad-padding": (["check", "depthwise_conv2d", "--x", "1,2,8,8", "--weight", "2,1,3,3", "--padding", "-1"],
                    "ShapeError", "non-negative"),
}


@pytest.mark.parametrize("argv, cls, words", BAD_CALLS.values(), ids=BAD_CALLS.keys())
def test_every_einlocal_error_is_one_line_and_exit_2(argv, cls, words, capsys, monkeypatch):
    import einlocal.bench as bench
    started = []
    monkeypatch.setattr(bench, "benchmark", lambda *a, **k: started.append(1) or [])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"einlocal {argv[0]}: {cls}: ") and words in err, err
    assert not started                      # nothing ran before the error
    with pytest.raises(Exception, match=re.escape(words)):
        main(["--debug", *argv])           # the traceback with --debug


@pytest.mark.parametrize("argv, words", [
    (["bench", *LC, "--passes", "fwd"], "pass 'fwd'; valid: forward, backward, forward+backward"),
    (["choose", *LC, "--passes", "fwd"], "pass 'fwd'; valid: forward, backward"),
    (["check", *LC, "--padding", "1:x"], "BEFORE:AFTER"),
    (["source", *LC, "--backends", "bmm"], "unrecognized arguments: --backends bmm"),
])
def test_usage_errors_are_one_line_and_exit_2(argv, words, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, err


def test_choose_on_a_library_that_is_missing_is_one_line(capsys, monkeypatch):
    from einlocal.backends.namespaces import namespace
    monkeypatch.setattr(type(namespace("torch")), "unavailable", lambda self: "torch is not installed (pip install torch)")
    assert main(["choose", *LC, "--library", "torch"]) == 2
    assert "BackendError: --library torch: torch is not installed" in capsys.readouterr().err


def test_padding_takes_the_asymmetric_form(capsys):
    argv = ["check", "locally_connected2d", "--x", "1,2,6,6", "--weight", "2,2,3,3,5,6", "--padding", "1:0,1:1",
            "--backends", "einsum:numpy", "--seed", "3"]
    assert main(argv) == 0
    assert "padding=((1, 0), (1, 1))" in capsys.readouterr().out
    assert main(["check", "locally_connected1d", "--x", "1,2,7", "--weight", "2,2,3,7", "--padding", "2:0",
                 "--backends", "einsum:numpy"]) == 0


def test_every_option_has_help_and_compare_lists_the_workloads(capsys):
    from einlocal.cli import parser
    from einlocal.workloads import WORKLOADS
    p = parser()
    subs = next(a for a in p._actions if a.__class__.__name__ == "_SubParsersAction").choices
    for name, sub in subs.items():
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"einlocal {name} {action.option_strings[0]} has no help"
    assert "--backends" not in subs["source"].format_help()
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    out = capsys.readouterr().out
    assert all(w in out for w in WORKLOADS)


def test_check_pass_names_are_those_of_source(capsys):
    assert main(["check", *LC, "--backends", "einsum:numpy", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "dweight[vjp]" in out and "dwt" not in out


def test_check_of_a_large_op_uses_a_checked_fast_reference_and_shows_progress(capsys):
    argv = ["check", "conv2d", "--x", "2,8,12,12", "--weight", "8,4,3,3", "--groups", "2", "--padding", "1",
            "--backends", "einsum:numpy,loops:numba", "--reference-limit", "1000", "--seed", "4"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "reference: bmm:numpy in float64 at full size, which passed the pure-Python float64 reference" in out
    assert "einsum:numpy         pass" in out and "loops:numba          pass" in out


def test_progress_is_shown_once_a_command_runs_for_seconds(capsys, monkeypatch):
    import time

    from einlocal.cli import _progress
    clock = iter([0.0, 0.5, 3.0, 4.0])
    monkeypatch.setattr(time, "perf_counter", lambda: next(clock))
    say = _progress(after_s=2.0)
    say("reference: first")            # 0.5 s: held back
    say("bmm:numpy ...")               # 3 s: shown, with what was held back
    say("einsum:numpy ...")
    err = capsys.readouterr().err.splitlines()
    assert err == ["  ... reference: first", "  [   3.0 s] bmm:numpy ...", "  [   4.0 s] einsum:numpy ..."]


STATEMENT = ["--statement", "y[b,o,t] += x[b,c,2*t+k-1] * w[o,c,k,t]", "--pad", "0",
             "--shape", "x=2,3,12", "--shape", "w=2,3,3,6"]


def test_check_bench_choose_and_source_take_a_statement(capsys):
    assert main(["check", *STATEMENT, "--backends", "einsum:numpy,bmm:numpy"]) == 0
    out = capsys.readouterr().out
    assert "einsum:numpy         pass" in out and "bmm:numpy            pass" in out
    assert main(["bench", *STATEMENT, "--backends", "einsum:numpy", "--budget", "0.005", "--regimes", "fresh",
                 "--in-process", "--no-memory"]) == 0
    assert "einsum:numpy" in capsys.readouterr().out
    assert main(["choose", *STATEMENT, "--backends", "einsum:numpy,bmm:numpy", "--budget", "0.01"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] in ("einsum:numpy", "bmm:numpy")


@pytest.mark.parametrize("args, message", [
    (["--shape", "x=2,3,12"], "--shape w=DIMS is missing"),
    (["--shape", "x=2,3,12", "--shape", "v=1"], "expected NAME=DIMS with NAME one of x, w"),
    (["--shape", "x=2,3,12", "--shape", "w=2,3,3,6", "--x", "1,2"], "--x goes with a catalogue op"),
], ids=["missing-operand", "unknown-operand", "catalogue-option"])
def test_a_statement_s_shapes_are_checked_before_any_work(args, message, capsys):
    assert main(["check", "--statement", "y[b,o,t] += x[b,c,2*t+k-1] * w[o,c,k,t]", "--pad", "0", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
