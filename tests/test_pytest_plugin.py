"""The pytest plugin: einlocal_bench checks, then times, in a user's own test suite."""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("pytest_benchmark")

pytest_plugins = ["pytester"]

USER_TEST = """
import numpy as np
import pytest
import einlocal as el
from einlocal.pytest_plugin import backends_for

rng = np.random.default_rng(0)
x = rng.random((2, 4, 6, 6)).astype(np.float32)
w = rng.random((8, 1, 3, 3)).astype(np.float32)

def test_bmm(einlocal_bench):
    einlocal_bench(el.depthwise_conv2d, x, w, padding=1, backend="bmm:numpy")

def test_op_by_keyword(einlocal_bench):
    op = el.Op("y[b,o,t] += x[b,c,t+k] * w[o,c,k,t]")
    einlocal_bench(op, x=rng.random((2, 3, 8)), w=rng.random((4, 3, 3, 6)), backend="einsum:numpy",
                   pass_="backward")

@pytest.mark.parametrize("backend", backends_for(el.depthwise_conv2d, x, w, padding=1))
def test_every_backend(einlocal_bench, backend):
    einlocal_bench(el.depthwise_conv2d, x, w, padding=1, backend=backend)
"""

FAST = ["-p", "no:cacheprovider", "--benchmark-max-time=0.01", "--benchmark-min-rounds=2",
        "--einlocal-no-roofline"]


def test_a_user_suite_checks_times_and_records(pytester):
    pytester.makepyfile(test_user=USER_TEST)
    result = pytester.runpytest_subprocess(*FAST, "--benchmark-json", "b.json")
    result.assert_outcomes(passed=2 + len(_numpy_backends()))
    data = json.loads((pytester.path / "b.json").read_text())
    by_name = {b["name"]: b["extra_info"] for b in data["benchmarks"]}
    info = by_name["test_bmm"]
    assert info["backend"] == "bmm:numpy" and info["pass"] == "forward" and info["op"] == "depthwise_conv2d"
    assert info["shapes"] == {"x": [2, 4, 6, 6], "weight": [8, 1, 3, 3]} and info["params"] == {"padding": 1}
    assert 0 <= info["check_error"] <= info["check_tolerance"] and info["flops"] > 0 and info["bytes"] > 0
    assert by_name["test_op_by_keyword"]["pass"] == "backward"
    assert by_name["test_op_by_keyword"]["op"] == "y[b,o,t] += x[b,c,t+k] * w[o,c,k,t]"
    table = subprocess.run([sys.executable, "-m", "einlocal.cli", "table", str(pytester.path / "b.json")],
                           capture_output=True, text=True, check=True).stdout
    assert "| bmm:numpy |" in table and "| einsum:numpy |" in table


def _numpy_backends():
    import einlocal as el
    import numpy as np
    x, w = np.ones((2, 4, 6, 6), np.float32), np.ones((8, 1, 3, 3), np.float32)
    return [n for n in el.backends(el.depthwise_conv2d, like={"x": x, "weight": w}, padding=1)
            if n != "loops:python"]


def test_a_wrong_result_fails_the_test_before_timing(pytester):
    pytester.makeconftest("""
import einlocal.reference as reference
real = reference.reference_outputs
def shifted(call, arrays, dy, backend=None):
    out = real(call, arrays, dy, backend)
    y, scale, terms = out["y"]
    out["y"] = (y + 1.0, scale, terms)
    return out
reference.reference_outputs = shifted
""")
    pytester.makepyfile(test_user=USER_TEST)
    result = pytester.runpytest_subprocess(*FAST, "-k", "test_bmm")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*bmm:numpy forward of depthwise_conv2d disagrees with the float64 reference*"])


def test_without_pytest_benchmark_the_fixture_skips_with_the_reason(pytester):
    pytester.makepyfile(test_user=USER_TEST)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:benchmark", "-rs", "-k", "test_bmm")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*pytest-benchmark, which is not installed*"])


def test_loading_the_plugin_imports_no_framework_and_sets_no_variable():
    code = ("import os, sys, json; before = dict(os.environ); import einlocal.pytest_plugin; "
            "print(json.dumps({'mods': sorted(m for m in ('torch', 'jax', 'cupy', 'numba', 'triton', 'opt_einsum') "
            "if m in sys.modules), 'env': dict(os.environ) == before}))")
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_ENABLE_X64",)}
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                    env=env).stdout)
    assert out == {"mods": [], "env": True}
