"""The shared lowering steps: zero-copy window views, one padded copy with
padding, the fold (col2im) for affine-indexed outputs, out= semantics."""
import subprocess
import sys

import numpy as np
import pytest

import einlocal as el
from einlocal.backends.lowering import fold, window, window_by_slices
from einlocal.backends.namespaces import namespace

xp = namespace("numpy")
rng = np.random.default_rng(1)


def _plan(text, pad=None, **shapes):
    return el.Op(text, pad=pad).bind(**shapes)


def test_window_is_a_zero_copy_view_when_reads_are_in_bounds():
    p = _plan("y[n,o,h,w] += x[n,c,h*2+i*2,w+j] * wt[o,c,i,j,h,w]", x=(2, 3, 9, 8), wt=(4, 3, 3, 3, 3, 6))
    x = rng.random((2, 3, 9, 8))
    v = window(xp, x, p.windows["x"])
    assert np.shares_memory(v, x)
    assert v.shape == (2, 3, 3, 3, 6, 3)          # n, c, h, i, w, j
    assert v[1, 2, 1, 2, 4, 1] == x[1, 2, 1 * 2 + 2 * 2, 4 + 1]


def test_window_with_padding_views_one_padded_copy():
    p = _plan("y[b,o,t] += x[b,c,2*t+3*k-2] * w[o,c,k,t]", pad=0, x=(2, 3, 12), w=(2, 3, 3, 6))
    x = rng.random((2, 3, 12))
    v = window(xp, x, p.windows["x"])
    assert not np.shares_memory(v, x)
    assert v.shape == (2, 3, 6, 3)                # b, c, t, k
    assert v[0, 0, 0, 0] == 0.0                   # reads x[-2]
    assert v[1, 2, 2, 1] == x[1, 2, 2 * 2 + 3 - 2]
    assert v[0, 1, 5, 2] == 0.0                   # reads x[14]


def test_window_by_slices_equals_the_strided_view():
    p = _plan("y[n,o,h,w] += x[n,c,h*2+i*3-1,w-j+2] * wt[o,c,i,j,h,w]", pad=0, x=(2, 3, 9, 8), wt=(4, 3, 3, 3, 4, 8))
    x = rng.random((2, 3, 9, 8))
    win = p.windows["x"]
    sliced = window_by_slices(xp, xp.pad(x, win.pads), win)
    assert np.array_equal(sliced, window(xp, x, win))   # window uses strides, negative ones included


def test_fold_is_col2im_with_dropped_writes():
    p = _plan("y[i*2+j-1] += a[i] * b[j]", pad=0, a=(4,), b=(3,), out_shape=(7,))
    a, b = rng.random(4), rng.random(3)
    T = np.einsum("i,j->ij", a, b)
    got = fold(xp, T, p)
    want = np.zeros(7)
    for i in range(4):
        for j in range(3):
            if 0 <= 2 * i + j - 1 < 7:
                want[2 * i + j - 1] += a[i] * b[j]
    np.testing.assert_allclose(got, want, rtol=1e-14)


def test_fold_never_uses_add_at():
    import inspect
    from einlocal.backends import lowering
    assert "add.at" not in inspect.getsource(lowering)


def test_out_is_overwritten_not_accumulated(backend):
    from einlocal import registry
    if "numpy" not in registry.get(backend).takes:
        pytest.skip(f"{backend} takes {', '.join(registry.get(backend).takes)} arrays, not numpy")
    x, w = rng.random((2, 3, 6, 6)), rng.random((4, 3, 3, 3))
    out = np.full((2, 4, 4, 4), 1e6)
    y = el.conv2d(x, w, backend=backend, out=out)
    assert y is out
    np.testing.assert_allclose(out, el.conv2d(x, w, backend="loops:python"), rtol=1e-12)
    grads = el.vjp(el.conv2d, np.ones_like(out), x, w, backend=backend,
                   out=(np.full_like(x, 1e6), np.full_like(w, 1e6), None))
    ref = el.vjp(el.conv2d, np.ones_like(out), x, w, backend="loops:python")
    for g, r in zip(grads, ref):
        if r is not None:
            np.testing.assert_allclose(g, r, rtol=1e-12)


def test_vjp_wrt_returns_none_elsewhere():
    x, w, b = rng.random((2, 3, 6, 6)), rng.random((4, 3, 3, 3)), rng.random(4)
    dx, dw, db = el.vjp(el.conv2d, np.ones((2, 4, 4, 4)), x, w, b, wrt=("weight",), backend="einsum:numpy")
    assert dx is None and db is None and dw.shape == w.shape
    dx, dw, db = el.vjp(el.conv2d, np.ones((2, 4, 4, 4)), x, w, None, backend="einsum:numpy")
    assert db is None and dx.shape == x.shape


def test_op_vjp_returns_a_dict():
    op = el.Op("y[i] += x[i+j] * k[j]")
    g = op.vjp(np.ones(8), x=rng.random(10), k=rng.random(3), backend="einsum:numpy")
    assert set(g) == {"x", "k"} and g["x"].shape == (10,)


def test_backends_lists_what_can_run_an_op():
    assert {"bmm:numpy", "einsum:numpy", "loops:python"} <= set(el.backends())
    x = np.zeros((1, 2, 5, 5))
    names = el.backends(el.depthwise_conv2d, like=x)
    assert "bmm:numpy" in names and not any(n.endswith(":torch") or n.endswith(":jax") for n in names)
    grouped = {"x": np.zeros((2, 8, 6, 6)), "weight": np.zeros((4, 2, 3, 3))}
    assert "bmm:numpy" in el.backends(el.conv2d, like=grouped, groups=4)   # params bind the op
    with pytest.raises(el.ShapeError, match="Cin // groups"):
        el.backends(el.conv2d, like=grouped)                                # groups=1 does not fit
    reasons = el.unavailable_backends()
    assert all(isinstance(r, str) and r for r in reasons.values())


def test_import_einlocal_imports_no_framework():
    code = ("import sys, einlocal as el, numpy as np\n"
            "el.conv2d(np.ones((1,1,4,4)), np.ones((1,1,3,3)), backend='bmm:numpy')\n"
            "bad = [m for m in ('torch','jax','cupy','numba','triton','opt_einsum','matplotlib','rich') if m in sys.modules]\n"
            "print(bad); assert not bad, bad\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
