"""loops:numba runs a pointwise layer's backward in one pass over dy
(``numba_fused``): every gradient against einsum in float64, and the pass
taken exactly where it applies."""
import numpy as np
import pytest

import einlocal as el
from einlocal import registry
from einlocal.backends import numba_fused, numba_tiling
from einlocal.backends.numba_simd import LANES
from einlocal.backends.loops_numba import _c_strides
from einlocal.backends.namespaces import namespace

pytestmark = pytest.mark.compiled

NAME = "loops:numba"
if NAME in registry.unavailable():
    pytest.skip(f"{NAME}: {registry.unavailable()[NAME]}", allow_module_level=True)

LC2, LC1 = el.locally_connected2d, el.locally_connected1d
CASES = {   # op, shapes of x, the weight and the bias (None: no bias)
    "lc2d-1x1-bias": (LC2, ((5, 3, 2, 16), (2, 3, 1, 1, 2, 16), (2, 2, 16))),
    "lc2d-1x1": (LC2, ((3, 2, 4, 8), (3, 2, 1, 1, 4, 8), None)),
    "lc1d-1x1-bias": (LC1, ((4, 3, 48), (2, 3, 1, 48), (2, 48))),
    # 8 tiles of 160 positions, each image's sums kept apart across them
    "lc2d-1x1-8-tiles": (LC2, ((3, 2, 8, 160), (2, 2, 1, 1, 8, 160), (2, 8, 160))),
}
OTHER = {   # the gradient statements run apart
    "positions not a multiple of the lanes": (LC2, ((3, 2, 3, 5), (2, 2, 1, 1, 3, 5), (2, 3, 5)), {}),
    "stride 2": (LC2, ((3, 2, 4, 32), (2, 2, 1, 1, 2, 16), (2, 2, 16)), {"stride": 2}),
    "3x3 window": (LC2, ((3, 2, 6, 18), (2, 2, 3, 3, 4, 16), None), {}),
    "24 channel pairs": (LC2, ((3, 12, 2, 16), (2, 12, 1, 1, 2, 16), None), {}),
}


@pytest.fixture
def one_pass(monkeypatch):
    """The results of the backend's one-pass attempts, in order (None: not taken)."""
    backend = registry.get(NAME)
    seen = []
    original = backend._one_pass
    monkeypatch.setattr(backend, "_one_pass", lambda *a, **k: seen.append(original(*a, **k)) or seen[-1])
    return seen


def _arrays(shapes, seed=3):
    rng = np.random.default_rng(seed)
    return [None if s is None else rng.standard_normal(s) for s in shapes]


def _case(case: str, library: str):
    """(op, shapes, float64 arrays, dy, einsum's gradients, the library's
    namespace) of a CASES entry; skipped where the library is missing."""
    if library == "torch":
        pytest.importorskip("torch")
    op, shapes = CASES[case]
    args = _arrays(shapes)
    dy = np.random.default_rng(4).standard_normal(op(*args, backend="einsum:numpy").shape)
    return op, shapes, args, dy, el.vjp(op, dy, *args, backend="einsum:numpy"), namespace(library)


@pytest.mark.parametrize("library", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", list(CASES))
def test_every_gradient_in_one_pass(case, dtype, library, one_pass):
    op, shapes, args, dy, want, xp = _case(case, library)
    given = [None if a is None else xp.from_numpy(a.astype(dtype)) for a in [dy, *args]]
    outs = tuple(None if a is None else xp.from_numpy(np.full(a.shape, np.nan, dtype)) for a in args)
    tol = 2e-5 if dtype == "float32" else 1e-12
    for out in (None, outs):
        got = el.vjp(op, *given, backend=NAME, out=out)
        for g, ref, name in zip(got, want, ("x", "weight", "bias")):
            if ref is not None:
                np.testing.assert_allclose(xp.to_numpy(g), ref, rtol=tol, atol=tol, err_msg=name)
        if out is not None:
            assert all(g is o for g, o in zip(got, outs) if o is not None)
    assert len(one_pass) == 2 and all(r is not None for r in one_pass)


@pytest.mark.parametrize("case", list(OTHER))
def test_the_gradients_apart_where_one_pass_does_not_apply(case, one_pass):
    op, shapes, params = OTHER[case]
    args = _arrays(shapes)
    dy = np.random.default_rng(4).standard_normal(op(*args, backend="einsum:numpy", **params).shape)
    want = el.vjp(op, dy, *args, backend="einsum:numpy", **params)
    got = el.vjp(op, dy, *args, backend=NAME, **params)
    for g, ref in zip(got, want):
        if ref is not None:
            np.testing.assert_allclose(g, ref, rtol=1e-12, atol=1e-12)
    assert not any(r is not None for r in one_pass)


def test_one_gradient_alone_is_not_a_pass(one_pass):
    op, shapes = CASES["lc2d-1x1-bias"]
    args = _arrays(shapes)
    dy = np.random.default_rng(4).standard_normal((5, 2, 2, 16))
    (gx, _, _), (_, gw, _) = (el.vjp(op, dy, *args, backend=NAME, wrt=w) for w in ("x", "weight"))
    want = el.vjp(op, dy, *args, backend="einsum:numpy")
    np.testing.assert_allclose(gx, want[0], rtol=1e-12)
    np.testing.assert_allclose(gw, want[1], rtol=1e-12)
    assert not any(r is not None for r in one_pass)


def _roles(statement, dtype="float32", pad=None, **shapes):
    plan = el.Op(statement, pad=pad).bind(**shapes)
    strides = {a.name: _c_strides(plan.shape[a.name]) for a in plan.stmt.operands}
    return numba_fused.roles(plan, dtype, strides, _c_strides(plan.out_shape))


@pytest.mark.parametrize("nontemporal, l2, threads, tile",
                         [(True, 2 * 2**20, 2, 8192), (True, 5 * 2**18, 2, 4096), (True, 2**18, 2, 1024),
                          (True, 2 * 2**20, 16, 2048), (False, 2 * 2**20, 2, 1024)],
                         ids=["plain-nt-stores-2MB-L2", "plain-nt-stores-1.25MB-L2", "plain-nt-stores-256KB-L2",
                              "16-threads", "amd-away"])
def test_a_tile_of_w1s_backward(nontemporal, l2, threads, tile, monkeypatch):
    """W1's backward: 72 bytes a position (its weight, sums and the bias's),
    its tile the most positions that divide the 65536 within a third of
    the L2 (1.25 MB: 4096; 256 KB: 1024), in 8 tiles at least and two a thread (2 MB, 2
    threads: 8192; 16 threads: 32 tiles of 2048); 1024 within
    FUSED_BYTES_AMD where non-temporal stores stall loads (the pass reads
    a copy of dy)."""
    import numba
    monkeypatch.setattr(numba_tiling, "NONTEMPORAL", nontemporal)
    monkeypatch.setattr(numba_fused, "L2_BYTES", l2)
    monkeypatch.setattr(numba, "get_num_threads", lambda: threads)
    r = _roles("y[n,o,h,w] += x[n,c,h,w] * wt[o,c,h,w]", x=(32, 4, 256, 256), wt=(2, 4, 256, 256))
    assert r.tile == tile


def test_the_roles_of_a_statements_indices():
    r = _roles("y[b,o,t] += x[b,c,t] * w[o,c,t]", x=(4, 3, 64), w=(2, 3, 64))
    assert (r.x, r.w, r.positions, r.s, r.o, r.c) == ("x", "w", 64, (("b", 4),), ("o",), ("c",))
    assert 64 % r.tile == 0 and r.tile % LANES["float32"] == 0
    # the weight read first: the roles follow the indices, not the order
    r = _roles("y[b,o,t] += w[o,c,t] * x[b,c,t]", x=(4, 3, 64), w=(2, 3, 64))
    assert (r.x, r.w) == ("x", "w")
    # a depthwise 1x1 layer: its channels are positions too
    r = _roles("y[b,c,t] += x[b,c,t] * w[c,t]", x=(4, 3, 64), w=(3, 64))
    assert (r.positions, r.o, r.c) == (192, (), ())
    assert _roles("y[b,o,t] += x[b,c,t] * w[o,c]", x=(4, 3, 64), w=(2, 3)) is None      # the weight shared
    assert _roles("y[b,o,t] += x[b,c,t] * w[o,c,t,k]", x=(4, 3, 64), w=(2, 3, 64, 2)) is None   # k read once
    assert _roles("y[b,o,t] += x[b,c,2*t] * w[o,c,t]", x=(4, 3, 128), w=(2, 3, 64)) is None    # strided
    assert _roles("y[b,o,t] += x[b,c,t] * w[o,c,t]", x=(4, 3, 60), w=(2, 3, 60)) is None      # 60 % 16
    assert _roles("y[b,o,t] += x[b,c,t+k] * w[o,c,k,t]", pad=0, x=(4, 3, 48), w=(2, 3, 1, 64)) is None  # x padded
    assert _roles("y[b,o,t] += x[b,c,t] * w[o,c,t]", "float64", x=(4, 3, 56), w=(2, 3, 56)) is not None


def test_pointwise_statements_before_their_strides():
    assert numba_fused.pointwise(el.Op("y[b,o,t] += x[b,c,t] * w[o,c,t]").bind(x=(4, 3, 64), w=(2, 3, 64)))
    one = LC2.bind(np.empty((2, 3, 4, 4)), np.empty((2, 3, 1, 1, 4, 4))).plan      # h+i with i of size 1
    assert numba_fused.pointwise(one)
    for plan in (LC2.bind(np.empty((2, 3, 6, 6)), np.empty((2, 3, 3, 3, 4, 4))).plan,           # a 3x3 window
                 LC2.bind(np.empty((2, 3, 4, 4)), np.empty((2, 3, 1, 1, 6, 6)), padding=1).plan,  # padding
                 el.conv2d.bind(np.empty((2, 3, 4, 4)), np.empty((2, 3, 1, 1))).plan):          # no positions
        assert not numba_fused.pointwise(plan), plan


def test_a_bias_gradient_one_slot_per_position_and_output_channel():
    plan = LC2.bind(np.empty((5, 3, 2, 16)), np.empty((2, 3, 1, 1, 2, 16))).plan
    dy = _c_strides(plan.out_shape)
    strides = {a.name: _c_strides(plan.shape[a.name]) for a in plan.stmt.operands}
    r = numba_fused.roles(plan, "float64", strides, dy)
    assert numba_fused.bias_fits(plan, r, (0, 32, 16, 1), dy)
    assert not numba_fused.bias_fits(plan, r, (0, 1, 0, 0), dy)        # one per channel: positions summed too
    assert not numba_fused.bias_fits(plan, r, (0, 0, 16, 1), dy)       # shared by the channels
    assert not numba_fused.bias_fits(plan, r, (64, 32, 16, 1), dy)     # one per image
    assert not numba_fused.bias_fits(plan, r, (0, 32, 1, 2), dy)       # positions laid out otherwise


def test_the_source_names_the_pass():
    backend = registry.get(NAME)
    plan = LC2.bind(np.empty((5, 3, 2, 16)), np.empty((2, 3, 1, 1, 2, 16))).plan
    strides = {a.name: _c_strides(plan.shape[a.name]) for a in plan.stmt.operands}
    strides[numba_fused.OUT] = _c_strides(plan.out_shape)
    k, _ = backend.one_pass(plan, "float64", strides, (0, 32, 16, 1))
    assert "generated by einlocal.backends.numba_fused" in k.source
    # 32 positions: at least MIN_TILES tiles, each at least one vector
    tiles = 32 // max(LANES["float64"], 32 // numba_tiling.MIN_TILES)
    assert f"kernel = Tiled(tiles, {tiles}, 'float64')" in k.source


def test_a_failing_pass_carries_its_source(monkeypatch):
    from einlocal.errors import BackendError
    backend = registry.get(NAME)
    op, shapes = CASES["lc2d-1x1"]
    args = _arrays(shapes)
    dy = np.random.default_rng(4).standard_normal((3, 3, 4, 8))
    el.vjp(op, dy, *args, backend=NAME)             # built and compiled
    (k, fn), = [v for key, v in backend._one_passes.items()
                if v is not None and key[:2] == (op.bind(*args).plan, "float64")]

    class Broken:
        stats, compile = fn.stats, fn.compile

        def __call__(self, *a):
            raise RuntimeError("no")
    monkeypatch.setattr(backend, "one_pass", lambda *a, **kw: (k, Broken()))
    monkeypatch.setattr(backend, "_repeats", {})        # a first run again, then a repeat (`numba_repeat`)
    for _ in range(2):
        with pytest.raises(BackendError, match="the one-pass backward of") as e:
            el.vjp(op, dy, *args, backend=NAME)
        assert "RuntimeError: no" in str(e.value) and k.source in str(e.value)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_input_gradient_non_temporal_with_its_loads_away(dtype, monkeypatch, one_pass):
    """Where a load at a non-temporal store's page offset would wait for it
    (AMD: `numba_tiling.NONTEMPORAL` off), the one pass stores dx
    non-temporally all the same: its second pass reads dy's rows from a copy
    and the weight's panel, not the arrays; results against the reference.
    Not where dx's planes lie at different offsets mod 1024 bytes (the
    first case's, 32 elements apart): plain stores there."""
    monkeypatch.setattr(numba_tiling, "NONTEMPORAL", False)
    monkeypatch.setattr(numba_tiling, "AWAY", True)
    monkeypatch.setattr(numba_tiling, "NONTEMPORAL_BYTES", 0)
    backend = registry.get(NAME)
    monkeypatch.setattr(backend, "_one_passes", {})
    monkeypatch.setattr(backend, "_repeats", {})        # no kernel kept from an earlier call (`numba_repeat`)
    tol = 2e-5 if dtype == "float32" else 1e-12
    seen = set()
    cases = {"lc2d-1x1-bias": CASES["lc2d-1x1-bias"], "lc2d-1x1-8-tiles": CASES["lc2d-1x1-8-tiles"],
             "planes-4-KiB": (LC2, ((3, 2, 4, 256), (2, 2, 1, 1, 4, 256), (2, 4, 256)))}
    for case, (op, shapes) in cases.items():
        args = _arrays(shapes)
        dy = np.random.default_rng(4).standard_normal(op(*args, backend="einsum:numpy").shape)
        want = el.vjp(op, dy, *args, backend="einsum:numpy")
        got = el.vjp(op, dy.astype(dtype), *(None if a is None else a.astype(dtype) for a in args), backend=NAME)
        for g, ref, name in zip(got, want, ("x", "weight", "bias")):
            if ref is not None:
                np.testing.assert_allclose(g, ref, rtol=tol, atol=tol, err_msg=f"{case} {name}")
        (k, _), = [v for v in backend._one_passes.values() if v is not None and v[0].source not in seen]
        seen.add(k.source)
        away = case != "lc2d-1x1-bias"
        assert ("vstore_nt(a_dx" in k.source and "r0 = vload(dyb" in k.source and "sfence()" in k.source) == away
        assert ("vstore(a_dx" in k.source and "r0 = vload(a_dy" in k.source) != away


@pytest.mark.parametrize("line", [False, True], ids=["away-from-dx", "past-xs-line"])
@pytest.mark.parametrize("item", [4, 8])
def test_the_placed_buffers_start_where_asked(item, line):
    """The copy of dy's rows and the weight's panel start `numba_fused.AWAY`
    bytes past the page offset of the tile's first element of dx (AMD); the
    scratch and the panel of the merged pass that many bytes past the line
    of x's, and as aligned as a line: wherever numpy put each array."""
    asked = {"wp": (1000, numba_fused.AWAY), "acc": (300, numba_fused.PLACED + 640)}
    lines = numba_fused._placed("dx", item, f"float{8 * item}", asked, line=line)
    for shift in range(0, 4096, 4 * item + 4):
        a_dx = np.empty(4096 + 4096 // item, f"float{8 * item}")[shift // item:]
        for q0 in (0, 512, 777):
            env = {"np": np, "a_dx": a_dx, "q0": q0}
            exec("\n".join(ln.strip() for ln in lines), env)
            d0 = (a_dx.ctypes.data + item * q0) % 4096
            for name, (n, past) in asked.items():
                assert len(env[name]) == n
                start = (env[name].ctypes.data - d0 // 64 * 64 if line else env[name].ctypes.data - d0) % 4096
                assert start == past, (shift, q0, name)
                assert not line or env[name].ctypes.data % 64 == 0


@pytest.mark.parametrize("library", ["numpy", "torch"])
@pytest.mark.parametrize("case", ["lc2d-1x1-bias", "lc1d-1x1-bias"])
def test_the_bias_gradient_summed_into_out_in_place(case, library, one_pass, monkeypatch):
    """A C-ordered ``out=`` entry for the bias takes the pass's sums itself:
    nothing is copied into it afterwards.  A strided one (a copy would be
    needed to view it) gets the same values through a copy."""
    op, shapes, args, dy, want, xp = _case(case, library)
    copied = []
    assign = xp.assign
    monkeypatch.setattr(xp, "assign", lambda out, src: copied.append(out) or assign(out, src))
    given = [xp.from_numpy(a) for a in (dy, *args)]
    wide = xp.from_numpy(np.full(shapes[2][:-1] + (2 * shapes[2][-1],), np.nan))
    for bias_out, in_place in ((xp.from_numpy(np.full(shapes[2], np.nan)), True), (wide[..., ::2], False)):
        copied.clear()
        outs = (xp.from_numpy(np.full(shapes[0], np.nan)), xp.from_numpy(np.full(shapes[1], np.nan)), bias_out)
        got = el.vjp(op, *given, backend=NAME, out=outs)
        for g, o, ref, name in zip(got, outs, want, ("x", "weight", "bias")):
            assert g is o, name
            np.testing.assert_allclose(xp.to_numpy(g), ref, rtol=1e-12, atol=1e-12, err_msg=name)
        assert any(c is bias_out for c in copied) != in_place, (in_place, len(copied))
    assert len(one_pass) == 2 and all(r is not None for r in one_pass)
