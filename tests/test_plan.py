"""Binding statements to shapes: the range rules (docs/statements.md) and validation."""
import numpy as np
import pytest

import einlocal as el
from einlocal.plan import bind
from einlocal.spec import parse


def test_standing_alone_axes_give_ranges():
    p = el.Op("y[n,o,h,w] += x[n,c,h+i,w+j] * wt[o,c,i,j,h,w]").bind(x=(2, 3, 8, 8), wt=(4, 3, 3, 3, 6, 6))
    assert p.range == dict(n=2, o=4, h=6, w=6, c=3, i=3, j=3)
    assert p.out_shape == (2, 4, 6, 6)


def test_disagreeing_standing_alone_axes_name_both():
    with pytest.raises(el.ShapeError, match=r"index 'c' has size 3 from x axis 1 \(c\) but 5 from wt axis 1"):
        el.Op("y[n,o,h,w] += x[n,c,h+i,w+j] * wt[o,c,i,j,h,w]").bind(x=(2, 3, 8, 8), wt=(4, 5, 3, 3, 6, 6))


def test_largest_in_bounds_range_as_tullio():
    # i + j < 10 with j < 3  ->  i ranges over 8
    assert el.Op("y[i] += x[i+j] * k[j]").bind(x=(10,), k=(3,)).range["i"] == 8
    # 2*t + 3*k - 2 >= 0 fails at t=k=0 without padding; the upper bound still gives a range
    p = el.Op("y[t] += x[2*t+k] * w[k]").bind(x=(11,), w=(3,))
    assert p.range["t"] == 5          # 2*4 + 2 = 10 is the last in-bounds read
    # a negative coefficient bounds from below
    assert el.Op("y[t] += x[9-t+k] * w[k]").bind(x=(12,), w=(3,)).range["t"] == 10


def test_sizes_and_out_shape_give_ranges():
    op = el.Op("y[i] += x[i+j] * k[j]")
    assert op.bind(x=(10,), k=(3,), sizes={"i": 5}).range["i"] == 5
    assert op.bind(x=(10,), k=(3,), out_shape=(4,)).range["i"] == 4


def test_sizes_must_agree_and_name_real_indices():
    op = el.Op("y[i] += x[i+j] * k[j]")
    with pytest.raises(el.ShapeError, match=r"sizes\['j'\] = 4 disagrees with k axis 0"):
        op.bind(x=(10,), k=(3,), sizes={"j": 4})
    with pytest.raises(el.ShapeError, match="does not use"):
        op.bind(x=(10,), k=(3,), sizes={"q": 4})


def test_missing_range_lists_what_is_missing():
    with pytest.raises(el.ShapeError, match=r"no range for index 'h'.*sizes=\{'h'"):
        el.Op("y[n,h] += x[n] * w[n]").bind(x=(4,), w=(4,))
    # h appears only with j, both unknown
    with pytest.raises(el.ShapeError, match="no range for index"):
        el.Op("y[n] += x[n, h+j]").bind(x=(2, 5))


def test_out_of_bounds_read_is_an_error_without_pad():
    with pytest.raises(el.ShapeError, match=r"x axis 2 \(t\*2\+k\*3-2\) reads -2\.\.8 but has size 12.*pad=0"):
        el.Op("y[b,o,t] += x[b,c,2*t+3*k-2] * w[o,c,k,t]").bind(x=(2, 3, 12), w=(2, 3, 3, 3))


def test_pad_zero_allows_it_and_plans_the_padding():
    p = el.Op("y[b,o,t] += x[b,c,2*t+3*k-2] * w[o,c,k,t]", pad=0).bind(x=(2, 3, 12), w=(2, 3, 3, 6))
    assert p.windows["x"].pads == ((0, 0), (0, 0), (2, 3))   # reads -2 .. 2*5+3*2-2 = 14 of 0..11
    assert p.windows["w"].pads == ((0, 0),) * 4


def test_non_positive_range_is_an_error():
    with pytest.raises(el.ShapeError, match="non-positive range"):
        el.Op("y[i] += x[i+j] * k[j]").bind(x=(2,), k=(3,))


def test_wrong_number_of_axes():
    with pytest.raises(el.ShapeError, match=r"operand 'x' has 3 axes \(2, 3, 4\), but x\[n,c,h\+i,w\+j\] indexes 4"):
        el.Op("y[n,o,h,w] += x[n,c,h+i,w+j] * wt[o,c,i,j,h,w]").bind(x=(2, 3, 4), wt=(1, 3, 1, 1, 1, 1))


def test_affine_output_needs_out_shape():
    with pytest.raises(el.ShapeError, match="pass out="):
        el.Op("y[i+j] += x[i] * k[j]").bind(x=(5,), k=(3,))
    p = el.Op("y[i+j] += x[i] * k[j]").bind(x=(5,), k=(3,), out_shape=(7,))
    assert p.scatter


def test_binding_is_cached():
    s = parse("y[i] += x[i+j] * k[j]")
    assert bind(s, (("x", (9,)), ("k", (2,)))) is bind(s, (("x", (9,)), ("k", (2,))))


def test_backward_plans_are_bound_like_the_forward():
    p = el.Op("y[n,o,h,w] += x[n,c,h*2+i,w+j] * wt[o,c,i,j,h,w]").bind(x=(2, 3, 9, 8), wt=(4, 3, 3, 3, 4, 6))
    bx = p.backward["x"]
    assert bx.out_shape == (2, 3, 9, 8) and bx.range == p.range
    assert p.backward["wt"].out_shape == (4, 3, 3, 3, 4, 6)


def test_flops_and_minimum_bytes():
    p = el.Op("y[i] += a[i,j] * b[j]").bind(a=(4, 5), b=(5,))
    assert p.flops() == 2 * 20
    assert p.min_elements() == 20 + 5 + 4


def test_user_statement_end_to_end_matches_numpy():
    rng = np.random.default_rng(0)
    x, k = rng.random(10), rng.random(3)
    y = el.Op("y[i] += x[i+j] * k[j]")(x=x, k=k, backend="einsum:numpy")
    np.testing.assert_allclose(y, np.correlate(x, k, mode="valid"), rtol=1e-12)
