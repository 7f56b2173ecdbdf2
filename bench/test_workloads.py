"""The report workloads timed with pytest-benchmark: fresh inputs per round (setup), a synchronising target.

    pytest bench/ --benchmark-json out.json && einlocal table out.json
"""
import pytest

from einlocal import registry
from einlocal.backends.namespaces import namespace
from einlocal.budget import check_budget
from einlocal.check import random_inputs
from einlocal.errors import MemoryBudgetError
from einlocal.timing import sync_for
from einlocal.workloads import get


def test_workload(benchmark, case, request):
    workload_id, name, pass_ = case
    quick = request.config.getoption("--quick")
    w = get(workload_id).sized(quick)
    reason = registry.unavailable().get(name)
    if reason:
        pytest.skip(f"{name}: {reason}")
    backend = registry.get(name)
    library = backend.takes[0]
    op = w.op_fn()
    xp = namespace(library)
    arrays = random_inputs(w.shapes, w.dtype, 0)
    call = op.bind(arrays["x"], arrays["weight"], arrays.get("bias"), **w.params)
    why = backend.cannot(call.plan, library=library, device="cpu", call=call)
    if why:
        pytest.skip(f"{name}: {why}")
    try:
        check_budget(backend, call.plan, arrays["x"].itemsize)
        if pass_ == "backward":
            for _, o, _ in call.operands:
                check_budget(backend, call.plan.backward[o], arrays["x"].itemsize)
    except MemoryBudgetError as e:
        pytest.skip(f"memory guard: {e}")
    seeds = iter(range(1, 10**6))

    def setup():   # fresh inputs for every round, outside the timed region
        s = next(seeds)
        arrs = {k: xp.from_numpy(a, "cpu") for k, a in random_inputs(w.shapes, w.dtype, s).items()}
        dy = xp.from_numpy(random_inputs({"dy": call.out_shape}, w.dtype, s + 1)["dy"], "cpu")
        return (arrs, dy), {}

    def target(arrs, dy):
        if pass_ == "forward":
            result = op(arrs["x"], arrs["weight"], arrs.get("bias"), backend=name, **w.params)
        else:
            result = op.vjp(dy, arrs["x"], arrs["weight"], arrs.get("bias"), backend=name, **w.params)
        sync_for(result)(result)
        return result

    benchmark.group = w.id
    benchmark.extra_info.update(workload=w.id, op=w.op, shape=w.shape, backend=name, regime="fresh",
                                grad_mode="vjp" if pass_ == "backward" else None,
                                flops=call.flops(), min_bytes=call.min_bytes(arrays["x"].itemsize))
    benchmark.extra_info["pass"] = pass_
    benchmark.pedantic(target, setup=setup, rounds=3 if quick else 7, warmup_rounds=1)
