"""Reused scratch buffers: a lowering's intermediates (im2col patches, matmul
operands) live in buffers kept between calls, so a steady-state call pays no
allocation and no page faults.  Per thread, bounded, least recently used out
first."""
from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict

__all__ = ["scratch", "clear", "LIMIT_BYTES"]

# at most this many bytes of scratch per thread (EINLOCAL_SCRATCH_BYTES)
LIMIT_BYTES = int(float(os.environ.get("EINLOCAL_SCRATCH_BYTES", 512 * 2**20)))
_local = threading.local()


def _buffers() -> OrderedDict:
    if not hasattr(_local, "buffers"):
        _local.buffers = OrderedDict()
    return _local.buffers


def scratch(xp, key, shape, like):
    """An uninitialised buffer of ``shape`` with ``like``'s dtype and device,
    the same one for the same key while it stays in the cache."""
    shape = tuple(shape)
    nbytes = math.prod(shape) * like.dtype.itemsize
    if xp.functional or nbytes > LIMIT_BYTES:
        return xp.empty(shape, like)
    bufs = _buffers()
    full_key = (key, shape, str(like.dtype), str(getattr(like, "device", "cpu")))
    buf = bufs.get(full_key)
    if buf is None:
        buf = xp.empty(shape, like)
        bufs[full_key] = buf
        total = sum(math.prod(b.shape) * b.dtype.itemsize for b in bufs.values())
        while total > LIMIT_BYTES and len(bufs) > 1:
            _, old = bufs.popitem(last=False)
            total -= math.prod(old.shape) * old.dtype.itemsize
    else:
        bufs.move_to_end(full_key)
    return buf


def clear() -> None:
    """Drop every scratch buffer of this thread."""
    _buffers().clear()
