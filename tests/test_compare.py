"""einlocal compare: workloads as data, checks before timing, results written with their command."""
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from einlocal import registry, workloads
from einlocal.compare import compare
from einlocal.harness import Job, check_job, op_spec
from einlocal.harness.peerfile import load_peers, peer_for, peer_info, peer_params

compare_module = importlib.import_module("einlocal.compare")   # el.compare, the function, shadows the module name


def test_workloads_bind_at_full_and_reduced_size():
    import numpy as np
    for w in workloads.WORKLOADS.values():
        for sized in (w, w.sized(True)):
            arrays = [np.empty(sized.shapes[k], "f4") if sized.shapes.get(k) else None
                      for k in ("x", "weight", "bias")]
            call = w.op_fn().bind(*arrays, **w.params)
            assert call.flops() > 0
    assert workloads.get("w3b").shapes["x"] == (32, 32, 128, 128)
    with pytest.raises(ValueError, match="W1"):
        workloads.get("W9")


def test_trusted_reference_passes_the_reduced_check():
    name, why = compare_module.trusted_reference(workloads.get("W2"))
    assert name in compare_module.REFERENCE_CANDIDATES and "loops:python" in why


def test_compare_checks_at_full_size_then_times(tmp_path):
    records, paths = compare(["W1", "W3b"], reduced=True, backends=["bmm:numpy", "einsum:numpy"], peers=False,
                             outdir=tmp_path, show_progress=False, budget_s=0.003, regimes=("fresh", "steady"),
                             memory=False)
    keys = {(r["workload"], r["backend"], r["pass"], r["regime"]) for r in records}
    assert len(keys) == 2 * 2 * 2 * 2
    assert all(r["status"] == "ok" and r["max_error"] is not None and r["max_error"] <= 1 for r in records)
    run = json.loads(paths["json"].read_text())
    assert run["command"] == "einlocal compare" and run["machine"]["cores"]
    assert "checked at the timed size against" in paths["md"].read_text()


def test_peers_are_matched_by_name(tmp_path):
    peers = tmp_path / "my_peers.py"
    peers.write_text("def torch_unfold_einsum(x, weight, bias=None, **p):\n    return None\n"
                     "def torch_unfold_einsum_backward(dy, x, weight, bias=None, **p):\n    return None\n")
    table = load_peers(peers)
    assert list(table) == ["torch_unfold_einsum"] and table["torch_unfold_einsum"]["library"] == "torch"
    assert peer_for("unfold_einsum", table) == "torch_unfold_einsum"
    with pytest.raises(FileNotFoundError):
        load_peers(tmp_path / "missing.py")


def test_the_package_peers_are_loaded_by_default():
    from einlocal import peers
    table = load_peers()
    assert set(table) == set(peers.PEERS) and all(info["path"] is None for info in table.values())
    assert table["F.conv2d(groups) (torch)"]["same_as"] == "native:torch"


def _peer_cases():
    table = load_peers()
    return [(w, name, table[name]) for w in workloads.WORKLOADS.values() for wanted in w.peers
            for name in [peer_for(wanted, table)] if name is not None]


@pytest.mark.parametrize("w, name, info", _peer_cases(),
                         ids=[f"{w.id}-{name}" for w, name, _ in _peer_cases()])
def test_every_peer_passes_its_reduced_check(w, name, info):
    """Each peer, set up for the full-size workload as compare sets it up, passes the check at
    the reduced size (a depthwise peer takes groups from the arrays it gets, not the full size's)."""
    pytest.importorskip(info["library"])
    info = peer_info(w.op, info)
    job = Job(op_spec(w.op_fn()), w.shapes, w.params, f"peer:{name}", peer=info, passes=("forward",),
              regimes=("fresh",), check_shapes=w.reduced, workload=w.id, memory=False)
    assert check_job(job) is None
    if w.op == "depthwise_conv2d":
        assert peer_params(info, dict(w.params), w.shapes["x"])["groups"] == w.shapes["x"][1]
        assert peer_params(info, dict(w.params), w.reduced["x"])["groups"] == w.reduced["x"][1]


def test_a_wrong_peer_fails_its_reduced_check(tmp_path):
    """The check step, through its public entry point, can fail: a peer off by a factor."""
    peers = tmp_path / "wrong.py"
    peers.write_text("def doubled(x, weight, bias=None, **p):\n"
                     "    import einlocal as el\n"
                     "    return 2 * el.locally_connected2d(x, weight, bias, backend='einsum:numpy', **p)\n")
    info = load_peers(peers)["doubled"]
    w = workloads.get("W1")
    job = Job(op_spec(w.op_fn()), w.shapes, w.params, "peer:doubled", peer=info,
              passes=("forward",), regimes=("fresh",), check_shapes=w.reduced, memory=False)
    status, reason = check_job(job)
    assert status == "failed" and "check at reduced size failed" in reason and "y " in reason


@pytest.mark.parametrize("compile_s, allowance", [(4.0, 4.0), (30.0, 10.0), (0.0, 0.0)],
                         ids=["compiles-4s", "compiles-past-the-settings-10s", "compiles-nothing"])
def test_a_first_call_is_allowed_what_its_backend_compiles(compile_s, allowance):
    from einlocal.compare import _allowance
    common = {"first_call_allowance_s": 10.0, "cap_s": 2.0}
    assert _allowance(common, compile_s)["first_call_allowance_s"] == allowance


@pytest.mark.parametrize("name, compiles", [("bmm:numpy", False), ("loops:python", False), ("loops:numba", True),
                                            ("einsum:jax", True), ("native:jax", True)],
                         ids=lambda v: v if isinstance(v, str) else ("compiles" if v else "compiles-nothing"))
def test_only_backends_that_compile_have_a_compile_time(name, compiles):
    if name not in registry.available():
        pytest.skip(registry.unavailable().get(name, f"{name} unavailable"))
    assert (registry.get(name).compile_s > 0) is compiles


def test_compare_never_imports_from_the_working_directory(tmp_path):
    """`einlocal compare` run in a folder holding a bench/peers.py (and a numpy.py) imports
    neither: its peers come from the package, its processes' imports from the installation."""
    script = Path(sys.executable).parent / "einlocal"
    if not script.exists():
        pytest.skip("the einlocal command is not installed beside this Python")
    marker = tmp_path / "imported.txt"
    plant = f"open({str(marker)!r}, 'a').write(__file__ + '\\n')\n"
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "peers.py").write_text(plant + "def slices_peer(x, weight, bias=None, **p):\n    return x\n")
    (tmp_path / "numpy.py").write_text(plant + "raise ImportError('planted')\n")
    out = subprocess.run([str(script), "compare", "--quick", "--reduced", "--workloads", "W1", "--backends",
                          "bmm:numpy,peer:slices", "--no-write", "--no-progress"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert not marker.exists(), marker.read_text()
    assert "slices+concatenate (numpy)" in out.stdout and "bmm:numpy" in out.stdout


def test_compare_times_the_peers_of_a_file_named_with_peers(tmp_path, capsys):
    from einlocal.cli import main
    calls = tmp_path / "calls.txt"
    peers = tmp_path / "mine.py"
    peers.write_text("import einlocal as el\n"
                     f"CALLS = {str(calls)!r}\n"
                     "def fwd(x, weight, bias=None, **p):\n"
                     "    open(CALLS, 'a').write('fwd\\n')\n"
                     "    return el.locally_connected2d(x, weight, bias, backend='einsum:numpy', **p)\n"
                     "PEERS = {'slices+concatenate (numpy)': (fwd, None, 'numpy', 'locally_connected2d')}\n")
    assert main(["compare", "--quick", "--reduced", "--workloads", "W1", "--backends", "peer", "--peers", str(peers),
                 "--no-write", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "peer:slices+concatenate (numpy)" in out and "the peer has no backward" in out
    assert calls.read_text().count("fwd") >= 2        # this file's peer ran: its check's call and its timed calls


def test_quick_checks_each_backend_at_its_timed_size_and_leaves_duplicate_peers(monkeypatch):
    """--quick: no check at the reduced size (every job checks its first call against the
    timed size's reference instead), and a peer that makes a native backend's very call is
    listed as such, not timed."""
    if "native:torch" not in registry.available():
        pytest.skip(registry.unavailable().get("native:torch", "native:torch unavailable"))
    jobs = []
    real = compare_module.run_jobs
    monkeypatch.setattr(compare_module, "run_jobs", lambda js, **kw: jobs.extend(js) or real(js, **kw))
    records, _ = compare(["W3a"], quick=True, reduced=True, backends=["native:torch", "bmm:numpy", "peer:F.conv2d"],
                         outdir=None, show_progress=False)
    assert "native:torch" in {j.backend for j in jobs} and not any(j.backend.startswith("peer:") for j in jobs)
    assert all(j.check_shapes is None and j.reference for j in jobs)
    timed = [r for r in records if not r["backend"].startswith("peer:")]
    assert timed and all(r["status"] == "ok" and r["max_error"] <= 1 for r in timed)
    peer = [r for r in records if r["backend"] == "peer:F.conv2d(groups) (torch)"]
    assert peer and all(r["status"] == "skipped" and "same library call as native:torch" in r["reason"]
                        and r["peer"] for r in peer)


def test_a_backend_is_compared_on_the_libraries_it_also_runs_on(tmp_path):
    """loops:numba runs inside jax programs too: compare times it on jax arrays,
    as "loops:numba[jax]", checked like every backend, in its own process."""
    for name, lib in (("loops:numba", "jax"),):
        if name not in registry.available() or lib not in registry.ENGINES:
            pytest.skip(f"{name} or {lib} unavailable")
    records, _ = compare(["W3a"], reduced=True, backends=["loops:numba"], peers=False, outdir=None,
                         show_progress=False, budget_s=0.003, regimes=("fresh",), memory=False)
    by = {}
    for r in records:
        by.setdefault(r["backend"], []).append(r)
    assert set(by) == {"loops:numba", "loops:numba[jax]"}
    for rs in by.values():
        assert {r["pass"] for r in rs} == {"forward", "backward"}
        assert all(r["status"] == "ok" and r["max_error"] is not None and r["max_error"] <= 1 for r in rs), rs


def test_quick_runs_each_backend_on_its_own_library_only(monkeypatch):
    if "loops:numba" not in registry.available() or "jax" not in registry.ENGINES:
        pytest.skip("loops:numba or jax unavailable")
    jobs = []
    monkeypatch.setattr(compare_module, "run_jobs", lambda js, **kw: jobs.extend(js) or [])
    records, _ = compare(["W3a"], quick=True, reduced=True, backends=["loops:numba"], peers=False, outdir=None,
                         show_progress=False)
    assert [(j.backend, j.arrays) for j in jobs] == [("loops:numba", None)]
    skipped = [r for r in records if r["backend"] == "loops:numba[jax]"]
    assert skipped and all(r["status"] == "skipped" and "--quick" in r["reason"] for r in skipped)
