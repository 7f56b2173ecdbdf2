"""Valid calls that work and bad ones that get a named einlocal error:
integral parameters of any type, lists, 1-d padding pairs, empty batches,
signed factors and any operand name in statements, gradients of the bias
alone, a 1x1 strided kernel with a bias on loops:numba, auto and
el.backends picking only backends that run the call, read-only out=, the
memory guard counting the result, misspelt keywords."""
import numpy as np
import pytest

import einlocal as el

rng = np.random.default_rng(3)
X = rng.standard_normal((2, 4, 7, 7)).astype(np.float32)
W_DW = rng.standard_normal((8, 1, 3, 3)).astype(np.float32)
B_DW = rng.standard_normal(8).astype(np.float32)
W_CV = rng.standard_normal((6, 2, 3, 3)).astype(np.float32)
B_CV = rng.standard_normal(6).astype(np.float32)


def _ref(op, x, w, b=None, **params):
    return op(x.astype(np.float64), w.astype(np.float64), None if b is None else b.astype(np.float64),
              backend="loops:python", **params)


# -- parameters --------------------------------------------------------------------------------


@pytest.mark.parametrize("stride, padding, dilation", [
    (np.int64(2), np.int64(1), np.int32(1)),
    ([2, 1], [1, np.int64(0)], [1, 2]),
    ((np.int16(1), 2), [[1, 0], (np.int8(0), 2)], 1),
])
def test_integral_parameters_of_any_type_and_lists(stride, padding, dilation):
    def plain(v):
        return tuple(plain(e) for e in v) if isinstance(v, (list, tuple)) else int(v)
    got = el.conv2d(X, W_CV, B_CV, groups=np.int64(2), stride=stride, padding=padding, dilation=dilation,
                    backend="einsum:numpy")
    want = _ref(el.conv2d, X, W_CV, B_CV, groups=2, stride=plain(stride), padding=plain(padding),
                dilation=plain(dilation))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    call = el.conv2d.bind(X, W_CV, groups=np.int64(2), stride=stride, padding=padding, dilation=dilation)

    def flat(v):
        return [e for x in v for e in flat(x)] if isinstance(v, (list, tuple)) else [v]
    assert all(type(v) is int for _, p in call.params for v in flat(p))   # plain ints in the plan


@pytest.mark.parametrize("bad", [2.0, True, "2", (1, 2, 3), np.array([1, 2])])
def test_non_integral_parameters_are_shape_errors(bad):
    with pytest.raises(el.ShapeError, match="stride"):
        el.conv2d(X, W_CV, groups=2, stride=bad)


def test_one_d_padding_pair_is_asymmetric_and_one_tuples_work():
    x = rng.standard_normal((2, 3, 9)).astype(np.float32)
    w = rng.standard_normal((2, 3, 3, 9)).astype(np.float32)          # 9 + 2 + 0 - 3 + 1 = 9 outputs
    got = el.locally_connected1d(x, w, padding=(2, 0), backend="einsum:numpy")
    np.testing.assert_allclose(got, el.locally_connected1d(x, w, padding=((2, 0),), backend="einsum:numpy"))
    np.testing.assert_allclose(got, _ref(el.locally_connected1d, x, w, padding=((2, 0),)), rtol=1e-5, atol=1e-5)
    w5 = rng.standard_normal((2, 3, 3, 4)).astype(np.float32)
    np.testing.assert_allclose(el.locally_connected1d(x, w5, stride=(2,), dilation=[1], padding=(0,)),
                               _ref(el.locally_connected1d, x, w5, stride=2), rtol=1e-5, atol=1e-5)


def test_misspelt_keyword_names_the_valid_parameters():
    with pytest.raises(el.ShapeError, match=r"'strid'.*stride, padding, dilation, groups") as e:
        el.conv2d(X, W_CV, strid=2)
    assert isinstance(e.value, TypeError)                  # as Python's own
    with pytest.raises(el.ShapeError, match=r"'groups'.*stride, padding, dilation \("):
        el.vjp(el.depthwise_conv2d, np.ones((2, 8, 5, 5), np.float32), X, W_DW, groups=4)


# -- empty batches -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["einsum:numpy", "loops:numba", "bmm:torch", "native:torch", "einsum:jax"])
def test_an_empty_batch_gives_an_empty_output_and_zero_gradients(name):
    backend = name
    lib = backend.split(":")[1]
    if lib == "numba":
        lib = "numpy"
    mod = pytest.importorskip(lib)
    conv = (lambda a: mod.tensor(a)) if lib == "torch" else (lambda a: mod.numpy.asarray(a)) if lib == "jax" \
        else (lambda a: a)
    x0, w, b = conv(X[:0]), conv(W_DW), conv(B_DW)
    y = el.depthwise_conv2d(x0, w, b, padding=1, backend=backend)
    assert tuple(y.shape) == (0, 8, 7, 7)
    dx, dw, db = el.vjp(el.depthwise_conv2d, conv(np.zeros((0, 8, 7, 7), np.float32)), x0, w, b, padding=1,
                        backend=backend)
    assert tuple(dx.shape) == (0, 4, 7, 7)
    assert tuple(dw.shape) == (8, 1, 3, 3) and not np.asarray(dw).any()
    assert tuple(db.shape) == (8,) and not np.asarray(db).any()


def test_an_empty_batch_in_every_catalogue_op_and_the_torch_layers():
    torch = pytest.importorskip("torch")
    x1 = np.zeros((0, 3, 9), np.float32)
    assert el.locally_connected1d(x1, np.ones((2, 3, 3, 7), np.float32)).shape == (0, 2, 7)
    assert el.locally_connected2d(X[:0], np.ones((2, 4, 3, 3, 5, 5), np.float32)).shape == (0, 2, 5, 5)
    assert el.conv2d(X[:0], W_CV, groups=2, stride=2).shape == (0, 6, 3, 3)
    from einlocal.torch import DepthwiseConv2d, LocallyConnected2d
    for layer in (DepthwiseConv2d(4, 8, 3, padding=1), LocallyConnected2d(4, 2, 3, input_size=(7, 7))):
        x = torch.zeros((0, 4, 7, 7), requires_grad=True)
        y = layer(x)
        assert y.shape[0] == 0
        y.sum().backward()
        assert x.grad.shape == x.shape
        assert layer.weight.grad is not None and not layer.weight.grad.any()


# -- statements ------------------------------------------------------------------------------------


def test_signed_factors_and_an_operand_named_self():
    a, s = np.arange(5.0), np.array([1.0, 10.0, 100.0])
    for text in ("y[t] += a[t*-2+4] * self[t]", "y[t] += a[-2*t+4] * self[t]", "y[t] += a[4-t*2] * self[t]"):
        op = el.Op(text)
        np.testing.assert_array_equal(op(a=a, self=s, backend="einsum:numpy"), [4.0, 20.0, 0.0])
        grads = op.vjp(np.ones(3), a=a, self=s, backend="einsum:numpy")
        np.testing.assert_array_equal(grads["self"], [4.0, 2.0, 0.0])


def test_a_constant_beyond_exact_index_arithmetic_is_a_spec_error():
    with pytest.raises(el.SpecError, match=r"x axis 0 .* 10000000000000000000, beyond"):
        el.Op("y[t] += x[t+10000000000000000000] * w[t]", pad=0)
    far = el.Op("y[t] += x[t+100000000000] * w[t]", pad=0)          # every read outside x: zeros
    np.testing.assert_array_equal(far(x=np.ones(3), w=np.ones(3), backend="loops:numba"), np.zeros(3))


# -- gradients of the bias alone -------------------------------------------------------------------


@pytest.mark.parametrize("op, w, b, params", [(el.depthwise_conv2d, W_DW, B_DW, {}),
                                              (el.conv2d, W_CV, B_CV, {"groups": 2})])
def test_bias_gradient_alone_on_native_torch_and_autograd(op, w, b, params):
    torch = pytest.importorskip("torch")
    x, wt, bt = torch.tensor(X), torch.tensor(w), torch.tensor(b)
    y = op(x, wt, bt, backend="native:torch", **params)
    dy = torch.ones_like(y)
    grads = el.vjp(op, dy, x, wt, bt, backend="native:torch", wrt=("bias",), **params)
    assert grads[0] is None and grads[1] is None
    np.testing.assert_allclose(grads[2].numpy(), dy.sum(dim=(0, 2, 3)).numpy())
    for backend in ("native:torch", "bmm:torch"):
        bt_leaf = torch.tensor(b, requires_grad=True)
        op(x, wt, bt_leaf, backend=backend, **params).sum().backward()
        np.testing.assert_allclose(bt_leaf.grad.numpy(), dy.sum(dim=(0, 2, 3)).numpy())


# -- loops:numba, a 1x1 kernel with stride 2, padding 1 and a bias -------------------------------------


@pytest.mark.parametrize("op, w, b", [
    (el.conv2d, np.full((1, 1, 1, 1), 2.0), np.full(1, 0.5)),
    (el.depthwise_conv2d, np.full((1, 1, 1, 1), 2.0), np.full(1, 0.5)),
    (el.locally_connected2d, np.full((1, 1, 1, 1, 3, 3), 2.0), np.full((1, 3, 3), 0.5)),
])
def test_numba_one_by_one_strided_padded_kernel_with_bias(op, w, b):
    x = rng.standard_normal((1, 1, 3, 3))
    got = op(x, w, b, stride=2, padding=1, backend="loops:numba")
    np.testing.assert_allclose(got, _ref(op, x, w, b, stride=2, padding=1), rtol=1e-12)
    assert got[0, 0, 0, 0] == 0.5 and got[0, 0, 1, 1] == 2 * x[0, 0, 1, 1] + 0.5


# -- out= -------------------------------------------------------------------------------------------


def _read_only():
    out = np.zeros((2, 8, 5, 5), np.float32)
    out.flags.writeable = False
    return out


@pytest.mark.parametrize("make, why", [
    (_read_only, "read-only"),
    (lambda: np.lib.stride_tricks.as_strided(np.zeros(8 * 25, np.float32), (2, 8, 5, 5), (0, 100, 20, 4)),
     "stride 0 on axis 0"),
])
def test_a_read_only_or_zero_stride_out_is_refused_by_every_backend(make, why):
    for backend in ("loops:numba", "bmm:numpy", "einsum:numpy", "broadcast:numpy", "opt_einsum:numpy"):
        out = make()
        before = out.copy()
        with pytest.raises(el.ShapeError, match=f"out= .*{why}"):
            el.depthwise_conv2d(X, W_DW, out=out, backend=backend)
        np.testing.assert_array_equal(out, before)


def test_a_zero_stride_torch_out_is_refused():
    torch = pytest.importorskip("torch")
    out = torch.zeros((1, 8, 5, 5)).expand(2, 8, 5, 5)
    with pytest.raises(el.ShapeError, match="stride 0 on axis 0"):
        el.depthwise_conv2d(torch.tensor(X), torch.tensor(W_DW), out=out, backend="native:torch")


# -- the memory guard counts the result --------------------------------------------------------------


def test_the_memory_guard_counts_the_result():
    x = np.zeros((1, 1, 8, 8), np.float32)
    w = np.zeros((4096, 1, 1, 1), np.float32)          # a 1x1 kernel: no intermediate, a 1 MiB result
    el.set_memory_budget(512 * 1024)
    for backend in ("einsum:numpy", "loops:numba"):
        with pytest.raises(el.MemoryBudgetError, match=r"result \(1, 1, 4096, 8, 8\): 1,048,576 bytes"):
            el.depthwise_conv2d(x, w, backend=backend)
        out = np.empty((1, 4096, 8, 8), np.float32)      # a given out= allocates nothing
        assert el.depthwise_conv2d(x, w, out=out, backend=backend) is out


def test_the_memory_guard_adds_up_every_intermediate():
    x = np.zeros((1, 1, 30, 30), np.float32)
    w = np.zeros((1, 1, 3, 3), np.float32)
    from einlocal import registry
    call = el.conv2d.bind(x, w, padding=1)
    allocs = registry.get("bmm:numpy").allocations(call.plan)
    largest = max(n for n, _ in allocs)
    total = sum(n for n, _ in allocs) + 900
    assert len(allocs) >= 2 and total > largest
    el.set_memory_budget(4 * total - 1)      # over by one byte though the largest fits easily
    with pytest.raises(el.MemoryBudgetError, match="padded copy of x"):
        el.conv2d(x, w, padding=1, backend="bmm:numpy")
    el.set_memory_budget(4 * total)
    el.conv2d(x, w, padding=1, backend="bmm:numpy")


# -- auto and el.backends: only backends that run the call -------------------------------------------


@pytest.mark.parametrize("shape", [(1, 2, 5, 5), (2, 4, 7, 7)])
def test_auto_with_autodiff_on_jax_picks_a_backend_with_autodiff(shape):
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    from einlocal.call import resolve_backend
    x = jnp.asarray(rng.standard_normal(shape).astype(np.float32))
    w = jnp.asarray(rng.standard_normal((shape[1] * 2, 1, 3, 3)).astype(np.float32))
    call = el.depthwise_conv2d.bind(x, w, padding=1)
    chosen = resolve_backend("auto", call, "jax", "cpu", "float32", "autodiff")
    assert "autodiff" in chosen.grad_modes("jax")
    dy = jnp.ones(call.out_shape, jnp.float32)
    dx, dw, _ = el.vjp(el.depthwise_conv2d, dy, x, w, padding=1, grad="autodiff")
    want = el.vjp(el.depthwise_conv2d, np.ones(call.out_shape), np.asarray(x, np.float64), np.asarray(w, np.float64),
                  padding=1, backend="loops:python")
    np.testing.assert_allclose(np.asarray(dw), want[1], rtol=1e-4, atol=1e-4)
    g = jax.jit(jax.grad(lambda w: el.depthwise_conv2d(x, w, padding=1, grad="autodiff").sum()))(w)
    np.testing.assert_allclose(np.asarray(g), want[1], rtol=1e-4, atol=1e-4)


def _arrays_of(kind: str):
    """(x, weight, bias) of conv2d for one library and dtype."""
    lib, dtype = kind.split("-")
    x, w, b = X[:1, :, :5, :5], W_CV, B_CV
    if lib == "numpy":
        return x.astype(dtype), w.astype(dtype), b.astype(dtype)
    mod = pytest.importorskip(lib)
    if lib == "torch":
        return tuple(mod.tensor(a).to(getattr(mod, dtype)) for a in (x, w, b))
    return tuple(mod.numpy.asarray(a, dtype=dtype) for a in (x, w, b))


@pytest.mark.parametrize("kind", ["numpy-float32", "numpy-float16", "numpy-float64", "torch-float32",
                                  "torch-bfloat16", "torch-float16", "jax-float32", "jax-bfloat16"])
def test_every_backend_el_backends_lists_runs_the_op(kind):
    x, w, b = _arrays_of(kind)
    listed = el.backends(el.conv2d, like=x)
    assert listed and listed == el.backends(el.conv2d, like={"x": x, "weight": w, "bias": b}, groups=2)
    for name in listed:
        y = el.conv2d(x, w, b, groups=2, backend=name)
        assert tuple(y.shape) == (1, 6, 3, 3) and str(y.dtype).endswith(kind.split("-")[1]), name
    if kind.endswith("float16") and not kind.startswith("jax"):
        assert "loops:numba" not in listed
        with pytest.raises(el.BackendError, match="loops:numba computes in float32 or float64, not"):
            el.conv2d(x, w, b, groups=2, backend="loops:numba")
    assert el.conv2d(x, w, b, groups=2).dtype == x.dtype            # auto, too


@pytest.mark.parametrize("grad", ["vjp", "autodiff"])
def test_an_empty_batch_under_torch_autograd_in_either_grad_mode(grad):
    torch = pytest.importorskip("torch")
    x = torch.zeros((0, 4, 7, 7), requires_grad=True)
    w = torch.tensor(W_CV, requires_grad=True)
    y = el.conv2d(x, w, groups=2, backend="bmm:torch", grad=grad)
    assert y.shape == (0, 6, 5, 5) and y.requires_grad
    y.sum().backward()
    assert x.grad.shape == x.shape and w.grad.shape == w.shape and not w.grad.any()


@pytest.mark.parametrize("grad", ["vjp", "autodiff"])
def test_an_empty_batch_under_jax_grad(grad):
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    x, w, b = jnp.zeros((0, 4, 7, 7), jnp.float32), jnp.asarray(W_CV), jnp.asarray(B_CV)

    def loss(x, w, b):
        return el.conv2d(x, w, b, groups=2, backend="bmm:jax", grad=grad).sum()
    for fn in (jax.grad(loss, argnums=(0, 1, 2)), jax.jit(jax.grad(loss, argnums=(0, 1, 2)))):
        dx, dw, db = fn(x, w, b)
        assert dx.shape == x.shape and dw.shape == w.shape and db.shape == b.shape
        assert not np.asarray(dw).any() and not np.asarray(db).any()


@pytest.mark.parametrize("grad", ["vjp", "autodiff"])
@pytest.mark.parametrize("wrt", [(), ("bias",)])
def test_vjp_with_no_gradient_or_only_the_bias_asked_for(grad, wrt):
    torch = pytest.importorskip("torch")
    x, w, b = torch.tensor(X), torch.tensor(W_CV), torch.tensor(B_CV)
    dy = torch.ones((2, 6, 5, 5))
    for backend in ("broadcast:torch", "native:torch"):
        grads = el.vjp(el.conv2d, dy, x, w, b, groups=2, backend=backend, wrt=wrt, grad=grad)
        assert grads[0] is None and grads[1] is None
        assert (grads[2] is None) == (not wrt)
        if wrt:
            np.testing.assert_allclose(grads[2].numpy(), np.full(6, 50.0))


def test_el_backends_leaves_out_triton_for_cpu_tensors_outside_the_interpreter(monkeypatch):
    torch = pytest.importorskip("torch")
    from einlocal import registry
    if "loops:triton" not in registry.available():
        pytest.skip(registry.unavailable().get("loops:triton", "loops:triton is not registered"))
    import importlib
    lt = importlib.import_module("einlocal.backends.loops_triton")
    x = torch.tensor(X[:1, :, :5, :5])
    assert "loops:triton" in el.backends(el.conv2d, like=x)            # the interpreter is on in the tests
    monkeypatch.setattr(lt, "interpreting", lambda: False)
    assert "loops:triton" not in el.backends(el.conv2d, like=x)
    assert "loops:triton" not in el.backends(el.conv2d, like={"x": x, "weight": torch.tensor(W_CV)}, groups=2)
    with pytest.raises(el.BackendError, match="runs on CUDA tensors"):
        el.conv2d(x, torch.tensor(W_CV), groups=2, backend="loops:triton")


@pytest.mark.parametrize("kw, error, message", [
    (dict(x=(2, 4, 8, 8)), el.ShapeError, "weight is required"),
    (dict(x=(2, 4, 8, 8), weight=(6, 3, 3, 3)), el.ShapeError, "weight axis 1 is 3"),
    (dict(x=(2, 4, 8, 8), weight=(6, 4, 3, 3), strid=2), el.ShapeError, "unexpected keyword argument 'strid'"),
    (dict(x=(2, 4, 8, 8), weight=(6, 4, 3, 3), backends=["nope"]), el.BackendError, "unknown backend 'nope'"),
    (dict(x=(2, 4, 8, 8), weight=(6, 4, 3, 3), passes=("fwd",)), el.ShapeError, "'fwd' is not one of forward"),
    (dict(x=(2, 4, 8, 8), weight=(6, 4, 3, 3), regimes=("hot",)), el.ShapeError, "'hot' is not one of fresh"),
    (dict(x=(2, 4, 8, 8), weight=(6, 4, 3, 3), dtype="int8"), el.ShapeError, "dtype='int8'"),
], ids=["missing-weight", "bad-shape", "misspelt-keyword", "unknown-backend", "bad-pass", "bad-regime", "bad-dtype"])
def test_benchmark_refuses_bad_arguments_before_any_work(kw, error, message, monkeypatch):
    from einlocal import bench
    monkeypatch.setattr(bench, "run_jobs", lambda *a, **k: pytest.fail("jobs ran"))
    with pytest.raises(error, match=message):
        el.benchmark(el.conv2d, **kw)
