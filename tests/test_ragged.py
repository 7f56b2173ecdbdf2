"""einlocal.ragged: per-set aggregates of a layer over ragged sets, per_item
and packed (chunked), for numpy, torch and jax, forward and gradients."""
import numpy as np
import pytest

import einlocal as el
from einlocal import ragged

LIBRARIES = ["numpy", "torch", "jax"]
BACKEND = {"numpy": "einsum:numpy", "torch": "einsum:torch", "jax": "einsum:jax"}
SIZES = [3, 1, 5, 2, 4, 1]


def _lib(name):
    return pytest.importorskip(name)


def _convert(lib, a):
    if lib == "torch":
        return _lib("torch").from_numpy(np.ascontiguousarray(a))
    if lib == "jax":
        return _lib("jax.numpy").asarray(a)
    return a


def _data(seed=0):
    rng = np.random.default_rng(seed)
    sets = [rng.standard_normal((n, 2, 6, 6)) for n in SIZES]
    w = rng.standard_normal((3, 2, 3, 3))
    return sets, w


def _expected(sets, w, reduce):
    out = []
    for s in sets:
        y = el.conv2d(s, w, padding=1, backend="einsum:numpy")
        out.append(getattr(np, {"mean": "mean", "sum": "sum", "max": "max"}[reduce])(y, axis=0))
    return np.stack(out)


@pytest.mark.parametrize("chunk", [1, 7, 1000])
@pytest.mark.parametrize("strategy", ragged.STRATEGIES)
@pytest.mark.parametrize("reduce", ragged.REDUCTIONS)
@pytest.mark.parametrize("lib", LIBRARIES)
def test_aggregates_match_a_plain_loop(lib, reduce, strategy, chunk):
    _lib(lib)
    if lib == "jax" and chunk != 7:
        pytest.skip("jax compiles once per batch size: one chunk size keeps the suite fast")
    sets, w = _data()
    W = _convert(lib, w)
    z = ragged.apply(lambda x: el.conv2d(x, W, padding=1, backend=BACKEND[lib]), [_convert(lib, s) for s in sets],
                     reduce=reduce, strategy=strategy, chunk=chunk)
    assert el.arrays.library_of(z) == lib
    np.testing.assert_allclose(np.asarray(z), _expected(sets, w, reduce), rtol=1e-10, atol=1e-12)


def test_chunks_group_whole_sets():
    assert ragged.chunks([3, 4, 10, 1, 1], 5) == [(0, 1), (1, 2), (2, 3), (3, 5)]
    assert ragged.chunks([3, 4, 10, 1, 1], 100) == [(0, 5)]
    assert ragged.chunks([2, 2, 2], 4) == [(0, 2), (2, 3)]


@pytest.mark.parametrize("reduce", ragged.REDUCTIONS)
def test_torch_gradients_agree_between_strategies(reduce):
    torch = _lib("torch")
    sets, w = _data(1)
    cot = np.random.default_rng(2).standard_normal((len(sets), 3, 6, 6))
    grads = []
    for strategy, chunk in (("per_item", 1000), ("packed", 6), ("packed", 1000)):
        W = torch.from_numpy(w).requires_grad_(True)
        xs = [torch.from_numpy(s).requires_grad_(True) for s in sets]
        z = ragged.apply(lambda x: el.conv2d(x, W, padding=1, backend="einsum:torch"), xs,
                         reduce=reduce, strategy=strategy, chunk=chunk)
        (z * torch.from_numpy(cot)).sum().backward()
        grads.append([W.grad.numpy()] + [x.grad.numpy() for x in xs])
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    if reduce == "sum":   # the sum's weight gradient is the op's vjp over all items
        ref = sum(el.vjp(el.conv2d, np.broadcast_to(c, (len(s), *c.shape)), s, w, padding=1,
                         backend="loops:python", wrt="weight")[1] for s, c in zip(sets, cot))
        np.testing.assert_allclose(grads[0][0], ref, rtol=1e-9)


@pytest.mark.parametrize("reduce", ["mean", "max"])
def test_jax_gradients_agree_between_strategies(reduce):
    jax = _lib("jax")
    jnp = jax.numpy
    sets, w = _data(3)
    xs = [jnp.asarray(s) for s in sets]
    cot = jnp.asarray(np.random.default_rng(4).standard_normal((len(sets), 3, 6, 6)))

    def loss(W, xs, strategy, chunk):
        z = ragged.apply(lambda x: el.conv2d(x, W, padding=1, backend="einsum:jax"), xs,
                         reduce=reduce, strategy=strategy, chunk=chunk)
        return jnp.sum(z * cot)
    g = [jax.grad(loss, (0, 1))(jnp.asarray(w), xs, s, c) for s, c in (("per_item", 1), ("packed", 6))]
    g.append(jax.jit(jax.grad(loss, (0, 1)), static_argnums=(2, 3))(jnp.asarray(w), xs, "packed", 1000))
    for other in g[1:]:
        for a, b in zip(jax.tree_util.tree_leaves(g[0]), jax.tree_util.tree_leaves(other)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-12)


def test_errors_name_the_set():
    sets, w = _data()
    layer = lambda x: el.conv2d(x, w, padding=1)  # noqa: E731
    with pytest.raises(el.ShapeError, match="set 2"):
        ragged.apply(layer, sets[:2] + [np.zeros((0, 2, 6, 6))])
    with pytest.raises(el.ShapeError, match="set 1 has items of shape"):
        ragged.apply(layer, [sets[0], np.zeros((2, 2, 5, 6))])
    with pytest.raises(el.ShapeError, match="non-empty list"):
        ragged.apply(layer, [])
    with pytest.raises(ValueError, match="reduce must be"):
        ragged.apply(layer, sets, reduce="median")
    with pytest.raises(ValueError, match="strategy must be"):
        ragged.apply(layer, sets, strategy="bucketed")
    torch = _lib("torch")
    with pytest.raises(el.ShapeError, match="set 1 is a torch array"):
        ragged.apply(layer, [sets[0], torch.zeros(2, 2, 6, 6)])


@pytest.mark.parametrize("n_range", [(2, 4), (1, 1)])
@pytest.mark.parametrize("lib", LIBRARIES)
def test_workload_calls_agree(lib, n_range):
    _lib(lib)
    if lib == "jax" and n_range != (1, 1):
        pytest.skip("jax compiles once per set size: the n_i = 1 case keeps the suite fast")
    wl = ragged.workload(n_sets=7, n_range=n_range, seed=1, library=lib, chunk=5, backend=BACKEND[lib])
    assert len(wl.sets) == 7 and all(n_range[0] <= s.shape[0] <= n_range[1] for s in wl.sets)
    assert tuple(wl.sets[0].shape[1:]) == (1, 16, 16) and tuple(wl.weight.shape) == (4, 1, 5, 5)
    passes = ["forward"] + ([] if lib == "numpy" else ["forward+backward"])
    assert set(wl.calls) == {(s, p) for s in ragged.STRATEGIES for p in passes}
    for p in passes:
        a, b = (np.asarray(wl.calls[(s, p)]()) for s in ragged.STRATEGIES)
        assert a.shape == ((7, 4, 12, 12) if p == "forward" else (4, 1, 5, 5))
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
