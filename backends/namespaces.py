"""The array libraries: one class per library owns everything einlocal knows
about it, and this registry finds the class for a name or an array."""
from __future__ import annotations

import contextlib
import functools
import importlib
import sys

from ..errors import BackendError

__all__ = ["namespace", "NUMPY_CALLS", "Namespace", "LIBRARIES", "library_of", "register_library",
           "loaded_libraries"]

# Every module-level call NumpyLike makes on its module; a test asserts cupy
# has them all, so the cupy lowerings are checked without a GPU.
NUMPY_CALLS = ("einsum", "matmul", "pad", "zeros", "empty", "flip", "broadcast_to",
               "ascontiguousarray", "multiply", "stack", "array", "lib", "reshape")

# library name -> "module:Class" (imported when first asked for; importing
# the class's module never imports the library itself).  Adding a library is
# one class and one line here (or `register_library`).
LIBRARIES: dict[str, str] = {
    "numpy": "einlocal.backends.lib_numpy:Numpy",
    "torch": "einlocal.backends.lib_torch:Torch",
    "jax": "einlocal.backends.lib_jax:Jax",
    "cupy": "einlocal.backends.lib_cupy:Cupy",
}


class Namespace:
    """An array library: the dozen array calls the strategies are written
    against, and everything else einlocal needs to know about it.
    Subclasses fill in the differences; nothing here imports the library
    until ``mod`` is first used."""

    name = "?"
    module = "?"             # what ``mod`` imports
    roots: tuple[str, ...] = ()   # top-level module names of its array types
    requires: tuple[str, ...] = ()   # modules that must be installed for its backends
    packages: tuple[str, ...] = ()   # distributions whose versions key a measured choice
    has_strided = True       # can view memory with arbitrary strides
    functional = False       # arrays are immutable (jax): slice-adds return new arrays, no out=
    einsum_loops = False     # its einsum is one loop of products (no copies, no matmul)
    fork_safe = True         # a process that loaded it may fork (jax's threads make a fork unsafe)
    opt_einsum_backend = None   # the name opt_einsum knows it by (default: its own name)
    autodiff = False         # has automatic differentiation (grad="autodiff")
    dtypes = ("float16", "float32", "float64")   # the floating dtypes it has
    call_overhead_s = 30e-6  # the cost model's fixed cost of one call
    compile_s = 0.0          # seconds an array lowering's first call may spend compiling
    fallback = ()            # backends auto falls back to when the cost model has none
    memory_methods: dict = {}   # device type -> how einlocal.memory measures a call's peak

    def __init__(self):
        if self.opt_einsum_backend is None:
            self.opt_einsum_backend = self.name

    # -- the module ----------------------------------------------------------------------
    @functools.cached_property
    def mod(self):
        return importlib.import_module(self.module)

    def loaded(self) -> bool:
        return self.module.split(".")[0] in sys.modules

    def unavailable(self) -> str | None:
        """Why this library's backends cannot run here, or None (imports nothing)."""
        import importlib.util
        for m in self.requires:
            if importlib.util.find_spec(m) is None:
                return f"{m} is not installed (pip install {m})"
        return None

    # -- its arrays ----------------------------------------------------------------------
    def owns(self, a) -> bool:
        """Whether ``a`` is an array of this library (never imports it)."""
        return False

    def device_of(self, a) -> str:
        return "cpu"

    def fast_key(self, a):
        """What a call's validity depends on in array ``a`` (its shape, dtype,
        device), as a hashable value; None where calls on it take no fast
        path (a value being traced)."""
        return None

    def cannot_device(self, device: str) -> str | None:
        """Why this library's arrays cannot be on ``device`` ("cpu", "cuda",
        "cuda:1", ...) here, or None: asked before the harness makes arrays
        on a device, so that none is made elsewhere than asked."""
        return None

    def device_name(self, device: str) -> str:
        """A label for a device other than the CPU, for keys and tables."""
        return device

    def trace_device(self) -> str:
        """The device a call inside a trace will run on (its tracers have none): the default one."""
        return "cpu"

    def gpu_name(self) -> str | None:
        """The GPU it sees, where it is loaded and sees one."""
        return None

    def requires_grad(self, a) -> bool:
        return False

    def is_tracer(self, a) -> bool:
        return False

    def overlaps(self, a, b) -> bool:
        """Whether two arrays may share memory."""
        return False

    def out_ok(self, out, inputs: dict) -> bool:
        """Quickly, for a repeat (`einlocal.fast`): whether ``out`` passes
        every check `einlocal.call` makes of an ``out=`` beyond its key
        (writable, no broadcast view, no gradient asked, no memory shared
        with an input).  False sends the call through those checks, which
        say what is wrong; the default: always."""
        return False

    def unwritable(self, a) -> str | None:
        """Why ``a`` cannot be written as an ``out=`` (read-only, or a
        broadcast view whose elements share memory), or None."""
        strides = getattr(self, "strides", None)
        if strides is not None and all(n for n in a.shape):      # an empty array has nothing to share
            for k, (n, st) in enumerate(zip(a.shape, strides(a))):
                if n > 1 and st == 0:
                    return f"has stride 0 on axis {k} (a broadcast view: its {n} elements there are one)"
        return None

    def sync(self, leaves) -> list:
        """Callables that wait for the device work behind these arrays."""
        return []

    def cuda_events(self, a) -> bool:
        """Whether work on ``a`` is timed with CUDA events (`einlocal.timing.CudaEventClock`)."""
        return False

    def full_precision(self):
        """A context in which float32 is computed as float32 (no TF32 on a
        GPU), for a check to judge it by float32's rounding; the default:
        the library has no such switch."""
        return contextlib.nullcontext()

    def named_precision(self):
        """A context in which calls another package makes into this library
        for einlocal (opt_einsum's tensordot and einsum) compute at the
        precision einlocal's own calls name; the default: its calls name none."""
        return contextlib.nullcontext()

    def from_numpy(self, a, device: str = "cpu"):
        """A new array of this library holding numpy array ``a`` (used by the
        harness to create inputs; never called on user data)."""
        raise NotImplementedError

    def from_numpy_as(self, a, dtype: str, device: str = "cpu"):
        """``from_numpy`` holding ``a``'s values in ``dtype`` (a dtype name this
        library has, numpy's or not: torch's and jax's bfloat16)."""
        return self.from_numpy(a.astype(dtype), device)

    def lacks(self, dtype: str) -> str | None:
        """Why arrays of ``dtype`` cannot be computed in here, or None."""
        return None if dtype in self.dtypes else f"{self.name} has no {dtype}"

    def to_numpy(self, a):
        return a

    def jit(self, fn):
        """``fn`` compiled for this library where it compiles traced programs."""
        return fn

    def permute(self, a, perm):
        perm = tuple(perm)
        return a if perm == tuple(range(len(perm))) else self.transpose(a, perm)

    # -- autodiff --------------------------------------------------------------------------
    def records(self, arrays: dict, grad: str) -> bool:
        """Whether a forward call on these arrays is recorded for the
        library's autodiff (`record`) rather than run plainly."""
        return False

    def record(self, call, backend, arrays: dict, grad: str):
        """The forward pass, recorded for the library's autodiff."""
        raise NotImplementedError

    def record_empty(self, call, backend, arrays: dict):
        """The forward pass of an empty batch (``call.empty``), recorded so
        that every gradient is zeros: by default the op recorded with its
        derived backward (which gives zeros for an empty batch)."""
        return self.record(call, backend, arrays, "vjp")

    def autodiff_vjp(self, call, backend, dy, arrays: dict, wrt) -> dict:
        raise BackendError(f"grad='autodiff' needs a library with automatic differentiation, not {self.name}")

    # -- the process ---------------------------------------------------------------------
    def threads(self) -> int | None:
        """Its own thread count where it keeps one (and is loaded)."""
        return None

    def set_threads(self, n: int):
        """Use ``n`` threads; returns what was set, or None where it keeps no
        thread count of its own (BLAS pools are threadpoolctl's)."""
        return None

    def preload(self) -> None:
        """Import it and start what its first use starts, so a timed first
        call pays for its own work alone."""
        self.mod

    def persistent_cache(self, folder) -> None:
        """Keep what it compiles in ``folder`` across processes, where it can."""

    def __repr__(self) -> str:
        return f"<array library {self.name}>"


@functools.lru_cache(maxsize=None)
def _library(name: str) -> Namespace:
    target = LIBRARIES[name]
    if not isinstance(target, str):
        return target()
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)()


def namespace(library: str) -> Namespace:
    """The library called ``library``; BackendError listing the valid names."""
    if library not in LIBRARIES:
        raise BackendError(f"unknown array library {library!r}; valid names: {', '.join(LIBRARIES)}")
    return _library(library)


_BY_TYPE: dict[type, str | None] = {}


def library_of(a) -> str | None:
    """The name of the library ``a`` is an array of, or None (imports nothing)."""
    t = type(a)
    try:
        return _BY_TYPE[t]
    except KeyError:
        pass
    root = (t.__module__ or "").split(".", 1)[0]
    names = tuple(reversed(tuple(LIBRARIES)))     # the last registered first: it may refine another's type
    # only a library whose arrays' types live in the type's top-level module is asked first: asking
    # another would touch its module, which another thread may be importing right now
    found = next((n for n in names if root in _library(n).roots and _library(n).owns(a)), None)
    if found is None:
        found = next((n for n in names if root not in _library(n).roots and _library(n).owns(a)), None)
    if found is not None:
        _BY_TYPE[t] = found
    return found


def loaded_libraries() -> list[Namespace]:
    """The libraries already imported in this process."""
    return [_library(n) for n in LIBRARIES if _library(n).loaded()]


def register_library(name: str, cls) -> None:
    """Add an array library (a `Namespace` subclass): the registry then
    offers every array strategy on it (`einlocal.registry`)."""
    LIBRARIES[name] = cls
    _library.cache_clear()
    _BY_TYPE.clear()
