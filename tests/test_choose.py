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
