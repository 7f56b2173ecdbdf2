"""Each error of the contract's table (docs/errors.md): the class, and a message that names the
argument, axis and numbers.  Nothing is computed before the check."""
import numpy as np
import pytest

import einlocal as el

rng = np.random.default_rng(0)
x = rng.random((2, 3, 8, 8)).astype(np.float32)
w_lc = rng.random((4, 3, 3, 3, 6, 6)).astype(np.float32)
w_dw = rng.random((6, 1, 3, 3)).astype(np.float32)
w_cv = rng.random((4, 3, 3, 3)).astype(np.float32)


@pytest.mark.parametrize("call, match", [
    (lambda: el.locally_connected2d(x, w_lc[:, :, :, :, :5]), r"weight axis 4 \(output size\) is 5 but x of spatial size \(8, 8\) with kernel \(3, 3\).* gives 6"),
    (lambda: el.locally_connected2d(x, w_lc[:, :2]), r"weight axis 1 \(Cin\) is 2 but x axis 1 \(Cin\) is 3"),
    (lambda: el.locally_connected2d(x[0], w_lc), r"x must have 4 axes \(N, Cin, H, W\), got shape \(3, 8, 8\)"),
    (lambda: el.locally_connected2d(x, w_lc, stride=0), r"stride must be >= 1 on every axis, got 0"),
    (lambda: el.locally_connected2d(x, w_lc, dilation=(1, -1)), r"dilation must be >= 1"),
    (lambda: el.locally_connected2d(x, w_lc, padding=-1), r"padding must be non-negative, got \(-1, -1\)"),
    (lambda: el.locally_connected2d(x, w_lc, padding=(1, 2, 3)), r"padding must be an int"),
    (lambda: el.locally_connected2d(x, w_lc, padding="full"), r"padding must be .*'full'"),
    (lambda: el.locally_connected2d(x, w_lc, bias=np.zeros((4, 6), np.float32)), r"bias must have 3 axes \(Cout, \*output size\), got shape \(4, 6\)"),
    (lambda: el.conv2d(x, w_cv[:, :, :, :], padding="same", stride=2), r"padding='same' needs stride 1"),
    (lambda: el.conv2d(x, np.zeros((4, 3, 9, 9), np.float32)), r"kernel extent 9 .* larger than the padded input 8"),
    (lambda: el.conv2d(x, w_cv, groups=2), r"groups=2 does not divide x axis 1 \(Cin\) = 3"),
    (lambda: el.conv2d(x, np.zeros((5, 1, 3, 3), np.float32), groups=3), r"groups=3 does not divide weight axis 0 \(Cout\) = 5"),
    (lambda: el.conv2d(x, np.zeros((6, 2, 3, 3), np.float32), groups=3), r"weight axis 1 is 2 but Cin // groups = 3 // 3 = 1"),
    (lambda: el.depthwise_conv2d(x, np.zeros((7, 1, 3, 3), np.float32)), r"depthwise weight axis 0 is 7, not a multiple of x's 3"),
    (lambda: el.depthwise_conv2d(x, np.zeros((6, 2, 3, 3), np.float32)), r"depthwise weight axis 1 must be 1"),
    (lambda: el.Op("y[i] += x[i+j] * k[j]")(x=np.zeros(2), k=np.zeros(3)), r"non-positive range"),
    (lambda: el.Op("y[n,h] += x[n] * w[n]")(x=np.zeros(2), w=np.zeros(2)), r"no range for index 'h'"),
    (lambda: el.Op("y[t] += x[t-1] * w[t]")(x=np.zeros(4), w=np.zeros(4)), r"reads -1\.\.2 .*pass pad=0"),
])
def test_shape_errors(call, match):
    with pytest.raises(el.ShapeError, match=match):
        call()


def test_mismatched_dtypes_and_libraries():
    with pytest.raises(el.ShapeError, match="argument 'weight' has dtype float64 but 'x' has dtype float32"):
        el.conv2d(x, w_cv.astype(np.float64))
    torch = pytest.importorskip("torch")
    with pytest.raises(el.ShapeError, match="'weight' is a torch array but 'x' is a numpy array; einlocal never copies"):
        el.conv2d(x, torch.from_numpy(w_cv))


def test_integer_arrays_are_rejected():
    with pytest.raises(el.ShapeError, match="dtype int64"):
        el.conv2d(np.ones((1, 1, 4, 4), np.int64), np.ones((1, 1, 3, 3), np.int64))


@pytest.mark.parametrize("text", ["y[i] = x[i]", "y[i] += x[i, i]", "y[i] += wrt[i]"])
def test_spec_errors(text):
    with pytest.raises(el.SpecError):
        el.Op(text)


def test_unknown_backend_lists_valid_names():
    with pytest.raises(el.BackendError, match=r"unknown backend 'bmm:nump'; valid names: .*bmm:numpy"):
        el.conv2d(x, w_cv, backend="bmm:nump")


def test_backend_that_cannot_take_these_arrays():
    with pytest.raises(el.BackendError, match="takes torch arrays, not numpy"):
        el.conv2d(x, w_cv, backend="bmm:torch")


def test_out_with_jax_is_a_backend_error():
    jnp = pytest.importorskip("jax.numpy")
    with pytest.raises(el.BackendError, match="out= cannot be used with jax"):
        el.conv2d(jnp.asarray(x), jnp.asarray(w_cv), out=np.zeros((2, 4, 6, 6), np.float32))


@pytest.mark.parametrize("out, match", [
    (np.zeros((2, 4, 6, 5), np.float32), r"out= has shape \(2, 4, 6, 5\) but the result has shape \(2, 4, 6, 6\)"),
    (np.zeros((2, 4, 6, 6), np.float64), r"out= has dtype float64 but the result has dtype float32"),
])
def test_bad_out(out, match):
    with pytest.raises(el.ShapeError, match=match):
        el.conv2d(x, w_cv, out=out)


def test_out_overlapping_an_input():
    buf = np.zeros((400,), np.float32)
    xx = buf[:2 * 3 * 8 * 8].reshape(2, 3, 8, 8)
    out = buf[10:10 + 2 * 4 * 6 * 6].reshape(2, 4, 6, 6)
    with pytest.raises(el.ShapeError, match="overlaps the memory of argument 'x'"):
        el.conv2d(xx, w_cv, out=out)


def test_out_requiring_grad():
    torch = pytest.importorskip("torch")
    out = torch.zeros((2, 4, 6, 6), requires_grad=True)
    with pytest.raises(el.ShapeError, match="requires grad"):
        el.conv2d(torch.from_numpy(x), torch.from_numpy(w_cv), out=out)


def test_memory_budget_error_names_backend_shape_and_bytes():
    el.set_memory_budget(10_000)
    with pytest.raises(el.MemoryBudgetError, match=r"backend broadcast:numpy would allocate .*broadcast product "
                                                   r"\(2, 4, 6, 6, 3, 3, 3\): 31,104 bytes.* over the "
                                                   r"memory budget of 10,000 bytes"):
        el.locally_connected2d(x, w_lc, backend="broadcast:numpy")
    # a backend whose intermediates fit runs under the same budget
    assert el.locally_connected2d(x, w_lc, backend="einsum:numpy").shape == (2, 4, 6, 6)


def test_errors_are_value_errors():
    for cls in (el.ShapeError, el.SpecError, el.BackendError, el.MemoryBudgetError):
        assert issubclass(cls, ValueError)
    assert issubclass(el.MemoryBudgetError, MemoryError)


def test_nothing_is_computed_before_the_check():
    """A bad out= is refused before the backend runs (the backend would
    otherwise write into it)."""
    out = np.full((2, 4, 6, 5), 7.0, np.float32)
    with pytest.raises(el.ShapeError):
        el.conv2d(x, w_cv, out=out)
    assert np.all(out == 7.0)
