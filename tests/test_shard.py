"""einlocal.shard on two CPU host devices (tests/conftest.py sets XLA_FLAGS):
results equal the single-device op, forward and gradients; each device holds
half the weight; the compiled program moves halos only."""
import re

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

import einlocal as el  # noqa: E402
import einlocal.jax as elj  # noqa: E402
import einlocal.shard as shard  # noqa: E402

pytestmark = pytest.mark.skipif(len(jax.devices()) != 2, reason="needs exactly two jax devices "
                                "(XLA_FLAGS=--xla_force_host_platform_device_count=2 before jax is imported)")

# (H, kernel, stride, padding, dilation)
CASES = [(16, 3, 1, 1, 1), (16, 3, 1, 0, 1), (16, 3, 2, 1, 1), (12, 3, 1, 2, 2), (8, 1, 1, 0, 1)]
W = 6


def _arrays(H, k, S, P, D, seed=0):
    rng = np.random.default_rng(seed)
    Ho = (H + 2 * P - D * (k - 1) - 1) // S + 1
    Wo = (W + 2 * P - D * (k - 1) - 1) // S + 1
    x = jnp.asarray(rng.standard_normal((2, 3, H, W)))
    w = jnp.asarray(rng.standard_normal((4, 3, k, k, Ho, Wo)))
    b = jnp.asarray(rng.standard_normal((4, Ho, Wo)))
    return x, w, b, dict(stride=S, padding=P, dilation=D)


def _sharded(mesh, params):
    return lambda x, w, b: shard.locally_connected2d(x, w, b, mesh=mesh, **params)


def _loss(fn):
    return lambda x, w, b: jnp.sum(jnp.sin(fn(x, w, b)))


@pytest.mark.parametrize("case", CASES, ids=str)
def test_equals_the_single_device_op_forward_and_gradients(case):
    x, w, b, params = _arrays(*case)
    mesh = shard.mesh()
    xs, ws, bs = shard.place(mesh, x, w, b)
    y = jax.jit(_sharded(mesh, params))(xs, ws, bs)
    ref = elj.locally_connected2d(x, w, b, **params)
    assert y.sharding.spec == shard.specs()["y"]
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=1e-12, atol=1e-12)
    grads = jax.jit(jax.grad(_loss(_sharded(mesh, params)), (0, 1, 2)))(xs, ws, bs)
    ref_grads = el.vjp(el.locally_connected2d, np.cos(np.asarray(ref)), *map(np.asarray, (x, w, b)),
                       backend="loops:python", **params)
    for g, r, name in zip(grads, ref_grads, ("x", "weight", "bias")):
        assert g.sharding.is_equivalent_to(jax.sharding.NamedSharding(mesh, shard.specs()[name]), g.ndim)
        np.testing.assert_allclose(np.asarray(g), r, rtol=1e-10, atol=1e-12)


def test_forward_mode_through_the_shards():
    x, w, b, params = _arrays(*CASES[0])
    mesh = shard.mesh()
    xs, ws, bs = shard.place(mesh, x, w, b)
    _, t = jax.jvp(_sharded(mesh, params), (xs, ws, bs), (xs, ws, bs))
    expect = elj.locally_connected2d(x, w, None, **params) + elj.locally_connected2d(x, w, b, **params)
    np.testing.assert_allclose(np.asarray(t), np.asarray(expect), rtol=1e-12, atol=1e-12)


def test_each_device_holds_half_the_weight():
    x, w, b, params = _arrays(*CASES[0])
    mesh = shard.mesh()
    _, ws, bs = shard.place(mesh, x, w, b)
    assert len(ws.addressable_shards) == 2
    for s in ws.addressable_shards:
        assert s.data.nbytes * 2 == w.nbytes
        assert s.data.shape[4] * 2 == w.shape[4]
    devices = {s.device for s in ws.addressable_shards}
    assert devices == set(jax.devices())
    grads = jax.jit(jax.grad(_loss(_sharded(mesh, params)), 1))(*shard.place(mesh, x, w, b))
    assert all(s.data.nbytes * 2 == w.nbytes for s in grads.addressable_shards)


def _collectives(hlo: str):
    """(op name, result shape) of every collective in compiled HLO text."""
    pat = r"=\s*(\w+\[[\d,]*\])\S*\s+(all-gather|all-to-all|collective-permute|all-reduce|reduce-scatter)"
    return [(op, shape) for shape, op in re.findall(pat, hlo)]


@pytest.mark.parametrize("case", CASES[:4], ids=str)
def test_compiled_program_moves_halos_only(case):
    H, k, S, P, D = case
    x, w, b, params = _arrays(*case)
    mesh = shard.mesh()
    args = shard.place(mesh, x, w, b)
    Ho = w.shape[4]
    above, below, _, _ = shard.halo(H, Ho, 2, k, S, P, D)
    halo_shapes = {f"f64[2,3,{r},{W}]" for r in (above, below) if r}
    for fn in (_sharded(mesh, params), jax.grad(_loss(_sharded(mesh, params)), (0, 1, 2))):
        hlo = jax.jit(fn).lower(*args).compile().as_text()
        found = _collectives(hlo)
        assert found, "expected collective-permutes of the halo"
        assert {op for op, _ in found} == {"collective-permute"}, found   # no all-gather, all-to-all
        assert {shape for _, shape in found} <= halo_shapes, (found, halo_shapes)


def test_halo_rows():
    # 3x3 same: one row from each neighbour; valid: device 1 reads 1 row above, device 0 one below
    assert shard.halo(16, 16, 2, 3, 1, 1, 1)[:3] == (1, 1, 10)
    assert shard.halo(16, 14, 2, 3, 1, 0, 1)[:3] == (1, 1, 9)
    assert shard.halo(8, 8, 2, 1)[:2] == (0, 0)


def test_errors():
    x, w, b, params = _arrays(15, 3, 1, 1, 1)
    with pytest.raises(el.ShapeError, match="must divide"):
        shard.locally_connected2d(x, w, b, mesh=shard.mesh(), **params)
    x, w, b, params = _arrays(16, 3, 1, 1, 1)
    with pytest.raises(el.ShapeError, match="Ho"):
        shard.locally_connected2d(x, w, b, mesh=shard.mesh(), stride=2, padding=1)
