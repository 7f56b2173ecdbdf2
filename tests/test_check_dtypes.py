"""A check runs the dtype it names, or lists the backend as skipped with the
reason: bfloat16 runs bfloat16 on torch and jax, float16 on loops:numba
and float64 on jax without its 64-bit mode are skipped, never "fail"."""
import os
import subprocess
import sys

import pytest

import einlocal as el
from einlocal import registry

SHAPES = dict(x=(2, 3, 6, 6), weight=(6, 1, 3, 3), bias=(6,), padding=1)


@pytest.mark.parametrize("name", ["bmm:torch", "einsum:jax"])
def test_a_bfloat16_check_runs_bfloat16(name, monkeypatch):
    lib = name.split(":")[1]
    pytest.importorskip(lib)
    real = registry.get(name)
    seen = set()

    class Recording(type(real)):
        def execute(self, plan, operands, out=None):
            seen.update(str(a.dtype).rsplit(".", 1)[-1] for a in operands.values())
            return super().execute(plan, operands, out)

    recording = Recording(lib)
    get = registry.get
    monkeypatch.setattr(registry, "get", lambda n: recording if n == name else get(n))
    report = el.check(el.depthwise_conv2d, backends=[name], dtype="bfloat16", seed=1, **SHAPES)
    assert report.rows[0].status == "pass", str(report)
    assert seen == {"bfloat16"}


def test_float16_on_numba_and_bfloat16_on_numpy_are_skipped_with_the_reason():
    report = el.check(el.depthwise_conv2d, backends=["loops:numba", "bmm:numpy"], dtype="float16", seed=2,
                      **SHAPES)
    numba = report.rows[0]
    assert numba.status == "skipped" and "computes in float32 or float64, not float16" in numba.reason
    assert report.rows[1].status == "pass" and report.ok
    report = el.check(el.depthwise_conv2d, backends=["bmm:numpy"], dtype="bfloat16", seed=2, **SHAPES)
    assert report.rows[0].status == "skipped" and "numpy has no bfloat16" in report.rows[0].reason


def test_a_float64_check_without_jax_64_bit_mode_skips_jax_with_the_reason(tmp_path):
    pytest.importorskip("jax")
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    env["EINLOCAL_CACHE_DIR"] = str(tmp_path)
    r = subprocess.run([sys.executable, "-m", "einlocal.cli", "check", "conv2d", "--x", "1,2,5,5", "--weight",
                        "2,2,3,3", "--dtype", "float64", "--backends", "bmm:jax,einsum:jax,bmm:numpy"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "FAILED" not in r.stdout
    jax_rows = [line for line in r.stdout.splitlines() if line.startswith(("bmm:jax", "einsum:jax"))]
    assert len(jax_rows) == 2 and all("skipped" in line and "JAX_ENABLE_X64" in line for line in jax_rows)
    assert any(line.startswith("bmm:numpy") and " pass " in line for line in r.stdout.splitlines())
