"""The differential test: random statements, parameters and shapes, on which
every numpy strategy agrees with the float64 reference, forward and backward.
``--hypothesis-examples N`` sets the count (300 by default)."""
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import einlocal as el
from einlocal.backends.loops_python import reference
from einlocal.check import random_inputs

NUMPY = ["broadcast:numpy", "bmm:numpy", "einsum:numpy", "opt_einsum:numpy"]
NAMES = ["i", "j", "k", "h", "w", "chan", "tap"]
MAX_ITERATIONS = 1500          # keeps the python reference fast


@st.composite
def statements(draw):
    n_idx = draw(st.integers(2, 5))
    idx = draw(st.permutations(NAMES))[:n_idx]
    ranges = {n: draw(st.integers(1, 4)) for n in idx}
    while math.prod(ranges.values()) > MAX_ITERATIONS:
        big = max(ranges, key=ranges.get)
        ranges[big] -= 1
    n_ops = draw(st.sampled_from([1, 2, 2, 2, 3]))
    operands, used = [], set()
    for k in range(n_ops):
        pool = list(draw(st.permutations(idx)))
        n_axes = draw(st.integers(1, 3))
        axes, taken = [], []
        for _ in range(n_axes):
            free = [n for n in pool if n not in taken]
            if not free:
                break
            m = draw(st.integers(1, min(2, len(free))))
            names = free[:m]
            taken += names
            coefs = [draw(st.sampled_from([1, 1, 1, 2, 3, -1])) for _ in names]
            const = draw(st.integers(-2, 2)) if (m > 1 or coefs[0] != 1) else draw(st.sampled_from([0, 0, 1]))
            axes.append((tuple(zip(names, coefs)), const))
        used.update(taken)
        operands.append((f"a{k}", axes))
    out_names = [n for n in idx if n in used and draw(st.booleans())] or [next(n for n in idx if n in used)]
    # indices no operand reads cannot be summed or given a range: drop them
    ranges = {n: r for n, r in ranges.items() if n in used}
    pad = False
    shapes = {}
    for name, axes in operands:
        shape = []
        for terms, const in axes:
            lo = const + sum(min(0, c * (ranges[n] - 1)) for n, c in terms)
            hi = const + sum(max(0, c * (ranges[n] - 1)) for n, c in terms)
            if lo < 0:
                pad = True
            if len(terms) == 1 and terms[0][1] == 1 and const == 0:
                size = ranges[terms[0][0]]       # an index standing alone: the axis is its range
            elif draw(st.booleans()):
                size = max(1, hi + 1 - draw(st.integers(0, 2)))
            else:
                size = max(1, hi + 1 + draw(st.integers(0, 1)))
            if size < hi + 1:
                pad = True
            shape.append(size)
        shapes[name] = tuple(shape)

    def expr(terms, const):
        s = "+".join(f"{c}*{n}" if c != 1 else n for n, c in terms).replace("+-", "-")
        return s + (f"{const:+d}" if const else "")
    text = f"y[{','.join(out_names)}] += " + " * ".join(
        f"{name}[{','.join(expr(t, c) for t, c in axes)}]" for name, axes in operands)
    return text, pad, shapes, ranges


def _examples(request):
    return request.config.getoption("--hypothesis-examples")


@pytest.fixture
def n_examples(request):
    return _examples(request)


def test_numpy_strategies_agree_with_the_reference(n_examples):
    @settings(max_examples=n_examples, deadline=None, derandomize=False,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(statements())
    def run(case):
        text, pad, shapes, ranges = case
        op = el.Op(text, pad=0 if pad else None)
        report = el.check(op, backends=NUMPY, sizes=ranges, **shapes)
        assert report.ok, f"{text} pad={pad} shapes={shapes} sizes={ranges}\n{report}"
        assert all(r.status == "pass" for r in report.rows), str(report)
    run()


def test_gather_forms_agree_with_their_scatters(n_examples):
    """Every scatter gradient with a gather form: the two give the same array
    (float64 reference loops on both)."""
    seen = []

    @settings(max_examples=n_examples, deadline=None, derandomize=False,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(statements())
    def run(case):
        text, pad, shapes, ranges = case
        plan = el.Op(text, pad=0 if pad else None).bind(sizes=ranges, **shapes)
        for name, bp in plan.backward.items():
            g = bp.gather
            if g is None:
                continue
            seen.append(text)
            ops = random_inputs(dict(bp.shapes), "float64", 5)
            got, want = reference(g, ops), reference(bp, ops)
            assert got.shape == want.shape
            assert abs(got - want).max() <= 1e-12 * max(1.0, abs(want).max()), f"{bp.stmt} -> {g.stmt}"
    run()
    assert seen, "no statement drawn had a gather form"
