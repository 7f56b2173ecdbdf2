"""Derivations from a statement: einsum form, backward statements, and the
write-conflict analysis, tested as data."""
import pytest

import einlocal as el
from einlocal.derive import backward, einsum_spec, write_conflicts
from einlocal.spec import parse

LC = "y[n,o,h,w] += x[n,c,h*{S}+i*{D}-1, w+j] * wt[o,c,i,j,h,w]"


def test_einsum_of_locally_connected():
    op = el.Op("y[n,o,h,w] += x[n,c,h+i,w+j] * wt[o,c,i,j,h,w]")
    assert op.einsum == "nchiwj,ocijhw->nohw"


def test_einsum_maps_long_names_to_free_letters():
    s = parse("res[batch,t] += x[batch,2*t+k] * w[k,t]")
    assert einsum_spec(s) == "atk,kt->at"   # one-letter names keep theirs


def test_backward_swaps_each_input_with_the_output_gradient():
    s = parse("y[n,o,h,w] += x[n,c,h*2+i-1,w+j] * wt[o,c,i,j,h,w]")
    dx, dwt = backward(s)
    assert str(dx) == "dx[n,c,h*2+i-1,w+j] += dy[n,o,h,w] * wt[o,c,i,j,h,w]"
    assert str(dwt) == "dwt[o,c,i,j,h,w] += dy[n,o,h,w] * x[n,c,h*2+i-1,w+j]"


def test_backward_names_avoid_collisions():
    s = parse("y[i] += x[i] * dx[i]")
    for b in backward(s):
        names = [b.out.name] + [a.name for a in b.operands]
        assert len(set(names)) == len(names)
        assert b.out.name not in ("x", "dx", "y") and b.operands[0].name == "dy"


def _bound(S, D, cout, H=12, k=3):
    op = el.Op(LC.format(S=S, D=D), pad=0)
    Ho = (H + 2 - D * (k - 1) - 1) // S + 1
    return op.bind(x=(2, 3, H, H), wt=(cout, 3, k, k, Ho, H - k + 1))


@pytest.mark.parametrize("S, D, cout, overlap_h", [
    (1, 1, 2, True),    # stride 1 < kernel: windows overlap
    (2, 1, 2, True),    # stride 2 < kernel 3: still overlap
    (3, 1, 2, False),   # stride = kernel: tiles, no overlap along h
    (1, 2, 2, True),    # dilation 2, stride 1
    (2, 2, 2, True),    # gcd(2,2)=2: h and i collide at h+1 vs i-1
    (4, 2, 1, True),    # 4h+2i: (h, i+2) = (h+1, i) with i < 1 only if k>2: k=3 -> collide
    (6, 2, 1, False),   # 6h+2i, i < 3: injective
])
def test_conflicts_of_the_input_gradient(S, D, cout, overlap_h):
    plan = _bound(S, D, cout)
    c = plan.backward["x"].conflicts
    assert c.conflict
    assert ("o" in c.reduced) == (cout > 1)          # Cout > 1 sums over o
    assert (2 in dict(c.overlapping)) == overlap_h
    assert c.scatter                                  # w+j always overlaps
    assert "n" in c.parallel and "c" in c.parallel
    assert ("h" in c.parallel) == (not overlap_h)


def test_weight_gradient_reduces_over_batch_only():
    c = _bound(2, 1, 3).backward["wt"].conflicts
    assert c.reduced == ("n",) and not c.overlapping
    assert set(c.parallel) == {"o", "c", "i", "j", "h", "w"}


def test_forward_is_a_plain_reduction():
    c = _bound(1, 1, 2).conflicts
    assert c.reduced == ("c", "i", "j") and not c.scatter


def test_unbound_analysis_is_conservative():
    c = write_conflicts(backward(parse(LC.format(S=5, D=1)))[0])
    assert c.overlapping   # without ranges, h*5+i may collide


def test_report2_case_cout_gt_1_gradient_matches_reference():
    """Report 2: a hand-written dx was right only for Cout = 1.  The derived
    one agrees with the finite-difference-checked reference for Cout = 3."""
    r = el.check(el.locally_connected2d, backends=["einsum:numpy", "bmm:numpy"],
                 x=(2, 2, 6, 6), weight=(3, 2, 3, 3, 4, 4), seed=7)
    assert r.ok, str(r)
    assert r.reference_vjp_error <= 1.0


def test_conflicts_print_as_text():
    text = str(_bound(2, 1, 2).backward["x"].conflicts)
    assert "reduced" in text and "overlapping" in text and "parallel" in text


# -- the gather form of a scatter ------------------------------------------------------------

@pytest.mark.parametrize("text, shapes, want", [
    # stride 1: solved for the output position, taps read backwards
    ("y[n,o,h,w] += x[n,c,h+i-1,w+j] * wt[o,c,i,j,h,w]", dict(x=(2, 3, 8, 8), wt=(2, 3, 3, 2, 8, 7)),
     "dx[n,c,h,w] += dy[n,o,h-i+1,w-j] * wt[o,c,i,j,h-i+1,w-j]"),
    # dilation 2 keeps the position's coefficient 1
    ("y[n,h] += x[n,h+2*i] * w[i]", dict(x=(2, 9), w=(3,)), "dx[n,h] += dy[n,h-i*2] * w[i]"),
    # stride 2: the position has coefficient 2, no gather without a divisibility test
    ("y[n,h] += x[n,2*h+i] * w[i,h]", dict(x=(2, 9), w=(3, 4)), None),
    # the tap is the longest range: solving for it would loop over every output position
    ("y[n,h] += x[n,h+i] * w[i]", dict(x=(2, 9), w=(7,)), "dx[n,i] += dy[n,h] * w[i-h]"),
])
def test_gather_form_of_the_input_gradient(text, shapes, want):
    plan = el.Op(text, pad=0).bind(**shapes).backward["x"]
    assert plan.scatter
    g = plan.gather
    assert (None if g is None else str(g.stmt)) == want
    if g is not None:
        assert not g.scatter and g.pad and not g.conflicts.overlapping
        assert set(g.conflicts.parallel) == set(g.stmt.out.names)


def test_no_gather_where_nothing_bounds_the_solved_index():
    """h takes its range from sizes= alone: no operand axis of exactly that
    size holds it, so zeros read cannot stand in for its range test."""
    op = el.Op("y[n] += x[n,h+i] * w[i]")
    plan = op.bind(x=(2, 9), w=(3,), sizes={"h": 4}).backward["x"]
    assert plan.scatter and plan.gather is None


def test_no_gather_where_the_rewrite_would_not_bind():
    """Solved for j, a1[i,2*k+j+2] becomes a1[i,j]: j would stand alone on
    an axis of size 4 while the output's says 3; the scatter stays."""
    op = el.Op("y[j] += a0[j+2*k+2,i] * a1[i,2*k+j+2]", pad=0)
    plan = op.bind(a0=(3, 1), a1=(1, 4), sizes={"i": 1, "j": 1, "k": 1}).backward["a0"]
    assert plan.scatter and plan.gather is None
