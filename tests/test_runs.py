"""Saved runs and `einlocal diff`: the statistics on samples with a known answer, and the command line."""
import json

import pytest

from einlocal import diff, runs
from einlocal.cli import main

pytest.importorskip("scipy")

MACHINE = {"hostname": "h", "cpu": "cpu X", "cores": 2, "versions": {"numpy": "2.0"}}


def rec(backend, samples, *, workload="W1", pass_="forward", status="ok"):
    s = sorted(samples)
    return {"workload": workload, "backend": backend, "pass": pass_, "regime": "fresh", "status": status,
            "median_s": s[len(s) // 2] if s and status == "ok" else None, "samples": list(samples)}


def test_fully_separated_samples_give_the_exact_mann_whitney_p():
    p, sig = diff.significance([1.0, 2.0, 3.0, 4.0, 5.0], [6.0, 7.0, 8.0, 9.0, 10.0])
    assert p == pytest.approx(2 / 252) and sig       # 2 of the C(10, 5) = 252 orderings are as extreme
    p, sig = diff.significance([1.0, 2.0, 3.0, 4.0, 5.0], [6.0, 7.0, 8.0, 9.0, 10.0], alpha=0.005)
    assert not sig


def test_the_same_samples_or_too_few_are_not_significant():
    same = [1.0, 1.1, 0.9, 1.05, 0.95, 1.02]
    p, sig = diff.significance(same, list(reversed(same)))
    assert p == pytest.approx(1.0) and not sig
    assert diff.significance([1.0, 2.0, 3.0, 4.0], [9.0, 9.5, 9.7, 9.9]) == (None, False)


def test_compare_runs_verdicts_and_ratio():
    a = [rec("bmm:numpy", [1.0, 1.01, 0.99, 1.02, 0.98]), rec("einsum:numpy", [1.0, 1.1, 0.9, 1.05, 0.95]),
         rec("gone", [1.0] * 5), rec("cap", [], status=">cap")]
    b = [rec("bmm:numpy", [2.0, 2.02, 1.98, 2.04, 1.96]), rec("einsum:numpy", [1.0, 1.1, 0.9, 1.05, 0.95]),
         rec("new", [1.0] * 5), rec("cap", [], status=">cap")]
    by = {c.key[1]: c for c in diff.compare_runs(a, b)}
    assert by["bmm:numpy"].verdict == "slower" and by["bmm:numpy"].ratio == pytest.approx(2.0)
    assert by["einsum:numpy"].verdict == "not significant"
    assert by["gone"].verdict == "only in A" and by["new"].verdict == "only in B"
    assert by["cap"].verdict == "not timed"
    assert diff.worst_slowdown(list(by.values())) == pytest.approx(1.0)
    faster = diff.compare_runs(b[:1], a[:1])[0]
    assert faster.verdict == "faster" and diff.worst_slowdown([faster]) == 0.0


def _write(path, records, machine=MACHINE):
    path.write_text(json.dumps({"command": "test", "machine": machine, "records": records}))
    return str(path)


def test_diff_command_table_and_exit_codes(tmp_path, capsys):
    a = _write(tmp_path / "a.json", [rec("bmm:numpy", [1.0, 1.01, 0.99, 1.02, 0.98])])
    b = _write(tmp_path / "b.json", [rec("bmm:numpy", [1.3, 1.31, 1.29, 1.32, 1.28])],
               machine={**MACHINE, "cpu": "cpu Y"})
    assert main(["diff", a, b]) == 0
    out, err = capsys.readouterr()
    assert "| W1 | bmm:numpy | forward | fresh |" in out and "| 1.300 |" in out and "slower" in out
    assert "different machines" in err and "cpu X" in err and "cpu Y" in err
    assert main(["diff", a, b, "--fail", "20"]) == 1          # 30% slower, significant
    assert main(["diff", a, b, "--fail", "40"]) == 0
    capsys.readouterr()
    assert main(["diff", a, b, "--csv"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("workload,backend,pass,regime")
    assert main(["diff", a, str(tmp_path / "missing.json")]) == 2
    assert "neither a results file nor a saved run" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{not json")
    assert main(["diff", a, str(tmp_path / "bad.json")]) == 2


def test_saved_runs_are_listed_replaced_and_named_in_diff(tmp_path, capsys):
    history = tmp_path / "history"
    first = {"command": "c", "machine": MACHINE, "date": "2026-01-01T00:00:00+00:00", "commit": "abc",
             "records": [rec("bmm:numpy", [1.0] * 5)]}
    runs.save(first, "first-run", history)
    runs.save({**first, "date": "2026-01-02T00:00:00+00:00", "records": [rec("bmm:numpy", [2.0] * 5)]},
              "second-run", history)
    runs.save({**first, "commit": "def"}, "first-run", history)       # replaces it
    assert main(["runs", "--history", str(history)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["first-run", "second-run"]
    assert "def" in lines[0] and "cpu X" in lines[0] and "W1" in lines[0]
    assert main(["diff", "first-run", "second-run", "--history", str(history)]) == 0
    assert "| 2.000 |" in capsys.readouterr().out
    with pytest.raises(runs.RunError, match="saved: first-run, second-run"):
        runs.resolve("third", history)
    with pytest.raises(runs.RunError, match="--save NAME"):
        runs.save(first, "../escape", history)


def test_a_run_stamp_has_the_date_version_and_commit():
    stamp = runs.run_stamp()
    assert stamp["date"][:2] == "20" and stamp["einlocal"]
    assert stamp["commit"] is None or isinstance(stamp["commit"], str)
