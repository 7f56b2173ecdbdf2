"""einlocal.table: markdown and CSV from records, pytest-benchmark JSON, results files."""

import csv as csv_module
import io
import json

import pytest

from einlocal.table import csv, load_records, load_run, make_record, markdown, write_results

W2 = dict(workload="W2", op="locally_connected2d", shape="x(100,16,28,28)")
W3A = dict(workload="W3a", op="depthwise_conv2d", shape="x(1,1024,28,28)")


def rec(**fields):
    return make_record(**fields)


@pytest.fixture
def records():
    return [
        rec(**W2, backend="bmm:torch", median_s=0.100, iqr_s=0.002, n=5, peak_bytes=60 * 2**20,
            min_bytes=20 * 2**20, peak_method="tracemalloc", roofline_fraction=0.013),
        rec(**W2, backend="bmm:torch", **{"pass": "backward"}, median_s=0.164, iqr_s=0.04,
            grad_mode="autodiff"),
        rec(**W2, backend="bmm:numpy", median_s=0.028, iqr_s=0.001, max_error=2e-6),
        rec(**W2, backend="bmm:numpy", **{"pass": "backward"}, median_s=0.093, iqr_s=0.002,
            grad_mode="vjp"),
        rec(**W2, backend="einsum:jax", median_s=0.127, iqr_s=0.001),
        rec(**W2, backend="einsum:jax", **{"pass": "backward"}, status=">cap",
            reason="over the 10 s cap", grad_mode="autodiff"),
        rec(**W3A, backend="native:torch", median_s=0.00093, iqr_s=0.00001),
        rec(**W3A, backend="loops:numba", status="skipped", reason="numba is not installed"),
        rec(**W3A, backend="native:torch", regime="steady", median_s=0.0008, iqr_s=0.00001),
    ]


def sections(text):
    """Heading -> its table lines."""
    out = {}
    for part in text.split("## ")[1:]:
        heading, _, body = part.partition("\n")
        out[heading] = [line for line in body.splitlines() if line.startswith("|")]
    return out


def row(lines, backend):
    (line,) = [ln for ln in lines if ln.startswith(f"| {backend} ")]
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_each_backend_once_per_workload_table(records):
    tables = sections(markdown(records))
    w2 = next(v for k, v in tables.items() if k.startswith("W2"))
    for backend in ("bmm:torch", "bmm:numpy", "einsum:jax"):
        assert sum(ln.startswith(f"| {backend} ") for ln in w2) == 1
    assert len(w2) == 2 + 3  # header, rule, three rows


def test_best_time_is_bold_and_units_fit_the_table(records):
    tables = sections(markdown(records))
    w2 = next(v for k, v in tables.items() if k.startswith("W2"))
    assert "forward (ms)" in w2[0] and "backward (ms)" in w2[0]
    numpy_row = row(w2, "bmm:numpy [vjp]")
    assert numpy_row[1] == "**28.0**" and numpy_row[2] == "**93.0**"
    assert row(w2, "bmm:torch [autodiff]")[1] == "100"  # not the best: no bold
    w3 = next(v for k, v in tables.items() if k.startswith("W3a") and "fresh" in k)
    assert "forward (µs)" in w3[0] and row(w3, "native:torch")[1] == "**930**"


def test_spread_is_flagged(records):
    w2 = next(v for k, v in sections(markdown(records)).items() if k.startswith("W2"))
    assert row(w2, "bmm:torch [autodiff]")[2] == "164 (! 24%)"
    assert "(!" not in row(w2, "bmm:numpy [vjp]")[2]


def test_skipped_and_capped_cells_show_status_and_reason(records):
    tables = sections(markdown(records))
    w2 = next(v for k, v in tables.items() if k.startswith("W2"))
    jax_row = row(w2, "einsum:jax [autodiff]")
    assert jax_row[2] == ">cap" and "over the 10 s cap" in jax_row[-1]
    w3 = next(v for k, v in tables.items() if k.startswith("W3a") and "fresh" in k)
    numba_row = row(w3, "loops:numba")
    assert numba_row[1] == "skipped" and "numba is not installed" in numba_row[-1]


def test_a_reason_shared_by_every_pass_is_written_once():
    why = "numba is not installed"
    both = [rec(**W3A, backend="loops:numba", **{"pass": p}, status="skipped", reason=why)
            for p in ("forward", "backward")]
    mixed = [rec(**W3A, backend="einsum:jax", median_s=0.01),
             rec(**W3A, backend="einsum:jax", **{"pass": "backward"}, status=">cap", reason="over the cap")]
    (w3,) = sections(markdown(both + mixed)).values()
    assert row(w3, "loops:numba")[-1] == f"skipped: {why}"
    assert row(w3, "einsum:jax")[-1] == "bwd >cap: over the cap"


def test_memory_roofline_and_error_columns(records):
    w2 = next(v for k, v in sections(markdown(records)).items() if k.startswith("W2"))
    torch_row = row(w2, "bmm:torch [autodiff]")
    assert "60.0 (×3.0)" in torch_row[3] and "1.3%" in torch_row[4]
    assert row(w2, "bmm:numpy [vjp]")[5] == "2.0e-06"


def test_regimes_get_separate_labelled_tables(records):
    headings = list(sections(markdown(records, title="Run")))
    assert sum("fresh outputs" in h for h in headings) == 2
    assert sum("steady (out= reused)" in h for h in headings) == 1


def test_two_grad_modes_of_one_backend_make_two_rows():
    rs = [rec(**W2, backend="bmm:torch", median_s=0.1),
          rec(**W2, backend="bmm:torch", **{"pass": "backward"}, median_s=0.2, grad_mode="vjp"),
          rec(**W2, backend="bmm:torch", **{"pass": "backward"}, median_s=0.3,
              grad_mode="autodiff")]
    (lines,) = sections(markdown(rs)).values()
    assert row(lines, "bmm:torch [vjp]")[1:3] == ["**100**", "**200**"]
    assert row(lines, "bmm:torch [autodiff]")[1:3] == ["**100**", "300"]


def test_csv_parses_back(records):
    rows = list(csv_module.DictReader(io.StringIO(csv(records))))
    assert len(rows) == len(records)
    assert [r["backend"] for r in rows] == [r["backend"] for r in records]
    assert float(rows[0]["median_s"]) == records[0]["median_s"]
    assert rows[5]["status"] == ">cap" and rows[5]["median_s"] == ""


def test_make_record_checks_enumerations():
    with pytest.raises(ValueError, match="status"):
        make_record(backend="x", status="weird")
    assert make_record(backend="x")["regime"] == "fresh"


PYTEST_BENCHMARK_JSON = {
    "machine_info": {"node": "vm", "processor": "x86_64", "cpu": {"brand_raw": "Xeon"}},
    "commit_info": {"id": "abc123", "dirty": False},
    "benchmarks": [
        {
            "group": "W2",
            "name": "test_w2[bmm:torch-backward]",
            "fullname": "bench/test_reports.py::test_w2[bmm:torch-backward]",
            "params": {"backend": "bmm:torch", "pass_": "backward"},
            "param": "bmm:torch-backward",
            "extra_info": {"op": "locally_connected2d", "shape": "x(100,16,28,28)",
                           "grad_mode": "vjp", "peak_bytes": 1234, "regime": "steady"},
            "options": {"disable_gc": False, "timer": "perf_counter", "min_rounds": 5,
                        "max_time": 1.0, "min_time": 5e-06, "warmup": False},
            "stats": {"min": 0.15, "max": 0.2, "mean": 0.165, "stddev": 0.01, "rounds": 7,
                      "median": 0.164, "iqr": 0.012, "q1": 0.158, "q3": 0.17,
                      "iqr_outliers": 0, "stddev_outliers": 1, "outliers": "1;0",
                      "ld15iqr": 0.15, "hd15iqr": 0.2, "ops": 6.06, "total": 1.15,
                      "iterations": 1},
        },
        {
            "group": None,
            "name": "test_w3a_depthwise[loops:numba-fwd]",
            "fullname": "bench/test_reports.py::test_w3a_depthwise[loops:numba-fwd]",
            "params": {"impl": "loops:numba"},
            "param": "loops:numba-fwd",
            "extra_info": {},
            "options": {},
            "stats": {"min": 0.0009, "max": 0.0011, "mean": 0.001, "stddev": 0.00005,
                      "rounds": 300, "median": 0.00098, "iqr": 0.00002, "q1": 0.00097,
                      "q3": 0.00099, "iterations": 1},
        },
    ],
    "datetime": "2025-01-01T00:00:00.000000",
    "version": "5.1.0",
}


def test_load_pytest_benchmark_json(tmp_path):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(PYTEST_BENCHMARK_JSON))
    first, second = load_records(path)
    assert (first["workload"], first["backend"], first["pass"], first["regime"]) == \
        ("W2", "bmm:torch", "backward", "steady")
    assert (first["median_s"], first["iqr_s"], first["n"]) == (0.164, 0.012, 7)
    assert (first["grad_mode"], first["peak_bytes"], first["op"]) == ("vjp", 1234,
                                                                      "locally_connected2d")
    assert (second["workload"], second["backend"], second["pass"], second["regime"]) == \
        ("W3a", "loops:numba", "forward", "fresh")
    assert second["op"] == "w3a_depthwise" and second["n"] == 300
    assert load_run(path)["machine"]["node"] == "vm"
    assert "loops:numba" in markdown([first, second])


def test_write_results_round_trips(tmp_path, records):
    sized = [dict(r, size=10**k) for k in (3, 4) for r in records[:4]]
    paths = write_results(sized, tmp_path / "out", command="einlocal compare --workloads W2",
                          machine={"cpu": "Xeon", "cores": 2, "versions": {"numpy": "2.4"}})
    md = paths["md"].read_text()
    assert md.startswith("Regenerate with:\n\n    einlocal compare --workloads W2\n")
    assert "Xeon" in md and "numpy 2.4" in md and "| bmm:numpy" in md
    run = load_run(paths["json"])
    assert run["command"] == "einlocal compare --workloads W2" and run["records"] == sized
    assert paths["csv"].read_text().splitlines()[0].endswith(",size")
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"


def test_load_rejects_unknown_json(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("{}")
    with pytest.raises(ValueError, match="pytest-benchmark"):
        load_records(path)
