"""`el.choose`: measure the candidate backends for one call and cache the
fastest, for ``backend="auto"`` (`einlocal.auto`) to use."""
from __future__ import annotations

import os
from typing import Any

from . import registry
from .auto import candidates, choice_cache, choice_key, cost_model_choice, estimate_seconds  # noqa: F401
from .call import forward, vjp

__all__ = ["choose"]


def _bind(op, args: tuple, params: dict):
    """(call, arrays dict, forward(name), vjp(name, dy)) for any op (its binding interface)."""
    if not hasattr(op, "bind_arrays"):
        raise TypeError(f"el.choose takes a catalogue op or an el.Op, got {op!r}")
    arrays, params = op.split(args, params)
    call = op.bind_arrays(arrays, params)

    def fwd(name):
        return forward(call, arrays, backend=name)

    def bwd(name, dy):
        return vjp(call, dy, arrays, backend=name)
    return call, arrays, fwd, bwd


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
        n for n in candidates(call, library, device)]
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
