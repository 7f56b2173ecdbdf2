"""Backends: one module per strategy (and per generated-code engine); the
only code that knows an array library.

This package is also ``el.backends``: importing it as ``einlocal.backends``
replaces the attribute of that name on ``einlocal``, so the module itself is
callable and does what the function does (docs/backends.md: ``el.backends(op, like=x)``).
"""
import sys as _sys
import types as _types


class _CallableModule(_types.ModuleType):
    def __call__(self, op=None, *, like=None, **params):
        """Every available backend name; with ``op`` and ``like``, those that
        can run that op on such arrays (``like`` a dict of its arrays binds
        the op, with ``params`` such as ``groups=4``)."""
        from ..backends_query import backends_for
        return backends_for(op, like, params)


_sys.modules[__name__].__class__ = _CallableModule
