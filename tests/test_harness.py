"""The harness's pieces on their own: jobs and messages through JSON, the skip rules, the prepare phase without its scheduler."""
import pytest

import einlocal as el
from einlocal.harness import Job, Kill, Step, op_spec, run_jobs
from einlocal.harness import policy
from einlocal.harness.messages import (Compiling, FirstReturned, JobDone, Recorded, RunJob, StepEnded, StepStarted,
                                       decode, encode)
from einlocal.harness.state import Decisions, JobState

SHAPES = {"x": (1, 2, 5, 5), "weight": (3, 2, 3, 3)}


def grouped_job(**settings):
    return Job(op_spec(el.conv2d), SHAPES, {"padding": ((1, 0), (0, 2)), "stride": (2, 1)}, "bmm:numpy", **settings)


def test_a_job_comes_back_from_json_as_it_was_sent():
    job = grouped_job(regimes=("fresh",), grad_modes=["vjp"], check_shapes={**SHAPES, "bias": None},
                      steady_grad_modes=("vjp",), peer={"library": "numpy", "path": None, "name": "p",
                                                        "params": {"padding": [1, 1]}})
    import json
    back = Job.from_json(json.loads(json.dumps(job.to_json())))
    assert back == job
    assert back.params["padding"] == ((1, 0), (0, 2)) and back.grad_modes == ("vjp",)
    assert back.peer["params"]["padding"] == (1, 1) and "bias" not in back.check_shapes


def test_a_job_refuses_an_unknown_pass_or_regime():
    with pytest.raises(ValueError, match="pass"):
        grouped_job(passes=("sideways",))
    with pytest.raises(ValueError, match="regime"):
        grouped_job(regimes=("lukewarm",))


def test_every_message_comes_back_from_its_line():
    decisions = Decisions(checked=True, fail_mode={"autodiff": ("failed", "why")},
                          over_cap={("backward", "vjp"): "fresh"}, errors={"forward": 0.25},
                          medians={("forward", None): 0.01}, full_checked={("forward", None)})
    step = Step("time", "backward", "fresh", "vjp")
    state = JobState([("check", "reduced", None, None)], [Kill(step, "killed", -9, "tail")], decisions)
    messages = [RunJob(3, grouped_job(), state, ("time",)), StepStarted(3, step), FirstReturned(3), Compiling(True),
                Recorded(3, {"status": "ok", "median_s": 0.5}, step.key, decisions), StepEnded(3, step.key, decisions),
                JobDone(3)]
    for msg in messages:
        line = encode(msg)
        assert "\n" not in line
        assert decode(line) == msg, type(msg).__name__
    assert decode("a library's chatter") is None


@pytest.mark.parametrize("step, decisions, settings, expected", [
    (Step("time", "backward", "fresh", "vjp"), Decisions(fail_all=("failed", "setup")), {}, ("failed", "setup")),
    (Step("time", "forward", "fresh"), Decisions(fail_mode={"vjp": ("skipped", "guard")}), {}, None),
    (Step("time", "backward", "fresh", "vjp"), Decisions(fail_mode={"vjp": ("skipped", "guard")}), {},
     ("skipped", "guard")),
    (Step("time", "forward", "steady"), Decisions(over_cap={("forward", None): "fresh"}), {}, ">cap"),
    (Step("time", "backward", "steady", "autodiff"), Decisions(), {"steady_grad_modes": ("vjp",)}, "skipped"),
    (Step("time", "backward", "steady", "vjp"), Decisions(), {"steady_grad_modes": ("vjp",)}, None),
    (Step("time", "forward", "steady"), Decisions(medians={("forward", None): 0.6}), {"steady_max_s": 0.5}, "skipped"),
    (Step("time", "forward", "steady"), Decisions(medians={("forward", None): 0.4}), {"steady_max_s": 0.5}, None),
], ids=["failed-setup-rules-out-all", "a-mode-failure-spares-the-forward", "a-mode-failure-rules-out-its-mode",
        "over-cap-fresh-not-run-steady", "steady-only-in-the-modes-asked", "steady-in-a-mode-asked",
        "too-slow-fresh-not-run-steady", "fast-enough-fresh-runs-steady"])
def test_which_timed_steps_are_not_run(step, decisions, settings, expected):
    got = policy.not_timed(grouped_job(**settings), decisions, step)
    if expected is None or isinstance(expected, tuple):
        assert got == expected
    else:
        assert got is not None and got[0] == expected


def test_a_kill_names_its_cause_in_the_records_it_settles():
    job = grouped_job(cap_s=0.5, kill_margin_s=1.0, first_call_allowance_s=2.0)
    step = Step("time", "forward", "fresh")
    killed = policy.killed_fields(job, Kill(step, "killed"), this=True)
    assert killed["status"] == ">cap" and "cap 0.5 s" in killed["reason"] and "+ 2 s" in killed["reason"]
    implied = policy.killed_fields(job, Kill(step, "killed"), this=False)
    assert implied == {"status": ">cap", "reason": "not run: time forward ran past the cap"}
    crashed = policy.killed_fields(job, Kill(step, "crashed", rc=-11), this=True)
    assert crashed["status"] == "failed" and "exit -11" in crashed["reason"]


@pytest.mark.parametrize("workers", [0, 1, None], ids=["no-scheduler", "one-worker", "default-scheduler"])
def test_the_harness_is_correct_with_or_without_its_prepare_scheduler(workers):
    """Checks (and what they decide) reach the timing processes whether the prepare
    phase is scheduled or each library's checks run in turn."""
    shapes = {"x": (2, 3, 6, 6), "weight": (4, 3, 3, 3, 4, 4)}
    jobs = [Job(op_spec(el.locally_connected2d), shapes, {}, name, regimes=("fresh",), budget_s=0.005, memory=False,
                check_shapes=shapes) for name in ("bmm:numpy", "einsum:numpy")]
    recs = run_jobs(jobs, prepare_workers=workers)
    assert sorted((r["backend"], r["pass"]) for r in recs) == sorted(
        (b, p) for b in ("bmm:numpy", "einsum:numpy") for p in ("forward", "backward"))
    assert all(r["status"] == "ok" and r["median_s"] > 0 for r in recs)
