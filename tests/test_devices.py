"""A check makes its arrays on the device it names, or lists the backend as
skipped with the reason (never runs it elsewhere); float32 is checked as
float32 (torch's TF32 switches off while a check runs)."""
import contextlib

import pytest

import einlocal as el
from einlocal.backends.namespaces import namespace

SHAPES = dict(x=(2, 3, 6, 6), weight=(6, 1, 3, 3), padding=1)


def test_numpy_backends_are_skipped_on_a_gpu_with_the_reason():
    report = el.check(el.depthwise_conv2d, backends=["bmm:numpy"], dtype="float32", seed=1, device="cuda", **SHAPES)
    row = report.rows[0]
    assert row.status == "skipped" and row.reason == "numpy arrays are on the CPU, not on cuda"


def test_torch_without_cuda_is_skipped_with_the_reason():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    report = el.check(el.depthwise_conv2d, backends=["bmm:torch"], dtype="float32", seed=1, device="cuda:0", **SHAPES)
    row = report.rows[0]
    assert row.status == "skipped" and "torch sees no CUDA device" in row.reason and "cuda:0" in row.reason


def test_jax_arrays_are_made_on_the_device_named():
    jax = pytest.importorskip("jax")
    xp = namespace("jax")
    import numpy as np
    a = xp.from_numpy_as(np.ones((2, 3)), "float32", "cpu")
    assert {d.platform for d in a.devices()} == {"cpu"}
    assert xp.cannot_device("traced") is None           # inside a trace: no device to place on
    if not any(d.platform == "gpu" for d in jax.devices()):
        assert "jax has no device gpu:0" in xp.cannot_device("gpu:0")
        report = el.check(el.depthwise_conv2d, backends=["bmm:jax"], dtype="float32", seed=1, device="cuda",
                          **SHAPES)
        assert report.rows[0].status == "skipped" and "jax has no device cuda" in report.rows[0].reason


def test_cupy_arrays_are_never_on_the_cpu():
    assert namespace("cupy").cannot_device("cpu") == "cupy arrays are on a CUDA device, not on cpu"


def test_torch_full_precision_turns_tf32_off_and_restores_it():
    torch = pytest.importorskip("torch")
    flags = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = [f.allow_tf32 for f in flags]
    try:
        for f in flags:
            f.allow_tf32 = True
        with namespace("torch").full_precision():
            assert [f.allow_tf32 for f in flags] == [False, False]
        assert [f.allow_tf32 for f in flags] == [True, True]
    finally:
        for f, s in zip(flags, saved):
            f.allow_tf32 = s


def test_a_check_runs_each_backend_in_full_precision(monkeypatch):
    xp = namespace("numpy")
    seen = []

    @contextlib.contextmanager
    def recording():
        seen.append("in")
        yield
        seen.append("out")

    monkeypatch.setattr(xp, "full_precision", recording)
    report = el.check(el.depthwise_conv2d, backends=["bmm:numpy"], dtype="float32", seed=1, **SHAPES)
    assert report.ok and seen == ["in", "out"]


@pytest.mark.parametrize("name", ["opt_einsum:jax", "einsum:jax", "bmm:jax"])
def test_jax_contractions_name_the_highest_precision(name):
    """With no precision named, jax's float32 matmuls round to TF32 or
    bfloat16 on a GPU; every contraction einlocal makes (opt_einsum's too)
    names "highest", as the lowered program shows."""
    jax = pytest.importorskip("jax")
    if el.registry.get(name).unavailable():
        pytest.skip(el.registry.get(name).unavailable())
    import numpy as np
    x, w = np.ones((2, 3, 5, 5), np.float32), np.ones((4, 3, 3, 3), np.float32)
    program = jax.jit(lambda x, w: el.conv2d(x, w, backend=name)).lower(x, w).as_text()
    dots = [line for line in program.splitlines() if "dot_general" in line]
    assert dots and all("precision = [HIGHEST, HIGHEST]" in line for line in dots), dots
