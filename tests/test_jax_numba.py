"""loops:numba on jax arrays (backends/numba_jax.py): its kernels called from
inside XLA programs through jax's FFI.  Forward, grad, jvp and vmap under
jit against the float64 reference; the same results as on numpy arrays; one
custom call per statement, side-effect free; listed for jax arrays."""
import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("numba")
import jax.numpy as jnp  # noqa: E402

import einlocal as el  # noqa: E402
import einlocal.jax as elj  # noqa: E402
from einlocal import registry  # noqa: E402

B = "loops:numba"

# op name -> (x shape, weight shape, bias shape, params)
CASES = {
    "locally_connected2d": ((2, 3, 7, 6), (4, 3, 3, 2, 4, 6), (4, 4, 6), dict(stride=(2, 1), padding=1, dilation=(1, 2))),
    "locally_connected1d": ((2, 3, 9), (2, 3, 3, 5), (2, 5), dict(stride=2, padding=1)),
    "depthwise_conv2d": ((2, 3, 6, 5), (6, 1, 3, 3), (6,), dict(padding=1)),
    "conv2d": ((2, 4, 6, 6), (6, 2, 3, 3), (6,), dict(stride=2, groups=2)),
}


@pytest.fixture(autouse=True)
def _available():
    reason = registry.unavailable().get(B)
    if reason:
        pytest.skip(f"{B}: {reason}")


def _case(name, seed=0, dtype=np.float64):
    xs, ws, bs, params = CASES[name]
    rng = np.random.default_rng(seed)
    return (*(rng.standard_normal(s).astype(dtype) for s in (xs, ws, bs)), params)


def _ref(name, x, w, b, params):
    return getattr(el, name)(x, w, b, backend="loops:python", **params)


def _close(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name", CASES)
def test_forward_grad_and_jvp_under_jit_match_the_reference(name):
    x, w, b, params = _case(name)
    fn = getattr(elj, name)
    dy = np.random.default_rng(1).standard_normal(_ref(name, x, w, b, params).shape)

    def loss(x, w, b):
        return jnp.vdot(fn(x, w, b, backend=B, **params), dy)
    value, grads = jax.jit(jax.value_and_grad(loss, (0, 1, 2)))(*map(jnp.asarray, (x, w, b)))
    y = jax.jit(lambda *a: fn(*a, backend=B, **params))(*map(jnp.asarray, (x, w, b)))
    _close(y, _ref(name, x, w, b, params))
    _close(value, np.vdot(_ref(name, x, w, b, params), dy))
    for g, r in zip(grads, el.vjp(getattr(el, name), dy, x, w, b, backend="loops:python", **params)):
        _close(g, r)
    tx, tw, tb = (np.random.default_rng(k).standard_normal(a.shape) for k, a in enumerate((x, w, b), 7))
    yp, t = jax.jit(lambda p, t: jax.jvp(lambda *a: fn(*a, backend=B, **params), p, t))(
        tuple(map(jnp.asarray, (x, w, b))), tuple(map(jnp.asarray, (tx, tw, tb))))
    _close(yp, _ref(name, x, w, b, params))
    _close(t, _ref(name, tx, w, None, params) + _ref(name, x, tw, None, params)
           + _ref(name, np.zeros_like(x), w, tb, params))


@pytest.mark.parametrize("name", ["locally_connected2d", "depthwise_conv2d"])
@pytest.mark.parametrize("axes", [(0, None), (None, 0)], ids=["x (one batched call)", "weight (a loop)"])
def test_vmap_and_its_gradient_under_jit(name, axes):
    x, w, _, params = _case(name)
    n = 3
    rng = np.random.default_rng(5)
    stacked = [np.stack([a + rng.standard_normal(a.shape) for _ in range(n)]) if ax == 0 else a
               for a, ax in zip((x, w), axes)]
    fn = getattr(elj, name)
    f = jax.vmap(lambda x, w: fn(x, w, backend=B, **params), in_axes=axes)
    y = jax.jit(f)(*map(jnp.asarray, stacked))
    dy = rng.standard_normal(y.shape)
    g = jax.jit(jax.grad(lambda *a: jnp.vdot(f(*a), dy), (0, 1)))(*map(jnp.asarray, stacked))
    for k in range(n):
        args = [a[k] if ax == 0 else a for a, ax in zip(stacked, axes)]
        _close(y[k], _ref(name, *args, None, params))
        ref = el.vjp(getattr(el, name), dy[k], *args, backend="loops:python", **params)
        for j, ax in enumerate(axes):
            if ax == 0:
                _close(g[j][k], ref[j])
    # a batch of x only is one call of the op on the batch folded into its own
    hlo = jax.jit(f).lower(*map(jnp.asarray, stacked)).as_text()
    assert hlo.count("stablehlo.custom_call") == 1
    assert ("stablehlo.while" in hlo) == (axes[1] == 0)


@pytest.mark.parametrize("name", ["locally_connected2d", "depthwise_conv2d"])
def test_float32_results_are_those_on_numpy_arrays(name):
    """The same compiled kernels run, inside XLA or on numpy arrays: the
    forward and both gradients are equal bit for bit."""
    x, w, _, params = _case(name, dtype=np.float32)
    op = getattr(el, name)
    y = op(x, w, backend=B, **params)
    dy = np.random.default_rng(2).standard_normal(y.shape).astype(np.float32)
    gx, gw, _ = el.vjp(op, dy, x, w, backend=B, **params)
    yj, (gxj, gwj) = jax.jit(jax.value_and_grad(lambda x, w: jnp.vdot(op(x, w, backend=B, **params), dy),
                                                (0, 1)))(jnp.asarray(x), jnp.asarray(w))
    fj = jax.jit(lambda x, w: op(x, w, backend=B, **params))(jnp.asarray(x), jnp.asarray(w))
    assert fj.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(fj), y)
    np.testing.assert_array_equal(np.asarray(gxj), gx)
    np.testing.assert_array_equal(np.asarray(gwj), gw)


def test_one_side_effect_free_custom_call_per_statement():
    x, w, _, params = _case("depthwise_conv2d", dtype=np.float32)
    op = el.depthwise_conv2d
    xj, wj = jnp.asarray(x), jnp.asarray(w)
    fwd = jax.jit(lambda x, w: op(x, w, backend=B, **params)).lower(xj, wj).as_text()
    assert fwd.count("stablehlo.custom_call @einlocal_numba_") == 1
    # forward, dx and dweight: three calls
    vg = jax.jit(jax.value_and_grad(lambda x, w: jnp.sum(op(x, w, backend=B, **params)), (0, 1)))
    assert vg.lower(xj, wj).as_text().count("stablehlo.custom_call @einlocal_numba_") == 3
    # a result nobody uses is removed, like any pure op's
    target = 'custom_call_target="einlocal_numba_'
    used = jax.jit(lambda x, w: op(x, w, backend=B, **params) * 2).lower(xj, wj).compile().as_text()
    unused = jax.jit(lambda x, w: (op(x, w, backend=B, **params), x * 2)[1]).lower(xj, wj).compile().as_text()
    assert target in used and target not in unused


def test_eager_calls_and_el_vjp_on_jax_arrays():
    x, w, b, params = _case("conv2d")
    op = el.conv2d
    xj, wj, bj = map(jnp.asarray, (x, w, b))
    y = op(xj, wj, bj, backend=B, **params)
    assert isinstance(y, jax.Array)
    _close(y, _ref("conv2d", x, w, b, params))
    dy = np.random.default_rng(3).standard_normal(y.shape)
    got = el.vjp(op, jnp.asarray(dy), xj, wj, bj, backend=B, **params)
    for g, r in zip(got, el.vjp(op, dy, x, w, b, backend="loops:python", **params)):
        assert isinstance(g, jax.Array)
        _close(g, r)


def test_listed_for_jax_arrays_and_every_listed_name_runs():
    x, w, b, params = _case("depthwise_conv2d")
    xj, wj, bj = map(jnp.asarray, (x, w, b))
    names = el.backends(el.depthwise_conv2d, like=xj)
    assert B in names
    ref = _ref("depthwise_conv2d", x, w, b, params)
    for name in names:
        y = jax.jit(lambda x, w, b: el.depthwise_conv2d(x, w, b, backend=name, **params))(xj, wj, bj)
        _close(y, ref)


def test_grad_mode_autodiff_is_refused_with_the_reason():
    x, w, _, params = _case("depthwise_conv2d")
    with pytest.raises(el.BackendError, match="no grad='autodiff'"):
        el.depthwise_conv2d(jnp.asarray(x), jnp.asarray(w), backend=B, grad="autodiff", **params)


def test_choose_measures_it_on_jax_arrays_and_auto_uses_the_choice():
    from einlocal import auto
    rng = np.random.default_rng(9)
    xj = jnp.asarray(rng.standard_normal((1, 5, 7, 7)))
    wj = jnp.asarray(rng.standard_normal((5, 1, 3, 3)))
    entry = el.choose(el.depthwise_conv2d, xj, wj, padding=1, backends=[B, "einsum:jax"], budget_s=0.01,
                      refresh=True, details=True)
    assert set(entry["seconds"]) == {B, "einsum:jax"} and not entry["dropped"]
    entry = el.choose(el.depthwise_conv2d, xj, wj, padding=1, backends=[B], budget_s=0.01, refresh=True, details=True)
    assert entry["backend"] == B
    auto._cache_state.clear()
    try:
        jaxpr = jax.make_jaxpr(lambda x, w: el.depthwise_conv2d(x, w, padding=1, backend="auto"))(xj, wj)
        (eqn,) = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "einlocal"]
        assert eqn.params["backend"].name == B
    finally:
        auto._cache_state.clear()


_CONCURRENT = """
import threading
import numpy as np, jax, jax.numpy as jnp, numba, einlocal as el
rng = np.random.default_rng(0)
x = jnp.asarray(rng.standard_normal((2, 64, 16, 16), dtype=np.float32))
w = jnp.asarray(rng.standard_normal((64, 1, 3, 3), dtype=np.float32))
f = jax.jit(jax.value_and_grad(
    lambda x, w: jnp.sum(el.depthwise_conv2d(x, w, padding=1, backend="loops:numba") ** 2), (0, 1)))
expect = jax.tree.leaves(jax.block_until_ready(f(x, w)))
def work():
    for _ in range(30):
        got = jax.tree.leaves(jax.block_until_ready(f(x, w)))
        assert all(np.array_equal(a, b) for a, b in zip(got, expect))
threads = [threading.Thread(target=work) for _ in range(3)]
[t.start() for t in threads]
[t.join() for t in threads]
print(numba.threading_layer())
"""


def test_programs_running_at_once_are_safe_on_numba_workqueue_layer():
    """Three Python threads run the jitted program at once, so kernels are
    launched from several threads together: numba's workqueue layer would
    abort the process; the handler runs one kernel at a time."""
    import os
    import subprocess
    import sys
    env = {**os.environ, "NUMBA_THREADING_LAYER": "workqueue", "JAX_ENABLE_X64": "0"}
    r = subprocess.run([sys.executable, "-c", _CONCURRENT], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split()[-1] == "workqueue"
