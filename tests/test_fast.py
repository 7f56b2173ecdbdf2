"""The fast path of repeated calls (`einlocal.fast`): on every backend a
repeat gives what a first call gives and skips the checks its key proves;
it re-checks the memory budget and ``auto``'s choice, records gradients
when an input starts asking for them, and a bad call (a parameter equal
to a good one, 2.0 for 2, included) is still refused with its named error."""
import numpy as np
import pytest

import einlocal as el
from einlocal import auto, catalogue, registry
from einlocal.backends.namespaces import namespace

rng = np.random.default_rng(11)

CASES = {
    "dw-m2-s2-bias": (el.depthwise_conv2d, dict(x=(2, 3, 7, 6), weight=(6, 1, 3, 3), bias=(6,)),
                      dict(stride=2, padding=1)),
    "conv-g2-asym-bias": (el.conv2d, dict(x=(2, 4, 5, 6), weight=(6, 2, 3, 2), bias=(6,)),
                          dict(groups=2, padding=((1, 0), (0, 2)))),
    "lc2d-d2-bias": (el.locally_connected2d, dict(x=(2, 3, 8, 7), weight=(2, 3, 2, 2, 6, 5), bias=(2, 6, 5)),
                     dict(dilation=2)),
}


def _inputs(shapes):
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


def _reference(op, arrays, params):
    a64 = {k: v.astype(np.float64) for k, v in arrays.items()}
    return op(a64["x"], a64["weight"], a64.get("bias"), backend="loops:python", **params)


def _no_prepare(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a repeat went through the checks again")
    monkeypatch.setattr(catalogue, "prepare", refuse)


@pytest.mark.parametrize("case", list(CASES))
def test_a_repeat_matches_the_reference_without_rechecking(backend, case, monkeypatch):
    op, shapes, params = CASES[case]
    b = registry.get(backend)
    lib = b.takes[0]
    xp = namespace(lib)
    first, second = _inputs(shapes), _inputs(shapes)
    try:
        op(*(xp.from_numpy(first[k]) for k in ("x", "weight", "bias")), backend=backend, **params)
    except el.BackendError as err:
        pytest.skip(str(err))
    want = _reference(op, second, params)
    if xp.fast_key(xp.from_numpy(second["x"])) is not None:      # a library that keys its arrays
        _no_prepare(monkeypatch)
    got = op(*(xp.from_numpy(second[k]) for k in ("x", "weight", "bias")), backend=backend, **params)
    np.testing.assert_allclose(xp.to_numpy(got), want, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("case", list(CASES))
def test_a_repeat_with_out_matches_the_reference_without_rechecking(backend, case, monkeypatch):
    """``out=`` repeats take the fast path too: the result is written into
    ``out`` and returned, without the first call's checks."""
    op, shapes, params = CASES[case]
    b = registry.get(backend)
    lib = b.takes[0]
    xp = namespace(lib)
    if xp.functional:
        pytest.skip(f"{lib} arrays are immutable: no out=")
    first, second = _inputs(shapes), _inputs(shapes)
    args = [xp.from_numpy(first[k]) for k in ("x", "weight", "bias")]
    try:
        y = op(*args, backend=backend, **params)
        out = xp.from_numpy(np.zeros(tuple(y.shape), np.float32))
        op(*args, backend=backend, out=out, **params)
    except el.BackendError as err:
        pytest.skip(str(err))
    want = _reference(op, second, params)
    if xp.fast_key(out) is not None:
        _no_prepare(monkeypatch)
    got = op(*(xp.from_numpy(second[k]) for k in ("x", "weight", "bias")), backend=backend, out=out, **params)
    assert got is out
    np.testing.assert_allclose(xp.to_numpy(out), want, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("name", ["einsum:numpy", "loops:numba"])
def test_an_out_repeat_rechecks_what_its_key_does_not_prove(name):
    """The key of an ``out=`` call names out's library, shape, dtype and
    device; a repeat still refuses an out that overlaps an input, is read
    only, or is a broadcast view, with the first call's errors (also where
    the backend has a repeat of its own, behind the library's quick check)."""
    if name == "loops:numba":
        pytest.importorskip("numba")
    x, w = rng.standard_normal((2, 4, 6, 6)).astype(np.float32), rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    out = np.empty((2, 4, 6, 6), np.float32)
    for _ in range(2):
        el.depthwise_conv2d(x, w, padding=1, backend=name, out=out)
    with pytest.raises(el.ShapeError, match="overlaps the memory of argument 'x'"):
        el.depthwise_conv2d(x, w, padding=1, backend=name, out=x)
    frozen = np.empty_like(out)
    frozen.setflags(write=False)
    with pytest.raises(el.ShapeError, match="read-only|writable"):
        el.depthwise_conv2d(x, w, padding=1, backend=name, out=frozen)
    with pytest.raises(el.ShapeError, match="stride 0"):
        el.depthwise_conv2d(x, w, padding=1, backend=name,
                            out=np.lib.stride_tricks.as_strided(out[:1], out.shape, (0, *out.strides[1:])))
    if name != "einsum:numpy":
        return
    torch = pytest.importorskip("torch")
    t = {k: torch.from_numpy(v) for k, v in (("x", x), ("w", w))}
    tout = torch.empty(2, 4, 6, 6)
    for _ in range(2):
        el.depthwise_conv2d(t["x"], t["w"], padding=1, backend="einsum:torch", out=tout)
    with pytest.raises(el.ShapeError, match="requires grad"):
        el.depthwise_conv2d(t["x"], t["w"], padding=1, backend="einsum:torch", out=tout.clone().requires_grad_())
    with pytest.raises(el.ShapeError, match="out= cannot be used when an input requires grad"):
        el.depthwise_conv2d(t["x"].clone().requires_grad_(), t["w"], padding=1, backend="einsum:torch", out=tout)


def test_a_repeat_rechecks_the_memory_budget():
    x, w = rng.standard_normal((2, 4, 9, 9)).astype(np.float32), rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    el.depthwise_conv2d(x, w, backend="broadcast:numpy")
    el.depthwise_conv2d(x, w, backend="broadcast:numpy")
    el.set_memory_budget(1000)
    with pytest.raises(el.MemoryBudgetError, match="broadcast"):
        el.depthwise_conv2d(x, w, backend="broadcast:numpy")


@pytest.mark.parametrize("pass_", ["forward", "gradients"])
def test_an_auto_repeat_follows_a_new_measured_choice(tmp_path, monkeypatch, pass_):
    monkeypatch.setenv("EINLOCAL_CACHE_DIR", str(tmp_path / "cache"))
    x, w = rng.standard_normal((1, 3, 6, 6)).astype(np.float32), rng.standard_normal((3, 1, 3, 3)).astype(np.float32)
    dy = rng.standard_normal((1, 3, 6, 6)).astype(np.float32)
    call = el.depthwise_conv2d.bind(x, w, padding=1)
    first = auto.auto_backend(call, "numpy", "cpu", dtype="float32")
    other = next(n for n in ("einsum:numpy", "bmm:numpy") if n != first)
    ran = []
    chosen = registry.get(other)
    method = "forward" if pass_ == "forward" else "vjp"
    monkeypatch.setattr(chosen, method, lambda *a, _f=getattr(chosen, method), **k: ran.append(1) or _f(*a, **k))
    if pass_ == "forward":
        want = (_reference(el.depthwise_conv2d, {"x": x, "weight": w}, {"padding": 1}),)
        run = lambda: (el.depthwise_conv2d(x, w, padding=1),)     # noqa: E731
    else:
        want = _reference_grads(el.depthwise_conv2d, dy, {"x": x, "weight": w}, {"padding": 1})[:2]
        run = lambda: el.vjp(el.depthwise_conv2d, dy, x, w, padding=1)[:2]     # noqa: E731
    for _ in range(2):
        run()
    assert not ran
    auto.choice_cache().put(auto.choice_key(call, "numpy", "float32", "cpu"), {"backend": other})
    got = run()
    assert ran, f"auto kept {first} after the cache chose {other}"
    for g, v in zip(got, want):
        np.testing.assert_allclose(g, v, rtol=1e-4, atol=1e-4)


def test_torch_repeats_record_gradients_once_an_input_asks(backend):
    torch = pytest.importorskip("torch")
    if "torch" not in registry.get(backend).takes:
        pytest.skip(f"{backend} takes no torch tensors")
    op, shapes, params = CASES["dw-m2-s2-bias"]
    arrays = _inputs(shapes)
    t = {k: torch.from_numpy(v) for k, v in arrays.items()}
    for _ in range(2):
        op(t["x"], t["weight"], t["bias"], backend=backend, **params)
    xg = t["x"].clone().requires_grad_()
    y = op(xg, t["weight"], t["bias"], backend=backend, **params)
    dy = rng.standard_normal(tuple(y.shape)).astype(np.float32)
    y.backward(torch.from_numpy(dy))
    a64 = {k: v.astype(np.float64) for k, v in arrays.items()}
    want, _, _ = el.vjp(op, dy.astype(np.float64), a64["x"], a64["weight"], a64["bias"], backend="loops:python",
                        **params)
    np.testing.assert_allclose(xg.grad.numpy(), want, rtol=2e-4, atol=2e-4)
    with torch.no_grad():
        assert not op(xg, t["weight"], t["bias"], backend=backend, **params).requires_grad


def test_a_bad_call_after_good_ones_gets_its_named_error():
    x, w = rng.standard_normal((2, 4, 6, 6)).astype(np.float32), rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    for _ in range(2):
        el.depthwise_conv2d(x, w, padding=1, backend="einsum:numpy")
    with pytest.raises(el.ShapeError, match="channel"):
        el.depthwise_conv2d(x[:, :3], w, padding=1, backend="einsum:numpy")
    with pytest.raises(el.ShapeError, match="dtype"):
        el.depthwise_conv2d(x, w, padding=1, backend="einsum:numpy", out=np.empty((2, 4, 6, 6), np.float64))
    with pytest.raises(el.ShapeError, match="same dtype|dtype"):
        el.depthwise_conv2d(x, w.astype(np.float64), padding=1, backend="einsum:numpy")


@pytest.mark.parametrize("bad", [2.0, True, np.float32(2), (2.0, 2), [2, 2.0]])
def test_a_parameter_equal_to_a_good_one_is_still_checked(bad):
    """2.0 == 2 and True == 1 in Python: the key keeps the types, so the
    repeat is refused as a first call would be."""
    x, w = rng.standard_normal((1, 2, 6, 6)).astype(np.float32), rng.standard_normal((2, 1, 3, 3)).astype(np.float32)
    good = 1 if bad is True else 2
    for _ in range(2):
        el.depthwise_conv2d(x, w, stride=good, backend="einsum:numpy")
        el.depthwise_conv2d(x, w, stride=(good, good), backend="einsum:numpy")
    with pytest.raises(el.ShapeError, match="stride"):
        el.depthwise_conv2d(x, w, stride=bad, backend="einsum:numpy")


def test_list_parameters_repeat_and_unhashable_ones_are_refused_every_time():
    x, w = rng.standard_normal((1, 2, 5, 5)).astype(np.float32), rng.standard_normal((2, 1, 3, 3)).astype(np.float32)
    want = _reference(el.depthwise_conv2d, {"x": x, "weight": w}, {"padding": 1})
    for padding in ([1, 1], [[1, 1], [1, 1]], [1, 1]):
        got = el.depthwise_conv2d(x, w, padding=padding, backend="einsum:numpy")
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for _ in range(2):
        with pytest.raises(el.ShapeError, match="padding"):
            el.depthwise_conv2d(x, w, padding=np.array([1, 1]), backend="einsum:numpy")


def _no_prepare_vjp(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a gradient repeat went through the checks again")
    monkeypatch.setattr(catalogue, "prepare_vjp", refuse)


def _reference_grads(op, dy, arrays, params):
    a64 = {k: v.astype(np.float64) for k, v in arrays.items()}
    return el.vjp(op, dy.astype(np.float64), a64["x"], a64["weight"], a64.get("bias"), backend="loops:python",
                  **params)


@pytest.mark.parametrize("with_out", [False, True], ids=["fresh", "out"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_gradient_repeat_matches_the_reference_without_rechecking(backend, case, with_out, monkeypatch):
    """``el.vjp`` repeats take the fast path too (with ``out=`` or not):
    the same gradients as the reference, without the first call's checks."""
    op, shapes, params = CASES[case]
    xp = namespace(registry.get(backend).takes[0])
    if with_out and xp.functional:
        pytest.skip("immutable arrays: no out=")
    first, second = _inputs(shapes), _inputs(shapes)
    y_shape = tuple(_reference(op, first, params).shape)
    dys = [rng.standard_normal(y_shape).astype(np.float32) for _ in range(2)]
    outs = tuple(xp.from_numpy(np.zeros(shapes[k], np.float32)) for k in ("x", "weight", "bias")) if with_out else None
    try:
        el.vjp(op, xp.from_numpy(dys[0]), *(xp.from_numpy(first[k]) for k in ("x", "weight", "bias")),
               backend=backend, out=outs, **params)
    except el.BackendError as err:
        pytest.skip(str(err))
    want = _reference_grads(op, dys[1], second, params)
    if xp.fast_key(xp.from_numpy(second["x"])) is not None:
        _no_prepare_vjp(monkeypatch)
    got = el.vjp(op, xp.from_numpy(dys[1]), *(xp.from_numpy(second[k]) for k in ("x", "weight", "bias")),
                 backend=backend, out=outs, **params)
    for k, g, w in zip(("x", "weight", "bias"), got, want):
        if with_out:
            assert g is outs[("x", "weight", "bias").index(k)]
        np.testing.assert_allclose(xp.to_numpy(g), w, rtol=3e-4, atol=3e-4, err_msg=k)


def test_gradient_repeats_are_keyed_by_wrt_and_dy():
    """A repeat asking for other gradients, or with a ``dy`` of another
    dtype or shape, is not taken for the first call."""
    x, w = rng.standard_normal((2, 3, 6, 6)).astype(np.float32), rng.standard_normal((3, 1, 3, 3)).astype(np.float32)
    dy = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    for _ in range(2):
        gx, gw, _ = el.vjp(el.depthwise_conv2d, dy, x, w, padding=1, backend="einsum:numpy", wrt="x")
        assert gw is None and gx is not None
    for wrt in (["weight"], ("weight",), "weight"):
        gx, gw, _ = el.vjp(el.depthwise_conv2d, dy, x, w, padding=1, backend="einsum:numpy", wrt=wrt)
        assert gx is None and gw is not None
    with pytest.raises(el.ShapeError, match="dtype"):
        el.vjp(el.depthwise_conv2d, dy.astype(np.float64), x, w, padding=1, backend="einsum:numpy", wrt="x")
    with pytest.raises(el.ShapeError, match="dy has shape"):
        el.vjp(el.depthwise_conv2d, dy[:, :, :5], x, w, padding=1, backend="einsum:numpy", wrt="x")
    with pytest.raises(el.ShapeError, match="wrt names 'y'"):
        el.vjp(el.depthwise_conv2d, dy, x, w, padding=1, backend="einsum:numpy", wrt=("x", "y"))


def test_a_gradient_repeat_rechecks_its_outs_and_the_budget():
    """What a gradient key does not prove is checked on every repeat: an
    ``out`` entry that overlaps an input, is read only or is a broadcast
    view, and the memory budget."""
    x, w = rng.standard_normal((2, 4, 6, 6)).astype(np.float32), rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    dy = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
    gx, gw = np.empty_like(x), np.empty_like(w)
    for _ in range(2):
        el.vjp(el.depthwise_conv2d, dy, x, w, padding=1, backend="broadcast:numpy", out=(gx, gw, None))
    with pytest.raises(el.ShapeError, match=r"out\['x'\] overlaps the memory of argument 'x'"):
        el.vjp(el.depthwise_conv2d, dy, x, w, padding=1, backend="broadcast:numpy", out=(x, gw, None))
    frozen = np.empty_like(w)
    frozen.setflags(write=False)
    with pytest.raises(el.ShapeError, match=r"out\['weight'\].*(read-only|writable)"):
        el.vjp(el.depthwise_conv2d, dy, x, w, padding=1, backend="broadcast:numpy", out=(gx, frozen, None))
    with pytest.raises(el.ShapeError, match="stride 0"):
        el.vjp(el.depthwise_conv2d, dy, x, w, padding=1, backend="broadcast:numpy",
               out=(np.lib.stride_tricks.as_strided(gx[:1], gx.shape, (0, *gx.strides[1:])), gw, None))
    el.set_memory_budget(1000)
    with pytest.raises(el.MemoryBudgetError, match="broadcast"):
        el.vjp(el.depthwise_conv2d, dy, x, w, padding=1, backend="broadcast:numpy", out=(gx, gw, None))


LC_STATEMENT = "y[n,o,h,w] += x[n,c,h+i,w+j] * wt[o,c,i,j,h,w]"


def test_an_op_repeat_matches_the_reference_without_rechecking(monkeypatch):
    """An ``el.Op`` (the user's own statement) repeats like a catalogue op,
    forward and gradients, with ``out=`` or not, ``sizes`` given as a dict
    included; a call naming other operands still gets its named error."""
    from einlocal import op as op_module
    op = el.Op(LC_STATEMENT)
    shapes = {"x": (2, 3, 7, 6), "wt": (4, 3, 3, 2, 5, 5)}
    runs = []
    for _ in range(3):
        a = _inputs(shapes)
        dy = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)
        y, g = np.empty((2, 4, 5, 5), np.float32), {"x": np.empty(shapes["x"], np.float32)}
        got = (op(x=a["x"], wt=a["wt"], backend="einsum:numpy"),
               op(x=a["x"], wt=a["wt"], backend="einsum:numpy", out=y, sizes={"h": 5, "w": 5}),
               op.vjp(dy, x=a["x"], wt=a["wt"], backend="einsum:numpy"),
               op.vjp(dy, x=a["x"], wt=a["wt"], backend="einsum:numpy", out=g, wrt="x"),
               op.vjp(dy, x=a["x"], wt=a["wt"], backend="einsum:numpy", wrt="wt"))
        runs.append((a, dy, got, y, g))
        if len(runs) == 2:          # the first call of each kind is done: the rest are repeats
            for name in ("prepare", "prepare_vjp"):
                monkeypatch.setattr(op_module, name, lambda *args, **kw: pytest.fail("a repeat was checked again"))
    monkeypatch.undo()
    for a, dy, (y0, y1, grads, grads_x, grads_w), y, g in runs:
        a64 = {k: v.astype(np.float64) for k, v in a.items()}
        want = op(**a64, backend="loops:python")
        want_g = op.vjp(dy.astype(np.float64), **a64, backend="loops:python")
        for got in (y0, y1):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        assert y1 is y and grads_x["x"] is g["x"] and grads_x["wt"] is None and grads_w["x"] is None
        np.testing.assert_allclose(grads_w["wt"], want_g["wt"], rtol=1e-4, atol=1e-4)
        for k in ("x", "wt"):
            np.testing.assert_allclose(grads[k], want_g[k], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(g["x"], want_g["x"], rtol=1e-4, atol=1e-4)
    a = runs[-1][0]
    with pytest.raises(el.ShapeError, match="no operand 'w'"):
        op(x=a["x"], wt=a["wt"], w=a["wt"], backend="einsum:numpy")
    with pytest.raises(el.ShapeError, match="overlaps the memory of argument 'x'"):
        op.vjp(runs[-1][1], x=a["x"], wt=a["wt"], backend="einsum:numpy", out={"x": a["x"]}, wrt="x")


def test_op_repeats_are_keyed_by_sizes():
    """``sizes`` can narrow a range that the shapes would give wider: a
    repeat with other sizes is not taken for the first call."""
    op = el.Op("y[n,o,h,w] += x[n,c,h+i,w+j] * wt[o,c,i,j]")
    x, wt = rng.standard_normal((1, 2, 8, 8)).astype(np.float32), rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    for _ in range(2):
        assert op(x=x, wt=wt, backend="einsum:numpy").shape == (1, 3, 6, 6)
    for sizes in ({"h": 4, "w": 5}, {"w": 5, "h": 4}):
        y = op(x=x, wt=wt, sizes=sizes, backend="einsum:numpy")
        np.testing.assert_allclose(y, op(x=x, wt=wt, backend="einsum:numpy")[:, :, :4, :5], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("with_out", [False, True], ids=["fresh", "out"])
def test_loops_numba_repeats_follow_each_calls_layout(with_out):
    """`loops:numba`'s own repeat (`numba_repeat`) picks the kernel by the
    arrays' strides and writability, which a key does not prove: a repeat
    with a strided view, a read-only array or a Fortran-ordered weight
    computes as a first call would, with and without bias."""
    pytest.importorskip("numba")
    op, shapes = el.locally_connected2d, {"x": (2, 3, 7, 6), "weight": (2, 3, 2, 2, 6, 5), "bias": (2, 6, 5)}
    base = _inputs(shapes)
    wide = np.zeros((2, 5, 7, 6), np.float32)
    wide[:, 1:4] = base["x"]
    frozen = base["x"].copy()
    frozen.setflags(write=False)
    layouts = [("C order", base["x"], base["weight"]), ("strided x", wide[:, 1:4], base["weight"]),
               ("read-only x", frozen, base["weight"]), ("Fortran weight", base["x"], np.asfortranarray(base["weight"])),
               ("C order again", base["x"], base["weight"])]
    out = np.empty((2, 2, 6, 5), np.float32) if with_out else None
    for bias in (None, base["bias"]):
        want = _reference(op, {**base, "bias": bias} if bias is not None else {"x": base["x"], "weight": base["weight"]},
                          {"dilation": 1})
        for name, x, w in layouts:
            got = op(x, w, bias, backend="loops:numba", out=out)
            assert (got is out) == with_out
            np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4, err_msg=name)


def test_a_repeat_writes_a_strided_out_in_place():
    """A grouped conv's kernel writes a (N, groups, ...) view of ``out``: a
    repeat with a strided ``out`` (which `numba_repeat` leaves to the
    checked path) still writes into it, not into a copy."""
    pytest.importorskip("numba")
    x, w = rng.standard_normal((2, 4, 6, 6)).astype(np.float32), rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    want = _reference(el.conv2d, {"x": x, "weight": w}, {"groups": 2})
    for _ in range(2):
        got = el.conv2d(x, w, groups=2, backend="loops:numba", out=np.empty((2, 4, 4, 4), np.float32))
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)
    wide = np.zeros((2, 4, 4, 8), np.float32)
    got = el.conv2d(x, w, groups=2, backend="loops:numba", out=wide[..., ::2])
    np.testing.assert_allclose(wide[..., ::2], want, rtol=2e-4, atol=2e-4)
    assert not wide[..., 1::2].any()


@pytest.mark.parametrize("case", ["lc2d-3x3", "lc2d-1x1-bias"])
def test_loops_numba_gradient_repeats_follow_each_calls_layout(case):
    """`loops:numba` runs a repeated statement (and a pointwise layer's
    one-pass backward) as its first run did, keyed by the arrays' layouts
    (`numba_repeat.statement_key`, `one_pass_key`): a repeat whose ``dy``,
    input or ``out`` entries lie otherwise in memory gets its own kernel and
    the reference's gradients."""
    pytest.importorskip("numba")
    op = el.locally_connected2d
    shapes = {"lc2d-3x3": {"x": (2, 3, 7, 6), "weight": (2, 3, 3, 3, 5, 4)},
              "lc2d-1x1-bias": {"x": (2, 3, 4, 32), "weight": (2, 3, 1, 1, 4, 32), "bias": (2, 4, 32)}}[case]
    a = _inputs(shapes)
    y_shape = tuple(_reference(op, a, {}).shape)
    dy = rng.standard_normal(y_shape).astype(np.float32)
    want = _reference_grads(op, dy, a, {})
    wide = np.zeros((*y_shape[:-1], 2 * y_shape[-1]), np.float32)
    wide[..., ::2] = dy
    frozen = a["x"].copy()
    frozen.setflags(write=False)
    outs = tuple(np.empty(s, np.float32) for s in shapes.values()) + (None,) * (3 - len(shapes))
    fortran = tuple(None if o is None else np.asfortranarray(o) for o in outs)
    for name, d, x, out in [("C order", dy, a["x"], outs), ("strided dy", wide[..., ::2], a["x"], outs),
                            ("read-only x", dy, frozen, outs), ("Fortran outs", dy, a["x"], fortran),
                            ("fresh gradients", dy, a["x"], None), ("C order again", dy, a["x"], outs)]:
        got = el.vjp(op, d, x, a["weight"], a.get("bias"), backend="loops:numba", out=out)
        for k, g, w in zip(("x", "weight", "bias"), got, want):
            if w is not None:
                np.testing.assert_allclose(g, w, rtol=3e-4, atol=3e-4, err_msg=f"{name}: {k}")


def test_loops_numba_repeats_on_torch_tensors_follow_each_calls_layout():
    """CPU tensors run on `loops:numba` as numpy views of them, so their
    repeats too are keyed by layout: a strided view of ``x`` or ``dy``
    between contiguous calls, forward, gradients and autograd, gives the
    reference's results."""
    pytest.importorskip("numba")
    torch = pytest.importorskip("torch")
    op, shapes = el.locally_connected2d, {"x": (2, 3, 7, 6), "weight": (2, 3, 3, 3, 5, 4)}
    a = _inputs(shapes)
    dy = rng.standard_normal((2, 2, 5, 4)).astype(np.float32)
    want_y = _reference(op, a, {})
    want_g = _reference_grads(op, dy, a, {})
    x, w, d = (torch.from_numpy(v) for v in (a["x"], a["weight"], dy))
    wide_x, wide_dy = torch.zeros(2, 3, 7, 12), torch.zeros(2, 2, 5, 8)
    wide_x[..., ::2], wide_dy[..., ::2] = x, d
    for name, xs, ds in [("contiguous", x, d), ("strided", wide_x[..., ::2], wide_dy[..., ::2]), ("again", x, d)]:
        np.testing.assert_allclose(op(xs, w, backend="loops:numba").numpy(), want_y, rtol=2e-4, atol=2e-4, err_msg=name)
        gx, gw, _ = el.vjp(op, ds, xs, w, backend="loops:numba")
        np.testing.assert_allclose(gx.numpy(), want_g[0], rtol=3e-4, atol=3e-4, err_msg=name)
        np.testing.assert_allclose(gw.numpy(), want_g[1], rtol=3e-4, atol=3e-4, err_msg=name)
        xg = xs.clone().requires_grad_()
        op(xg, w, backend="loops:numba").backward(ds)
        np.testing.assert_allclose(xg.grad.numpy(), want_g[0], rtol=3e-4, atol=3e-4, err_msg=name)
