"""The report workloads timed with pytest-benchmark through einlocal's plugin:
each call checked against the float64 reference first, then timed.

    pytest bench/ --benchmark-json out.json && einlocal table out.json
"""
import pytest

from einlocal import registry
from einlocal.backends.namespaces import namespace
from einlocal.check import random_inputs
from einlocal.workloads import WORKLOADS


def test_workload(einlocal_bench, case, request):
    workload_id, name, pass_ = case
    w = WORKLOADS[workload_id]
    w = w.quick_sized() if request.config.getoption("--einlocal-quick") else w
    reason = registry.unavailable().get(name)
    if reason:
        pytest.skip(f"{name}: {reason}")
    backend = registry.get(name)
    library = backend.takes[0]
    call = w.op_fn().bind_arrays({k: random_inputs({k: v}, "float64", 0)[k] for k, v in w.shapes.items()},
                                 dict(w.params))
    why = backend.cannot(call.plan, library=library, device="cpu", call=call)
    if why:
        pytest.skip(f"{name}: {why}")
    xp = namespace(library)
    arrays = {k: xp.from_numpy(a, "cpu") for k, a in random_inputs(w.shapes, w.dtype, 0).items()}
    einlocal_bench(w.op_fn(), backend=name, pass_=pass_, workload=w.id, **arrays, **w.params)
