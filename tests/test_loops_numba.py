"""loops:numba: the generated loop nests against the float64 reference, the
parallel-loop choice against the write-conflict analysis, CPU torch tensors
without copies, the on-disk kernel cache across processes, and errors that
carry the generated source.  Shapes are few and small: every distinct plan
is a numba compile."""
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import einlocal as el
from einlocal import registry

pytestmark = pytest.mark.compiled

NAME = "loops:numba"
if NAME in registry.unavailable():
    pytest.skip(f"{NAME}: {registry.unavailable()[NAME]}", allow_module_level=True)


@pytest.fixture(scope="module")
def numba_backend():
    return registry.get(NAME)


def _check(op, dtype="float64", **kw):
    report = el.check(op, backends=[NAME], dtype=dtype, seed=1234, **kw)
    assert report.rows[0].status == "pass", str(report)
    assert report.ok, str(report)


# -- differential tests ------------------------------------------------------------------

CASES = {
    # Cout > 1, overlapping windows (kernel 3, stride 2), padding: dx is a scatter
    "lc2d-stride2-pad1": (el.locally_connected2d, dict(x=(2, 3, 9, 9), weight=(4, 3, 3, 3, 5, 5), stride=2, padding=1)),
    "lc2d-dilation2": (el.locally_connected2d, dict(x=(2, 2, 9, 8), weight=(3, 2, 3, 2, 5, 6), dilation=2)),
    "lc1d-stride2-bias": (el.locally_connected1d, dict(x=(2, 3, 11), weight=(2, 3, 3, 5), bias=(2, 5), stride=2)),
    "depthwise-m2-pad1-stride2": (el.depthwise_conv2d, dict(x=(2, 3, 8, 8), weight=(6, 1, 3, 3), padding=1, stride=2,
                                                            bias=(6,))),
    "conv2d-groups2-dilation2": (el.conv2d, dict(x=(2, 4, 9, 9), weight=(4, 2, 3, 3), groups=2, dilation=2, padding=1)),
}


@pytest.mark.parametrize("case", list(CASES), ids=str)
def test_catalogue_float64(case):
    op, kw = CASES[case]
    _check(op, "float64", **kw)


@pytest.mark.parametrize("case", ["lc2d-stride2-pad1", "depthwise-m2-pad1-stride2"], ids=str)
def test_catalogue_float32(case):
    op, kw = CASES[case]
    _check(op, "float32", **kw)


def test_user_op_with_pad():
    op = el.Op("y[b,o,t] += x[b,c,2*t+3*k-2] * w[o,c,k,t]", pad=0)
    _check(op, "float64", x=(2, 3, 14), w=(4, 3, 3, 6))


def test_long_reduction_dot_form(numba_backend):
    """A short contiguous output axis with long reductions (a depthwise
    weight gradient) takes the dot form; it still matches the reference."""
    call = el.depthwise_conv2d.bind(np.zeros((2, 3, 20, 20)), np.zeros((3, 1, 3, 3)), None, padding=1)
    k = numba_backend.kernel(call.plan.backward["wt"])
    assert "acc +=" in k.source
    _check(el.depthwise_conv2d, "float64", x=(2, 3, 20, 20), weight=(3, 1, 3, 3), padding=1)


def test_strided_inputs_and_output(numba_backend):
    """Transposed inputs and an output that is not C-ordered: the kernel reads
    them as they are, and the innermost loop follows the output's strides."""
    from einlocal.backends.loops_python import reference
    rng = np.random.default_rng(0)
    call = el.locally_connected2d.bind(np.zeros((2, 3, 6, 7)), np.zeros((2, 3, 2, 2, 5, 6)), None)
    plan = call.plan
    x = np.asfortranarray(rng.standard_normal((2, 3, 6, 7)))
    wt = rng.standard_normal((6, 5, 2, 2, 3, 2)).transpose(5, 4, 3, 2, 1, 0)
    assert not x.flags.c_contiguous and not wt.flags.c_contiguous
    out = np.full(plan.out_shape[::-1], np.nan).T          # F-ordered output
    got = numba_backend.execute(plan, {"x": x, "wt": wt}, out)
    assert got is out
    np.testing.assert_allclose(out, reference(plan, {"x": x, "wt": wt}), rtol=1e-12, atol=1e-12)
    assert numba_backend.kernel(plan, tuple(s // 8 for s in out.strides)).inner == "n"
    assert numba_backend.kernel(plan).inner == "w"


# -- the parallel loop -----------------------------------------------------------------------


def _prange_indices(source: str) -> list[str]:
    return [m for m in re.findall(r"for i_(\w+) in numba\.prange", source)]


@pytest.mark.parametrize("case", ["lc2d-stride2-pad1", "depthwise-m2-pad1-stride2", "conv2d-groups2-dilation2"])
def test_prange_only_over_conflict_free_indices(case, numba_backend):
    op, kw = CASES[case]
    arrays = {k: np.zeros(v) for k, v in kw.items() if k in ("x", "weight", "bias")}
    params = {k: v for k, v in kw.items() if k not in arrays}
    call = op.bind(arrays["x"], arrays["weight"], arrays.get("bias"), **params)
    plans = [call.plan, *call.plan.backward.values()]
    assert any(p.conflicts.overlapping for p in plans) or case != "lc2d-stride2-pad1"
    for plan in plans:
        k = numba_backend.kernel(plan)
        found = _prange_indices(k.source)
        assert len(found) <= 1
        assert found == ([k.parallel] if k.parallel else [])
        for n in found:
            assert n in plan.conflicts.parallel, (n, str(plan.conflicts))
            overlapping_axes = {ax for ax, _ in plan.conflicts.overlapping}
            assert all(n not in plan.stmt.out.axes[ax].names for ax in overlapping_axes)


def test_scatter_parallel_over_batch(numba_backend):
    """dx of a stride-2 conv with overlapping windows: a scatter, parallel
    over an index its writes do not share."""
    call = el.locally_connected2d.bind(np.zeros((4, 3, 9, 9)), np.zeros((2, 3, 3, 3, 4, 4)), None, stride=2)
    plan = call.plan.backward["x"]
    assert plan.scatter and plan.conflicts.overlapping
    k = numba_backend.kernel(plan)
    assert k.prezero and k.parallel in ("n", "c")


# -- torch ---------------------------------------------------------------------------------


def test_torch_cpu_tensors(numba_backend):
    torch = pytest.importorskip("torch")
    from einlocal.backends.loops_numba import _numpy
    from einlocal.backends.loops_python import reference
    rng = np.random.default_rng(3)
    x_np, w_np = rng.standard_normal((2, 3, 8, 8)), rng.standard_normal((2, 3, 3, 3, 6, 6))
    x, w = torch.from_numpy(x_np), torch.from_numpy(w_np)
    assert np.shares_memory(_numpy(x, "x"), x_np) and np.shares_memory(_numpy(w, "w"), w_np)
    y = el.locally_connected2d(x, w, backend=NAME)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float64
    plan = el.locally_connected2d.bind(x, w).plan
    np.testing.assert_allclose(y.numpy(), reference(plan, {"x": x_np, "wt": w_np}), rtol=1e-12, atol=1e-12)
    out = torch.full(tuple(y.shape), float("nan"), dtype=torch.float64)
    got = el.locally_connected2d(x, w, backend=NAME, out=out)
    assert got is out and torch.allclose(out, y)
    # autograd: the derived backward statements, run by the same backend
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
    el.locally_connected2d(xg, wg, backend=NAME).backward(torch.ones_like(y))
    dx, dw = el.vjp(el.locally_connected2d, torch.ones_like(y), x, w, backend=NAME)[:2]
    assert torch.allclose(xg.grad, dx) and torch.allclose(wg.grad, dw)


def test_cannot_cuda_and_no_workspace(numba_backend):
    plan = el.locally_connected2d.bind(np.zeros((1, 1, 4, 4)), np.zeros((1, 1, 3, 3, 2, 2))).plan
    assert "cpu" in numba_backend.cannot(plan, library="torch", device="cuda:0").lower()
    assert numba_backend.cannot(plan, library="numpy", device="cpu") is None
    assert "numba" in numba_backend.cannot(plan, library="jax", device="cpu")
    assert numba_backend.workspace(plan)[0] == 0


# -- source and errors ---------------------------------------------------------------------


def test_errors_carry_the_source(numba_backend):
    plan = el.locally_connected2d.bind(np.zeros((1, 2, 5, 5)), np.zeros((1, 2, 3, 3, 3, 3))).plan
    src = numba_backend.source(plan)
    assert "def kernel" in src and str(plan.stmt) in src
    bad = {"x": np.zeros((1, 2, 5)), "wt": np.zeros((1, 2, 3, 3, 3, 3))}     # x lacks an axis
    with pytest.raises(el.BackendError) as info:
        numba_backend.execute(plan, bad)
    assert "--- generated source ---" in str(info.value) and "def kernel" in str(info.value)


def test_float16_is_a_backend_error(numba_backend):
    plan = el.locally_connected2d.bind(np.zeros((1, 1, 4, 4)), np.zeros((1, 1, 3, 3, 2, 2))).plan
    ops = {"x": np.zeros((1, 1, 4, 4), np.float16), "wt": np.zeros((1, 1, 3, 3, 2, 2), np.float16)}
    with pytest.raises(el.BackendError, match="float16"):
        numba_backend.execute(plan, ops)


# -- the kernel cache across processes ------------------------------------------------------

_CHILD = textwrap.dedent("""
    import json, numpy as np, einlocal as el
    from einlocal import registry
    from einlocal.backends import loops_numba
    x, w = np.ones((1, 2, 6, 6)), np.ones((3, 2, 2, 2, 5, 5))
    y = el.locally_connected2d(x, w, backend="loops:numba")
    assert float(y[0, 0, 0, 0]) == 8.0
    b = registry.get("loops:numba")
    print(json.dumps({**loops_numba.STATS, "hits": list(b.cache_hits.values())}))
""")


def test_second_process_loads_from_file_cache(tmp_path):
    import json
    env = {**os.environ, "EINLOCAL_CACHE_DIR": str(tmp_path)}

    def run():
        done = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    first = run()
    assert first["compiled"] == 1 and first["loaded"] == 0
    assert list((tmp_path / "numba").glob("k_*.py"))
    second = run()
    assert second["compiled"] == 0 and second["loaded"] == 1 and second["hits"] == [True]
