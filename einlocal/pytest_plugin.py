"""einlocal's pytest plugin (loaded through the ``pytest11`` entry point): the
``einlocal_bench`` fixture checks one call against the float64 reference, then
times it with pytest-benchmark; `backends_for` parametrizes a test over the
backends that can run given arrays.

Loading it imports no array library and sets no environment variable: it is
loaded in every pytest run of an environment where einlocal is installed.

    import numpy as np, einlocal as el
    x, w = np.random.rand(8, 16, 32, 32).astype(np.float32), np.random.rand(16, 1, 3, 3).astype(np.float32)

    def test_depthwise(einlocal_bench):
        einlocal_bench(el.depthwise_conv2d, x, w, padding=1, backend="bmm:numpy")
"""
from __future__ import annotations

import pytest

__all__ = ["backends_for", "run_checked"]

PASSES = ("forward", "backward")


def pytest_addoption(parser):
    group = parser.getgroup("einlocal", "einlocal (checked benchmarks)")
    group.addoption("--einlocal-seed", type=int, default=0,
                    help="seed of the output gradient einlocal_bench's backward pass uses (default 0)")
    group.addoption("--einlocal-no-roofline", action="store_true",
                    help="do not measure the machine's roof (copy bandwidth, matmul rate) for extra_info['roofline']")


def pytest_configure(config):
    config.addinivalue_line("markers", "einlocal: a benchmark through einlocal's checked fixture")


def backends_for(op, *arrays, **params) -> list:
    """The backend names that can run ``op`` on these arrays (the float64
    reference ``loops:python`` left out), as ``pytest.param``s with readable ids:

        @pytest.mark.parametrize("backend", backends_for(el.depthwise_conv2d, x, w, padding=1))
    """
    import einlocal as el
    found, params = op.split(arrays, params)
    names = el.backends(op, like=found, **params)
    return [pytest.param(n, id=n) for n in names if n != "loops:python"]


def run_checked(op, arrays: tuple, params: dict, *, backend: str, pass_: str, seed: int = 0):
    """Bind the call, check one run of the pass against the float64
    reference, and return what timing it needs:
    (callable that runs the pass and waits for its device work, extra_info)."""
    import numpy as np

    from .arrays import check_same_kind
    from .backends.namespaces import namespace
    from .call import forward, resolve_backend, vjp
    from .check import compare_parts, random_inputs
    from .reference import reference_outputs
    from .timing import sync_for
    if pass_ not in PASSES:
        raise ValueError(f"pass_ must be one of {PASSES}, got {pass_!r}")
    found, kw = op.split(arrays, params)
    call = op.bind_arrays(found, kw)
    library, dtype, device = check_same_kind(found)
    name = resolve_backend(backend, call, library, device, dtype).name
    xp = namespace(library)
    given = {n: a for n, a in found.items() if a is not None}
    as64 = {n: np.asarray(xp.to_numpy(a), np.float64) for n, a in given.items()}
    dy64 = random_inputs({"dy": call.out_shape}, "float64", seed)["dy"]
    dy = xp.from_numpy(dy64.astype(np.float32 if dtype == "bfloat16" else dtype), device)
    fast, why = _float64_reference(op, call, kw)
    ref = reference_outputs(call, as64, dy64, backend=fast)

    def run():
        if pass_ == "forward":
            result = forward(call, given, backend=name)
        else:
            result = vjp(call, dy, given, backend=name)
        sync_for(result)(result)
        return result

    result = run()
    got = {"y": result} if pass_ == "forward" else {f"d{n}": g for n, g in zip(call.args, result) if g is not None}
    worst = (0.0, 0.0, 0.0, "")           # (error / tolerance, error, tolerance, what)
    for what, value in got.items():
        ratio, err, tol = compare_parts(xp.to_numpy(value), *ref[what], dtype)
        if ratio >= worst[0]:
            worst = (ratio, err, tol, what)
    if not worst[0] <= 1.0:
        raise AssertionError(f"{name} {pass_} of {op.name} disagrees with the float64 reference: {worst[3]} is off by "
                             f"{worst[1]:.3g}, above the tolerance {worst[2]:.3g} ({worst[0]:.3g}x)")
    itemsize = np.dtype(np.float32 if dtype == "bfloat16" else dtype).itemsize
    flops = call.flops() * (1 if pass_ == "forward" else 2)
    info = {"op": op.name, "backend": name, "pass": pass_, "library": library, "dtype": dtype, "device": device,
            "shapes": {n: list(a.shape) for n, a in given.items()},
            "params": {k: (v if isinstance(v, (int, float, str)) else repr(v)) for k, v in kw.items()},
            "check_error": worst[1], "check_tolerance": worst[2], "reference": why, "flops": flops,
            "bytes": call.min_bytes(itemsize)}
    return run, info


LOOPS_LIMIT = 3e5      # multiply-adds above which the pure-Python reference is too slow: a float64 lowering instead
FAST_REFERENCES = ("einsum:numpy", "bmm:numpy")


def _float64_reference(op, call, params: dict):
    """(backend, what it is): None for the literal float64 loops where the call
    is small; above `LOOPS_LIMIT` multiply-adds, a float64 lowering that passed
    the check against the loops at small shapes derived from the call's
    (`einlocal.workload_file.derive_reduced`)."""
    import math

    from . import registry
    from .check import check
    from .workload_file import derive_reduced
    if math.prod(call.plan.range.values()) <= LOOPS_LIMIT:
        return None, "loops:python"
    small = derive_reduced(op, dict(call.arg_shapes), params)
    if small is None:
        return None, "loops:python (no smaller shapes to check a faster reference at)"
    for name in FAST_REFERENCES:
        if name in registry.available() and check(op, backends=[name], dtype="float64", seed=1, **small,
                                                  **params).ok:
            shapes = " ".join(f"{k}{tuple(v)}" for k, v in small.items())
            return registry.get(name), f"{name} in float64, checked against loops:python at {shapes}"
    return None, "loops:python (no float64 lowering passed at smaller shapes)"


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config, machine_info):
    """pytest-benchmark's machine info gets einlocal's (CPU model, library versions, threads, GPU)."""
    from .machine import machine_info as einlocal_machine_info
    machine_info["einlocal"] = einlocal_machine_info()


@pytest.fixture
def einlocal_bench(request):
    """``einlocal_bench(op, *arrays, backend=..., pass_="forward", workload=None, **params)``:
    check the call against the float64 reference (a failure fails the test),
    then time it with pytest-benchmark (device work synchronised), recording
    op, backend, pass, shapes, params, check_error, check_tolerance, flops,
    bytes and roofline in ``extra_info``.  An ``el.Op``'s arrays go by keyword."""
    try:
        benchmark = request.getfixturevalue("benchmark")
    except pytest.FixtureLookupError:
        pytest.skip("einlocal_bench times through pytest-benchmark, which is not installed "
                    "(pip install pytest-benchmark)")
    config = request.config

    def bench(op, *arrays, backend="auto", pass_="forward", workload=None, **params):
        run, info = run_checked(op, arrays, params, backend=backend, pass_=pass_,
                                seed=config.getoption("--einlocal-seed"))
        benchmark.extra_info.update(info)
        if workload is not None:
            benchmark.extra_info["workload"] = benchmark.group = workload
        shapes = " ".join(f"{k}({','.join(map(str, v))})" for k, v in info["shapes"].items())
        benchmark.group = benchmark.group or f"{info['op']} {shapes}"
        result = benchmark(run)
        stats = getattr(benchmark, "stats", None)
        median = getattr(getattr(stats, "stats", None), "median", None)
        if median and not config.getoption("--einlocal-no-roofline"):
            from .machine import roof, roofline_fraction
            benchmark.extra_info["roofline"] = roofline_fraction(median, info["flops"], info["bytes"], **roof())
        return result

    return bench
