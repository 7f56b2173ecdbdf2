"""einlocal.timing: call order, statistics, budget and cap, on fake clocks and devices."""

import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from einlocal.timing import FIRST_CALL_RETRY, CudaEventClock, Timing, measure, no_sync, sync_for, thread_info


class FakeClock:
    """Returns the given durations in order and logs start/stop."""

    def __init__(self, durations, log):
        self.durations = list(durations)
        self.log = log

    def start(self):
        self.log.append("start")
        return None

    def stop(self, token):
        self.log.append("stop")
        return self.durations.pop(0)


def logged(log):
    def fn(*args):
        log.append("fn")
        return args

    def sync(result):
        log.append("sync")

    return fn, sync


def test_sync_runs_before_the_end_time_every_call():
    log = []
    fn, sync = logged(log)
    t = measure(fn, sync=sync, clock=FakeClock([1.0] * 6, log), budget_s=0, warmup=1, min_reps=4)
    assert t.n == 4
    assert log == ["start", "fn", "sync", "stop"] * 6  # first + warm-up + 4 reps


def test_check_sees_the_first_result_before_any_other_call():
    log, seen = [], []
    fn, sync = logged(log)
    measure(fn, sync=sync, clock=FakeClock([1.0] * 6, log), budget_s=0, warmup=1, min_reps=2,
            check=lambda result: seen.append(list(log)))
    assert seen == [["start", "fn", "sync", "stop"]]


def test_a_failing_check_ends_the_measurement():
    log = []
    fn, sync = logged(log)

    def check(result):
        raise ValueError("wrong result")
    with pytest.raises(ValueError, match="wrong result"):
        measure(fn, sync=sync, clock=FakeClock([1.0] * 6, log), check=check)
    assert log.count("fn") == 1


@pytest.mark.parametrize("warmup", [0, 2])
def test_probe_runs_one_untimed_call_in_place_of_a_warm_up(warmup):
    log = []
    fn, sync = logged(log)

    def probe(call):
        log.append("probe")
        call()
        return "peak"
    t = measure(fn, sync=sync, clock=FakeClock([1.0] * 6, log), budget_s=0, warmup=warmup, min_reps=2, probe=probe)
    timed = ["start", "fn", "sync", "stop"]
    probed = ["probe", "fn", "sync"]
    assert t.probe == "peak" and t.n == 2
    if warmup:
        assert log == timed + probed + timed * (warmup - 1) + timed * 2
    else:
        assert log == timed + timed * 2 + probed


def test_setup_runs_outside_the_timed_region_and_feeds_fn():
    log, seen = [], []

    def setup():
        log.append("setup")
        return len(log)

    def fn(arg):
        seen.append(arg)
        log.append("fn")

    measure(fn, setup=setup, sync=no_sync, clock=FakeClock([1.0] * 4, log), budget_s=0,
            warmup=0, min_reps=3)
    assert log == ["setup", "start", "fn", "stop"] * 4
    assert len(set(seen)) == 4  # a fresh setup result each call


def test_median_and_iqr_of_known_durations():
    log = []
    fn, sync = logged(log)
    clock = FakeClock([5.0, 9.0, 1.0, 2.0, 3.0, 4.0, 100.0], log)
    t = measure(fn, sync=sync, clock=clock, budget_s=0, warmup=1, min_reps=5)
    assert t.first_call_s == 5.0
    assert t.times == (1.0, 2.0, 3.0, 4.0, 100.0)  # the warm-up (9.0) is not kept
    assert (t.median_s, t.q1_s, t.q3_s, t.iqr_s, t.n) == (3.0, 2.0, 4.0, 2.0, 5)
    assert t.spread == pytest.approx(2 / 3)
    assert not t.capped


def test_repeats_until_the_budget_is_spent():
    log = []
    fn, sync = logged(log)
    t = measure(fn, sync=sync, clock=FakeClock([0.1] * 20, log), budget_s=0.35, warmup=0,
                min_reps=1)
    assert t.n == 4


def test_max_reps_bounds_repetitions():
    log = []
    fn, sync = logged(log)
    t = measure(fn, sync=sync, clock=FakeClock([0.0] * 20, log), budget_s=10, warmup=0,
                max_reps=7)
    assert t.n == 7


def test_slow_first_call_is_capped_without_repeating():
    log = []
    fn, sync = logged(log)
    t = measure(fn, sync=sync, clock=FakeClock([10.0] * 10, log), cap_s=1.0, min_reps=5)
    assert t.capped and t.n == 0 and t.first_call_s == 10.0 and t.median_s == 10.0
    assert log.count("fn") == 1


def test_first_call_allowance_lets_a_compile_through_but_not_a_slow_call():
    log = []
    fn, sync = logged(log)
    # a 3 s first call (compile) under cap 1 s + 5 s allowance, then fast calls: timed
    t = measure(fn, sync=sync, clock=FakeClock([3.0] + [0.1] * 10, log), cap_s=1.0, first_call_allowance_s=5.0,
                budget_s=0.25, warmup=0, min_reps=1)
    assert not t.capped and t.first_call_s == 3.0 and t.median_s == 0.1 and t.n == 3
    # the same first call, then a repetition past the cap: >cap
    t = measure(fn, sync=sync, clock=FakeClock([3.0, 2.0], []), cap_s=1.0, first_call_allowance_s=5.0,
                budget_s=1, warmup=0, min_reps=1)
    assert t.capped and "repetition" in t.note
    # a first call far past cap + allowance is not waited for again
    t = measure(fn, sync=sync, clock=FakeClock([9.0], []), cap_s=1.0, first_call_allowance_s=5.0)
    assert t.capped and t.n == 0 and "for compiling" in t.note


def test_a_first_call_a_little_past_the_cap_gets_one_more_call():
    """A library's first use of a pass (thread pools, page faults) may push the first
    call past the cap: the next call decides, and is the first repetition."""
    log = []
    fn, sync = logged(log)
    t = measure(fn, sync=sync, clock=FakeClock([0.6, 0.1, 0.1, 0.1], log), cap_s=0.5, budget_s=0.25, warmup=1,
                min_reps=1)
    assert not t.capped and t.first_call_s == 0.6 and t.times == (0.1, 0.1, 0.1) and t.median_s == 0.1
    assert "first call 0.6 s past the cap" in t.note and log.count("fn") == 4
    # the next call past the cap too: >cap, nothing more run
    log.clear()
    t = measure(fn, sync=sync, clock=FakeClock([0.6, 0.7, 0.1], log), cap_s=0.5, budget_s=1, warmup=0, min_reps=1)
    assert t.capped and t.n == 0 and t.first_call_s == 0.6 and "the next 0.7 s" in t.note and log.count("fn") == 2
    # more than FIRST_CALL_RETRY caps past it: >cap at once
    log.clear()
    t = measure(fn, sync=sync, clock=FakeClock([0.6 + FIRST_CALL_RETRY * 0.5, 0.1], log), cap_s=0.5, warmup=0)
    assert t.capped and log.count("fn") == 1


def test_cap_total_reached_reports_the_median_of_what_was_measured():
    # single calls well under the cap: never >cap, even when together they pass it
    log = []
    fn, sync = logged(log)
    clock = FakeClock([0.1, 0.1] + [0.5] * 10, log)
    t = measure(fn, sync=sync, clock=clock, cap_s=1.0, budget_s=100, warmup=1, min_reps=5)
    assert not t.capped and t.n == 2  # 0.1 + 0.1 + 0.5 + 0.5 > 1.0: no further call starts
    assert t.median_s == 0.5 and "n=2" in t.note
    assert log.count("fn") == 4


def test_first_call_alone_when_no_repetition_fits_the_cap():
    # report case: single call 0.675 s, cap 1.5 s -> a time, not >cap
    log = []
    fn, sync = logged(log)
    t = measure(fn, sync=sync, clock=FakeClock([0.675, 0.9] + [0.7] * 10, log), cap_s=1.5,
                budget_s=100, warmup=1, min_reps=3)
    assert not t.capped and t.n == 1 and t.median_s == 0.675 and t.times == (0.675,)
    assert "first call only" in t.note
    assert log.count("fn") == 2


def test_one_repetition_within_the_cap_is_a_sample():
    log = []
    fn, sync = logged(log)
    t = measure(fn, sync=sync, clock=FakeClock([0.4, 0.7] + [0.3] * 10, log), cap_s=1.0,
                budget_s=100, warmup=0, min_reps=3)
    assert not t.capped and t.n == 1 and t.median_s == 0.7


def test_a_single_repetition_past_the_cap_is_capped():
    log = []
    fn, sync = logged(log)
    t = measure(fn, sync=sync, clock=FakeClock([0.2, 0.2, 2.0] + [0.2] * 10, log), cap_s=1.0,
                budget_s=100, warmup=0, min_reps=5)
    assert t.capped and t.n == 2
    assert log.count("fn") == 3


def test_a_warm_up_call_past_the_cap_is_capped():
    log = []
    fn, sync = logged(log)
    t = measure(fn, sync=sync, clock=FakeClock([0.2, 3.0] + [0.2] * 10, log), cap_s=1.0,
                budget_s=100, warmup=1, min_reps=5)
    assert t.capped and t.n == 0 and t.first_call_s == 0.2


def test_cap_reached_after_min_reps_is_not_capped():
    log = []
    fn, sync = logged(log)
    t = measure(fn, sync=sync, clock=FakeClock([0.1] * 20, log), cap_s=0.55, budget_s=100,
                warmup=0, min_reps=3)
    assert not t.capped and t.n == 5 and t.note == ""


class FakeEvent:
    def __init__(self, log, name, times):
        self.log, self.name, self.times = log, name, times

    def record(self):
        self.log.append(f"{self.name}.record")

    def synchronize(self):
        self.log.append(f"{self.name}.synchronize")

    def elapsed_time(self, end):
        self.log.append(f"{self.name}.elapsed_time({end.name})")
        return self.times.pop(0)


def event_factory(log, times):
    count = iter(range(1000))
    return lambda: FakeEvent(log, f"e{next(count)}", times)


def test_cuda_event_clock_synchronises_before_reading_elapsed_time():
    log = []
    fn, sync = logged(log)
    clock = CudaEventClock(event_factory(log, [4.0, 2.0, 3.0, 1.0]))
    t = measure(fn, sync=sync, clock=clock, budget_s=0, warmup=0, min_reps=3)
    assert t.first_call_s == pytest.approx(4e-3)
    assert t.times == pytest.approx((2e-3, 3e-3, 1e-3))
    for i in range(4):  # each call: its own pair of events
        b, e = f"e{2 * i}", f"e{2 * i + 1}"
        assert log[6 * i: 6 * i + 6] == [f"{b}.record", "fn", "sync", f"{e}.record",
                                         f"{e}.synchronize", f"{b}.elapsed_time({e})"]
    # every elapsed_time read follows its end event's synchronize
    for i, entry in enumerate(log):
        if ".elapsed_time(" in entry:
            end = entry.split("(")[1].rstrip(")")
            assert log[i - 1] == f"{end}.synchronize"
            assert log[i - 2] == f"{end}.record" and log[i - 3] == "sync"


class FakeCudaTensor:
    __module__ = "torch"
    is_cuda = True

    def __init__(self, device):
        self.device = device


@pytest.fixture
def fake_torch(monkeypatch):
    log = []
    cuda = types.SimpleNamespace(
        synchronize=lambda device=None: log.append(("synchronize", device)),
        Event=lambda enable_timing: FakeEvent(log, "ev", [1.0] * 100),
    )
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda, Tensor=FakeCudaTensor))
    return log


def test_sync_for_cuda_tensors_synchronises_each_device(fake_torch):
    tree = {"y": FakeCudaTensor("cuda:0"), "grads": [FakeCudaTensor("cuda:1"),
                                                      FakeCudaTensor("cuda:0")]}
    sync_for(tree)(tree)
    assert fake_torch == [("synchronize", "cuda:0"), ("synchronize", "cuda:1")]


def test_cuda_result_is_timed_with_events_by_default(fake_torch):
    t = measure(lambda: FakeCudaTensor("cuda:0"), budget_s=0, warmup=0, min_reps=2)
    assert t.times == (1e-3, 1e-3)  # the fake events' 1 ms, not wall-clock
    assert ("synchronize", "cuda:0") in fake_torch


def test_sync_for_host_arrays_is_a_no_op():
    assert sync_for(np.ones(3)) is no_sync
    assert sync_for((np.ones(3), [np.zeros(2)], {"a": None})) is no_sync


def test_sync_for_jax_blocks_until_ready():
    jax = pytest.importorskip("jax")
    x = jax.numpy.ones(3)
    assert sync_for((x, x)) is jax.block_until_ready


def test_measure_real_function_returns_timing():
    t = measure(lambda: np.ones(100).sum(), budget_s=0.01)
    assert isinstance(t, Timing) and t.n >= 3 and t.q1_s <= t.median_s <= t.q3_s


def test_set_threads_reaches_env_and_blas():
    code = ("import numpy, json; from einlocal.timing import set_threads, thread_info;"
            "set_threads(1); print(json.dumps(thread_info()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    info = json.loads(out.stdout)
    assert info["env"]["OMP_NUM_THREADS"] == "1"
    assert "--xla_cpu_multi_thread_eigen=false" in info["env"]["XLA_FLAGS"]
    assert all(pool["num_threads"] == 1 for pool in info["threadpools"])


def test_thread_info_lists_environment(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert thread_info()["env"]["OMP_NUM_THREADS"] == "3"


def test_thread_info_names_the_blas_kernels():
    """The CPU kernels OpenBLAS picked (OPENBLAS_CORETYPE forces them) reach
    thread_info, so timings say which BLAS code ran."""
    code = "import numpy, json; from einlocal.timing import thread_info; print(json.dumps(thread_info()))"
    env = {**os.environ, "OPENBLAS_CORETYPE": "Haswell"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    pools = [p for p in json.loads(out.stdout)["threadpools"] if p["internal_api"] == "openblas"]
    if not pools:
        pytest.skip("numpy here is not linked to OpenBLAS")
    assert {p["architecture"] for p in pools} == {"Haswell"}
