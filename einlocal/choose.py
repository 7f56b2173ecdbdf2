"""``backend="auto"``: the cached measured choice when there is one, else a
fixed rule that costs nothing to apply.  (Measured choice: el.choose.)"""
from __future__ import annotations

from . import registry

__all__ = ["auto_backend", "RULE"]

# The fixed rule, in order of preference per array library; the first that
# is available and can run the op wins.
RULE = {
    "numpy": ("bmm:numpy", "einsum:numpy"),
    "torch": ("bmm:torch", "einsum:torch"),
    "jax": ("einsum:jax", "bmm:jax"),
    "cupy": ("bmm:cupy", "einsum:cupy"),
}


def auto_backend(call, library: str, device: str) -> str:
    for name in RULE.get(library, ()):
        if name in registry.available():
            b = registry.get(name)
            if not b.cannot(call.plan, library=library, device=device, call=call):
                return name
    from .errors import BackendError
    raise BackendError(f"no backend can run {call.kind} on {library} arrays on {device}; "
                       f"available: {', '.join(registry.available())}")
