"""Untuned calls: EINLOCAL_RECORD_UNTUNED records the misses of backend="auto", `einlocal tune`
measures them and fills the cache, EINLOCAL_REQUIRE_TUNED makes a miss an error."""
import importlib
import json

import numpy as np
import pytest

import einlocal as el
from einlocal import timing
from einlocal.cli import main

auto = importlib.import_module("einlocal.auto")
untuned = importlib.import_module("einlocal.untuned")

OP = el.Op("y[b,o,t] += x[b,c,2*t+3*k-2] * w[o,c,k,t]", pad=0)
FAST = ["--budget", "0.002", "--backends", "einsum:numpy,bmm:numpy"]


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("EINLOCAL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("EINLOCAL_RECORD_UNTUNED", raising=False)
    monkeypatch.delenv("EINLOCAL_REQUIRE_TUNED", raising=False)
    auto._cache_state.clear()
    untuned._recorded.clear()
    yield tmp_path / "cache"
    auto._cache_state.clear()


def depthwise(n=2, padding=1):
    rng = np.random.default_rng(n)
    return (rng.standard_normal((n, 3, 8, 8), dtype=np.float32), rng.standard_normal((6, 1, 3, 3), dtype=np.float32),
            {"padding": padding})


def statement_arrays():
    rng = np.random.default_rng(1)
    return {"x": rng.standard_normal((2, 3, 12)), "w": rng.standard_normal((2, 3, 3, 6))}


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_misses_are_recorded_once_with_op_shapes_params_dtype_device(tmp_path, monkeypatch):
    record = tmp_path / "untuned.jsonl"
    monkeypatch.setenv("EINLOCAL_RECORD_UNTUNED", str(record))
    x, w, params = depthwise()
    for _ in range(3):
        el.depthwise_conv2d(x, w, **params)
    OP(**statement_arrays())
    got = lines(record)
    assert len(got) == 2
    assert got[0] == {"op": {"op": "depthwise_conv2d"}, "shapes": [["x", [2, 3, 8, 8]], ["weight", [6, 1, 3, 3]]],
                      "params": {"stride": [1, 1], "padding": [[1, 1], [1, 1]], "dilation": [1, 1]},
                      "dtype": "float32", "library": "numpy", "device": "cpu"}
    assert got[1]["op"] == {"statement": "y[b,o,t] += x[b,c,t*2+k*3-2] * w[o,c,k,t]", "pad": True}
    assert got[1]["dtype"] == "float64" and got[1]["shapes"] == [["x", [2, 3, 12]], ["w", [2, 3, 3, 6]]]
    el.depthwise_conv2d(x, w, backend="einsum:numpy", **params)      # a named backend is no miss
    assert len(lines(record)) == 2


def test_record_tune_then_auto_uses_the_measured_choice_and_require_tuned_passes(tmp_path, monkeypatch, capsys):
    record = tmp_path / "untuned.jsonl"
    monkeypatch.setenv("EINLOCAL_RECORD_UNTUNED", str(record))
    x, w, params = depthwise()
    el.depthwise_conv2d(x, w, **params)
    OP(**statement_arrays())
    el.conv2d(np.ones((2, 4, 8, 8), np.float32), np.ones((6, 2, 3, 3), np.float32), groups=2, stride=2)
    assert len(lines(record)) == 3

    assert main(["tune", str(record), *FAST]) == 0
    out = capsys.readouterr().out
    assert out.count("  tuned: ") == 3 and "3 of 3 calls tuned or already cached" in out
    assert "depthwise_conv2d x=2x3x8x8 weight=6x1x3x3" in out and "Op('y[b,o,t]" in out and "groups=2" in out
    assert main(["tune", str(record), *FAST]) == 0        # a second run measures nothing
    assert capsys.readouterr().out.count("  cached: ") == 3

    # a new process's view: the cache read afresh; auto now runs the measured choice, the cost model unused
    auto._cache_state.clear()
    monkeypatch.setattr(auto, "_unmeasured_choice", lambda *a, **k: pytest.fail("the cost model was used"))
    monkeypatch.setattr(timing, "measure", lambda *a, **k: pytest.fail("auto measured"))
    monkeypatch.setenv("EINLOCAL_REQUIRE_TUNED", "1")
    assert el.depthwise_conv2d(x, w, **params).shape == (2, 6, 8, 8)
    assert OP(**statement_arrays()).shape == (2, 2, 6)
    assert len(lines(record)) == 3            # hits are not recorded


def test_require_tuned_makes_a_miss_an_error_naming_the_call(tmp_path, monkeypatch):
    record = tmp_path / "untuned.jsonl"
    monkeypatch.setenv("EINLOCAL_RECORD_UNTUNED", str(record))
    monkeypatch.setenv("EINLOCAL_REQUIRE_TUNED", "1")
    x, w, params = depthwise(n=4, padding=2)
    with pytest.raises(el.BackendError, match=r"no measured choice for depthwise_conv2d x=4x3x8x8 weight=6x1x3x3 "
                                              r"stride=1 padding=2 dilation=1 float32 numpy on cpu, and "
                                              r"EINLOCAL_REQUIRE_TUNED is set"):
        el.depthwise_conv2d(x, w, **params)
    assert lines(record)[0]["params"]["padding"] == [[2, 2], [2, 2]]     # recorded before refusing
    with pytest.raises(el.BackendError, match=r"Op\('y\[b,o,t\]"):
        OP(**statement_arrays())
    monkeypatch.setenv("EINLOCAL_REQUIRE_TUNED", "0")
    assert el.depthwise_conv2d(x, w, **params).shape == (4, 6, 10, 10)


def test_a_bad_require_tuned_value_is_named(monkeypatch):
    monkeypatch.setenv("EINLOCAL_REQUIRE_TUNED", "maybe")
    x, w, params = depthwise()
    with pytest.raises(el.BackendError, match=r"EINLOCAL_REQUIRE_TUNED='maybe': expected 1 \(on\) or 0 \(off\)"):
        el.depthwise_conv2d(x, w, **params)


def test_an_unwritable_record_file_warns_and_the_call_runs(tmp_path, monkeypatch):
    (tmp_path / "a_folder").mkdir()
    monkeypatch.setenv("EINLOCAL_RECORD_UNTUNED", str(tmp_path / "a_folder"))
    x, w, params = depthwise()
    with pytest.warns(RuntimeWarning, match="EINLOCAL_RECORD_UNTUNED=.*a_folder: cannot append to it"):
        assert el.depthwise_conv2d(x, w, **params).shape == (2, 6, 8, 8)


def test_tune_reports_bad_lines_and_calls_it_cannot_rebuild(tmp_path, capsys):
    record = tmp_path / "untuned.jsonl"
    good = {"op": {"op": "depthwise_conv2d"}, "shapes": [["x", [1, 2, 6, 6]], ["weight", [2, 1, 3, 3]]],
            "params": {"stride": [1, 1], "padding": [[0, 0], [0, 0]], "dilation": [1, 1]},
            "dtype": "float32", "library": "numpy", "device": "cpu"}
    unknown = dict(good, op={"op": "no_such_op"})
    wrong = dict(good, shapes=[["x", [1, 2, 6, 6]], ["weight", [3, 1, 3, 3]]])
    record.write_text("\n".join([json.dumps(good), "not json", json.dumps(unknown), json.dumps(wrong)]) + "\n")
    assert main(["tune", str(record), *FAST]) == 1
    out = capsys.readouterr().out
    assert "  tuned: depthwise_conv2d x=1x2x6x6" in out
    assert "  failed: line 2: not a recorded call" in out
    assert "unknown op 'no_such_op'" in out
    assert "depthwise weight axis 0 is 3, not a multiple of x's 2 channels" in out
    assert "1 of 4 calls tuned or already cached; 3 failed" in out


def test_tune_of_a_missing_file_is_one_line_exit_2(tmp_path, capsys):
    assert main(["tune", str(tmp_path / "nothing.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("einlocal tune: RecordFileError: cannot read") and "nothing.jsonl" in err[0]


def test_tune_measures_torch_tensors_on_the_recorded_device(tmp_path, monkeypatch, capsys):
    torch = pytest.importorskip("torch")
    record = tmp_path / "untuned.jsonl"
    monkeypatch.setenv("EINLOCAL_RECORD_UNTUNED", str(record))
    el.locally_connected2d(torch.rand(2, 3, 6, 6), torch.rand(4, 3, 3, 3, 4, 4))
    assert lines(record)[0]["library"] == "torch"
    assert main(["tune", str(record), "--budget", "0.002", "--backends", "einsum:torch,bmm:torch"]) == 0
    assert "  tuned: locally_connected2d x=2x3x6x6 weight=4x3x3x3x4x4" in capsys.readouterr().out
    monkeypatch.setenv("EINLOCAL_REQUIRE_TUNED", "1")
    assert el.locally_connected2d(torch.rand(2, 3, 6, 6), torch.rand(4, 3, 3, 3, 4, 4)).shape == (2, 4, 4, 4)


def test_inside_jax_jit_auto_uses_the_measured_choice_of_the_default_device(monkeypatch):
    jax = pytest.importorskip("jax")
    x, w, params = depthwise()
    x, w = jax.numpy.asarray(x), jax.numpy.asarray(w)
    traced = jax.jit(lambda x, w: el.depthwise_conv2d(x, w, **params))
    monkeypatch.setenv("EINLOCAL_REQUIRE_TUNED", "1")
    with pytest.raises(el.BackendError, match=r"depthwise_conv2d x=2x3x8x8 .* float32 jax on cpu, and "):
        traced(x, w)                              # tracers have no device: the key names the default one
    name = el.choose(el.depthwise_conv2d, x, w, backends=["einsum:jax", "bmm:jax"], budget_s=0.002, **params)
    ran = []
    real = auto.auto_backend
    monkeypatch.setattr(auto, "auto_backend", lambda *a, **k: ran.append(real(*a, **k)) or ran[-1])
    assert traced(x, w).shape == (2, 6, 8, 8) and ran == [name]
