"""el.choose measures once and caches; backend="auto" uses the cache, else the cost model, never measuring."""
import importlib
import os

import numpy as np
import pytest

import einlocal as el
from einlocal import registry, timing

auto = importlib.import_module("einlocal.auto")


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("EINLOCAL_CACHE_DIR", str(tmp_path))
    auto._cache_state.clear()
    yield tmp_path
    auto._cache_state.clear()


def arrays(seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((2, 3, 8, 8), dtype=np.float32), rng.standard_normal((6, 1, 3, 3), dtype=np.float32)


def test_choose_measures_the_candidates_then_uses_the_cache(monkeypatch):
    x, w = arrays()
    calls = []
    real = timing.measure
    monkeypatch.setattr(timing, "measure", lambda *a, **k: calls.append(1) or real(*a, **k))
    entry = el.choose(el.depthwise_conv2d, x, w, padding=1, backends=["bmm:numpy", "einsum:numpy"],
                      budget_s=0.005, details=True)
    assert calls and set(entry["seconds"]) == {"bmm:numpy", "einsum:numpy"}
    assert entry["backend"] == min(entry["seconds"], key=entry["seconds"].get)
    n = len(calls)
    assert el.choose(el.depthwise_conv2d, x, w, padding=1) == entry["backend"]
    assert len(calls) == n   # cached: nothing measured


def test_auto_uses_the_cached_choice_and_never_measures(monkeypatch):
    x, w = arrays()
    call = el.depthwise_conv2d.bind(x, w, padding=1)
    key = auto.choice_key(call, "numpy", "float32", "cpu")
    for cached in ("einsum:numpy", "broadcast:numpy"):
        auto.choice_cache().put(key, {"backend": cached})
        monkeypatch.setattr(timing, "measure", lambda *a, **k: pytest.fail("auto measured"))
        monkeypatch.setattr(auto, "cost_model_choice", lambda *a, **k: pytest.fail("cost model used"))
        ran = []
        b = registry.get(cached)
        real_forward = type(b).forward
        monkeypatch.setattr(b, "forward", lambda *a, **k: ran.append(cached) or real_forward(b, *a, **k))
        y = el.depthwise_conv2d(x, w, padding=1)
        assert ran == [cached] and y.shape == (2, 6, 8, 8)
        monkeypatch.undo()
        auto._cache_state.clear()


def test_auto_lookup_does_not_rewrite_the_cache_file(cache_dir):
    x, w = arrays()
    el.choose(el.depthwise_conv2d, x, w, backends=["bmm:numpy"], budget_s=0.002)
    path = cache_dir / "choices.json"
    before = os.stat(path).st_mtime_ns
    for _ in range(5):
        el.depthwise_conv2d(x, w)
    assert os.stat(path).st_mtime_ns == before


def test_without_a_cached_entry_auto_uses_the_cost_model(monkeypatch):
    monkeypatch.setattr(timing, "measure", lambda *a, **k: pytest.fail("auto measured"))
    x, w = arrays()
    call = el.depthwise_conv2d.bind(x, w)
    name = auto.auto_backend(call, "numpy", "cpu", dtype="float32")
    names = auto.candidates(call, "numpy", "cpu", array_strategies_only=True)
    assert name == auto.cost_model_choice(call, "numpy", "cpu", names=names)
    assert name in el.backends(el.depthwise_conv2d, like={"x": x, "weight": w}) and name != "loops:python"


def test_cost_model_charges_intermediates():
    x, w = np.zeros((8, 16, 28, 28), "f4"), np.zeros((16, 16, 3, 3, 26, 26), "f4")
    call = el.locally_connected2d.bind(x, w)
    broadcast = auto.estimate_seconds(call, "broadcast:numpy", "numpy")
    bmm = auto.estimate_seconds(call, "bmm:numpy", "numpy")
    assert broadcast > bmm > 0


def test_choose_drops_backends_over_the_memory_guard():
    x, w = arrays()
    el.set_memory_budget(64)
    with pytest.raises(el.BackendError, match="memory guard"):
        el.choose(el.depthwise_conv2d, x, w, backends=["broadcast:numpy"], budget_s=0.002)


def test_key_separates_dtypes():
    x, w = arrays()
    call = el.depthwise_conv2d.bind(x, w)
    assert auto.choice_key(call, "numpy", "float32", "cpu") != \
        auto.choice_key(call, "numpy", "float64", "cpu")


choose_mod = importlib.import_module("einlocal.choose")


class _Log(list):
    reset = None


def scripted(monkeypatch, times):
    """Make measurement deterministic: each backend's time per round comes from
    `times[name]` (a list, one per round, the last repeated); returns the log of
    (backend, round) in the order measured."""
    log, rounds, times = _Log(), {}, dict(times)
    real_forward = choose_mod.forward
    seen = []

    def forward(call, arrays, backend):
        seen.append(backend)
        return real_forward(call, arrays, backend=backend)

    def measure(fn, **kw):
        seen.clear()
        fn()
        name = seen[-1]
        r = rounds[name] = rounds.get(name, -1) + 1
        log.append((name, r))
        t = times[name][min(r, len(times[name]) - 1)]
        return timing.Timing(t, 0.0, t, t, 1, t, False, (t,))

    def reset(new_times):
        """Script another el.choose: new times, rounds counted from 0 again."""
        log.clear()
        rounds.clear()
        times.clear()
        times.update(new_times)

    monkeypatch.setattr(choose_mod, "forward", forward)
    monkeypatch.setattr(timing, "measure", measure)
    log.reset = reset
    return log


def test_choose_measures_in_interleaved_rounds(monkeypatch):
    x, w = arrays()
    names = ["bmm:numpy", "einsum:numpy", "broadcast:numpy"]
    log = scripted(monkeypatch, {"bmm:numpy": [2e-4], "einsum:numpy": [1e-4], "broadcast:numpy": [1.5e-4]})
    entry = el.choose(el.depthwise_conv2d, x, w, backends=names, budget_s=1.0, rounds=4, details=True)
    assert entry["backend"] == "einsum:numpy" and entry["rounds"] == 4
    assert len(log) == 12
    for r in range(4):      # every candidate once per round before any is measured again
        assert sorted(n for n, k in log[3 * r:3 * r + 3]) == sorted(names) and {k for _, k in log[3 * r:3 * r + 3]} == {r}
    assert [n for n, _ in log[:3]] != [n for n, _ in log[3:6]]    # the order turns from round to round


def test_choose_takes_the_lower_quartile_of_the_rounds(monkeypatch):
    x, w = arrays()
    # bmm has one slow round (the machine was busy), einsum one lucky fast one: neither decides
    scripted(monkeypatch, {"bmm:numpy": [1e-4, 9e-4, 1e-4, 1e-4, 1e-4], "einsum:numpy": [2e-4, 2e-4, 0.5e-4, 2e-4, 2e-4]})
    entry = el.choose(el.depthwise_conv2d, x, w, backends=["bmm:numpy", "einsum:numpy"], budget_s=1.0, details=True)
    assert entry["backend"] == "bmm:numpy"
    assert entry["seconds"] == {"bmm:numpy": 1e-4, "einsum:numpy": 2e-4}


def test_clear_losers_are_measured_no_further(monkeypatch):
    x, w = arrays()
    log = scripted(monkeypatch, {"bmm:numpy": [1e-4], "einsum:numpy": [1.1e-4], "broadcast:numpy": [5e-4]})
    entry = el.choose(el.depthwise_conv2d, x, w, backends=["bmm:numpy", "einsum:numpy", "broadcast:numpy"],
                      budget_s=1.0, details=True)
    assert [n for n, _ in log].count("broadcast:numpy") == 1 and [n for n, _ in log].count("bmm:numpy") == 5
    assert entry["seconds"]["broadcast:numpy"] == 5e-4 and entry["backend"] == "bmm:numpy"


@pytest.mark.parametrize("challenger, replaced", [
    ([0.97e-4], False),                                   # 3% faster: noise, the cached choice stays
    ([0.5e-4, 0.5e-4, 2e-4, 2e-4, 0.5e-4], False),        # faster in the median, but only in 3 of 5 rounds
    ([0.8e-4, 0.8e-4, 1.2e-4, 0.8e-4, 0.8e-4], True),     # 20% faster in 4 of 5 rounds
])
def test_a_cached_choice_is_replaced_only_by_a_significantly_faster_one(monkeypatch, challenger, replaced):
    x, w = arrays()
    names = ["bmm:numpy", "einsum:numpy"]
    log = scripted(monkeypatch, {"bmm:numpy": [2e-4], "einsum:numpy": [1e-4]})
    assert el.choose(el.depthwise_conv2d, x, w, backends=names, budget_s=1.0) == "einsum:numpy"
    log.reset({"einsum:numpy": [1e-4], "bmm:numpy": challenger})
    entry = el.choose(el.depthwise_conv2d, x, w, backends=names, budget_s=1.0, refresh=True, details=True)
    assert entry["backend"] == ("bmm:numpy" if replaced else "einsum:numpy")
    assert ("kept" in entry) is not replaced
    assert el.choose(el.depthwise_conv2d, x, w) == entry["backend"]     # what the cache now holds


def test_the_entry_describes_the_call():
    x, w = arrays()
    entry = el.choose(el.depthwise_conv2d, x, w, padding=1, backends=["einsum:numpy"], budget_s=0.002, details=True)
    assert entry["op"] == {"op": "depthwise_conv2d"} and entry["params"] == {"padding": 1}
    assert entry["shapes"] == [["x", [2, 3, 8, 8]], ["weight", [6, 1, 3, 3]]]
    assert (entry["dtype"], entry["library"], entry["device"]) == ("float32", "numpy", "cpu")
    assert entry["measured"].endswith("Z") and entry["measured"][:4].isdigit()


@pytest.mark.parametrize("kw, match", [({"rounds": 0}, "rounds must be an int >= 1"),
                                       ({"margin": 1.5}, r"margin must be a number in \[0, 1\)")])
def test_choose_rejects_bad_rounds_and_margin(kw, match):
    x, w = arrays()
    with pytest.raises(el.BackendError, match=match):
        el.choose(el.depthwise_conv2d, x, w, **kw)
