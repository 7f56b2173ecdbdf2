"""pytest-benchmark suites: the report workloads x backends x passes (run: pytest bench/ --benchmark-json out.json).

Options: --quick (the workloads at their reduced sizes, few rounds), --workloads W1,W3a,
--bench-backends bmm,einsum (names or prefixes). Machine info gets einlocal's
`machine_info()` (library versions, threads, GPU if any).
"""
import os

os.environ.setdefault("JAX_ENABLE_X64", "1")


def pytest_addoption(parser):
    group = parser.getgroup("einlocal")
    group.addoption("--quick", action="store_true", help="reduced workload sizes and few rounds")
    group.addoption("--workloads", default="", help="comma-separated workload ids (default: all)")
    group.addoption("--bench-backends", default="", help="comma-separated backend names or prefixes")


def pytest_benchmark_update_machine_info(config, machine_info):
    from einlocal.machine import machine_info as einlocal_machine_info
    machine_info["einlocal"] = einlocal_machine_info()


def pytest_generate_tests(metafunc):
    if "case" not in metafunc.fixturenames:
        return
    from einlocal import registry
    from einlocal.workloads import WORKLOADS
    config = metafunc.config
    ids = [w for w in config.getoption("--workloads").split(",") if w] or list(WORKLOADS)
    wanted = [b for b in config.getoption("--bench-backends").split(",") if b]
    names = [n for n in registry.NAMES if n != "loops:python"
             and (not wanted or any(n == b or n.startswith(b) for b in wanted))]
    cases = [(w, n, p) for w in ids for n in names for p in ("forward", "backward")]
    metafunc.parametrize("case", cases, ids=[f"{w}-{n}-{p}" for w, n, p in cases])
