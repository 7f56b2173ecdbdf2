"""Every backend against the float64 reference, forward and every gradient in
every grad mode it has, on the cases of the core issue (one body per
property, parametrized over the registry by the ``backend`` fixture)."""
import functools
import secrets

import pytest

import einlocal as el
from einlocal import registry
from einlocal.check import _op_parts, random_inputs, reference_outputs

from conftest import DTYPES

SESSION_SEED = secrets.randbelow(2**31)

PAD_OP = el.Op("y[b,o,t] += x[b,c,2*t+3*k-2] * w[o,c,k,t]", pad=0)

CASES = {
    # LC2d with stride (2,1), padding (1,2), dilation (2,1), kernel 3x2
    "lc2d-s21-p12-d21-k32": (el.locally_connected2d, dict(x=(2, 3, 9, 8), weight=(2, 3, 3, 2, 4, 11), bias=(2, 4, 11),
                                                          stride=(2, 1), padding=(1, 2), dilation=(2, 1))),
    # LC1d strided and dilated
    "lc1d-s2-d2": (el.locally_connected1d, dict(x=(2, 3, 13), weight=(2, 3, 3, 5), bias=(2, 5), stride=2, dilation=2)),
    # depthwise, multiplier 3, stride 2
    "dw-m3-s2": (el.depthwise_conv2d, dict(x=(2, 2, 7, 7), weight=(6, 1, 3, 3), bias=(6,), stride=2)),
    # depthwise "same" with an even kernel (the extra zero goes after)
    "dw-same-k4": (el.depthwise_conv2d, dict(x=(1, 2, 6, 5), weight=(4, 1, 4, 2), padding="same")),
    # grouped conv, asymmetric padding
    "conv-g2-asym": (el.conv2d, dict(x=(2, 4, 5, 6), weight=(6, 2, 3, 2), bias=(6,), groups=2,
                                      padding=((1, 0), (0, 2)))),
    # a user statement read out of bounds with pad=0
    "op-pad0": (PAD_OP, dict(x=(2, 3, 12), w=(2, 3, 3, 6))),
}


@functools.lru_cache(maxsize=None)
def _reference(case):
    op, kw = CASES[case]
    names = ("x", "weight", "bias") if not isinstance(op, el.Op) else op.inputs
    shapes = {k: v for k, v in kw.items() if k in names}
    params = {k: v for k, v in kw.items() if k not in names}
    arrays = random_inputs(shapes, "float64", SESSION_SEED)
    call, _, _ = _op_parts(op, arrays, params)
    dy = random_inputs({"dy": call.out_shape}, "float64", SESSION_SEED + 2)["dy"]
    return reference_outputs(call, arrays, dy)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(CASES))
def test_backend_matches_reference(backend, case, dtype, device):
    op, kw = CASES[case]
    report = el.check(op, backends=[backend], dtype=dtype, seed=SESSION_SEED, reference=_reference(case),
                      device=device, **kw)
    (row,) = report.rows
    if row.status == "skipped":
        pytest.skip(row.reason)
    assert row.status == "pass", str(report)
    b = registry.get(backend)
    for mode in b.grad_modes(b.takes[0]):       # every grad mode the backend has was checked
        assert any(k.endswith(f"[{mode}]") for k in row.errors), f"grad={mode!r} was not checked: {row.errors}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(CASES))
def test_backend_matches_reference_on_the_libraries_it_also_runs_on(backend, case, dtype, device):
    """A backend that runs another way on another library's arrays (loops:numba
    inside jax programs) is checked there too."""
    op, kw = CASES[case]
    b = registry.get(backend)
    if not b.also_on:
        pytest.skip(f"{backend} runs on {b.takes[0]} arrays only one way")
    for lib in b.also_on:
        report = el.check(op, backends=[backend], dtype=dtype, seed=SESSION_SEED, reference=_reference(case),
                          library=lib, device=device, **kw)
        (row,) = report.rows
        if row.status == "skipped":
            pytest.skip(row.reason)
        assert row.status == "pass", str(report)
        for mode in b.grad_modes(lib):
            assert any(k.endswith(f"[{mode}]") for k in row.errors), f"grad={mode!r} was not checked: {row.errors}"


@pytest.mark.parametrize("case", list(CASES))
def test_reference_vjp_matches_finite_difference(case):
    op, kw = CASES[case]
    report = el.check(op, backends=[], seed=SESSION_SEED, **kw)
    assert report.reference_vjp_error <= 1.0, str(report)
