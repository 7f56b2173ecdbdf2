"""einlocal compare: workloads as data, checks before timing, results written with their command."""
import json

import pytest

from einlocal import compare as compare_module
from einlocal import registry, workloads
from einlocal.compare import compare


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


def test_peers_are_matched_by_name(monkeypatch, tmp_path):
    peers = tmp_path / "bench" / "peers.py"
    peers.parent.mkdir()
    peers.write_text("def torch_unfold_einsum(x, weight, bias=None, **p):\n    return None\n"
                     "def torch_unfold_einsum_backward(dy, x, weight, bias=None, **p):\n    return None\n")
    monkeypatch.setattr(compare_module, "peers_path", lambda: peers)
    table = compare_module.load_peers()
    assert list(table) == ["torch_unfold_einsum"] and table["torch_unfold_einsum"]["library"] == "torch"
    assert compare_module._peer_for("unfold_einsum", table) == "torch_unfold_einsum"



def _peer_cases():
    table = compare_module.load_peers()
    return [(w, name, table[name]) for w in workloads.WORKLOADS.values() for wanted in w.peers
            for name in [compare_module._peer_for(wanted, table)] if name is not None]


@pytest.mark.parametrize("w, name, info", _peer_cases(),
                         ids=[f"{w.id}-{name}" for w, name, _ in _peer_cases()])
def test_every_peer_passes_its_reduced_check(w, name, info):
    """Each peer, set up for the full-size workload as compare sets it up, passes the check at
    the reduced size (a depthwise peer takes groups from the arrays it gets, not the full size's)."""
    from einlocal.backends.namespaces import namespace
    from einlocal.bench import _JobRunner, load_peer, make_job, op_spec, peer_params
    pytest.importorskip(info["library"])
    info = compare_module.peer_info(w, info)
    job = make_job(op_spec(w.op_fn()), w.shapes, w.params, f"peer:{name}", peer=info, passes=("forward",),
                   regimes=("fresh",), check_shapes=w.reduced, workload=w.id, memory=False)
    runner = _JobRunner(job, lambda *a: None)
    # what _setup does for a peer, without the full-size arrays
    runner.op, runner.xp = w.op_fn(), namespace(info["library"])
    runner.peer_fwd, runner.peer_bwd = load_peer(info)
    runner.peer_params = peer_params(info, dict(w.params), w.shapes["x"])
    runner._check({"kind": "check", "pass": "reduced"})
    assert runner.fail_all is None, runner.fail_all
    if w.op == "depthwise_conv2d":
        assert runner.peer_params["groups"] == w.shapes["x"][1]
        assert peer_params(info, runner.peer_params, w.reduced["x"])["groups"] == w.reduced["x"][1]


def test_only_backends_that_compile_get_the_first_call_allowance():
    from einlocal.compare import _allowance
    common = {"first_call_allowance_s": 10.0, "cap_s": 2.0}
    assert _allowance(common, 4.0)["first_call_allowance_s"] == 4.0
    assert _allowance(common, 30.0)["first_call_allowance_s"] == 10.0      # the settings' allowance bounds it
    assert _allowance(common, 0.0)["first_call_allowance_s"] == 0.0
    assert registry.get("bmm:numpy").compile_s == 0 and registry.get("loops:python").compile_s == 0
    for name in ("loops:numba", "einsum:jax", "native:jax"):
        if name in registry.available():
            assert registry.get(name).compile_s > 0, name


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
    assert "native:torch" in {j["backend"] for j in jobs} and not any(j["backend"].startswith("peer:") for j in jobs)
    assert all(j["check_shapes"] is None and j["reference"] for j in jobs)
    timed = [r for r in records if not r["backend"].startswith("peer:")]
    assert timed and all(r["status"] == "ok" and r["max_error"] <= 1 for r in timed)
    peer = [r for r in records if r["backend"] == "peer:F.conv2d(groups) (torch)"]
    assert peer and all(r["status"] == "skipped" and "same library call as native:torch" in r["reason"]
                        and r["peer"] for r in peer)
