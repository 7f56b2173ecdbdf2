"""The error classes of einlocal's public contract (docs/errors.md)."""

__all__ = ["EinlocalError", "SpecError", "ShapeError", "ParameterError", "BackendError", "MemoryBudgetError", "CacheDirError"]


class EinlocalError(ValueError):
    """Base of every einlocal error; a ValueError, as docs/errors.md promises."""


class SpecError(EinlocalError):
    """A statement that does not parse, uses a reserved name, or repeats an
    index within one operand."""


class ShapeError(EinlocalError):
    """A shape, size, stride, padding, dilation or group count that does not
    fit; an out-of-bounds read without ``pad=0``; a missing range; mismatched
    dtypes or devices; a bad ``out=``."""


class ParameterError(ShapeError, TypeError):
    """An unknown keyword argument of an op: a ``ShapeError`` (and, as
    Python's own, a ``TypeError``) that lists the op's parameters."""


class BackendError(EinlocalError):
    """An unknown backend, or one that cannot take these arrays, this device,
    this op or this statement."""


class MemoryBudgetError(EinlocalError, MemoryError):
    """A lowering whose largest intermediate exceeds the memory budget."""


class CacheDirError(EinlocalError, PermissionError):
    """A cache folder that is not the user's own or that others can write to:
    einlocal writes and imports no generated code there; or a cache file it
    cannot write (a directory in its place, no permission)."""
