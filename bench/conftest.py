"""The report workloads as a pytest-benchmark suite, run through einlocal's own
pytest plugin as any user's suite would (`einlocal_bench`: each call checked
against the float64 reference, then timed):

    pytest bench/ --benchmark-json out.json && einlocal table out.json

Options: --einlocal-quick (each workload at its quick sizes), --einlocal-workloads W1,W3a,
--einlocal-backends bmm,einsum (names or prefixes).
"""


def pytest_addoption(parser):
    group = parser.getgroup("einlocal")
    group.addoption("--einlocal-quick", action="store_true", help="each workload at its quick sizes")
    group.addoption("--einlocal-workloads", default="", help="comma-separated workload ids (default: all)")
    group.addoption("--einlocal-backends", default="", help="comma-separated backend names or prefixes")


def pytest_generate_tests(metafunc):
    if "case" not in metafunc.fixturenames:
        return
    from einlocal import registry
    from einlocal.workloads import WORKLOADS
    config = metafunc.config
    ids = [w for w in config.getoption("--einlocal-workloads").split(",") if w] or list(WORKLOADS)
    wanted = [b for b in config.getoption("--einlocal-backends").split(",") if b]
    names = [n for n in registry.NAMES if n != "loops:python"
             and (not wanted or any(n == b or n.startswith(b) for b in wanted))]
    cases = [(w, n, p) for w in ids for n in names for p in ("forward", "backward")]
    metafunc.parametrize("case", cases, ids=[f"{w}-{n}-{p}" for w, n, p in cases])
