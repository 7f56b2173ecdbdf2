"""Ahead-of-time compilation of the generated GPU kernels, no GPU needed: a
fixed list of Triton specialisations (every statement kind, forward and
backward) for sm_80 and sm_90, reporting shared memory (compile metadata)
and registers (cuobjdump on the cubin); every CUDA C kernel of
``loops:cupy`` through NVRTC for sm_80 and sm_90.  A kernel that does not
compile fails.  ``pytest -s`` prints the resource table."""
import numpy as np
import pytest

import einlocal as el

pytest.importorskip("triton")
pytest.importorskip("torch")

pytestmark = pytest.mark.compiled

CAPABILITIES = (80, 90)

# (id, op, shapes and params, dtypes): forward and both backward statements of each
SPECIALISATIONS = [
    ("W2-lc2d-3x3", el.locally_connected2d, dict(x=(100, 16, 28, 28), weight=(16, 16, 3, 3, 26, 26)), ("float32",)),
    ("lc2d-stride2-pad1", el.locally_connected2d, dict(x=(8, 4, 17, 17), weight=(8, 4, 3, 3, 9, 9),
                                                        stride=2, padding=1), ("float32", "float16")),
    ("lc1d-dilation2", el.locally_connected1d, dict(x=(8, 4, 32), weight=(4, 4, 3, 28), dilation=2), ("float64",)),
    ("depthwise-m2-same", el.depthwise_conv2d, dict(x=(8, 32, 16, 16), weight=(64, 1, 3, 3), padding=1),
     ("float32", "bfloat16")),
    ("conv2d-dot", el.conv2d, dict(x=(16, 32, 16, 16), weight=(64, 32, 3, 3), padding=1), ("float32", "float16")),
    ("conv2d-groups2-stride2", el.conv2d, dict(x=(8, 8, 15, 15), weight=(16, 4, 3, 3), groups=2, stride=2),
     ("float32",)),
    ("op-implicit-pad", el.Op("y[b,o,t] += x[b,c,2*t+3*k-2] * w[o,c,k,t]", pad=0), dict(x=(8, 4, 40), w=(4, 4, 3, 20)),
     ("float32",)),
]


def _plans(op, kw):
    if isinstance(op, el.Op):
        plan = op.bind(**kw)
    else:
        arrays = {k: np.zeros(v, dtype=np.float32) for k, v in kw.items() if k in ("x", "weight")}
        plan = op.bind(arrays["x"], arrays["weight"], **{k: v for k, v in kw.items() if k not in arrays}).plan
    return {"forward": plan, **{f"d{n}": p for n, p in plan.backward.items()}}


def _triton_items():
    from einlocal.backends.gpu_codegen import kernel_plan
    items = []
    for case, op, kw, dtypes in SPECIALISATIONS:
        for stmt, plan in _plans(op, kw).items():
            for dtype in dtypes:
                for det in (False, True):
                    kp = kernel_plan(plan, dtype, deterministic=det)
                    if det and kp.mode == kernel_plan(plan, dtype).mode:
                        continue
                    for cc in CAPABILITIES:
                        items.append((f"{case}/{stmt}/{dtype}{'/deterministic' if det else ''}", kp, cc))
    return items


def test_triton_kernels_compile_for_sm80_sm90():
    from einlocal.backends.loops_triton import compile_many
    items = _triton_items()
    results = compile_many([(kp, cc) for _, kp, cc in items])
    kinds = set()
    print(f"\n{'kernel':<52} {'sm':>3} {'mode':<7}{'form':<5} {'warps':>5} {'regs':>5} {'shared':>7} {'stack':>6}")
    for (label, kp, cc), res in zip(items, results):
        kinds.add((kp.mode, kp.form, kp.plan.scatter))
        print(f"{label:<52} {cc:>3} {kp.mode:<7}{kp.form:<5} {kp.num_warps:>5} {res['registers']:>5} "
              f"{res['shared']:>7} {res['stack']:>6}")
        assert res["capability"] == cc and len(res["cubin"]) > 0
        assert 0 < res["registers"] <= 255
        assert res["shared"] >= 0
        if kp.form == "dot":
            assert res["shared"] > 0       # the operand tiles of tl.dot are staged in shared memory
    # every statement kind is in the list
    assert {("gather", "fma", False), ("gather", "fma", True), ("atomic", "fma", True),
            ("gather", "dot", False)} <= kinds


def test_a_broken_triton_kernel_fails_with_its_source():
    from einlocal.backends import loops_triton
    from einlocal.backends.gpu_codegen import kernel_plan
    plan = _plans(*SPECIALISATIONS[0][1:3])["forward"]
    kp = kernel_plan(plan, "float32")
    broken = loops_triton.triton_source(kp).replace("tl.zeros([BR, BC]", "tl.zeros([BR, BC, 3]")
    orig = loops_triton.triton_source
    loops_triton.triton_source = lambda k: broken
    try:
        with pytest.raises(el.BackendError, match="does not compile") as info:
            loops_triton.compile_many([(kp, 80)])
    finally:
        loops_triton.triton_source = orig
    assert "--- generated source ---" in str(info.value)


def _cuda_items():
    from einlocal.backends.loops_cupy import CupyLoops
    backend = CupyLoops()
    for case, op, kw, _ in SPECIALISATIONS:
        for stmt, plan in _plans(op, kw).items():
            for dtype in ("float32", "float64"):
                for det in (False, True):
                    backend.deterministic = det
                    yield f"{case}/{stmt}/{dtype}", backend.kernel_plan(plan, dtype), backend.source(plan, dtype)


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_cupy_kernels_compile_with_nvrtc(arch):
    """Every plan's CUDA C from the loops:cupy module compiles (it cannot run
    here: no device)."""
    pytest.importorskip("cupy")
    from einlocal.backends.loops_cupy import compile_ptx
    try:
        from cupy.cuda import nvrtc
        nvrtc.getVersion()
    except Exception as e:   # pragma: no cover - depends on the NVRTC wheel
        pytest.skip(f"NVRTC is not available: {e}")
    modes = set()
    for label, kp, src in _cuda_items():
        ptx = compile_ptx(src, kp.name, arch)
        text = ptx.decode() if isinstance(ptx, bytes) else ptx
        assert f".entry {kp.name}" in text, label
        assert ("atom.global.add" in text or "red.global.add" in text) == (kp.mode == "atomic"), label
        modes.add(kp.mode)
    assert modes == {"gather", "atomic"}


def test_cupy_backend_is_unavailable_without_a_device():
    cupy = pytest.importorskip("cupy")
    from einlocal import registry
    reason = registry.unavailable().get("loops:cupy")
    if cupy.is_available():
        assert reason is None
    else:
        assert reason and "cupy.is_available()" in reason
