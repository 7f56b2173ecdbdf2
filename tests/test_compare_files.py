"""einlocal compare on a user's workload file, kept runs (--save, runs, diff), and an
interrupted run that keeps what it finished and resumes from it."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import einlocal as el
from einlocal.cli import main

MINE = """
[[workload]]
id = "mine-dw"
op = "depthwise_conv2d"
shapes = { x = ["N", 4, 8, 8], weight = [8, 1, 3, 3] }
params = { padding = 1 }
sweep = { N = [1, 2] }

[[workload]]
id = "mine-op"
statement = "y[b,o,t] += x[b,c,2*t+k-1] * w[o,c,k,t]"
pad = 0
shapes = { x = [2, 3, 12], w = [2, 3, 3, 6] }
"""
FAST = ["--backends", "bmm:numpy,einsum:numpy", "--no-peers", "--no-progress", "--budget", "0.002"]


def _script():
    script = Path(sys.executable).parent / "einlocal"
    if not script.exists():
        pytest.skip("the einlocal command is not installed beside this Python")
    return str(script)


def test_a_workload_file_runs_from_any_folder_with_tables_and_figures(tmp_path):
    (tmp_path / "mine.toml").write_text(MINE)
    out = subprocess.run([_script(), "compare", "--workloads-file", "mine.toml", "--quick", "--out", "DIR", *FAST],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    folder = tmp_path / "DIR"
    assert sorted(p.name for p in folder.iterdir()) == ["results-sweep-mine-dw.png", "results.csv", "results.json",
                                                        "results.md", "results.png"]
    md = (folder / "results.md").read_text()
    for wid in ("mine-dw[N=1]", "mine-dw[N=2]", "mine-op"):
        assert f"## {wid} " in md
    run = json.loads((folder / "results.json").read_text())
    ok = [r for r in run["records"] if r["status"] == "ok"]
    assert {r["workload"] for r in ok} == {"mine-dw[N=1]", "mine-dw[N=2]", "mine-op"}
    assert all(r["max_error"] is not None and r["max_error"] <= 1 for r in ok)      # every row checked
    assert all(r["sweep_of"] == "mine-dw" for r in ok if r["workload"].startswith("mine-dw"))
    assert run["date"] and "commit" in run


def test_el_compare_takes_workload_tables(tmp_path):
    records = el.compare([{"id": "t", "op": "conv2d", "shapes": {"x": [2, 4, 6, 6], "weight": [6, 4, 3, 3]}}],
                         quick=True, out=None, backends=["bmm:numpy"], peers=False, show_progress=False)
    assert {(r["workload"], r["backend"], r["status"]) for r in records} == {("t", "bmm:numpy", "ok")}


def test_saved_runs_are_listed_and_compared(tmp_path, capsys):
    (tmp_path / "mine.toml").write_text(MINE)
    history = str(tmp_path / "history")
    for name in ("first-run", "second-run"):
        assert main(["compare", "--workloads-file", str(tmp_path / "mine.toml"), "--quick", "--no-write",
                     "--save", name, "--history", history, *FAST]) == 0
    capsys.readouterr()
    assert main(["runs", "--history", history]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == ["first-run", "second-run"]
    assert "mine-dw[N=1]" in listed[0]
    rc = main(["diff", "first-run", "second-run", "--history", history, "--fail", "1000"])
    table = capsys.readouterr().out
    assert rc == 0 and "| mine-op | bmm:numpy | forward | fresh |" in table
    saved = json.loads(next(Path(history).glob("*/first-run.json")).read_text())
    assert all(len(r["samples"]) == r["n"] for r in saved["records"] if r["status"] == "ok")


def _children_in(folder: Path) -> list[int]:
    """Benchmark children still running in `folder` (their working directory)."""
    found = subprocess.run(["pgrep", "-f", "einlocal.harness.child"], capture_output=True, text=True).stdout.split()
    alive = []
    for pid in map(int, found):
        try:
            if os.readlink(f"/proc/{pid}/cwd") == str(folder):
                alive.append(pid)
        except OSError:
            pass
    return alive


def test_an_interrupted_run_keeps_what_it_finished_and_resumes(tmp_path):
    """Ctrl-C: one line, exit 130, results.json valid with the finished jobs, no child left;
    --resume runs only what is missing."""
    (tmp_path / "mine.toml").write_text(MINE)
    cmd = [_script(), "compare", "--workloads-file", "mine.toml", "--out", "DIR", "--no-peers", "--no-progress",
           "--backends", "bmm:numpy,einsum:numpy,opt_einsum:numpy,broadcast:numpy", "--budget", "0.3"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = tmp_path / "DIR" / "results.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:             # interrupt once a job has finished
        if results.exists() and json.loads(results.read_text())["finished_jobs"]:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("einlocal compare: interrupted")]
    assert len(lines) == 1 and "--resume" in lines[0]
    kept = json.loads(results.read_text())
    assert kept["complete"] is False and kept["finished_jobs"]
    assert not _children_in(tmp_path)
    done = set(kept["finished_jobs"])
    resumed = subprocess.run([*cmd, "--resume"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = json.loads(results.read_text())
    keys = {f"{r['workload']}|{r['backend']}" for r in final["records"] if r["status"] == "ok"}
    assert done <= keys and len(keys) == 3 * 4
    for key in done:                               # what was kept is what is there: not measured again
        before = [r["median_s"] for r in kept["records"] if f"{r['workload']}|{r['backend']}" == key]
        after = [r["median_s"] for r in final["records"] if f"{r['workload']}|{r['backend']}" == key]
        assert before == after
