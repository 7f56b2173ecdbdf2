"""einlocal: locally connected, depthwise and grouped convolutions, each
written once as an index-notation statement and lowered to many backends.

    import einlocal as el
    y = el.locally_connected2d(x, weight, bias, stride=1, padding=1)
    dx, dw, db = el.vjp(el.locally_connected2d, dy, x, weight, bias, padding=1)

Importing einlocal imports no framework (numpy only).
"""
from .budget import memory_budget, set_memory_budget
from .check import check
from .choose import choose
from . import table as _table_module  # loaded now so that `el.table` below stays the function
from . import compare as _compare_module  # ... and `el.compare` the function
from .catalogue import conv2d, depthwise_conv2d, locally_connected1d, locally_connected2d, vjp
from .errors import BackendError, CacheDirError, EinlocalError, MemoryBudgetError, ShapeError, SpecError
from .op import Op
from .registry import available as _available, unavailable as _unavailable

__version__ = "0.1.0"

__all__ = [
    "locally_connected2d", "locally_connected1d", "depthwise_conv2d", "conv2d", "Op", "vjp",
    "backends", "unavailable_backends", "check", "choose", "benchmark", "compare", "table", "memory_budget", "set_memory_budget",
    "ShapeError", "SpecError", "BackendError", "MemoryBudgetError", "CacheDirError", "EinlocalError",
]


def backends(op=None, *, like=None, **params) -> list[str]:
    """Every available backend name; with ``op`` and ``like`` (an array, or
    a dict of the op's arrays, with the op's ``params``), those that can run
    that op on such arrays."""
    from .backends_query import backends_for
    return backends_for(op, like, params)


def benchmark(op, **kw) -> list[dict]:
    """Time, check and measure backends on one op and shape (see `einlocal.bench.benchmark`)."""
    from .bench import benchmark as _benchmark
    return _benchmark(op, **kw)


def compare(workloads=None, *, quick: bool = False, out="results", **kw) -> list[dict]:
    """Run workloads through the check-then-time harness, as ``einlocal
    compare`` does; returns the records (and writes tables and figures to
    `out`, None: nothing).

    `workloads`: None (the report workloads), their ids, a workload file's
    path, or workload tables as in a file (dicts: ``{"id": ..., "op": ...,
    "shapes": {...}, "sweep": {...}}``, see docs/workloads.md).  Other
    keywords are `einlocal.compare.compare`'s (``backends=``, ``peers=``,
    ``save=``, ...)."""
    import os

    from .workload_file import parse
    _compare = _compare_module.compare
    if isinstance(workloads, (str, os.PathLike)):
        return _compare(None, workloads_file=workloads, quick=quick, outdir=out, **kw)[0]
    if workloads and all(isinstance(w, dict) for w in workloads):
        workloads = parse({"workload": list(workloads)}, "el.compare(workloads=...)")
    return _compare(workloads, quick=quick, outdir=out, **kw)[0]


def table(records, *, title=None) -> str:
    """Markdown tables of benchmark records, or of a results/pytest-benchmark JSON file path."""
    load_records, markdown = _table_module.load_records, _table_module.markdown
    if isinstance(records, (str, bytes)) or hasattr(records, "__fspath__"):
        records = load_records(records)
    return markdown(list(records), title=title)


def unavailable_backends() -> dict[str, str]:
    """Backend name -> why it cannot run here (library missing, no device, ...)."""
    return _unavailable()
