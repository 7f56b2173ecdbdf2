"""el.benchmark and its harness: records per backend, pass and regime; checks before timing; deadlines; costs."""
import csv
import importlib
import io

import numpy as np
import pytest

import einlocal as el
from einlocal import registry
from einlocal.harness import Job, Kill, Step, op_spec, reference_file, run_jobs
from einlocal.harness import calls as calls_module
from einlocal.harness import inputs as inputs_module
from einlocal.harness import policy
from einlocal.harness import prepare as prepare_module
from einlocal.harness import references as references_module
from einlocal.harness import supervisor
from einlocal.harness.runner import JobRunner
from einlocal.harness.state import JobState
from einlocal.table import markdown

table_module = importlib.import_module("einlocal.table")

SHAPES = dict(x=(2, 3, 6, 6), weight=(4, 3, 3, 3, 4, 4))
SMALL_CONV = {"x": (1, 2, 5, 5), "weight": (3, 2, 3, 3)}


# a stride-1 valid conv2d in numpy, for peers written into a test's peers.py
CONV_SOURCE = (
    "def _conv(x, w):\n"
    "    n, c, h, ww = x.shape; o, _, kh, kw = w.shape\n"
    "    y = np.zeros((n, o, h - kh + 1, ww - kw + 1), x.dtype)\n"
    "    for i in range(kh):\n"
    "        for j in range(kw):\n"
    "            y += np.einsum('nchw,oc->nohw', x[:, :, i:i + y.shape[2], j:j + y.shape[3]], w[:, :, i, j])\n"
    "    return y\n")


def peer_job(tmp_path, source: str, name: str, library: str = "numpy", shapes=SMALL_CONV, **settings):
    """A benchmark job for the conv2d peer `name` of a peers file holding `source`."""
    peers = tmp_path / "peers.py"
    peers.write_text(source)
    return Job(op_spec(el.conv2d), shapes, {}, f"peer:{name}",
               peer={"library": library, "path": str(peers), "name": name, "op": "conv2d"}, **settings)


def test_in_process_records_every_backend_pass_and_regime():
    names = ["bmm:numpy", "einsum:numpy"]
    passes = ("forward", "backward", "forward+backward")
    recs = el.benchmark(el.locally_connected2d, backends=names, passes=passes, regimes=("fresh", "steady"),
                        budget_s=0.005, isolate=False, **SHAPES)
    assert sorted((r["backend"], r["pass"], r["regime"]) for r in recs) == sorted(
        (b, p, g) for b in names for p in passes for g in ("fresh", "steady"))
    for r in recs:
        assert r["status"] == "ok", r
        assert r["median_s"] > 0 and r["n"] >= 3 and r["first_call_s"] > 0
        assert r["flops"] > 0 and r["min_bytes"] > 0 and r["roofline_fraction"] > 0
        assert r["peak_method"] == "tracemalloc" and r["peak_bytes"] >= 0
    text = markdown(recs)
    assert all(n in text for n in names) and "steady" in text
    assert el.table(recs) == text
    rows = list(csv.DictReader(io.StringIO(table_module.csv(recs))))
    assert len(rows) == len(recs)


def test_pass_cost_adds_forward_and_backward():
    x, w = np.zeros(SHAPES["x"], "f4"), np.zeros(SHAPES["weight"], "f4")
    call = el.locally_connected2d.bind(x, w)
    fwd, bwd, both = (calls_module.pass_cost(call, p, 4) for p in ("forward", "backward", "forward+backward"))
    assert fwd == (call.flops(), call.min_bytes(4))
    assert bwd[0] == sum(call.plan.backward[o].flops() for o in ("x", "wt"))
    assert both == (fwd[0] + bwd[0], fwd[1] + bwd[1])


def test_a_backend_that_fails_the_check_is_never_timed(monkeypatch):
    good = registry.get("bmm:numpy")

    class Wrong(type(good)):
        def execute(self, plan, operands, out=None):
            return 2 * super().execute(plan, operands, None)

    wrong = Wrong("numpy")
    real_get = registry.get
    monkeypatch.setattr(registry, "get", lambda name: wrong if name == "bmm:numpy" else real_get(name))
    from einlocal import timing
    calls = []
    real_measure = timing.measure
    monkeypatch.setattr(timing, "measure", lambda *a, **k: calls.append(1) or real_measure(*a, **k))
    recs = el.benchmark(el.locally_connected2d, backends=["bmm:numpy"], regimes=("fresh",), budget_s=0.005,
                        isolate=False, check_shapes=SHAPES, **SHAPES)
    assert recs and all(r["status"] == "failed" and "check" in r["reason"] for r in recs)
    assert all(r["median_s"] is None for r in recs)
    assert calls == []              # not one call was timed


def test_wrong_only_at_full_size_fails_on_its_first_timed_call(monkeypatch):
    """The full-size check is the first timed call's result against the
    float64 reference: a lowering right at the reduced size and wrong at the
    full one is recorded failed, and nothing of it is timed."""
    good = registry.get("einsum:numpy")
    big = 3

    class WrongWhenBig(type(good)):
        def execute(self, plan, operands, out=None):
            y = super().execute(plan, operands, out)
            return y * 1.01 if plan.range.get("n", 1) >= big else y

    wrong = WrongWhenBig("numpy")
    real_get = registry.get
    monkeypatch.setattr(registry, "get", lambda name: wrong if name == "einsum:numpy" else real_get(name))
    from einlocal import timing
    calls = []
    real_measure = timing.measure

    def counting(fn, **kw):
        calls.append(1)
        return real_measure(fn, **kw)
    monkeypatch.setattr(timing, "measure", counting)
    recs = el.benchmark(el.locally_connected2d, backends=["einsum:numpy"], regimes=("fresh", "steady"),
                        budget_s=0.005, isolate=False, reference="bmm:numpy", check_shapes=SHAPES,
                        x=(big, 3, 6, 6), weight=(4, 3, 3, 3, 4, 4))
    assert len(recs) == 4 and all(r["status"] == "failed" and r["median_s"] is None for r in recs)
    assert "full-size forward check failed" in recs[0]["reason"] and "dy" not in recs[0]["reason"]
    assert len(calls) == 1          # the forward's first call failed: nothing else was measured


def test_a_slow_pass_is_not_timed_again_steady():
    recs = el.benchmark(el.locally_connected2d, backends=["bmm:numpy"], regimes=("fresh", "steady"),
                        budget_s=0.005, isolate=False, steady_max_s=0.0, **SHAPES)
    fresh = [r for r in recs if r["regime"] == "fresh"]
    steady = [r for r in recs if r["regime"] == "steady"]
    assert fresh and all(r["status"] == "ok" for r in fresh)
    assert steady and all(r["status"] == "skipped" and "fresh" in r["reason"] for r in steady)


def test_full_size_check_against_a_float64_lowering_fills_max_error(tmp_path):
    recs = el.benchmark(el.depthwise_conv2d, backends=["einsum:numpy"], regimes=("fresh",), budget_s=0.005,
                        isolate=False, reference="bmm:numpy", x=(2, 3, 7, 7), weight=(6, 1, 3, 3), padding=1)
    assert {r["pass"] for r in recs} == {"forward", "backward"}
    assert all(r["status"] == "ok" and 0 <= r["max_error"] <= 1 for r in recs)


def test_isolated_run_streams_records_from_a_child_process():
    recs = el.benchmark(el.conv2d, backends=["bmm:numpy"], regimes=("fresh",), passes=("forward",),
                        budget_s=0.005, memory=False, x=(1, 2, 5, 5), weight=(3, 2, 3, 3))
    assert len(recs) == 1 and recs[0]["status"] == "ok"
    assert "own process" in recs[0]["isolation"]


def test_a_step_past_its_deadline_is_killed_and_recorded_over_the_cap(monkeypatch, tmp_path):
    """Every step past its deadline is killed; the process started again goes on with the next."""
    monkeypatch.setattr(policy, "deadline_s", lambda job, step, first_done=False: 0.0)
    job = peer_job(tmp_path, "import time\n"
                   "def slow(x, weight, bias=None, **kw):\n    time.sleep(5)\n"
                   "def slow_backward(dy, x, weight, bias=None, **kw):\n    time.sleep(5)\n"
                   "PEERS = {'slow': (slow, slow_backward, 'numpy', 'conv2d')}\n", "slow",
                   regimes=("fresh",), budget_s=0.005, memory=False, check_shapes=None)
    recs = run_jobs([job])
    assert sorted(r["pass"] for r in recs) == ["backward", "forward"]
    assert all(r["status"] == ">cap" and "killed" in r["reason"] and r["median_s"] is None for r in recs)


@pytest.mark.parametrize("killed, step, implied", [
    (("time", "forward", None), ("time", "forward+backward", "vjp"), True),
    (("time", "forward", None), ("time", "backward", "vjp"), False),
    (("time", "backward", "vjp"), ("time", "forward+backward", "vjp"), True),
    (("time", "backward", "vjp"), ("time", "backward", "autodiff"), False),
    (("check", "reduced", None), ("time", "backward", "vjp"), True),
])
def test_what_a_killed_step_implies(killed, step, implied):
    kill = Kill(Step(killed[0], killed[1], None if killed[0] == "check" else "fresh", killed[2]), "killed")
    assert kill.rules_out(Step(step[0], step[1], "fresh", step[2])) is implied


def test_deadline_gives_a_first_call_its_compile_allowance_then_twice_the_cap():
    job = Job(op_spec(el.conv2d), SMALL_CONV, {}, "bmm:numpy", cap_s=2.0, first_call_allowance_s=10.0,
              kill_margin_s=5.0, memory=False)
    step = Step("time", "forward", "fresh")
    assert policy.deadline_s(job, step) == 2.0 + 10.0 + 5.0
    assert policy.deadline_s(job, step, first_done=True) == 2 * 2.0 + 5.0
    assert policy.deadline_s(job.replace(memory=True), step, first_done=True) == 3 * 2.0 + 5.0
    assert policy.deadline_s(job, Step("check", "reduced")) == policy.CHECK_DEADLINE_S


def test_a_slow_first_call_is_killed_at_cap_plus_allowance(tmp_path):
    """A first call past cap + allowance + margin is killed then, not at the
    end of the whole step's deadline: a peer that sleeps 60 s is recorded
    >cap within seconds."""
    import time as _time
    job = peer_job(tmp_path, "import time\n"
                   "def slow(x, weight, bias=None, **kw):\n    time.sleep(60)\n"
                   "PEERS = {'slow': (slow, None, 'numpy', 'conv2d')}\n", "slow",
                   regimes=("fresh",), passes=("forward",), budget_s=0.005, cap_s=0.2, memory=False,
                   kill_margin_s=0.5, first_call_allowance_s=0.0)
    t0 = _time.monotonic()
    (rec,) = run_jobs([job])
    assert rec["status"] == ">cap" and "killed" in rec["reason"]
    assert _time.monotonic() - t0 < 30


def test_a_watched_first_call_is_held_to_the_cap_once_it_stops_compiling(tmp_path):
    """jax's first calls are watched (einlocal.compile_watch): a peer that compiles,
    then runs 60 s, is killed about cap + margin after its compile ends, not after
    the whole 30 s allowance for compiling."""
    pytest.importorskip("jax", reason="jax is not installed")
    import time as _time
    job = peer_job(tmp_path, "import time\nimport jax, jax.numpy as jnp\n"
                   "def slow(x, weight, bias=None, **kw):\n"
                   "    y = jax.jit(lambda a: jnp.sin(a) * 3.0)(jnp.asarray(x)).block_until_ready()\n"
                   "    time.sleep(60)\n    return y\n"
                   "PEERS = {'slow': (slow, None, 'jax', 'conv2d')}\n", "slow", library="jax",
                   regimes=("fresh",), passes=("forward",), budget_s=0.005, cap_s=0.2, memory=False,
                   kill_margin_s=0.5, first_call_allowance_s=30.0, check_shapes=None)
    assert policy.compile_watched(job)
    t0 = _time.monotonic()
    (rec,) = run_jobs([job])
    assert rec["status"] == ">cap" and "not counting up to 30 s" in rec["reason"]
    assert _time.monotonic() - t0 < 20


def test_a_watched_first_calls_deadline_does_not_move_while_it_compiles():
    job = Job(op_spec(el.conv2d), SMALL_CONV, {}, "bmm:numpy", cap_s=1.0, first_call_allowance_s=10.0,
              kill_margin_s=0.5, memory=False)
    clock = policy.FirstCall(job, Step("time", "forward", "fresh"), now=100.0)
    assert clock.deadline() == 101.5                      # no compile reported: the run has cap + margin
    clock.change(True, now=100.2)
    assert clock.deadline() == 111.5                      # compiling: the unwatched deadline holds
    clock.change(False, now=104.2)
    assert clock.deadline() == pytest.approx(105.5)       # 0.2 s ran before: 1.3 s of run left
    clock.change(True, now=105.0)
    clock.change(False, now=111.0)
    assert clock.deadline() == 111.5                      # never past cap + allowance + margin


def test_steady_regime_only_in_the_grad_modes_asked_for():
    if "einsum:torch" not in registry.available():
        pytest.skip(registry.unavailable().get("einsum:torch", "einsum:torch unavailable"))
    job = Job(op_spec(el.locally_connected2d), SHAPES, {}, "einsum:torch",
              regimes=("fresh", "steady"), budget_s=0.005, memory=False, steady_grad_modes=("vjp",))
    recs = {(r["regime"], r["pass"], r["grad_mode"]): r for r in run_jobs([job], isolate=False)}
    assert recs[("steady", "backward", "autodiff")]["status"] == "skipped"
    assert "grad mode vjp" in recs[("steady", "backward", "autodiff")]["reason"]
    for key in (("fresh", "backward", "autodiff"), ("steady", "backward", "vjp"), ("steady", "forward", None)):
        assert recs[key]["status"] == "ok", recs[key]


def test_a_restarted_child_goes_on_from_what_it_knew(tmp_path):
    """After a kill the next process neither checks again nor times steady
    what the fresh regime showed too slow for it: it carries the first
    process's decisions (here steady_max_s=0: every steady step skipped)."""
    calls = tmp_path / "calls.txt"
    source = (
        "import time\nimport numpy as np\n"
        f"CALLS = {str(calls)!r}\n"
        + CONV_SOURCE +
        "def fwd(x, weight, bias=None, **kw):\n"
        "    open(CALLS, 'a').write(f'fwd {x.shape[0]}\\n')\n"
        "    return _conv(x, weight)\n"
        "def bwd(dy, x, weight, bias=None, **kw):\n"
        "    if x.shape[0] > 1:\n"
        "        time.sleep(60)                    # slow at full size only\n"
        "    dx, dw = np.zeros_like(x), np.zeros_like(weight)\n"
        "    ho, wo = dy.shape[2:]\n"
        "    for i in range(weight.shape[2]):\n"
        "        for j in range(weight.shape[3]):\n"
        "            dw[:, :, i, j] = np.einsum('nohw,nchw->oc', dy, x[:, :, i:i + ho, j:j + wo])\n"
        "            dx[:, :, i:i + ho, j:j + wo] += np.einsum('nohw,oc->nchw', dy, weight[:, :, i, j])\n"
        "    return dx, dw, None\n"
        "PEERS = {'half-slow': (fwd, bwd, 'numpy', 'conv2d')}\n")
    job = peer_job(tmp_path, source, "half-slow", shapes={"x": (3, 2, 6, 6), "weight": (3, 2, 3, 3)},
                   regimes=("fresh", "steady"), budget_s=0.005, cap_s=0.2, memory=False, kill_margin_s=0.5,
                   check_shapes=SMALL_CONV, steady_max_s=0.0)
    recs = {(r["regime"], r["pass"]): r for r in run_jobs([job])}
    assert recs[("fresh", "forward")]["status"] == "ok", recs[("fresh", "forward")]["reason"]
    assert recs[("fresh", "backward")]["status"] == ">cap" and "killed" in recs[("fresh", "backward")]["reason"]
    assert recs[("steady", "forward")]["status"] == "skipped", recs[("steady", "forward")]
    assert "a call fresh" in recs[("steady", "forward")]["reason"]
    assert recs[("steady", "backward")]["status"] == ">cap"
    reduced = [line for line in calls.read_text().split() if line == "1"]
    assert len(reduced) == 1          # the check (batch 1) ran once, in the first process


LOGGED_PEER = (
    "import os, time\nimport numpy as np\n"
    "LOG = {log!r}\n"
    + CONV_SOURCE +
    "def fwd(x, weight, bias=None, **kw):\n"
    "    first = not os.path.exists(LOG)\n"
    "    open(LOG, 'a').write(f'{{os.getpid()}} fwd {{x.shape[0]}}\\n')\n"
    "    {body}\n"
    "    return _conv(x, weight)\n"
    "PEERS = {{'logged': (fwd, None, 'numpy', 'conv2d')}}\n")
FULL = {"x": (3, 2, 6, 6), "weight": (3, 2, 3, 3)}


def logged_job(tmp_path, body="pass", **settings):
    log = tmp_path / "calls.txt"
    settings = {"regimes": ("fresh",), "passes": ("forward",), "budget_s": 0.005, "memory": False,
                "kill_margin_s": 0.5, "first_call_allowance_s": 0.5, "warm_up": True, **settings}
    return log, peer_job(tmp_path, LOGGED_PEER.format(log=str(log), body=body), "logged", shapes=FULL, **settings)


def test_checks_and_warm_ups_run_before_anything_is_timed(tmp_path):
    """A job's check (reduced size) and its warm-up call (timed size) run in a
    process of the prepare phase; its timed calls in another, after them."""
    log, job = logged_job(tmp_path, check_shapes=SMALL_CONV)
    assert policy.warms(job) and not policy.warms(job.replace(warm_up=False))
    assert not policy.warms(job.replace(first_call_allowance_s=0.0))      # nothing compiles: nothing to warm
    (rec,) = run_jobs([job])
    assert rec["status"] == "ok", rec
    calls = [line.split() for line in log.read_text().splitlines()]
    pids = list(dict.fromkeys(pid for pid, _, _ in calls))
    assert len(pids) == 2
    prepare = [n for pid, _, n in calls if pid == pids[0]]
    timed = [n for pid, _, n in calls if pid == pids[1]]
    assert prepare == ["1", "3"]                     # the check, then the warm-up at the timed size
    assert timed and set(timed) == {"3"}
    assert calls.index([pids[1], "fwd", "3"]) > calls.index([pids[0], "fwd", "3"])


def test_a_warm_up_that_fails_the_full_size_check_is_never_timed(tmp_path):
    """The warm-up's result is the timed size's check: a peer wrong at that size
    fails there, and nothing of it is timed."""
    log, job = logged_job(tmp_path)
    spec = op_spec(el.conv2d)
    ref = reference_file(spec, FULL, {}, 0, "bmm:numpy", tmp_path / "ref.npz")
    source = (tmp_path / "peers.py").read_text().replace("return _conv(x, weight)", "return 2 * _conv(x, weight)")
    (tmp_path / "peers.py").write_text(source)
    # the same peer unchecked (no reference) after it: its warm-up and timing show the phases' processes
    wrong, unchecked = run_jobs([job.replace(reference=ref), job])
    assert wrong["status"] == "failed" and "full-size forward check failed" in wrong["reason"]
    assert unchecked["status"] == "ok"
    pids = [line.split()[0] for line in log.read_text().splitlines()]
    assert pids[0] == pids[1] and pids.count(pids[0]) == 2    # two warm-ups, and the wrong one never again
    assert len(pids) > 2 and pids[0] not in pids[2:]


def test_a_killed_warm_up_leaves_the_timing_to_decide(tmp_path):
    """A warm-up past its deadline is killed and forgotten: the timing process
    times the pass (here fast once its first call has passed)."""
    log, job = logged_job(tmp_path, body="if first: time.sleep(60)", cap_s=0.2)
    (rec,) = run_jobs([job])
    assert rec["status"] == "ok" and rec["median_s"] < 0.2, rec
    assert len({line.split()[0] for line in log.read_text().splitlines()}) == 2


def test_the_reduced_reference_is_computed_once_per_run(monkeypatch, tmp_path):
    check_module = importlib.import_module("einlocal.check")
    spec = op_spec(el.locally_connected2d)
    jobs = [Job(spec, SHAPES, {}, name, regimes=("fresh",), passes=("forward",), budget_s=0.005,
                memory=False, check_shapes=SHAPES) for name in ("bmm:numpy", "einsum:numpy")]
    other = Job(spec, SHAPES, {}, "bmm:numpy", check_shapes={**SHAPES, "x": (1, 3, 6, 6)})
    with_refs = references_module.check_references(jobs + [other], tmp_path)
    assert len({j.check_reference for j in with_refs}) == 2
    ref, vjp_error = references_module.load_check_reference(with_refs[0].check_reference)
    assert set(ref) == {"y", "dx", "dweight"} and vjp_error <= 1
    computed = []
    real = check_module._reference
    monkeypatch.setattr(check_module, "_reference", lambda *a: computed.append(a) or real(*a))
    recs = run_jobs(jobs, isolate=False)
    assert all(r["status"] == "ok" for r in recs) and len(computed) == 1


def test_input_sets_are_made_once_per_run(monkeypatch, tmp_path):
    key = ((("x", (2, 3, 4, 4)), ("weight", (5, 3, 3, 3))), (2, 5, 2, 2), "float32", 0, 2, True, str(tmp_path))
    inputs_module.input_sets.cache_clear()
    made = inputs_module.input_sets(*key)
    assert len(list(tmp_path.glob("inputs-*.npz"))) == 1
    inputs_module.input_sets.cache_clear()
    monkeypatch.setattr(inputs_module, "make_input_sets", lambda *a: pytest.fail("made again"))
    again = inputs_module.input_sets(*key)
    inputs_module.input_sets.cache_clear()
    assert [sorted(s) for s in again] == [sorted(s) for s in made] == [["dy", "weight", "x"]] * 2
    for a, b in zip(made, again):
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])
    from einlocal.check import random_inputs     # the first set is the reference's inputs
    np.testing.assert_array_equal(made[0]["x"], random_inputs(dict(key[0]), "float64", 0)["x"].astype("float32"))


def test_the_harness_works_between_steps_not_on_a_steps_clock(tmp_path):
    """A job's input sets and the full-size reference are made before the step
    that needs them is announced (its deadline starts then): their cost is the
    harness's, never the backend's."""
    from einlocal.harness.messages import StepStarted
    events = []
    spec = op_spec(el.conv2d)
    ref = reference_file(spec, FULL, {}, 0, "bmm:numpy", tmp_path / "ref.npz")
    job = Job(spec, FULL, {}, "bmm:numpy", regimes=("fresh",), passes=("forward",), budget_s=0.005,
              memory=False, reference=ref, warm_up=True, first_call_allowance_s=1.0)

    def emit(msg):
        if isinstance(msg, StepStarted):
            events.append((msg.step.kind, "sets" in runner.__dict__, "reference" in runner.__dict__))
    runner = JobRunner(job, emit, kinds=("warm", "time"))
    runner.run()
    assert [kind for kind, _, _ in events] == ["warm", "time"]
    assert all(has_sets and has_ref for _, has_sets, has_ref in events)


def test_a_long_pause_between_steps_is_not_a_kill(monkeypatch):
    """Between steps the child does the harness's work (the next job's setup, its
    input sets, its exit): a pause there, longer than any step's deadline, kills
    nothing and starts no second process."""
    script = (       # the child's side of the protocol, with pauses where the harness works
        "import sys, time\n"
        "from einlocal.harness.jobs import Step\n"
        "from einlocal.harness.messages import JobDone, Recorded, StepStarted, decode, encode\n"
        "from einlocal.harness.state import Decisions\n"
        "step = Step('time', 'forward', 'fresh')\n"
        "for line in iter(sys.stdin.readline, ''):\n"
        "    j = decode(line.rstrip()).index\n"
        "    time.sleep(1.0)\n"
        "    print(encode(StepStarted(j, step)), flush=True)\n"
        "    rec = {'backend': 'bmm:numpy', 'status': 'ok', 'job': j}\n"
        "    print(encode(Recorded(j, rec, step.key, Decisions())), flush=True)\n"
        "    time.sleep(1.0)\n"
        "    print(encode(JobDone(j)), flush=True)\n")
    spawned = []

    def spawn(library, threads):
        import subprocess
        import sys
        spawned.append(library)
        return subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    monkeypatch.setattr(supervisor, "spawn", spawn)
    monkeypatch.setattr(policy, "deadline_s", lambda job, step, first_done=False: 0.3)
    jobs = [Job(op_spec(el.conv2d), SMALL_CONV, {}, "bmm:numpy", regimes=("fresh",), passes=("forward",))] * 2
    recs = supervisor.run_group(jobs, None, None)
    assert [r["job"] for r in recs] == [0, 1] and spawned == ["numpy"]


JAX_SLOW_PEER = (
    "import os, time\nimport jax, jax.numpy as jnp\n"
    "LOG = {log!r}\n"
    "def slow(x, weight, bias=None, **kw):\n"
    "    open(LOG, 'a').write(f'{{os.getpid()}}\\n')\n"
    "    y = jax.jit(lambda a: jnp.sin(a) * 3.0)(jnp.asarray(x)).block_until_ready()\n"
    "    time.sleep(60)\n    return y\n"
    "PEERS = {{'slow': (slow, None, 'jax', 'conv2d')}}\n")


@pytest.mark.parametrize("prune", [True, False], ids=["prune_over_cap", "no_pruning"])
def test_a_warm_up_that_runs_past_the_cap_after_compiling(tmp_path, prune):
    """With `prune_over_cap`, a warm-up whose call runs past cap + margin once its
    compile is over rules its pass out as >cap, and nothing times it again;
    without, the timing process finds out for itself."""
    pytest.importorskip("jax", reason="jax is not installed")
    log = tmp_path / "calls.txt"
    job = peer_job(tmp_path, JAX_SLOW_PEER.format(log=str(log)), "slow", library="jax", regimes=("fresh",),
                   passes=("forward",), budget_s=0.005, cap_s=0.2, memory=False, kill_margin_s=0.5,
                   first_call_allowance_s=30.0, warm_up=True, prune_over_cap=prune)
    (rec,) = run_jobs([job])
    assert rec["status"] == ">cap"
    calls = log.read_text().split()
    if prune:
        assert "warm-up" in rec["reason"] and "0.7 s" in rec["reason"], rec["reason"]
        assert len(calls) == 1                       # the warm-up's call alone
    else:
        assert "killed" in rec["reason"] and len(set(calls)) == 2      # the warm-up's process, then the timing's


def test_an_idle_prepare_worker_helps_with_the_library_left(tmp_path, monkeypatch):
    """With no library left to start, the second prepare worker takes jobs from the
    back of the busy library's queue, in a second process of it; every job's
    warm-up runs once."""
    monkeypatch.setattr(prepare_module, "PREPARE_WORKERS", 2)
    monkeypatch.setattr(prepare_module.os, "cpu_count", lambda: 2)
    log, job = logged_job(tmp_path, body="time.sleep(0.3)")
    jobs = [job] * 6
    states = [JobState() for _ in jobs]
    prepare_module.prepare(jobs, [list(range(6))], states, None, None)
    pids = [line.split()[0] for line in log.read_text().splitlines()]
    assert len(pids) == 6 and len(set(pids)) == 2
    assert all(("warm", "forward", "fresh", None) in s.done for s in states)


def test_a_child_starts_its_library_before_any_timed_call():
    """What a process's first use of a library loads (torch: the modules its first
    autograd.grad imports), a benchmark child loads before its jobs come."""
    pytest.importorskip("torch", reason="torch is not installed")
    import subprocess
    import sys
    code = ("import sys\nfrom einlocal.harness.child import start_library\nstart_library('torch')\nimport torch\n"
            "before = set(sys.modules)\nx = torch.ones(3, 4, requires_grad=True)\n"
            "torch.autograd.grad((x * 2).sum(), x, torch.ones(()))\n"
            "print(sorted(set(sys.modules) - before))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_peers_from_two_files_in_one_process_stay_apart(tmp_path):
    """Each peers file is its own module: a second file's peer of the same name is
    its own, not the first file's."""
    jobs = []
    for tag in ("a", "b"):
        folder = tmp_path / tag
        folder.mkdir()
        source = LOGGED_PEER.format(log=str(folder / "calls.txt"), body="pass")
        jobs.append(peer_job(folder, source, "logged", shapes=FULL, regimes=("fresh",), passes=("forward",),
                             budget_s=0.005, memory=False))
    recs = run_jobs(jobs)
    assert [r["status"] for r in recs] == ["ok", "ok"]
    assert (tmp_path / "a" / "calls.txt").exists() and (tmp_path / "b" / "calls.txt").exists()
