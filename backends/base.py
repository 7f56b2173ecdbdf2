"""What a backend is: a strategy bound to an array library, able to run one
bound statement (forward and backward statements alike)."""
from __future__ import annotations

import functools
import importlib.util

from .lowering import execute, intermediates, largest_intermediate
from .namespaces import namespace

__all__ = ["Backend", "ArrayBackend", "missing_modules", "add_bias"]


def missing_modules(*mods) -> str | None:
    """The reason a backend is unavailable, or None: checks that modules are
    installed without importing them."""
    for m in mods:
        if importlib.util.find_spec(m) is None:
            return f"{m} is not installed (pip install {m})"
    return None


class Backend:
    """Base class.  ``takes`` are the array libraries it accepts."""

    strategy = "?"
    engine = "?"
    takes: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    # whether execute() runs arbitrary statements (False: only catalogue ops)
    general = True
    # seconds a first call may spend compiling on a 2-core CPU (0: nothing
    # compiles); the benchmark allows a first call this much beyond its cap
    compile_s = 0.0
    # libraries besides the first it takes whose arrays it runs another way
    # (loops:numba inside XLA programs): einlocal compare times it on them too
    also_on: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.strategy}:{self.engine}"

    def unavailable(self) -> str | None:
        """Why this backend cannot run on this machine, or None."""
        return missing_modules(*self.requires)

    # the floating dtypes it computes in (None: every one its array library has)
    dtypes: tuple[str, ...] | None = None

    def cannot(self, plan, *, library: str, device: str, call=None) -> str | None:
        """Why it cannot run this plan on these arrays, or None."""
        if library not in self.takes:
            return f"{self.name} takes {' or '.join(self.takes)} arrays, not {library}"
        return None

    def cannot_device(self, device: str) -> str | None:
        """Why it cannot run on ``device``, or None."""
        return None

    def refuses(self, *, library: str, device: str, dtype: str | None = None, grad: str | None = None,
                plan=None, call=None) -> str | None:
        """Why it cannot run a call on such arrays, or None: the library, the
        device, the dtype, the grad mode and (given a plan) the plan itself,
        as far as each is known.  `auto`, ``el.backends`` and ``el.check``
        ask this one question."""
        if library not in self.takes:
            return f"{self.name} takes {' or '.join(self.takes)} arrays, not {library}"
        reason = namespace(library).cannot_device(device) or self.cannot_device(device)
        if reason:
            return reason
        if dtype is not None:
            reason = namespace(library).lacks(dtype)
            if reason:
                return reason
            if self.dtypes is not None and dtype not in self.dtypes:
                return f"{self.name} computes in {' or '.join(self.dtypes)}, not {dtype}"
        if grad is not None and grad not in self.grad_modes(library):
            return f"{self.name} has no grad={grad!r} for {library} arrays (it has {', '.join(self.grad_modes(library))})"
        if plan is not None:
            return self.cannot(plan, library=library, device=device, call=call)
        return None

    def runner(self, call, library: str):
        """A callable ``run(arrays) -> y`` doing this backend's forward pass of
        ``call`` on the public arrays (a dict by argument name) with nothing
        checked, for repeated calls (`einlocal.fast`); None: the generic one
        (`einlocal.run.forward_runner`)."""
        return None

    def out_runner(self, call, library: str):
        """``runner`` for repeats with ``out=``: ``run(arrays, out) -> out``,
        given an ``out`` that the library's quick check passed
        (`Namespace.out_ok`); it returns None where it cannot run these
        arrays, and the checked path runs them.  None: that path always."""
        return None

    def own_autodiff(self, library: str) -> bool:
        """Whether this backend's gradient is the library's autodiff of its own
        forward calls (a native conv): then a forward call is recorded by the
        library as it is, with nothing of einlocal's around it."""
        return False

    def grad_modes(self, library: str) -> tuple[str, ...]:
        return ("vjp", "autodiff") if namespace(library).autodiff else ("vjp",)

    def workspace(self, plan) -> tuple[int, str]:
        """(elements, description) of the largest intermediate."""
        return largest_intermediate(plan, 0, "none")

    def preload(self) -> None:
        """Start what this backend's first call would start (its compiler), so
        that a timed first call pays for its own work alone."""

    def allocations(self, plan) -> list:
        """[(elements, description)] of every intermediate it allocates
        running ``plan`` (the result aside): what the memory guard adds up.
        By default its largest (`workspace`); a lowering of several overrides."""
        w = self.workspace(plan)
        return [w] if w[0] else []

    def execute(self, plan, operands: dict, out=None):
        """Run one bound statement; ``out`` (if given) is overwritten."""
        raise NotImplementedError

    def forward(self, call, operands: dict, out=None, bias=None):
        """The op's forward statement, plus ``bias`` (shaped to broadcast
        against the statement's output) when given.  Natives override this,
        and backends that start their sums from the bias."""
        return add_bias(self.execute(call.plan, operands, out), bias)

    def vjp(self, call, dy, operands: dict, wrt, outs: dict) -> dict:
        """Gradients of the operands in ``wrt``: each derived backward
        statement run by this same backend."""
        grads = {}
        for name in wrt:
            plan = call.plan.backward[name]
            ops = {plan.stmt.operands[0].name: dy}
            ops.update({a.name: operands[a.name] for a in plan.stmt.operands[1:]})
            grads[name] = self.execute(plan, ops, outs.get(name))
        return grads

    def vjp_and_bias(self, call, dy, operands: dict, wrt, outs: dict, bias_shape, bias_out=None) -> tuple | None:
        """(`vjp`'s gradients, ``dy`` summed to ``bias_shape``: the bias's
        gradient) with fewer passes over ``dy`` than running them apart, or
        None where this backend has no such way (``dy`` is then summed on
        its own).  ``bias_out``: the caller's array for the bias's gradient,
        viewed as ``bias_shape``, or None; a backend that writes the sum
        into it returns that same object, and the caller copies nothing."""
        return None

    def __repr__(self) -> str:
        return f"<backend {self.name}>"


class ArrayBackend(Backend):
    """A strategy written once over an array namespace (numpy, torch, jax,
    cupy).  Subclasses define ``strategy`` and ``contract``."""

    def __init__(self, engine: str):
        self.engine = engine
        self.takes = (engine,)
        self.compile_s = namespace(engine).compile_s    # a functional library's lowerings are jitted per plan
        self.requires = namespace(engine).requires

    def unavailable(self) -> str | None:
        return namespace(self.engine).unavailable()

    @property
    def xp(self):
        return namespace(self.engine)

    def contract(self, xp, views, out_names, ranges, out=None):
        raise NotImplementedError

    def contraction_elements(self, plan) -> tuple[int, str]:
        return 0, "none"

    def layouts(self, plan) -> dict:
        """Operand -> the memory order of its axes this strategy's copies
        read fastest (only where worth a copy of the operand)."""
        return {}

    def workspace(self, plan) -> tuple[int, str]:
        return _workspace(self, plan)

    def allocations(self, plan) -> list:
        return [c for c in intermediates(plan, *self.contraction_elements(plan)) if c[0]]

    def execute(self, plan, operands: dict, out=None):
        if self.xp.functional:
            return _jitted(self, plan)(operands)
        return execute(self, self.xp, plan, operands, out)


def add_bias(y, bias):
    """``y + bias``: in place where the library allows."""
    if bias is None:
        return y
    from .namespaces import library_of
    xp = namespace(library_of(y))
    if xp.functional:
        return y + bias
    y += bias
    return y


@functools.lru_cache(maxsize=4096)
def _workspace(backend, plan):
    return largest_intermediate(plan, *backend.contraction_elements(plan))


_JIT_CACHE: dict = {}


def _jitted(backend, plan):
    """A functional library's lowerings are traced once per (backend, plan) and cached."""
    key = (backend.name, plan)
    fn = _JIT_CACHE.get(key)
    if fn is None:
        fn = backend.xp.jit(lambda ops: execute(backend, backend.xp, plan, ops, None))
        _JIT_CACHE[key] = fn
    return fn
