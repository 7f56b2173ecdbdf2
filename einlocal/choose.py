"""`el.choose`: measure the candidate backends for one call and cache the
fastest, for ``backend="auto"`` (`einlocal.auto`) to use."""
from __future__ import annotations

import os
import statistics
import time
from typing import Any

from . import registry
from .auto import candidates, choice_cache, choice_key, cost_model_choice, estimate_seconds  # noqa: F401
from .call import forward, vjp

__all__ = ["choose"]


def _bind(op, args: tuple, params: dict):
    """(call, arrays dict, its parameters, forward(name), vjp(name, dy)) for any op (its binding interface)."""
    if not hasattr(op, "bind_arrays"):
        raise TypeError(f"el.choose takes a catalogue op or an el.Op, got {op!r}")
    arrays, params = op.split(args, params)
    call = op.bind_arrays(arrays, params)

    def fwd(name):
        return forward(call, arrays, backend=name)

    def bwd(name, dy):
        return vjp(call, dy, arrays, backend=name)
    return call, arrays, params, fwd, bwd


def choose(op, *args, backends=None, passes=("forward",), budget_s: float = 0.1, cap_s: float = 5.0,
           refresh: bool = False, details: bool = False, rounds: int = 5, margin: float = 0.05, **params) -> Any:
    """The fastest backend for this op, shapes, dtype and device; measured once and cached.

        name = el.choose(el.depthwise_conv2d, x, weight, padding=1)

    Same arguments as the call. Without a cached entry (or with `refresh`),
    measures every candidate (`el.backends(op, like=arrays)`, or `backends`)
    that the memory guard allows: `passes` ("forward", "backward",
    "forward+backward") summed, about `budget_s` timed seconds each, in
    `rounds` interleaved rounds (every candidate once per round, so a slow
    spell of the machine hits them all alike); a candidate's time is the
    lower quartile of its rounds' medians (noise only adds time), one over
    `cap_s` is dropped, and one over 3x the fastest after the first round is
    measured no further (its time goes to the close ones). A cached choice
    is replaced only by a challenger faster by more than `margin` (5%) and
    faster in at least 3 of 4 rounds.
    Caches the winner on disk (`cache_dir()/choices.json`, keyed by
    statement, shapes, dtype, device name and library versions, with the op,
    shapes, parameters and date for `einlocal cache list`); later
    ``backend="auto"`` calls with the same key use it. Returns the name, or
    with `details=True` the cache entry (backend, seconds per candidate,
    reasons candidates were dropped).
    """
    from .arrays import check_same_kind, is_tracer
    from .errors import BackendError
    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
        raise BackendError(f"el.choose: rounds must be an int >= 1, got {rounds!r}")
    if not isinstance(margin, (int, float)) or not 0 <= margin < 1:
        raise BackendError(f"el.choose: margin must be a number in [0, 1), got {margin!r}")
    call, arrays, params, fwd, bwd = _bind(op, args, dict(params))
    library, dtype, device = check_same_kind(arrays)
    if any(is_tracer(a) for a in arrays.values() if a is not None):
        raise BackendError("el.choose measures, so it cannot run inside a trace (jax.jit/grad/vmap); "
                           "call it once outside, and backend='auto' inside will use its choice")
    key = choice_key(call, library, dtype, device)
    cache = choice_cache()
    cached = cache.get(key)
    if cached and cached.get("backend") not in registry.available():
        cached = None
    if not refresh and cached and tuple(cached.get("passes", ())) == tuple(passes):
        return cached if details else cached["backend"]
    names = list(backends) if backends is not None else candidates(call, library, device)
    itemsize = next(a for a in arrays.values() if a is not None).dtype.itemsize
    seconds, per_round, dropped = _race(call, names, fwd, bwd, passes, itemsize, budget_s, cap_s, rounds)
    if not seconds:
        raise BackendError(f"el.choose: no candidate could run {call.kind} on {library} {dtype} arrays: "
                           + "; ".join(f"{k}: {v}" for k, v in dropped.items()))
    winner = min(seconds, key=seconds.get)
    entry = {"backend": winner, "seconds": seconds, "dropped": dropped, "passes": list(passes),
             "budget_s": budget_s, "rounds": rounds, "pid": os.getpid(), **_describe(op, call, arrays, params),
             "dtype": dtype, "library": library, "device": device,
             "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    incumbent = cached.get("backend") if cached else None
    if incumbent and incumbent != winner and incumbent in seconds and \
            not _significantly_faster(per_round[winner], per_round[incumbent], margin):
        entry["backend"] = incumbent
        entry["kept"] = (f"{incumbent} kept: {winner} measured {seconds[winner] / seconds[incumbent]:.3f}x its "
                         f"time, not faster by more than {margin:.0%} in 3 of 4 rounds")
    cache.put(key, entry)
    return entry if details else entry["backend"]


def _race(call, names, fwd, bwd, passes, itemsize, budget_s, cap_s, rounds):
    """Measure `names` in interleaved rounds: (median seconds per candidate, the
    seconds of each round per candidate, why candidates were dropped)."""
    from .budget import check_budget
    from .errors import EinlocalError, MemoryBudgetError
    from .timing import measure
    dropped: dict[str, str] = {}
    fns: dict[str, list] = {}
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
            y = fwd(name)
            fns[name] = [{"forward": lambda n=name: fwd(n), "backward": lambda n=name, y=y: bwd(n, y),
                          "forward+backward": lambda n=name, y=y: (fwd(n), bwd(n, y))}[p] for p in passes]
        except MemoryBudgetError as e:
            dropped[name] = f"memory guard: {e}"
        except (EinlocalError, RuntimeError, TypeError, ValueError) as e:
            dropped[name] = f"{type(e).__name__}: {e}"
    per_round: dict[str, list[float]] = {n: [] for n in fns}
    total = budget_s * len(fns)       # timed seconds for the whole race
    live = list(fns)
    for r in range(rounds):
        if r and (total <= 0 or len(live) < 2):
            break       # the budget is spent (calls slower than a round's share), or nothing to compare
        share = total / max(1, len(live) * (rounds - r))
        order = live[r % len(live):] + live[:r % len(live)] if live else []
        for name in order:
            try:
                t = 0.0
                for fn in fns[name]:
                    m = measure(fn, budget_s=share / len(fns[name]), cap_s=cap_s, warmup=0 if r else 1,
                                min_reps=1 if r else 3)
                    if m.capped:
                        raise TimeoutError(f"over the cap of {cap_s} s")
                    t += m.median_s
                    total -= sum(m.times)
                per_round[name].append(t)
            except (EinlocalError, TimeoutError, RuntimeError, TypeError, ValueError) as e:
                dropped[name] = f"{type(e).__name__}: {e}"
                del per_round[name]
                live.remove(name)
        if r == 0 and per_round:    # clear losers are measured no further
            best = min(v[0] for v in per_round.values())
            live = [n for n in live if per_round[n][0] <= 3 * best]
    seconds = {n: _quiet(v) for n, v in per_round.items()}
    return seconds, per_round, dropped


def _significantly_faster(challenger: list, incumbent: list, margin: float) -> bool:
    """The challenger's time (`_quiet`) is below (1 - margin) x the incumbent's, and
    it was faster in at least 3 of every 4 rounds both ran."""
    paired = list(zip(challenger, incumbent))
    if not paired:
        return False
    wins = sum(c < i for c, i in paired)
    return _quiet(challenger) < (1 - margin) * _quiet(incumbent) and 4 * wins >= 3 * len(paired)


def _quiet(times: list) -> float:
    """The lower quartile of a candidate's round times (the second fastest of 5): noise on
    a shared machine only adds time, so this is its time on a quiet one, yet one lucky
    round does not decide."""
    return statistics.quantiles(times, n=4, method="inclusive")[0] if len(times) > 1 else times[0]


def _describe(op, call, arrays: dict, params: dict) -> dict:
    """The op (`op.spec()`), its array shapes and parameters, JSON-able, for listing and tuning."""
    def plain(v):
        if isinstance(v, (tuple, list)):
            return [plain(e) for e in v]
        if isinstance(v, dict):
            return {str(k): plain(e) for k, e in v.items()}
        if hasattr(v, "item") and getattr(v, "ndim", None) == 0:   # a numpy or torch scalar
            return v.item()
        return v if isinstance(v, (str, int, float, bool)) or v is None else repr(v)
    return {"op": op.spec(), "shapes": [[k, [int(n) for n in a.shape]] for k, a in arrays.items() if a is not None],
            "params": plain(params)}
