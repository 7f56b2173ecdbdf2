"""``loops:triton`` through the Triton interpreter (TRITON_INTERPRET=1, set in
conftest) on CPU torch tensors, or compiled on a GPU (EINLOCAL_TEST_DEVICE=cuda):
the differential check for every catalogue op and user statements, forward
and both backward statements; the atomics-or-gather decision as data;
options and errors.  Small grids only: the interpreter runs each program
instance in Python."""
import math

import pytest

import einlocal as el
from einlocal import registry

pytest.importorskip("torch")
pytest.importorskip("triton")

pytestmark = pytest.mark.triton

from einlocal.backends import gpu_codegen  # noqa: E402
from einlocal.backends.gpu_codegen import choose_mode, kernel_plan  # noqa: E402
from einlocal.backends.gpu_triton import triton_source  # noqa: E402
from statements import statement_plans  # noqa: E402

PAD_OP = el.Op("y[b,o,t] += x[b,c,2*t+3*k-2] * w[o,c,k,t]", pad=0)
THREE_OP = el.Op("y[n,h] += x[n,h*2+i-1] * a[i] * b[h]", pad=0)

# (id, op, shapes and params); Cout > 1, overlapping windows, strides > 1
CASES = [
    ("lc2d", el.locally_connected2d, dict(x=(2, 3, 6, 6), weight=(4, 3, 3, 3, 4, 4))),
    ("lc2d-stride2-pad", el.locally_connected2d, dict(x=(2, 3, 9, 9), weight=(4, 3, 3, 3, 5, 5), stride=2, padding=1)),
    ("lc1d-stride2-dil2", el.locally_connected1d, dict(x=(2, 3, 11), weight=(2, 3, 3, 4), stride=2, dilation=2)),
    ("depthwise-m2-stride2", el.depthwise_conv2d, dict(x=(2, 3, 7, 7), weight=(6, 1, 3, 3), padding=1, stride=2)),
    ("conv2d-dot", el.conv2d, dict(x=(2, 4, 6, 6), weight=(16, 4, 3, 3), padding=1)),
    ("conv2d-groups-stride2", el.conv2d, dict(x=(2, 4, 7, 7), weight=(8, 2, 3, 3), groups=2, stride=2)),
    ("op-implicit-pad", PAD_OP, dict(x=(2, 3, 10), w=(2, 3, 3, 5))),
    ("op-three-operands", THREE_OP, dict(x=(2, 9), a=(3,), b=(5,))),
]




@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_differential_check(case, device):
    _, op, kw = case
    report = el.check(op, backends=["loops:triton"], dtype="float32", device=device, **kw)
    assert report.rows[0].status == "pass", str(report)
    args = ("x", "weight") if not isinstance(op, el.Op) else op.inputs
    assert set(report.rows[0].errors) == {"y", *(f"d{a}[vjp]" for a in args)}   # forward and every gradient


def test_differential_check_deterministic(device):
    """The atomic-free path for a statement that would use atomics."""
    _, op, kw = CASES[1]
    backend = registry.get("loops:triton")
    plans = statement_plans(op, kw)
    assert any(backend.kernel_plan(p).mode == "atomic" for p in plans)
    backend.deterministic = True
    try:
        assert all(backend.kernel_plan(p).mode == "gather" for p in plans)
        report = el.check(op, backends=["loops:triton"], dtype="float32", device=device, **kw)
    finally:
        backend.deterministic = None
    assert report.ok, str(report)


def test_float16_accumulates_in_float32(device):
    report = el.check(el.locally_connected1d, backends=["loops:triton"], dtype="float16", device=device,
                      x=(2, 3, 9), weight=(2, 3, 3, 7))
    assert report.ok, str(report)
    plan = statement_plans(el.locally_connected1d, dict(x=(2, 3, 9), weight=(2, 3, 3, 7)))[0]
    src = triton_source(kernel_plan(plan, "float16"))
    assert "dtype=tl.float32" in src and ".to(tl.float32)" in src


def test_every_case_covers_every_statement_kind():
    """Between them the cases run plain gathers, inverse-map gathers, atomics
    and tl.dot kernels."""
    seen = set()
    for _, op, kw in CASES:
        for p in statement_plans(op, kw):
            kp = kernel_plan(p, "float32")
            seen.add((kp.mode, kp.form, p.scatter))
    assert {("gather", "fma", False), ("gather", "fma", True), ("atomic", "fma", True), ("gather", "dot", False)} <= seen


# -- the atomics decision, as data -----------------------------------------------


def _lc_dx(k, stride, padding=0, size=9):
    import numpy as np
    ho = (size + 2 * padding - k) // stride + 1
    call = el.locally_connected2d.bind(np.zeros((2, 3, size, size)), np.zeros((4, 3, k, k, ho, ho)),
                                       stride=stride, padding=padding)
    return call.plan.backward["x"], call.plan.backward["wt"]


@pytest.mark.parametrize("k, stride, overlapping, mode", [
    (3, 1, True, "gather"),     # report 2: overlapping windows, unit stride: inverse map
    (3, 2, True, "atomic"),     # overlapping and stride 2x2: the gather would waste 3/4
    (2, 2, False, "gather"),    # windows tile the input: one write per element
    (1, 3, False, "gather"),    # gaps: elements no window touches are written zero
])
def test_input_gradient_mode(k, stride, overlapping, mode):
    dx, dwt = _lc_dx(k, stride)
    assert bool(dx.conflicts.overlapping) == overlapping
    assert dx.scatter
    assert choose_mode(dx)[0] == mode
    assert choose_mode(dx, deterministic=True)[0] == "gather"
    # the weight gradient is a plain output: a reduction over n, never atomics
    assert not dwt.scatter and "n" in dwt.conflicts.reduced
    assert choose_mode(dwt)[0] == "gather"


def test_atomic_threshold_is_the_stride_product():
    dx, _ = _lc_dx(3, 2)
    main_coefs = [abs(ax.coef(gpu_codegen._main(ax, dx.range))) for ax in dx.stmt.out.axes if ax.alone is None]
    assert main_coefs == [2, 2]
    assert "4x" in choose_mode(dx)[1]
    one_axis, _ = _lc_dx(3, 1)
    assert choose_mode(one_axis)[0] == "gather"


def test_atomic_kernel_uses_atomics_and_gather_does_not():
    dx, dwt = _lc_dx(3, 2)
    assert "tl.atomic_add" in triton_source(kernel_plan(dx, "float32"))
    assert "tl.atomic_add" not in triton_source(kernel_plan(dx, "float32", deterministic=True))
    assert "tl.atomic_add" not in triton_source(kernel_plan(dwt, "float32"))


# -- source, options, errors -----------------------------------------------------


def test_every_load_is_masked():
    for _, op, kw in CASES:
        for p in statement_plans(op, kw):
            src = triton_source(kernel_plan(p, "float32"))
            loads = [ln for ln in src.splitlines() if "tl.load(" in ln]
            assert loads and all("mask=" in ln and "other=0.0" in ln for ln in loads), src


def test_weight_read_once_per_batch_tile():
    """The locally connected forward: the weight's load does not depend on
    the rows (the batch), so it is a [1, BC] vector."""
    plan = statement_plans(el.locally_connected2d, CASES[0][2])[0]
    kp = kernel_plan(plan, "float32")
    assert kp.rows == ("i_n",)
    src = triton_source(kp)
    wt_load = next(ln for ln in src.splitlines() if "val_wt = tl.load" in ln)
    assert "rmask" not in wt_load and "i_n" not in wt_load


def test_dot_input_precision():
    plan = statement_plans(el.conv2d, CASES[4][2])[0]
    backend = registry.get("loops:triton")
    kp = backend.kernel_plan(plan, "float32")
    assert kp.form == "dot"
    assert 'input_precision="ieee"' in backend.source(plan, "float32")
    backend.precision = "tf32"
    try:
        assert 'input_precision="tf32"' in backend.source(plan, "float32")
    finally:
        backend.precision = None


def test_cpu_tensors_need_the_interpreter(monkeypatch):
    backend = registry.get("loops:triton")
    plan = statement_plans(el.locally_connected2d, CASES[0][2])[0]
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert backend.cannot(plan, library="torch", device="cpu") is None
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "TRITON_INTERPRET" in backend.cannot(plan, library="torch", device="cpu")
    assert backend.cannot(plan, library="torch", device="cuda:0") is None
    assert "torch" in backend.cannot(plan, library="numpy", device="cpu")


def test_errors_carry_the_source(monkeypatch):
    import torch
    backend = registry.get("loops:triton")
    plan = statement_plans(el.locally_connected1d, dict(x=(2, 3, 9), weight=(2, 3, 3, 7)))[0]
    kp = backend.kernel_plan(plan, "float32")
    monkeypatch.setattr(backend, "_kernels", {kp: object()})    # not a kernel: the launch fails
    ops = {a.name: torch.ones(s) for a, (_, s) in zip(plan.stmt.operands, plan.shapes)}
    with pytest.raises(el.BackendError, match="generated source") as info:
        backend.execute(plan, ops)
    assert "@triton.jit" in str(info.value)


def test_deterministic_from_environment(monkeypatch):
    backend = registry.get("loops:triton")
    dx, _ = _lc_dx(3, 2)
    assert backend.kernel_plan(dx).mode == "atomic"
    monkeypatch.setenv("EINLOCAL_DETERMINISTIC", "1")
    assert backend.kernel_plan(dx).mode == "gather"


def test_launch_grids_fit_cuda():
    """CUDA launches at most 2**31 - 1 programs along a grid's first axis and
    65535 along the others: every kernel of every report workload at full
    size fits (W3b's depthwise forward has 254016 tiles of 64 columns)."""
    import numpy as np
    from einlocal.workloads import WORKLOADS
    for w in WORKLOADS.values():
        arrays = [np.broadcast_to(np.float32(0), s) for s in dict(w.shapes).values()]
        plan = w.op_fn().bind(*arrays, **dict(w.params)).plan
        for p in [plan, *plan.backward.values()]:
            kp = kernel_plan(p, "float32")
            grid = kp.grid()
            assert grid[0] < 2**31 and all(g <= 65535 for g in grid[1:]), (w.id, str(kp))
            assert math.prod(grid) == math.prod(kp.tiles()), (w.id, str(kp))
