"""Choosing a backend: `el.choose` measures and caches the winner; ``backend="auto"`` looks it up,
else applies a cheap cost model (never a measurement)."""
from __future__ import annotations

import functools
import math
import os
from typing import Any

from . import registry
from .budget import memory_budget

__all__ = ["choose", "auto_backend", "choice_key", "estimate_seconds", "cost_model_choice", "choice_cache", "RULE"]

# The fixed fallback when the cost model has no candidate, in order of preference.
RULE = {
    "numpy": ("bmm:numpy", "einsum:numpy"),
    "torch": ("bmm:torch", "einsum:torch"),
    "jax": ("einsum:jax", "bmm:jax"),
    "cupy": ("bmm:cupy", "einsum:cupy"),
}

# Cost model: fraction of the machine's matmul rate a strategy reaches when the
# contraction is long (a short one scales it down, see `_efficiency`), and the
# fixed cost of one call (dispatch, a few small ops), in seconds.
_EFFICIENCY = {"bmm": 0.5, "opt_einsum": 0.5, "einsum": 0.4, "broadcast": 0.08, "native": 0.6,
               "loops": 0.15}
_EINSUM_NUMPY_EFFICIENCY = 0.03     # numpy's einsum without optimize: a C loop of products
_OVERHEAD = {"numpy": 15e-6, "torch": 30e-6, "jax": 60e-6, "cupy": 40e-6}
_THREADED_LAUNCH = 200e-6          # a parallel loop nest wakes its thread pool
_DEFAULT_BANDWIDTH = 15e9          # bytes/s when the machine's figures were never measured
_DEFAULT_RATE = 50e9               # flop/s


# -- the cache ---------------------------------------------------------------------------

_cache_state: dict = {}


def choice_cache():
    """The process's `ChoiceCache` for `cache_dir()/choices.json` (made once per path)."""
    from .choice_cache import ChoiceCache
    from .machine import cache_dir
    env = os.environ.get("EINLOCAL_CACHE_DIR")
    cache = _cache_state.get(env)
    if cache is not None:
        return cache
    path = cache_dir() / "choices.json"
    cache = _cache_state.get(path)
    if cache is None:
        cache = _cache_state[path] = ChoiceCache(path)
    _cache_state[env] = cache
    return cache


@functools.lru_cache(maxsize=None)
def _versions(library: str) -> tuple:
    from .machine import _version
    names = {"numpy", library, "opt_einsum", "numba"} - {"python"}
    if library == "jax":
        names.add("jaxlib")
    return tuple((n, _version(n)) for n in sorted(names))


@functools.lru_cache(maxsize=None)
def _device_name(library: str, device: str) -> str:
    if device.startswith("cuda"):
        try:
            if library == "cupy":
                import cupy
                return f"{device} " + cupy.cuda.runtime.getDeviceProperties(int(device.split(":")[1]))["name"].decode()
            import torch
            return f"{device} " + torch.cuda.get_device_name(torch.device(device))
        except Exception:  # noqa: BLE001 — a name is a label, not a requirement
            return device
    if device.startswith("gpu"):
        return device
    from .machine import _cpu_model
    return f"cpu {_cpu_model()}"


@functools.lru_cache(maxsize=4096)
def _plan_key(plan) -> tuple:
    return (str(plan.stmt), tuple(sorted((k, list(v)) for k, v in plan.shape.items())),
            list(plan.out_shape), bool(plan.pad))


def choice_key(call, library: str, dtype: str, device: str) -> tuple:
    """(statement, operand shapes, output shape, padding, dtype, library, device name, versions):
    the statement carries stride, padding and dilation in its index expressions."""
    from . import __version__
    return (*_plan_key(call.plan), dtype, library, _device_name(library, device),
            [list(v) for v in _versions(library)], __version__)


# -- auto -------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _key_string(call, library: str, dtype: str, device: str) -> str:
    from .choice_cache import key_string
    return key_string(choice_key(call, library, dtype, device))


def auto_backend(call, library: str, device: str, dtype: str | None = None) -> str:
    """The backend "auto" runs: the cached measured choice for this key, else the cost
    model's pick among the backends that take these arrays (never a measurement, so it is
    safe inside a trace or a backward pass)."""
    if dtype is not None:
        try:
            entry = choice_cache().get_string(_key_string(call, library, dtype, device))
        except (OSError, ValueError):
            entry = None
        if entry and entry.get("backend") in registry.available():
            b = registry.get(entry["backend"])
            if not b.cannot(call.plan, library=library, device=device, call=call):
                return entry["backend"]
    return _unmeasured_choice(call, library, device, dtype, memory_budget() >> 24)


@functools.lru_cache(maxsize=4096)
def _unmeasured_choice(call, library: str, device: str, dtype, budget_16mib: int) -> str:
    """Auto without a measurement, once per call key (and memory budget, in
    16 MiB steps): the array strategies only (written once, checked on every
    library); natives and generated loops are picked by a measured el.choose."""
    names = _candidates(call, library, device, array_strategies_only=True)
    name = cost_model_choice(call, library, device, itemsize=_itemsize(dtype), names=names)
    if name is not None:
        return name
    for name in RULE.get(library, ()):
        if name in registry.available():
            b = registry.get(name)
            if not b.cannot(call.plan, library=library, device=device, call=call):
                return name
    from .errors import BackendError
    raise BackendError(f"no backend can run {call.kind} on {library} arrays on {device}; "
                       f"available: {', '.join(registry.available())}")


def _itemsize(dtype: str | None) -> int:
    return {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}.get(dtype or "float32", 4)


def _candidates(call, library: str, device: str, *, array_strategies_only: bool = False) -> list[str]:
    out = []
    for name in registry.available():
        if name == "loops:python":
            continue
        b = registry.get(name)
        if array_strategies_only and b.strategy not in registry.ARRAY_STRATEGIES:
            continue
        if library in b.takes and not b.cannot(call.plan, library=library, device=device, call=call):
            out.append(name)
    return out


@functools.lru_cache(maxsize=1)
def _machine_rates() -> tuple[float, float]:
    """(bandwidth, rate) from the machine cache when measured before, else defaults; never measures."""
    import json

    from .machine import _cache_path, _machine_key
    try:
        entry = json.loads(_cache_path().read_text()).get(_machine_key(), {})
    except (OSError, ValueError, AttributeError):
        entry = {}

    def largest(prefix: str, default: float) -> float:
        """The measurement of the largest size (the DRAM copy, not the cache-resident one)."""
        sized = [(int(k.partition(":")[2] or 0), v) for k, v in entry.items()
                 if k.startswith(prefix) and isinstance(v, (int, float)) and k.partition(":")[2].isdigit()]
        return float(max(sized)[1]) if sized else default
    return largest("copy_bandwidth", _DEFAULT_BANDWIDTH), largest("matmul_rate", _DEFAULT_RATE)


def _efficiency(backend, library: str, plan) -> float:
    strategy = backend.strategy
    if strategy == "einsum" and library == "numpy":
        return _EINSUM_NUMPY_EFFICIENCY
    eff = _EFFICIENCY.get(strategy, 0.1)
    if strategy in ("bmm", "opt_einsum", "einsum", "native"):
        inner = math.prod(plan.range[n] for n in plan.stmt.summed) if plan.stmt.summed else 1
        eff *= min(1.0, inner / 64)   # a short contraction leaves the GEMM memory-bound
    return eff


def estimate_seconds(call, backend_name: str, library: str, itemsize: int = 4) -> float:
    """The cost model: call overhead + flops at the strategy's share of the matmul rate
    + bytes moved (inputs and output once, the largest intermediate written and read)
    at the copy bandwidth."""
    b = registry.get(backend_name)
    plan = call.plan
    bandwidth, rate = _machine_rates()
    elements, _ = b.workspace(plan)
    moved = call.min_bytes(itemsize) + 2 * elements * itemsize
    compute = call.flops() / (rate * max(_efficiency(b, library, plan), 1e-6))
    overhead = _OVERHEAD.get(library, 30e-6) + (_THREADED_LAUNCH if b.strategy == "loops" else 0.0)
    return overhead + compute + moved / bandwidth


def cost_model_choice(call, library: str, device: str, itemsize: int = 4, names=None) -> str | None:
    """The candidate (of `names`, default all that can run it) with the smallest
    `estimate_seconds` within the memory budget, or None."""
    from .budget import memory_budget
    budget = memory_budget()
    best = None
    for name in (names if names is not None else _candidates(call, library, device)):
        b = registry.get(name)
        if b.workspace(call.plan)[0] * itemsize > budget:
            continue
        t = estimate_seconds(call, name, library, itemsize)
        if best is None or t < best[0]:
            best = (t, name)
    return None if best is None else best[1]


# -- el.choose ------------------------------------------------------------------------------


def _bind(op, args: tuple, params: dict):
    """(call, arrays dict, forward(name), vjp(name, dy), op params) for a catalogue op or el.Op."""
    from .catalogue import CatalogueOp
    from .op import Op
    if isinstance(op, CatalogueOp):
        names = ("x", "weight", "bias")
        arrays = dict(zip(names, args))
        for n in names:
            if n in params:
                arrays[n] = params.pop(n)
        call = op.bind(arrays["x"], arrays["weight"], arrays.get("bias"), **params)

        def fwd(name):
            return op(arrays["x"], arrays["weight"], arrays.get("bias"), backend=name, **params)

        def bwd(name, dy):
            return op.vjp(dy, arrays["x"], arrays["weight"], arrays.get("bias"), backend=name, **params)
        return call, arrays, fwd, bwd
    if isinstance(op, Op):
        if args:
            raise TypeError("el.choose(op, ...): pass an Op's arrays by name, e.g. el.choose(op, x=x, wt=wt)")
        arrays = {n: params.pop(n) for n in list(params) if n in op.inputs}
        sizes = params.pop("sizes", None)
        if params:
            raise TypeError(f"el.choose: unexpected keyword {sorted(params)[0]!r} for {op.statement}")
        call = op._call(arrays, sizes, None)

        def fwd(name):
            return op(**arrays, sizes=sizes, backend=name)

        def bwd(name, dy):
            return op.vjp(dy, **arrays, sizes=sizes, backend=name)
        return call, arrays, fwd, bwd
    raise TypeError(f"el.choose takes a catalogue op or an el.Op, got {op!r}")


def choose(op, *args, backends=None, passes=("forward",), budget_s: float = 0.1, cap_s: float = 5.0,
           refresh: bool = False, details: bool = False, **params) -> Any:
    """The fastest backend for this op, shapes, dtype and device; measured once and cached.

        name = el.choose(el.depthwise_conv2d, x, weight, padding=1)

    Same arguments as the call. Without a cached entry (or with `refresh`),
    measures every candidate (`el.backends(op, like=arrays)`, or `backends`)
    that the memory guard allows: `passes` ("forward", "backward",
    "forward+backward") summed, `budget_s` timed seconds each, a candidate
    over `cap_s` dropped. Caches the winner on disk (`cache_dir()/choices.json`,
    keyed by statement, shapes, dtype, device name and library versions);
    later ``backend="auto"`` calls with the same key use it. Returns the name,
    or with `details=True` the cache entry (backend, seconds per candidate,
    reasons candidates were dropped).
    """
    from .arrays import check_same_kind, is_tracer
    from .budget import check_budget
    from .errors import BackendError, EinlocalError, MemoryBudgetError
    from .timing import measure
    params = dict(params)
    call, arrays, fwd, bwd = _bind(op, args, params)
    library, dtype, device = check_same_kind(arrays)
    if any(is_tracer(a) for a in arrays.values() if a is not None):
        raise BackendError("el.choose measures, so it cannot run inside a trace (jax.jit/grad/vmap); "
                           "call it once outside, and backend='auto' inside will use its choice")
    key = choice_key(call, library, dtype, device)
    cache = choice_cache()
    if not refresh:
        entry = cache.get(key)
        if entry and entry.get("backend") in registry.available() and tuple(entry.get("passes", ())) == tuple(passes):
            return entry if details else entry["backend"]
    names = list(backends) if backends is not None else [
        n for n in _candidates(call, library, device)]
    itemsize = next(a for a in arrays.values() if a is not None).dtype.itemsize
    seconds: dict[str, float] = {}
    dropped: dict[str, str] = {}
    for name in names:
        if name == "loops:python":
            dropped[name] = "the float64 reference is never timed"
            continue
        try:
            b = registry.get(name)
            check_budget(b, call.plan, itemsize)
            if any(p != "forward" for p in passes):
                for _, op_name, _ in call.operands:
                    check_budget(b, call.plan.backward[op_name], itemsize)
            total = 0.0
            y = fwd(name)
            for pass_ in passes:
                fn = {"forward": lambda: fwd(name), "backward": lambda: bwd(name, y),
                      "forward+backward": lambda: (fwd(name), bwd(name, y))}[pass_]
                t = measure(fn, budget_s=budget_s, cap_s=cap_s)
                if t.capped:
                    raise TimeoutError(f"over the cap of {cap_s} s")
                total += t.median_s
            seconds[name] = total
        except MemoryBudgetError as e:
            dropped[name] = f"memory guard: {e}"
        except (EinlocalError, TimeoutError, RuntimeError, TypeError, ValueError) as e:
            dropped[name] = f"{type(e).__name__}: {e}"
    if not seconds:
        raise BackendError(f"el.choose: no candidate could run {call.kind} on {library} {dtype} arrays: "
                           + "; ".join(f"{k}: {v}" for k, v in dropped.items()))
    winner = min(seconds, key=seconds.get)
    entry = {"backend": winner, "seconds": seconds, "dropped": dropped, "passes": list(passes),
             "budget_s": budget_s, "pid": os.getpid()}
    cache.put(key, entry)
    return entry if details else winner
