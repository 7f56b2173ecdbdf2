"""The backend registry: names -> lazily imported backend modules, with the
reason a backend is unavailable.  Importing einlocal imports no framework;
a backend's module is imported the first time it is asked for."""
from __future__ import annotations

import functools
import importlib

from .backends.namespaces import LIBRARIES
from .errors import BackendError

__all__ = ["NAMES", "get", "available", "unavailable", "ENGINES", "ARRAY_STRATEGIES", "engine_of", "process_of"]

ARRAY_STRATEGIES = ("broadcast", "bmm", "einsum", "opt_einsum")

# backends that are not one array strategy on one library: name -> (module in einlocal.backends, engine)
_OTHERS: dict[str, tuple[str, str]] = {
    "loops:python": ("loops_python", "python"),
    "loops:numba": ("loops_numba", "numba"),
    "loops:triton": ("loops_triton", "triton"),
    "loops:cupy": ("loops_cupy", "cupy"),
    "native:torch": ("native_torch", "torch"),
    "native:jax": ("native_jax", "jax"),
}
_built: tuple = ((), {})


def _entries() -> dict[str, tuple[str, str]]:
    """name -> (module, engine): every array strategy on every registered
    library (`backends.namespaces.LIBRARIES`), then the others."""
    global _built
    libraries = tuple(LIBRARIES)
    if _built[0] != libraries:
        entries = {f"{s}:{lib}": (s, lib) for lib in libraries for s in ARRAY_STRATEGIES}
        entries.update(_OTHERS)
        _built = (libraries, entries)
        _load.cache_clear()
    return _built[1]


def __getattr__(name: str):
    """``NAMES`` and ``ENGINES`` follow the registered libraries."""
    if name == "NAMES":
        return tuple(_entries())
    if name == "ENGINES":
        return tuple(LIBRARIES)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def engine_of(name: str) -> str:
    """The engine of a registered backend name (its library, or numba, triton, ...)."""
    return _entries()[name][1]


# engines whose backends run in another engine's benchmark process: the arrays they take
_PROCESS = {"python": "numpy", "triton": "torch"}


def process_of(name: str) -> str:
    """The benchmark process a backend runs in: its engine's (numba has its
    own), or the library of the arrays it takes."""
    engine = engine_of(name)
    return _PROCESS.get(engine, engine)


@functools.lru_cache(maxsize=None)
def _load(name: str):
    """The backend object, or the reason it cannot be built (a str)."""
    module, engine = _entries()[name]
    try:
        mod = importlib.import_module(f"einlocal.backends.{module}")
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("einlocal.backends"):
            return f"{name} is not part of this build"
        return f"{e.name} is not installed"
    backend = mod.make(engine)
    reason = backend.unavailable()
    return reason if reason else backend


def unavailable() -> dict[str, str]:
    """Every registered backend that cannot run here -> the reason."""
    out = {}
    for name in _entries():
        b = _load(name)
        if isinstance(b, str):
            out[name] = b
    return out


def available() -> tuple[str, ...]:
    return tuple(n for n in _entries() if not isinstance(_load(n), str))


def generator(name: str):
    """The backend called ``name`` for reading the code it generates
    (``.source(plan, dtype=...)``), also where it cannot run here (CUDA C
    without a device); BackendError if its library is missing or it
    generates no code."""
    if name not in _entries():
        raise BackendError(f"unknown backend {name!r}; valid names: {', '.join(_entries())}")
    b = _load(name)
    if isinstance(b, str):
        module, engine = _entries()[name]
        try:
            b = importlib.import_module(f"einlocal.backends.{module}").make(engine)
        except ModuleNotFoundError as e:
            raise BackendError(f"backend {name!r} is unavailable: {e.name} is not installed") from None
    if not hasattr(b, "source"):
        raise BackendError(f"backend {name!r} generates no code; these do: "
                           f"{', '.join(n for n in _entries() if n.startswith('loops:') and n != 'loops:python')}")
    return b


def get(name: str):
    """The backend called ``name``; BackendError if unknown or unavailable."""
    if name not in _entries():
        raise BackendError(f"unknown backend {name!r}; valid names: {', '.join(_entries())}")
    b = _load(name)
    if isinstance(b, str):
        raise BackendError(f"backend {name!r} is unavailable: {b}")
    return b
