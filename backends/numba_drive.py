"""One parallel loop for every tiled numba kernel: it calls a kernel's tile
function, compiled alone as a C callback, through its address.

A ``prange`` loop that calls a jitted function links that function's IR into
its own module, and LLVM optimises and compiles it a second time there: half
of a tiled kernel's compile (W3a forward: 5.6 s, of which the tiles alone are
2.7 s).  Called through a pointer, the tiles compile once, and the loop,
compiled once per argument types and kept in numba's file cache, serves
every kernel::

    def tiles(p_y, p_x, p_wt, t_c):          # generated: pointers, then the tile index
        a_y = numba.carray(p_y, (288,), numba.float32)   # the array's extent, in elements
        ...
    kernel = Tiled(tiles, 8, "float32")      # 8 tiles: kernel(y, x, wt) runs them in parallel
"""
from __future__ import annotations

import numba
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["Tiled"]

_I8P = ir.IntType(8).as_pointer()


@intrinsic
def _call(typingctx, addr, ptrs, t):
    """Call ``void f(void*, ..., int64)`` at address ``addr`` with the
    pointers of the tuple ``ptrs`` and tile index ``t``."""
    if not isinstance(ptrs, types.UniTuple):
        return None
    count = ptrs.count

    def codegen(context, builder, sig, args):
        fnty = ir.FunctionType(ir.VoidType(), [_I8P] * count + [ir.IntType(64)])
        fn = builder.inttoptr(args[0], fnty.as_pointer())
        ps = [builder.inttoptr(p, _I8P) for p in cgutils.unpack_tuple(builder, args[1], count)]
        builder.call(fn, ps + [context.cast(builder, args[2], sig.args[2], types.int64)])
        return context.get_dummy_value()
    return types.none(addr, ptrs, t), codegen


@numba.njit(parallel=True, cache=True)
def _drive3(addr, a0, a1, a2, n):
    ptrs = (a0.ctypes.data, a1.ctypes.data, a2.ctypes.data)
    for t in numba.prange(n):
        _call(addr, ptrs, t)


@numba.njit(parallel=True, cache=True)
def _drive4(addr, a0, a1, a2, a3, n):
    ptrs = (a0.ctypes.data, a1.ctypes.data, a2.ctypes.data, a3.ctypes.data)
    for t in numba.prange(n):
        _call(addr, ptrs, t)


@numba.njit(parallel=True, cache=True)
def _drive5(addr, a0, a1, a2, a3, a4, n):
    ptrs = (a0.ctypes.data, a1.ctypes.data, a2.ctypes.data, a3.ctypes.data, a4.ctypes.data)
    for t in numba.prange(n):
        _call(addr, ptrs, t)


@numba.njit(parallel=True, cache=True)
def _drive6(addr, a0, a1, a2, a3, a4, a5, n):
    ptrs = (a0.ctypes.data, a1.ctypes.data, a2.ctypes.data, a3.ctypes.data, a4.ctypes.data, a5.ctypes.data)
    for t in numba.prange(n):
        _call(addr, ptrs, t)


_DRIVERS = {3: _drive3, 4: _drive4, 5: _drive5, 6: _drive6}


class _Stats:
    def __init__(self, owner):
        self._owner = owner

    @property
    def cache_hits(self) -> dict:
        cf = self._owner._cfunc
        return {"tiles": 0 if cf is None else cf.cache_hits}


class Tiled:
    """A kernel: ``tiles(p_0, ..., p_k, t)`` for t in range(count), in
    parallel, over arrays of ``dtype`` (the tiles address them from their
    first element, with strides baked in).  ``compile(sig)`` builds the tiles
    (or loads them from numba's file cache) and the loop for ``sig``; calling
    it compiles the tiles first if need be (``loops_numba`` compiles first,
    timing it).  ``stats.cache_hits`` as a dispatcher's."""

    def __init__(self, tiles, count: int, dtype: str):
        self.py_func, self.count, self.dtype = tiles, count, dtype
        self.arity = tiles.__code__.co_argcount - 1
        if self.arity not in _DRIVERS:
            raise ValueError(f"a tiled kernel takes {', '.join(map(str, _DRIVERS))} arrays, this one {self.arity}")
        self._cfunc = None
        self.stats = _Stats(self)

    def _tiles(self):
        if self._cfunc is None:
            from numba.core.ccallback import CFunc
            from numba.core import sigutils
            sig = sigutils.normalize_signature(f"void({', '.join(['voidptr'] * self.arity)}, int64)")
            cf = CFunc(self.py_func, sig, locals={}, options={"boundscheck": False})
            cf.enable_caching()
            cf.compile()
            self._cfunc = cf
        return self._cfunc

    def compile(self, sig) -> None:
        """Build for argument types ``sig``: the tiles read raw pointers, so
        arrays of another dtype are refused here, not misread."""
        if len(sig) != self.arity:
            raise TypeError(f"this kernel takes {self.arity} arrays, got {len(sig)}")
        wrong = [f"argument {k}: {t}" for k, t in enumerate(sig) if str(getattr(t, "dtype", None)) != self.dtype]
        if wrong:
            raise TypeError(f"this kernel is generated for {self.dtype} arrays; {', '.join(wrong)}")
        self._tiles()
        _DRIVERS[self.arity].compile((types.intp, *sig, types.intp))

    def __call__(self, *arrays) -> None:
        if len(arrays) != self.arity:
            raise TypeError(f"this kernel takes {self.arity} arrays, got {len(arrays)}")
        _DRIVERS[self.arity](self._tiles().address, *arrays, self.count)
