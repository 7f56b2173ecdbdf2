"""Parsing statements: the grammar, the printed form, and SpecError."""
import pytest

import einlocal as el
from einlocal.spec import Affine, parse


def test_parses_affine_indices_of_any_length():
    s = parse("out_y[batch, o, h] += x[batch, c, h*2+tap*3-1] * w[o, c, tap, h]")
    assert s.out.name == "out_y"
    assert [a.name for a in s.operands] == ["x", "w"]
    ax = s.operands[0].axes[2]
    assert ax.terms == (("h", 2), ("tap", 3)) and ax.const == -1
    assert s.summed == ("c", "tap")
    assert s.indices == ("batch", "o", "h", "c", "tap")


@pytest.mark.parametrize("text, terms, const", [
    ("y[i] += x[2*i+3*k-2] * w[k]", (("i", 2), ("k", 3)), -2),
    ("y[i] += x[i*2-k+5] * w[k]", (("i", 2), ("k", -1)), 5),
    ("y[i] += x[-k+i] * w[k]", (("k", -1), ("i", 1)), 0),
    ("y[i] += x[i+1+1] * w[i]", (("i", 1),), 2),
    ("y[i] += x[3*2*i] * w[i]", (("i", 6),), 0),
])
def test_affine_forms(text, terms, const):
    ax = parse(text).operands[0].axes[0]
    assert ax.terms == terms and ax.const == const


def test_printed_form_parses_back_to_the_same_statement():
    s = parse("y[n,o,h,w] += x[n,c,h*2+i*3-1, w-j+4] * wt[o,c,i,j,h,w]")
    assert parse(str(s)) == s


def test_affine_bounds():
    ax = Affine((("h", 2), ("i", -3)), 5)
    assert ax.bounds({"h": 4, "i": 3}) == (5 - 6, 5 + 6)


def test_multi_operand_statement():
    s = parse("y[i] += a[i,j] * b[j] * c[j]")
    assert s.inputs == ("a", "b", "c")


@pytest.mark.parametrize("text, fragment", [
    ("y[i] = x[i]", "expected"),
    ("y[i] += x[i*j]", "multiplies two indices"),
    ("y[i] += x[i] +", "unexpected"),
    ("y[i] += x[i,]", "expected"),
    ("y[i] += x[i] * x[i]", "appears more than once"),
    ("y[i] += out[i]", "reserved"),
    ("sizes[i] += x[i]", "reserved"),
    ("y[i] += x[i, i]", "repeats within operand"),
    ("y[i] += x[h+i, w+i]", "repeats within operand"),
    ("y[i] += x[i] $ w[i]", "unexpected"),
    ("y[] += x[i]", "expected"),
])
def test_spec_errors(text, fragment):
    with pytest.raises(el.SpecError, match=fragment.replace("(", r"\(")):
        parse(text)


def test_spec_error_is_a_value_error():
    with pytest.raises(ValueError):
        el.Op("y[i] += x[i, i]")


def test_op_rejects_pad_other_than_zero():
    with pytest.raises(el.SpecError, match="pad must be 0"):
        el.Op("y[i] += x[i]", pad=1)


def test_parse_is_cached():
    assert parse("y[i] += x[i+j] * k[j]") is parse("y[i] += x[i+j] * k[j]")
