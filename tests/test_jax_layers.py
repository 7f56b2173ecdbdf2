"""einlocal.jax: forward, gradients (reverse and forward mode), jit and vmap
against the float64 reference, on every jax backend; the derived backward
statements are what runs under jax.grad; parameter initialisation."""
import math

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

import einlocal as el  # noqa: E402
import einlocal.jax as elj  # noqa: E402
from einlocal import registry  # noqa: E402
from einlocal.backends import autograd_jax  # noqa: E402

JAX_BACKENDS = [n for n in registry.NAMES if n.endswith(":jax")]

# op name -> (x shape, init function, init args, call params)
CASES = {
    "locally_connected2d": ((2, 3, 7, 6), elj.init_locally_connected2d, (3, 4, (3, 2), (7, 6)),
                            dict(stride=(2, 1), padding=1, dilation=(1, 2))),
    "locally_connected1d": ((2, 3, 9), elj.init_locally_connected1d, (3, 2, 3, 9), dict(stride=2, padding=1)),
    "depthwise_conv2d": ((2, 3, 6, 5), elj.init_depthwise_conv2d, (3, 6, 3), dict(padding=1)),
    "conv2d": ((2, 4, 6, 6), elj.init_conv2d, (4, 6, 3), dict(stride=2, groups=2)),
}
INIT_PARAMS = {"locally_connected2d": ("stride", "padding", "dilation"),
               "locally_connected1d": ("stride", "padding", "dilation"), "conv2d": ("groups",)}


@pytest.fixture(params=JAX_BACKENDS)
def jax_backend(request):
    reason = registry.unavailable().get(request.param)
    if reason:
        pytest.skip(f"{request.param}: {reason}")
    return request.param


def _case(name, seed=0):
    """Fresh float64 arrays (x, weight, bias) as numpy, and the call params."""
    x_shape, init, args, params = CASES[name]
    init_kw = {k: params[k] for k in INIT_PARAMS.get(name, ()) if k in params}
    p = init(jax.random.key(seed), *args, dtype=jnp.float64, **init_kw)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape)
    return x, np.asarray(p["weight"]), np.asarray(p["bias"]), params


def _reference(name, x, w, b, params):
    return getattr(el, name)(x, w, b, backend="loops:python", **params)


def _close(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name", CASES)
def test_forward_and_grad_match_reference(name, jax_backend):
    x, w, b, params = _case(name)
    fn = getattr(elj, name)
    y = fn(jnp.asarray(x), jnp.asarray(w), jnp.asarray(b), backend=jax_backend, **params)
    _close(y, _reference(name, x, w, b, params))
    dy = np.random.default_rng(1).standard_normal(y.shape)

    def loss(x, w, b):
        return jnp.sum(fn(x, w, b, backend=jax_backend, **params) * dy)
    grads = jax.grad(loss, (0, 1, 2))(jnp.asarray(x), jnp.asarray(w), jnp.asarray(b))
    ref = el.vjp(getattr(el, name), dy, x, w, b, backend="loops:python", **params)
    for g, r in zip(grads, ref):
        _close(g, r)


@pytest.mark.parametrize("jax_backend", ["einsum:jax", "native:jax"], indirect=True)
@pytest.mark.parametrize("name", CASES)
def test_jvp_is_the_op_applied_to_each_tangent(name, jax_backend):
    """Forward mode is backend-independent (the same primitive); two backends suffice."""
    x, w, b, params = _case(name)
    dx, dw, db = (np.random.default_rng(k).standard_normal(a.shape) for k, a in enumerate((x, w, b), 7))
    fn = getattr(elj, name)
    y, t = jax.jvp(lambda *a: fn(*a, backend=jax_backend, **params),
                   tuple(map(jnp.asarray, (x, w, b))), tuple(map(jnp.asarray, (dx, dw, db))))
    expect = (_reference(name, dx, w, None, params) + _reference(name, x, dw, None, params)
              + _reference(name, np.zeros_like(x), w, db, params))
    _close(y, _reference(name, x, w, b, params))
    _close(t, expect)
    # linearize (forward mode, then reused) agrees
    _, lin = jax.linearize(lambda w: fn(jnp.asarray(x), w, backend=jax_backend, **params), jnp.asarray(w))
    _close(lin(jnp.asarray(dw)), _reference(name, x, dw, None, params))


def test_hessian_vector_product_matches_autodiff():
    x, w, b, params = _case("locally_connected2d")
    ours = jax.grad(lambda w: jnp.sum(jnp.tanh(elj.locally_connected2d(jnp.asarray(x), w, **params)) ** 2))
    auto = jax.grad(lambda w: jnp.sum(jnp.tanh(el.locally_connected2d(
        jnp.asarray(x), w, backend="einsum:jax", grad="autodiff", **params)) ** 2))
    v = jnp.asarray(np.random.default_rng(3).standard_normal(w.shape))
    _close(jax.jvp(ours, (jnp.asarray(w),), (v,))[1], jax.jvp(auto, (jnp.asarray(w),), (v,))[1])


def _counting(monkeypatch, name):
    """Record every plan the backend executes."""
    autograd_jax._jitted_grad.cache_clear()
    autograd_jax._jitted_forward.cache_clear()
    backend = registry.get(name)
    seen = []
    real = backend.execute

    def execute(plan, operands, out=None):
        seen.append(plan)
        return real(plan, operands, out)
    monkeypatch.setattr(backend, "execute", execute)
    return seen


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_grad_runs_the_derived_backward_statements(monkeypatch, jit):
    x, w, b, params = _case("locally_connected2d", seed=4)
    seen = _counting(monkeypatch, "einsum:jax")
    call = el.locally_connected2d.bind(x, w, b, **params)

    def loss(x, w):
        return jnp.sum(elj.locally_connected2d(x, w, backend="einsum:jax", **params) ** 2)
    g = jax.grad(loss, (0, 1))
    (jax.jit(g) if jit else g)(jnp.asarray(x), jnp.asarray(w))
    assert call.plan.backward["x"] in seen
    assert call.plan.backward["wt"] in seen
    # forward mode runs the forward statement on the tangents, no backward one
    seen.clear()
    autograd_jax._jitted_forward.cache_clear()
    jax.jvp(lambda w: elj.locally_connected2d(jnp.asarray(x), w, **params), (jnp.asarray(w),), (jnp.asarray(w),))
    assert seen and all(p == call.plan for p in seen)


@pytest.mark.parametrize("name", ["locally_connected2d", "depthwise_conv2d"])
@pytest.mark.parametrize("axes", [(0, None, None), (None, 0, None), (1, 0, 0)], ids=["x", "weight", "all"])
def test_vmap_and_its_gradients(name, axes):
    x, w, b, params = _case(name)
    B = 3
    rng = np.random.default_rng(5)
    stacked = [np.stack([a * (k + 1) + rng.standard_normal(a.shape) * 0.1 for k in range(B)], axis=ax)
               if ax is not None else a for a, ax in zip((x, w, b), axes)]
    fn = getattr(elj, name)
    f = jax.vmap(lambda *a: fn(*a, **params), in_axes=axes)
    y = f(*map(jnp.asarray, stacked))
    for k in range(B):
        args = [np.take(a, k, axis=ax) if ax is not None else a for a, ax in zip(stacked, axes)]
        _close(y[k], _reference(name, *args, params))
    # grad through vmap, and vmap of grad, equal the reference's per-item vjp
    dy = rng.standard_normal(y.shape)
    g = jax.grad(lambda *a: jnp.sum(f(*a) * dy), range(3))(*map(jnp.asarray, stacked))
    per_item = jax.vmap(jax.grad(lambda x, w, b, d: jnp.sum(fn(x, w, b, **params) * d), range(3)),
                        in_axes=(*axes, 0))(*map(jnp.asarray, stacked), jnp.asarray(dy))
    for k in range(B):
        args = [np.take(a, k, axis=ax) if ax is not None else a for a, ax in zip(stacked, axes)]
        ref = el.vjp(getattr(el, name), dy[k], *args, backend="loops:python", **params)
        for j, ax in enumerate(axes):
            if ax is not None:
                _close(np.take(np.asarray(g[j]), k, axis=ax), ref[j])
            _close(np.take(np.asarray(per_item[j]), k, axis=0), ref[j])


def test_vmap_folds_a_batch_of_inputs_into_one_call():
    x, w, b, params = _case("locally_connected2d")
    xs = jnp.stack([jnp.asarray(x)] * 4)
    jaxpr = jax.make_jaxpr(jax.vmap(lambda x: elj.locally_connected2d(x, jnp.asarray(w), **params)))(xs)
    eqns = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "einlocal"]
    assert len(eqns) == 1 and eqns[0].params["call"].arg_shapes[0][1][0] == 4 * x.shape[0]


def test_numpy_inputs_are_taken_and_jax_out_is_refused():
    x, w, b, params = _case("conv2d")
    y = elj.conv2d(x, w, b, **params)
    assert isinstance(y, jax.Array)
    _close(y, _reference("conv2d", x, w, b, params))
    with pytest.raises(el.BackendError, match="out="):
        el.conv2d(jnp.asarray(x), jnp.asarray(w), out=np.empty(y.shape), backend="einsum:jax", **params)


@pytest.mark.parametrize("init,args,kw,fan_in,shapes", [
    (elj.init_locally_connected2d, (3, 5, 3, (8, 10)), dict(stride=2, padding=1), 27,
     ((5, 3, 3, 3, 4, 5), (5, 4, 5))),
    (elj.init_locally_connected2d, (2, 4, (3, 1), (6, 6)), dict(padding="same"), 6,
     ((4, 2, 3, 1, 6, 6), (4, 6, 6))),
    (elj.init_locally_connected1d, (2, 3, 5, 20), dict(dilation=2), 10, ((3, 2, 5, 12), (3, 12))),
    (elj.init_depthwise_conv2d, (4, 12, 5), {}, 25, ((12, 1, 5, 5), (12,))),
    (elj.init_depthwise_conv2d, (4,), dict(kernel_size=5, depth_multiplier=3), 25, ((12, 1, 5, 5), (12,))),
    (elj.init_conv2d, (4, 8, 3), dict(groups=2), 18, ((8, 2, 3, 3), (8,))),
])
def test_init_follows_torch_conv2d_scheme(init, args, kw, fan_in, shapes):
    p = init(jax.random.key(1), *args, **kw)
    bound = 1 / math.sqrt(fan_in)
    for arr, shape in zip((p["weight"], p["bias"]), shapes):
        assert arr.shape == shape and arr.dtype == jnp.float32
        a = np.asarray(arr)
        assert np.abs(a).max() <= bound
        assert a.std() > 0.3 * bound          # U(-b, b) has std b/sqrt(3)
    q = init(jax.random.key(2), *args, **kw)
    assert not np.array_equal(np.asarray(p["weight"]), np.asarray(q["weight"]))
    assert init(jax.random.key(1), *args, bias=False, **kw)["bias"] is None


def test_init_rejects_a_kernel_larger_than_the_input():
    with pytest.raises(el.ShapeError, match="kernel"):
        elj.init_locally_connected2d(jax.random.key(0), 1, 1, 5, (3, 3))


def test_init_depthwise_refuses_out_channels_not_a_multiple():
    with pytest.raises(el.ShapeError, match="out_channels = 6 is not a multiple of in_channels = 4"):
        elj.init_depthwise_conv2d(jax.random.key(0), 4, 6, 3)
