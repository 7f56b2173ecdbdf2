"""einlocal.torch: the modules against the float64 reference (forward and
gradients) on every backend that takes torch tensors, parameters and
initialisation as nn.Conv2d, state_dict, optimisers, torch.compile without
graph breaks, the custom ops' registration, and constructor errors."""
import io
import math
import subprocess
import sys
import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import einlocal as el  # noqa: E402
import einlocal.torch as elt  # noqa: E402

TORCH_BACKENDS = ["auto"] + el.backends(el.locally_connected2d, like=torch.zeros(1))

# (module factory, input shape, catalogue op, the op's parameters)
CASES = {
    "lc2d": (lambda **kw: elt.LocallyConnected2d(3, 2, (3, 2), (7, 6), stride=(2, 1), padding=((1, 0), (2, 1)),
                                                 dilation=(1, 2), **kw),
             (2, 3, 7, 6), el.locally_connected2d,
             dict(stride=(2, 1), padding=((1, 0), (2, 1)), dilation=(1, 2))),
    "lc2d-1x1": (lambda **kw: elt.LocallyConnected2d(4, 2, 1, (5, 5), **kw), (3, 4, 5, 5), el.locally_connected2d,
                 {}),
    "lc1d": (lambda **kw: elt.LocallyConnected1d(2, 3, 3, 9, stride=2, padding=1, **kw), (2, 2, 9),
             el.locally_connected1d, dict(stride=2, padding=1)),
    "depthwise": (lambda **kw: elt.DepthwiseConv2d(3, 6, 3, padding="same", **kw), (2, 3, 6, 5),
                  el.depthwise_conv2d, dict(padding="same")),
    "depthwise-strided": (lambda **kw: elt.DepthwiseConv2d(2, 2, (2, 3), stride=2, dilation=(2, 1), **kw),
                          (1, 2, 8, 7), el.depthwise_conv2d, dict(stride=2, dilation=(2, 1))),
}


def _rand(shape, gen, dtype=torch.float64):
    return torch.randn(shape, generator=gen, dtype=dtype)


def _reference(op, x, layer, dy, params):
    """Forward and gradients (dx, dweight, dbias) in float64 by loops:python."""
    arrs = [x.detach().double().numpy(), layer.weight.detach().double().numpy(),
            None if layer.bias is None else layer.bias.detach().double().numpy()]
    y = op(*arrs, backend="loops:python", **params)
    grads = el.vjp(op, dy.detach().double().numpy(), *arrs, backend="loops:python", **params)
    return y, grads


@pytest.mark.parametrize("torch_backend", TORCH_BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_module_matches_reference(case, torch_backend, bias):
    make, xshape, op, params = CASES[case]
    gen = torch.Generator().manual_seed(zlib.crc32(f"{case}-{torch_backend}-{bias}".encode()))
    torch.manual_seed(gen.initial_seed())
    layer = make(bias=bias, backend=torch_backend, dtype=torch.float64)
    x = _rand(xshape, gen).requires_grad_()
    y = layer(x)
    dy = _rand(tuple(y.shape), gen)
    y.backward(dy)
    y_ref, (dx_ref, dw_ref, db_ref) = _reference(op, x, layer, dy, params)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float64 and tuple(y.shape) == y_ref.shape
    np.testing.assert_allclose(y.detach().numpy(), y_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), dx_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.weight.grad.numpy(), dw_ref, rtol=1e-10, atol=1e-12)
    if bias:
        np.testing.assert_allclose(layer.bias.grad.numpy(), db_ref, rtol=1e-10, atol=1e-12)
    else:
        assert db_ref is None


@pytest.mark.parametrize("torch_backend", TORCH_BACKENDS)
def test_float32_module_close_to_reference(torch_backend):
    make, xshape, op, params = CASES["lc2d"]
    torch.manual_seed(0)
    layer = make(backend=torch_backend)
    x = torch.randn(xshape).requires_grad_()
    y = layer(x)
    assert y.dtype == torch.float32
    dy = torch.randn_like(y)
    y.backward(dy)
    y_ref, (dx_ref, dw_ref, _) = _reference(op, x, layer, dy, params)
    np.testing.assert_allclose(y.detach().numpy(), y_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(layer.weight.grad.numpy(), dw_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(x.grad.numpy(), dx_ref, rtol=1e-4, atol=1e-5)


def test_only_needed_gradients_are_computed():
    """A first layer (x without grad) gets no dx; a frozen weight no dweight."""
    import einlocal.run as run
    seen = []
    original = run.run_vjp

    def spy(call, backend, dy, arrays, wrt, *args, **kw):
        seen.append(tuple(wrt))
        return original(call, backend, dy, arrays, wrt, *args, **kw)

    layer = elt.LocallyConnected2d(2, 2, 3, 5, dtype=torch.float64)
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    run.run_vjp = spy
    try:
        layer(x).sum().backward()
        layer.weight.requires_grad_(False)
        layer(x.requires_grad_()).sum().backward()
    finally:
        run.run_vjp = original
    assert seen == [("weight", "bias"), ("x", "bias")]


@pytest.mark.parametrize("case", list(CASES))
def test_state_dict_round_trip(case):
    make, xshape, _, _ = CASES[case]
    torch.manual_seed(1)
    a, b = make(), make()
    x = torch.randn(xshape)
    assert not torch.equal(a(x), b(x))
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf)
    assert set(state) == {"weight", "bias"}
    b.load_state_dict(state)
    assert torch.equal(a(x), b(x))
    assert set(make(bias=False).state_dict()) == {"weight"}


def test_parameter_layouts():
    lc = elt.LocallyConnected2d(4, 2, (3, 1), (8, 6), stride=(1, 2))
    assert lc.weight.shape == (2, 4, 3, 1, 6, 3) and lc.bias.shape == (2, 6, 3)
    assert lc.output_size == (6, 3)
    lc1 = elt.LocallyConnected1d(3, 5, 4, 10, padding=2)
    assert lc1.weight.shape == (5, 3, 4, 11) and lc1.bias.shape == (5, 11)
    dw = elt.DepthwiseConv2d(6, 18, (3, 5))
    assert dw.weight.shape == (18, 1, 3, 5) and dw.bias.shape == (18,) and dw.out_channels == 18
    same = elt.LocallyConnected2d(2, 2, 4, (7, 9), padding="same")
    assert same.output_size == (7, 9) and same.padding == ((1, 2), (1, 2))


def test_extra_repr():
    r = repr(elt.LocallyConnected2d(4, 2, 3, (8, 8), padding=1, dilation=(1, 2), bias=False, backend="bmm:torch"))
    for part in ("LocallyConnected2d(4, 2", "kernel_size=(3, 3)", "input_size=(8, 8)", "output_size=(8, 6)",
                 "stride=(1, 1)", "padding=((1, 1), (1, 1))", "dilation=(1, 2)", "bias=False", "backend='bmm:torch'"):
        assert part in r, (part, r)
    plain = repr(elt.LocallyConnected2d(4, 2, 1, 8))
    assert "padding" not in plain and "dilation" not in plain and "bias" not in plain and "backend='auto'" in plain
    assert "DepthwiseConv2d(3, 6, kernel_size=(3, 3)" in repr(elt.DepthwiseConv2d(3, 6, 3))
    assert "input_size=(9,)" in repr(elt.LocallyConnected1d(1, 1, 2, 9))


@pytest.mark.parametrize("case", list(CASES))
def test_optimizer_step_reduces_loss(case):
    make, xshape, _, _ = CASES[case]
    torch.manual_seed(2)
    teacher, student = make(), make()
    x = torch.randn((8,) + xshape[1:])
    target = teacher(x).detach()
    opt = torch.optim.Adam(student.parameters(), lr=0.05)
    before = [p.detach().clone() for p in student.parameters()]
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(student(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(not torch.equal(b, p) for b, p in zip(before, student.parameters()))
    assert losses[-1] < 0.5 * losses[0]


def _conv_bound(fan_in_channels: int, kernel) -> float:
    """The largest |value| nn.Conv2d's own initialisation produces."""
    torch.manual_seed(3)
    conv = torch.nn.Conv2d(fan_in_channels, 512, kernel)
    return max(conv.weight.abs().max().item(), conv.bias.abs().max().item())


@pytest.mark.parametrize("make, fan_in_channels, kernel", [
    (lambda: elt.LocallyConnected2d(6, 8, (3, 2), (20, 20)), 6, (3, 2)),
    (lambda: elt.LocallyConnected1d(6, 8, 6, 200), 6, (6, 1)),
    (lambda: elt.DepthwiseConv2d(64, 256, (5, 5)), 1, (5, 5)),
])
def test_init_matches_conv2d(make, fan_in_channels, kernel):
    fan_in = fan_in_channels * math.prod(kernel)
    bound = 1 / math.sqrt(fan_in)
    conv_bound = _conv_bound(fan_in_channels, kernel)
    torch.manual_seed(4)
    layer = make()
    for p in (layer.weight, layer.bias):
        values = p.detach().flatten()
        assert values.abs().max().item() <= bound
        assert values.abs().max().item() == pytest.approx(conv_bound, rel=0.02)
        assert values.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)   # uniform, not normal
        assert abs(values.mean().item()) < 0.1 * bound


@pytest.mark.parametrize("case", ["lc2d", "lc1d", "depthwise"])
def test_torch_compile_fullgraph_matches_eager(case):
    make, xshape, _, _ = CASES[case]
    torch.manual_seed(5)
    layer = make(dtype=torch.float64)
    model = torch.nn.Sequential(layer, torch.nn.Tanh())
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")    # raises on any graph break
    x = torch.randn(xshape, dtype=torch.float64, requires_grad=True)
    y = model(x)
    y.square().sum().backward()
    eager = [x.grad.clone(), layer.weight.grad.clone(), layer.bias.grad.clone()]
    x.grad, layer.weight.grad, layer.bias.grad = None, None, None
    yc = compiled(x)
    yc.square().sum().backward()
    torch.testing.assert_close(yc, y, rtol=1e-12, atol=1e-12)
    for g, e in zip([x.grad, layer.weight.grad, layer.bias.grad], eager):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)


def test_compiled_graph_holds_the_custom_op():
    layer = elt.LocallyConnected2d(2, 2, 3, 6)
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch.compile(layer, fullgraph=True, backend=capture)(torch.randn(1, 2, 6, 6))
    assert len(graphs) == 1
    targets = [str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"]
    assert any("einlocal.locally_connected2d" in t for t in targets), targets


def test_auto_is_not_resolved_while_tracing(monkeypatch):
    """backend='auto' is chosen in the custom op's eager implementation,
    never while torch traces the model with fake tensors."""
    import importlib
    auto = importlib.import_module("einlocal.auto")
    calls = []
    original = auto.auto_backend
    monkeypatch.setattr(auto, "auto_backend", lambda *a, **k: calls.append(1) or original(*a, **k))
    layer = elt.LocallyConnected2d(2, 2, 3, 6)
    x = torch.randn(1, 2, 6, 6)
    exported = torch.export.export(layer, (x,))
    assert calls == []
    fast = importlib.import_module("einlocal.fast")
    fast.clear()                  # (a repeat of an earlier call would take the fast path and ask nothing)
    from_graph = exported.module()(x)
    assert len(calls) == 1        # resolved once the graph runs eagerly
    fast.clear()
    torch.testing.assert_close(from_graph, layer(x))
    assert len(calls) == 2


@pytest.mark.parametrize("name", list(elt.OPS))
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_custom_op_registration(name, bias):
    """torch.library.opcheck: schema, fake (meta) implementation and the
    registered autograd formula are consistent with the eager op."""
    gen = torch.Generator().manual_seed(6)
    if name == "locally_connected2d":
        x, w, b = _rand((2, 2, 5, 4), gen), _rand((3, 2, 2, 2, 4, 2), gen), _rand((3, 4, 2), gen)
        args = [[1, 2], [0, 0, 1, 0], [1, 1]]
    elif name == "locally_connected1d":
        x, w, b = _rand((2, 2, 7), gen), _rand((3, 2, 3, 5), gen), _rand((3, 5), gen)
        args = [[1], [0, 0], [1]]
    else:
        x, w, b = _rand((2, 2, 5, 4), gen), _rand((4, 1, 3, 3), gen), _rand((4,), gen)
        args = [[1, 1], [1, 1, 1, 1], [1, 1]]
    x.requires_grad_()
    w.requires_grad_()
    b = b.requires_grad_() if bias else None
    torch.library.opcheck(elt.OPS[name], (x, w, b, *args, "auto"))


def test_meta_device_uses_the_fake_implementation():
    layer = elt.LocallyConnected2d(3, 2, 3, (7, 6), stride=2).to("meta")
    assert layer.weight.device.type == "meta"
    y = layer(torch.empty(4, 3, 7, 6, device="meta"))
    assert y.device.type == "meta" and tuple(y.shape) == (4, 2, 3, 2)
    dw = elt.DepthwiseConv2d(3, 6, 3, stride=2, padding=1).to("meta")
    assert tuple(dw(torch.empty(1, 3, 9, 8, device="meta")).shape) == (1, 6, 5, 4)


def test_to_moves_parameters_and_dtype():
    layer = elt.LocallyConnected2d(2, 2, 3, 6).to(torch.float64)
    assert layer.weight.dtype == torch.float64 and layer.bias.dtype == torch.float64
    assert layer(torch.randn(1, 2, 6, 6, dtype=torch.float64)).dtype == torch.float64
    layer = layer.to("cpu")
    assert layer.weight.device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda():
    layer = elt.LocallyConnected2d(2, 3, 3, 8, padding=1).cuda()
    x = torch.randn(2, 2, 8, 8, device="cuda", requires_grad=True)
    y = layer(x)
    y.sum().backward()
    ref = el.locally_connected2d(x.detach().cpu().double().numpy(), layer.weight.detach().cpu().double().numpy(),
                                 layer.bias.detach().cpu().double().numpy(), padding=1, backend="loops:python")
    assert y.device.type == "cuda" and x.grad.device.type == "cuda"
    np.testing.assert_allclose(y.detach().cpu().numpy(), ref, rtol=1e-4, atol=1e-4)


def test_functional_ops_match_the_catalogue():
    gen = torch.Generator().manual_seed(7)
    x, w, b = _rand((2, 3, 6, 6), gen), _rand((2, 3, 3, 3, 3, 2), gen), _rand((2, 3, 2), gen)
    torch.testing.assert_close(elt.locally_connected2d(x, w, b, stride=2, padding=(1, 0)),
                               el.locally_connected2d(x, w, b, stride=2, padding=(1, 0)))
    wd = _rand((6, 1, 3, 3), gen)
    torch.testing.assert_close(elt.depthwise_conv2d(x, wd, padding="same"),
                               el.depthwise_conv2d(x, wd, padding="same"))
    x1, w1 = _rand((2, 3, 8), gen), _rand((4, 3, 2, 7), gen)
    torch.testing.assert_close(elt.locally_connected1d(x1, w1), el.locally_connected1d(x1, w1))


@pytest.mark.parametrize("make, words", [
    (lambda: elt.LocallyConnected2d(3, 2, 5, 4), ["non-positive", "5", "4", "axis 0"]),
    (lambda: elt.LocallyConnected2d(3, 2, 3, (8, 4), dilation=(1, 3)), ["non-positive", "7", "4", "axis 1"]),
    (lambda: elt.LocallyConnected1d(3, 2, 4, 2, padding=(0,)), ["non-positive", "4", "2"]),
    (lambda: elt.LocallyConnected2d(0, 2, 3, 8), ["in_channels", "0"]),
    (lambda: elt.LocallyConnected2d(3, 2, 3, 8, stride=0), ["stride", "0"]),
    (lambda: elt.LocallyConnected2d(3, 2, 3, 8, padding=-1), ["padding", "-1"]),
    (lambda: elt.LocallyConnected2d(3, 2, (3, 3, 3), 8), ["kernel_size"]),
    (lambda: elt.LocallyConnected2d(3, 2, 3, 8, stride=2, padding="same"), ["same", "stride"]),
    (lambda: elt.DepthwiseConv2d(3, 0, 3), ["out_channels", "0"]),
    (lambda: elt.DepthwiseConv2d(8, 12, 3), ["out_channels = 12", "not a multiple of in_channels = 8"]),
    (lambda: elt.DepthwiseConv2d(3, 6, 3, depth_multiplier=3), ["out_channels = 6", "3 * 3 = 9"]),
    (lambda: elt.DepthwiseConv2d(3, kernel_size=3), ["out_channels", "depth_multiplier"]),
])
def test_bad_constructor_arguments(make, words):
    with pytest.raises(el.ShapeError) as e:
        make()
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_bad_backend_names():
    with pytest.raises(el.BackendError, match="valid names"):
        elt.LocallyConnected2d(2, 2, 1, 4, backend="fastest")
    with pytest.raises(el.BackendError, match="not torch"):
        elt.LocallyConnected2d(2, 2, 1, 4, backend="bmm:numpy")


def test_bad_inputs_raise_before_work():
    lc = elt.LocallyConnected2d(3, 2, 3, (8, 8))
    with pytest.raises(el.ShapeError, match=r"input_size \(8, 8\).*\(1, 3, 8, 9\)"):
        lc(torch.randn(1, 3, 8, 9))
    with pytest.raises(el.ShapeError, match="3 input channels"):
        lc(torch.randn(1, 4, 8, 8))
    dw = elt.DepthwiseConv2d(4, 8, 3)
    with pytest.raises(el.ShapeError, match="4 input channels"):
        dw(torch.randn(1, 2, 8, 8))       # 2 channels would silently read as multiplier 4
    with pytest.raises(el.ShapeError, match="kernel extent 3"):
        dw(torch.randn(1, 4, 2, 8))


def test_importing_einlocal_imports_no_torch_and_torch_is_not_shadowed():
    code = ("import sys, einlocal; assert 'torch' not in sys.modules, 'einlocal imported torch'\n"
            "import einlocal.torch as elt, torch; assert torch.__file__ != elt.__file__\n"
            "assert hasattr(torch, 'nn') and hasattr(torch.library, 'custom_op')\n"
            "assert elt.LocallyConnected2d.__mro__[-2] is torch.nn.Module\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_depthwise_takes_conv2d_arguments():
    """(in_channels, out_channels, kernel_size) as nn.Conv2d(..., groups=in_channels); or depth_multiplier=."""
    dw = elt.DepthwiseConv2d(8, 16, 3)
    conv = torch.nn.Conv2d(8, 16, 3, groups=8)
    assert dw.weight.shape == conv.weight.shape == (16, 1, 3, 3) and dw.out_channels == 16
    assert dw.in_channels == 8 and dw.multiplier == 2
    same = elt.DepthwiseConv2d(8, kernel_size=3, depth_multiplier=2)
    assert same.weight.shape == (16, 1, 3, 3)
    assert elt.DepthwiseConv2d(8, 16, 3, depth_multiplier=2).out_channels == 16
    with torch.no_grad():
        conv.weight.copy_(dw.weight)
        conv.bias.copy_(dw.bias)
    x = torch.randn(2, 8, 6, 6)
    torch.testing.assert_close(dw(x), conv(x), rtol=1e-4, atol=1e-5)
