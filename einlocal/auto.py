"""``backend="auto"``: the cached measured choice (`el.choose`) when there is
one, else a cheap cost model; never a measurement, so safe in any trace."""
from __future__ import annotations

import functools
import math
import os
from . import registry
from .backends.namespaces import namespace
from .budget import memory_budget
from .errors import BackendError

__all__ = ["auto_backend", "measured_choice", "state", "choice_key", "estimate_seconds", "cost_model_choice", "choice_cache", "candidates"]

# Cost model: fraction of the machine's matmul rate a strategy reaches when the
# contraction is long (a short one scales it down, see `_efficiency`), and the
# fixed cost of one call (dispatch, a few small ops), in seconds.
_EFFICIENCY = {"bmm": 0.5, "opt_einsum": 0.5, "einsum": 0.4, "broadcast": 0.08, "native": 0.6,
               "loops": 0.15}
_THREADED_LAUNCH = 200e-6          # a parallel loop nest wakes its thread pool
_DEFAULT_BANDWIDTH = 15e9          # bytes/s when the machine's figures were never measured
_DEFAULT_RATE = 50e9               # flop/s


# -- the cache ---------------------------------------------------------------------------

_cache_state: dict = {}


def choice_cache():
    """The process's `ChoiceCache` for `cache_dir()/choices.json` (made once per path)."""
    env = os.environ.get("EINLOCAL_CACHE_DIR")
    cache = _cache_state.get(env)
    if cache is not None:
        return cache
    from .choice_cache import ChoiceCache
    from .machine import cache_dir
    path = cache_dir() / "choices.json"
    cache = _cache_state.get(path)
    if cache is None:
        cache = _cache_state[path] = ChoiceCache(path)
    _cache_state[env] = cache
    return cache


@functools.lru_cache(maxsize=None)
def _versions(library: str) -> tuple:
    from .machine import _version
    names = {*namespace("numpy").packages, *namespace(library).packages, "opt_einsum", "numba"}
    return tuple((n, _version(n)) for n in sorted(names))


@functools.lru_cache(maxsize=None)
def _device_name(library: str, device: str) -> str:
    if device == "cpu":
        from .machine import _cpu_model
        return f"cpu {_cpu_model()}"
    return namespace(library).device_name(device)


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


_UNTUNED_ENV = ("EINLOCAL_RECORD_UNTUNED", "EINLOCAL_REQUIRE_TUNED")


@functools.lru_cache(maxsize=4096)
def _key_string(call, library: str, dtype: str, device: str) -> str:
    from .choice_cache import key_string
    return key_string(choice_key(call, library, dtype, device))


def auto_backend(call, library: str, device: str, dtype: str | None = None) -> str:
    """The backend "auto" runs: the cached measured choice for this key, else the cost
    model's pick among the backends that take these arrays (never a measurement, so it is
    safe inside a trace or a backward pass). A miss is appended to the file
    ``EINLOCAL_RECORD_UNTUNED`` names, and is a BackendError under ``EINLOCAL_REQUIRE_TUNED``
    (`einlocal.untuned`)."""
    if dtype is not None:
        measured = measured_choice(call, library, device, dtype)
        if measured is not None:
            return measured
        if any(name in os.environ for name in _UNTUNED_ENV):
            from .untuned import on_miss
            on_miss(call, library, _key_device(library, device), dtype)
    return _unmeasured_choice(call, library, device, dtype, memory_budget() >> 24)


def _key_device(library: str, device: str) -> str:
    # inside a trace (jax.jit) the arrays have no device yet: key by the one the call will run on
    return namespace(library).trace_device() if device == "traced" else device


def measured_choice(call, library: str, device: str, dtype: str) -> str | None:
    """The cached measured choice (`el.choose`) for this call where there is
    one that can run it, else None."""
    try:
        entry = choice_cache().get_string(_key_string(call, library, dtype, _key_device(library, device)))
    except (OSError, ValueError):
        return None
    if entry and entry.get("backend") in registry.available():
        b = registry.get(entry["backend"])
        if not b.cannot(call.plan, library=library, device=device, call=call):
            return entry["backend"]
    return None


def state(measured: bool) -> tuple:
    """What `auto_backend`'s answer for a call depends on besides the call:
    the choice cache in use and its file's signature; for a call with no
    measured choice also the memory budget (in 16 MiB steps) and the
    untuned-call switches.  A repeat in the same state gets the same backend
    (`einlocal.fast`)."""
    cache = choice_cache()
    if measured:
        return cache, cache.signature()
    return (cache, cache.signature(), memory_budget() >> 24, *(name in os.environ for name in _UNTUNED_ENV))


@functools.lru_cache(maxsize=4096)
def _unmeasured_choice(call, library: str, device: str, dtype, budget_16mib: int, grad: str | None = None) -> str:
    """Auto without a measurement, once per call key (and memory budget, in
    16 MiB steps): the array strategies only (written once, checked on every
    library) that can do what the call asks (its dtype, and grad mode where
    given); natives and generated loops are picked by a measured el.choose."""
    names = candidates(call, library, device, array_strategies_only=True, dtype=dtype, grad=grad)
    name = cost_model_choice(call, library, device, itemsize=_itemsize(dtype), names=names)
    if name is not None:
        return name
    for name in (*namespace(library).fallback, *names):
        if name in registry.available():
            b = registry.get(name)
            if not b.refuses(library=library, device=device, dtype=dtype, grad=grad, plan=call.plan, call=call):
                return name
    raise BackendError(f"no backend can run {call.kind} on {library} arrays on {device}"
                       f"{f' in {dtype}' if dtype else ''}{f' with grad={grad!r}' if grad else ''}; "
                       f"available: {', '.join(registry.available())}")


def _itemsize(dtype: str | None) -> int:
    return {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}.get(dtype or "float32", 4)


def candidates(call, library: str, device: str, *, array_strategies_only: bool = False, dtype: str | None = None,
               grad: str | None = None) -> list[str]:
    """The backends that can run ``call`` on such arrays (and in ``dtype``,
    with ``grad``, where given)."""
    out = []
    for name in registry.available():
        if name == "loops:python":
            continue
        b = registry.get(name)
        if array_strategies_only and b.strategy not in registry.ARRAY_STRATEGIES:
            continue
        if not b.refuses(library=library, device=device, dtype=dtype, grad=grad, plan=call.plan, call=call):
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
    eff = getattr(backend, "efficiency", None) or _EFFICIENCY.get(strategy, 0.1)
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
    overhead = namespace(library).call_overhead_s + (_THREADED_LAUNCH if b.strategy == "loops" else 0.0)
    return overhead + compute + moved / bandwidth


def cost_model_choice(call, library: str, device: str, itemsize: int = 4, names=None) -> str | None:
    """The candidate (of `names`, default all that can run it) with the smallest
    `estimate_seconds` within the memory budget, or None."""
    from .budget import memory_budget
    budget = memory_budget()
    best = None
    for name in (names if names is not None else candidates(call, library, device)):
        b = registry.get(name)
        if b.workspace(call.plan)[0] * itemsize > budget:
            continue
        t = estimate_seconds(call, name, library, itemsize)
        if best is None or t < best[0]:
            best = (t, name)
    return None if best is None else best[1]
