"""Workload files: the format, sweeps, quick sizes, and an error naming the file,
workload, key and what was expected for every way a file can be wrong."""
import math

import numpy as np
import pytest

import einlocal as el
from einlocal.workload_file import WorkloadFileError, load, parse
from einlocal.workloads import REPORT_FILE, WORKLOADS

MINE = """
[[workload]]
id = "mine-dw"
op = "depthwise_conv2d"                       # a catalogue op ...
shapes = { x = ["N", 8, 24, 24], weight = [16, 1, 3, 3] }
params = { padding = 1 }
dtype = "float32"                             # optional
sweep = { N = [1, 4, 16] }                    # optional: one run per value

[[workload]]
id = "mine-op"
statement = "y[b,o,t] += x[b,c,2*t+k-1] * w[o,c,k,t]"   # ... or a user statement (el.Op)
pad = 0
shapes = { x = [4, 3, 40], w = [5, 3, 3, 20] }          # keyed by operand name
"""


def test_the_documented_file_loads_with_its_sweep_expanded(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(MINE)
    ws = load(path)
    assert [w.id for w in ws] == ["mine-dw[N=1]", "mine-dw[N=4]", "mine-dw[N=16]", "mine-op"]
    assert [w.shapes["x"] for w in ws[:3]] == [(1, 8, 24, 24), (4, 8, 24, 24), (16, 8, 24, 24)]
    assert ws[1].sweep_of == "mine-dw" and ws[1].sweep == {"N": 4} and ws[1].params == {"padding": 1}
    op = ws[3].op_fn()
    assert ws[3].op is None and op.name == el.Op("y[b,o,t] += x[b,c,2*t+k-1] * w[o,c,k,t]").name and op.pad
    assert ws[3].quick_sized() is ws[3]            # no `quick`: --quick times it as written


def test_a_sweep_over_two_names_runs_their_product_and_quick_values_apply():
    ws = parse({"workload": [{"id": "g", "op": "conv2d", "shapes": {"x": ["N", "C", 8, 8], "weight": [4, "C", 3, 3]},
                              "sweep": {"N": [1, 2], "C": [2, 4]}}]})
    assert [w.id for w in ws] == ["g[N=1,C=2]", "g[N=1,C=4]", "g[N=2,C=2]", "g[N=2,C=4]"]
    ws = parse({"workload": [{"id": "q", "op": "conv2d", "shapes": {"x": ["N", 2, 8, 8], "weight": [4, 2, 3, 3]},
                              "values": {"N": 64}, "quick": {"N": 2}}]})
    assert ws[0].shapes["x"] == (64, 2, 8, 8) and ws[0].quick_sized().shapes["x"] == (2, 2, 8, 8)


def test_the_report_workloads_are_a_shipped_file_with_quick_batches():
    assert REPORT_FILE.name == "workloads.toml" and list(WORKLOADS) == ["W1", "W2", "W3a", "W3b", "W5"]
    assert WORKLOADS["W2"].shapes == {"x": (100, 16, 28, 28), "weight": (16, 16, 3, 3, 26, 26)}
    assert {k: w.quick_sized().shapes["x"][0] for k, w in WORKLOADS.items()} == \
        {"W1": 4, "W2": 12, "W3a": 1, "W3b": 4, "W5": 2}


OK = {"id": "a", "op": "conv2d", "shapes": {"x": [2, 4, 8, 8], "weight": [6, 4, 3, 3]}}


@pytest.mark.parametrize("change, match", [
    ({"op": "conv3d"}, r"key 'op': expected one of locally_connected2d.*got 'conv3d'"),
    ({"statement": "y[n] += x[n]"}, r"give exactly one of 'op'"),
    ({"shapes": {"x": [2, 4, 8, 8], "wt": [6, 4, 3, 3]}}, r"key 'shapes': expected operand names of conv2d: x, "
                                                          r"weight, bias, got 'wt'"),
    ({"shapes": {"x": [2, 4, 8, 8], "weight": [6, 3, 3, 3]}}, r"key 'shapes': .*weight axis 1"),
    ({"shapes": {"x": ["N", 4, 8, 8], "weight": [6, 4, 3, 3]}}, r"key 'shapes': name 'N' has no value"),
    ({"sweep": {"N": []}}, r"key 'sweep': expected a table of name -> non-empty list of ints"),
    ({"sweep": {"M": [1]}}, r"key 'sweep': expected a name used in 'shapes' or 'params', got 'M'"),
    ({"quick": {"N": 2}}, r"key 'quick': expected a name used in 'shapes' or 'params', got 'N'"),
    ({"dtype": "int8"}, r"key 'dtype': expected one of float16, bfloat16, float32, float64, got 'int8'"),
    ({"reduced": {"x": [1, 4, 4, 4]}}, r"key 'reduced': expected a list of ints for each operand \(x, weight\)"),
    ({"reduced": {"x": [1, 4, 2, 2], "weight": [6, 4, 3, 3]}}, r"key 'reduced': .*kernel extent 3"),
    ({"params": {"groups": 3}}, r"key 'shapes': groups=3 does not divide"),
    ({"pad": 0}, r"key 'pad': expected 0 with a 'statement'"),
    ({"colour": "red"}, r"unknown key 'colour'; valid keys: id, op, statement"),
    ({"peers": "unfold"}, r"key 'peers': expected a list of peer names"),
])
def test_every_mistake_names_the_file_workload_key_and_expectation(change, match):
    with pytest.raises(WorkloadFileError, match=r"^mine\.toml: workload 'a': " + match):
        parse({"workload": [{**OK, **change}]}, "mine.toml")


def test_file_level_mistakes(tmp_path):
    with pytest.raises(WorkloadFileError, match="expected one or more \\[\\[workload\\]\\] tables, found none"):
        parse({}, "f.toml")
    with pytest.raises(WorkloadFileError, match="key 'id': 'a' is used twice"):
        parse({"workload": [OK, OK]}, "f.toml")
    with pytest.raises(WorkloadFileError, match="workload #1: key 'id'"):
        parse({"workload": [{"op": "conv2d"}]}, "f.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[workload]\nid = 1")
    with pytest.raises(WorkloadFileError, match="bad.toml: not valid TOML"):
        load(bad)
    with pytest.raises(WorkloadFileError, match="missing.toml: cannot be read"):
        load(tmp_path / "missing.toml")
    with pytest.raises(WorkloadFileError, match="key 'statement': .*"):
        parse({"workload": [{"id": "s", "statement": "y[n += x[n]", "shapes": {"x": [2]}}]}, "f.toml")


def test_without_reduced_shapes_einlocal_derives_small_ones_that_bind():
    from einlocal.workload_file import derive_reduced
    ws = parse({"workload": [
        {"id": "op", "statement": "y[b,o,t] += x[b,c,2*t+k-1] * w[o,c,k,t]", "pad": 0,
         "shapes": {"x": [4, 3, 40], "w": [5, 3, 3, 20]}},
        {"id": "grouped", "op": "conv2d", "shapes": {"x": [4, 8, 16, 16], "weight": [12, 4, 3, 3]},
         "params": {"groups": 2, "stride": 2, "padding": 1}},
        {"id": "lc", "op": "locally_connected1d", "shapes": {"x": [4, 8, 24], "weight": [5, 8, 3, 22],
                                                             "bias": [5, 22]}}]})
    assert ws[0].reduced == {"x": (3, 3, 6), "w": (3, 3, 3, 3)}     # t: 20 -> 3, x's axis 2*t: 40 -> 6
    assert ws[1].reduced == {"x": (3, 8, 6, 6), "weight": (6, 4, 3, 3)}  # the groups stay 2
    assert ws[2].reduced == {"x": (3, 8, 5), "weight": (3, 8, 3, 3), "bias": (3, 3)}
    for w in ws:
        call = w.op_fn().bind_arrays({k: np.empty(v) for k, v in w.reduced.items()}, dict(w.params))
        assert math.prod(call.plan.range.values()) <= 200_000
    assert derive_reduced(el.conv2d, {"x": [1, 2, 3, 3]}, {}) is None           # does not bind: nothing derived
