"""The einlocal command, run in-process with tiny shapes."""
import json

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
    assert [h.split(",")[1].split(":")[0].strip() for h in heads] == ["forward", "dx", "dwt"], heads
    assert "y[n,o,h,w] += x[n,c,h+i,w+j] * wt[o,c,i,j,h,w]" in heads[0]
    assert len(out.splitlines()) > 3 * 8      # each statement's code, not only its heading
    assert main(["source", *LC, "--pass", "dwt", "--backend", name]) == 0
    assert capsys.readouterr().out.count("# ===== ") == 1


def test_source_rejects_what_it_cannot_print(capsys):
    with pytest.raises(SystemExit, match="generates no code"):
        main(["source", *LC, "--backend", "einsum:numpy"])
    with pytest.raises(SystemExit, match="--pass 'db'; this op has forward, dx, dwt"):
        main(["source", *LC, "--pass", "db"])
