"""Ragged sets (report 4): apply a layer to sets of different sizes and
aggregate per set.

    import einlocal as el, einlocal.ragged as ragged
    layer = lambda x: el.conv2d(x, weight)          # any function of a batch
    z = ragged.apply(layer, sets, reduce="mean")    # sets: [(n_i, 1, 16, 16), ...]
    # z: (m, 4, 12, 12), z[i] = layer(sets[i]).mean(0)

Strategies:

- ``"per_item"``: one layer call per set, then the set's reduction (report 4's
  broadcast over a vector of arrays).
- ``"packed"``: consecutive whole sets are concatenated into chunks of about
  ``chunk`` items, the layer runs once per chunk, and the chunk's output is
  reduced per set with the library's own segment ops (torch ``index_add_`` /
  ``segment_reduce``, ``jax.ops.segment_sum`` / ``segment_max``, numpy
  ``np.add.reduceat`` / ``np.maximum.reduceat``).  Chunks keep the layer's
  intermediates small: one call over every item of report 4 builds a 356 MiB
  intermediate and is slower than the loop, while chunks of ~1000 items are
  several times faster than that one call.

Both are differentiable (torch autograd, ``jax.grad``) and take numpy, torch
or jax arrays.  The layer must treat the items of a batch independently (no
batch statistics), since packing changes which items share a call.

``workload(n_sets=1000, n_range=(20, 40), seed=0, library="torch")`` builds
report 4's benchmark (workload W4): a ``RaggedWorkload`` with ``sets``,
``weight`` (4, 1, 5, 5), ``layer`` (conv2d 5x5, 1 -> 4 on (n_i, 1, 16, 16)
images; by default on the library's own conv, ``native:torch``/``native:jax``,
as report 4's loop), and ``calls``: {(strategy, pass): callable()} for strategy in
``STRATEGIES`` and pass in ``"forward"``, ``"forward+backward"`` (the latter
for torch and jax: the gradient of the summed per-set means with respect to
the weight).  Every call returns a fresh result.  ``n_range=(1, 1)`` is
report 4's n_i = 1 case.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .arrays import library_of
from .errors import ShapeError

__all__ = ["apply", "chunks", "STRATEGIES", "REDUCTIONS", "workload", "RaggedWorkload"]

STRATEGIES = ("per_item", "packed")
REDUCTIONS = ("mean", "sum", "max")


def apply(layer: Callable, sets, *, reduce: str = "mean", strategy: str = "packed", chunk: int = 1000):
    """``layer`` applied to every set, reduced over each set's items.

    sets: a list of m arrays (n_i, ...) of one library, n_i >= 1, the same
    trailing shape; layer: batch (n, ...) -> (n, *feature).  Returns
    (m, *feature): row i is ``reduce`` over ``layer(sets[i])``'s first axis."""
    lib = _check(sets, reduce, strategy, chunk)
    ops = _OPS[lib]()
    if strategy == "per_item":
        return ops.stack([ops.reduce(layer(s), reduce) for s in sets])
    outs = []
    for lo, hi in chunks([int(s.shape[0]) for s in sets], chunk):
        group = sets[lo:hi]
        x = group[0] if len(group) == 1 else ops.concat(group)
        y = layer(x)
        outs.append(ops.segment(y, [int(s.shape[0]) for s in group], reduce))
    return outs[0] if len(outs) == 1 else ops.concat(outs)


def chunks(sizes, chunk: int) -> list[tuple[int, int]]:
    """Consecutive ranges [lo, hi) of whole sets, each of at most ``chunk``
    items (a set larger than ``chunk`` is a chunk of its own)."""
    out, lo, total = [], 0, 0
    for i, n in enumerate(sizes):
        if total and total + n > chunk:
            out.append((lo, i))
            lo, total = i, 0
        total += n
    out.append((lo, len(sizes)))
    return out


def _check(sets, reduce, strategy, chunk) -> str:
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive int (items per layer call), got {chunk!r}")
    if not isinstance(sets, (list, tuple)) or not sets:
        raise ShapeError(f"sets must be a non-empty list of arrays, got {type(sets).__name__} of length "
                         f"{len(sets) if hasattr(sets, '__len__') else '?'}")
    lib0, trail0 = library_of(sets[0]), None
    if lib0 not in _OPS:
        raise ShapeError(f"set 0 is a {type(sets[0]).__name__}, not a numpy, torch or jax array")
    for i, s in enumerate(sets):
        lib = library_of(s)
        if lib != lib0:
            raise ShapeError(f"set {i} is a {lib or type(s).__name__} array but set 0 is a {lib0} array")
        shape = tuple(s.shape)     # shapes are tuples in every library (torch.Size included)
        if len(shape) < 1 or shape[0] < 1:
            raise ShapeError(f"set {i} has shape {shape}: every set needs at least one item on axis 0")
        if trail0 is None:
            trail0 = shape[1:]
        elif shape[1:] != trail0:
            raise ShapeError(f"set {i} has items of shape {shape[1:]} but set 0 has items of shape {trail0}")
    return lib0


# -- per library: concatenate, stack, reduce one set, reduce segments ---------------

class _Torch:
    def __init__(self):
        import torch
        self.t = torch

    def concat(self, xs):
        return self.t.cat(list(xs), 0)

    def stack(self, xs):
        return self.t.stack(xs, 0)

    def reduce(self, y, how):
        return y.mean(0) if how == "mean" else y.sum(0) if how == "sum" else y.amax(0)

    def segment(self, y, lengths, how):
        t = self.t
        if how == "max":
            return t.segment_reduce(y, "max", lengths=t.tensor(lengths, device=y.device), axis=0)
        seg = t.repeat_interleave(t.arange(len(lengths), device=y.device), t.tensor(lengths, device=y.device))
        out = y.new_zeros((len(lengths),) + tuple(y.shape[1:])).index_add_(0, seg, y)
        if how == "mean":
            n = t.tensor(lengths, dtype=y.dtype, device=y.device)
            out = out / n.reshape((-1,) + (1,) * (y.ndim - 1))
        return out


class _Jax:
    def __init__(self):
        import jax
        import jax.numpy as jnp
        self.jax, self.jnp = jax, jnp

    def concat(self, xs):
        return self.jnp.concatenate(list(xs), 0)

    def stack(self, xs):
        return self.jnp.stack(xs, 0)

    def reduce(self, y, how):
        return y.mean(0) if how == "mean" else y.sum(0) if how == "sum" else y.max(0)

    def segment(self, y, lengths, how):
        import numpy as np
        seg = np.repeat(np.arange(len(lengths)), lengths)
        ops = self.jax.ops
        if how == "max":
            return ops.segment_max(y, seg, num_segments=len(lengths), indices_are_sorted=True)
        out = ops.segment_sum(y, seg, num_segments=len(lengths), indices_are_sorted=True)
        if how == "mean":
            out = out / self.jnp.asarray(lengths, y.dtype).reshape((-1,) + (1,) * (y.ndim - 1))
        return out


class _Numpy:
    def __init__(self):
        import numpy as np
        self.np = np

    def concat(self, xs):
        return self.np.concatenate(list(xs), 0)

    def stack(self, xs):
        return self.np.stack(xs, 0)

    def reduce(self, y, how):
        return y.mean(0) if how == "mean" else y.sum(0) if how == "sum" else y.max(0)

    def segment(self, y, lengths, how):
        np = self.np
        starts = np.concatenate([[0], np.cumsum(lengths[:-1])]).astype(np.intp)
        if how == "max":
            return np.maximum.reduceat(y, starts, axis=0)
        out = np.add.reduceat(y, starts, axis=0)
        if how == "mean":
            out /= np.asarray(lengths, out.dtype).reshape((-1,) + (1,) * (y.ndim - 1))
        return out


_OPS = {"torch": _Torch, "jax": _Jax, "numpy": _Numpy}


# -- report 4's workload (W4) --------------------------------------------------------

@dataclass
class RaggedWorkload:
    """Report 4's benchmark; see the module docstring."""

    sets: list
    weight: object
    layer: Callable
    library: str
    calls: dict = field(default_factory=dict)

    @property
    def items(self) -> int:
        return sum(int(s.shape[0]) for s in self.sets)


def workload(n_sets: int = 1000, n_range=(20, 40), seed: int = 0, library: str = "torch", *,
             reduce: str = "mean", chunk: int = 1000, backend: str | None = None,
             size: int = 16) -> RaggedWorkload:
    """m = ``n_sets`` sets of n_i in ``n_range`` (inclusive) float32 images
    (n_i, 1, size, size), a conv2d 5x5 1 -> 4 weight, the layer
    ``el.conv2d(x, weight, backend=backend)``, and its timed callables.
    ``backend`` None: the library's own conv (``native:torch``/``native:jax``,
    as report 4's loop calls it), ``"auto"`` for numpy."""
    import numpy as np

    from .catalogue import conv2d
    rng = np.random.default_rng(seed)
    lo, hi = n_range
    sizes = rng.integers(lo, hi + 1, n_sets)
    sets_np = [rng.standard_normal((int(n), 1, size, size)).astype(np.float32) for n in sizes]
    w_np = (rng.uniform(-1, 1, (4, 1, 5, 5)) / 5).astype(np.float32)
    if library == "torch":
        import torch
        sets = [torch.from_numpy(s) for s in sets_np]
        weight = torch.from_numpy(w_np)
    elif library == "jax":
        import jax.numpy as jnp
        sets = [jnp.asarray(s) for s in sets_np]
        weight = jnp.asarray(w_np)
    elif library == "numpy":
        sets, weight = sets_np, w_np
    else:
        raise ValueError(f"library must be 'torch', 'jax' or 'numpy', got {library!r}")
    if backend is None:
        backend = {"torch": "native:torch", "jax": "native:jax"}.get(library, "auto")

    def run(strategy, w):
        return apply(lambda x: conv2d(x, w, backend=backend), sets, reduce=reduce, strategy=strategy, chunk=chunk)

    wl = RaggedWorkload(sets, weight, lambda x: conv2d(x, weight, backend=backend), library)
    for strategy in STRATEGIES:
        wl.calls[(strategy, "forward")] = (lambda s=strategy: run(s, weight))
        if library == "torch":
            def fwd_bwd(s=strategy):
                w = weight.detach().requires_grad_(True)
                return torch.autograd.grad(run(s, w).sum(), w)[0]
            wl.calls[(strategy, "forward+backward")] = fwd_bwd
        elif library == "jax":
            import jax
            grad = jax.grad(lambda w, s: run(s, w).sum())
            wl.calls[(strategy, "forward+backward")] = (lambda s=strategy, g=grad: g(weight, s))
    return wl
