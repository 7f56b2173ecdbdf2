"""The GPU kernels' split reduction (``gpu_codegen.choose_split``): which
statements split and how far, as data at the report workloads' full size;
and, with the thresholds lowered so that every gathering statement splits,
each kernel against the reference (Triton through its interpreter on CPU,
both backends on a GPU with EINLOCAL_TEST_DEVICE=cuda)."""
import math

import numpy as np
import pytest

import einlocal as el
from einlocal import registry
from einlocal.backends import gpu_codegen
from einlocal.backends.gpu_codegen import kernel_plan
from einlocal.workloads import WORKLOADS
from statements import statement_plans

BACKENDS = ["loops:triton", "loops:cupy"]

# (id, op, shapes and params): plain, inverse-map and tl.dot statements
CASES = [
    ("depthwise-m2-stride2-pad1", el.depthwise_conv2d, dict(x=(2, 3, 7, 7), weight=(6, 1, 3, 3), padding=1, stride=2)),
    ("lc2d-pad1", el.locally_connected2d, dict(x=(2, 3, 6, 6), weight=(4, 3, 3, 3, 6, 6), padding=1)),
    ("lc1d-stride2-dil2", el.locally_connected1d, dict(x=(2, 3, 11), weight=(2, 3, 3, 4), stride=2, dilation=2)),
    ("conv2d-dot", el.conv2d, dict(x=(2, 4, 6, 6), weight=(16, 4, 3, 3), padding=1)),
    ("op-three-operands", el.Op("y[n,h] += x[n,h*2+i-1] * a[i] * b[h]", pad=0), dict(x=(2, 9), a=(3,), b=(5,))),
]


def _full_size(wid):
    w = WORKLOADS[wid]
    arrays = [np.broadcast_to(np.float32(0), s) for s in dict(w.shapes).values()]
    return w.op_fn().bind(*arrays, **dict(w.params)).plan




@pytest.mark.parametrize("unit", ["program", "thread"])
def test_a_depthwise_weight_gradient_splits_over_images_and_rows(unit):
    """W3b's weight gradient: 576 outputs, each a sum of 32 x 126 x 126
    products.  Images and rows go one a program (thread), the columns loop."""
    dwt = _full_size("W3b").backward["wt"]
    kp = kernel_plan(dwt, "float32", unit=unit, allow_dot=unit == "program")
    assert kp.split == (("n", 32), ("h", 126)) and kp.loop == (("w", 126),)
    assert kp.parts == 4032 and kp.tiles()[-1] == 4032
    assert "split n<32, h<126 (4032 partial sums)" in str(kp)
    assert kp.workspace() == (4032 * 576, f"float32 partial sums {(4032, *dwt.out_shape)}")
    assert kernel_plan(dwt, "float16", unit=unit).out_dtype == "float32"   # half types: partial sums in float32


def test_the_locally_connected_statements_do_not_split():
    """They give enough programs, or too short a loop to split (W2's
    forward: 676 programs, each summing 144 products)."""
    for wid in ("W1", "W2"):
        plan = _full_size(wid)
        for p in [plan, *plan.backward.values()]:
            kp = kernel_plan(p, "float32")
            enough = math.prod(kp.tiles()) >= gpu_codegen.SPLIT_TARGET["program"]
            short = math.prod(e for _, e in kp.loop) // kp.loop[0][1] < gpu_codegen.SPLIT_MIN_INNER
            assert (enough or short) and kp.parts == 1, (wid, str(kp))


def test_the_split_stops_at_its_limits(monkeypatch):
    dwt = _full_size("W3b").backward["wt"]
    monkeypatch.setattr(gpu_codegen, "SPLIT_MAX_PARTIALS", 100 * 576)
    assert kernel_plan(dwt, "float32").split == (("n", 32),)           # 4032 parts would exceed the buffer
    monkeypatch.setattr(gpu_codegen, "SPLIT_MAX_PARTIALS", 1 << 24)
    monkeypatch.setattr(gpu_codegen, "SPLIT_MIN_INNER", 127)
    assert kernel_plan(dwt, "float32").split == (("n", 32),)           # 126 columns left would be too few
    monkeypatch.setattr(gpu_codegen, "SPLIT_TARGET", {"program": 1, "thread": 1})
    assert kernel_plan(dwt, "float32").split == ()                     # one program is enough


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_every_split_kernel_against_the_reference(name, case, device, monkeypatch):
    reason = registry.unavailable().get(name)
    if reason:
        pytest.skip(f"{name}: {reason}")
    monkeypatch.setattr(gpu_codegen, "SPLIT_TARGET", {"program": 1 << 30, "thread": 1 << 30})
    monkeypatch.setattr(gpu_codegen, "SPLIT_MIN_INNER", 1)
    _, op, kw = case
    backend = registry.get(name)
    kps = [backend.kernel_plan(p, "float32") for p in statement_plans(op, kw)]
    split = [kp for kp in kps if kp.parts > 1]
    assert split and all(kp.mode == "atomic" or len(kp.loop) == 1 for kp in kps if kp not in split)
    report = el.check(op, backends=[name], dtype="float32", device=device, **kw)
    assert report.ok, str(report)
    args = ("x", "weight") if not isinstance(op, el.Op) else op.inputs
    assert set(report.rows[0].errors) == {"y", *(f"d{a}[vjp]" for a in args)}


def test_half_partial_sums_accumulate_in_float32(device, monkeypatch):
    reason = registry.unavailable().get("loops:triton")
    if reason:
        pytest.skip(f"loops:triton: {reason}")
    monkeypatch.setattr(gpu_codegen, "SPLIT_TARGET", {"program": 1 << 30, "thread": 1 << 30})
    monkeypatch.setattr(gpu_codegen, "SPLIT_MIN_INNER", 1)
    _, op, kw = CASES[0]
    assert registry.get("loops:triton").kernel_plan(statement_plans(op, kw)[2], "float16").out_dtype == "float32"
    report = el.check(op, backends=["loops:triton"], dtype="float16", device=device, **kw)
    assert report.ok, str(report)
