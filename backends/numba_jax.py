"""``loops:numba`` on CPU jax arrays: the compiled kernels called from inside
XLA programs, through jax's FFI.

One XLA FFI handler, a numba ``cfunc`` written against XLA's C API
(``xla/ffi/api/c_api.h``), serves every kernel.  Each bound statement lowers
to one ``custom_call`` (``jax.ffi.ffi_call``) whose operands are the
statement's operands and whose result is its output, all dense row-major
buffers that XLA owns; one attribute ``k = [address, tiles, parallel,
operands, lock]`` says which compiled code to run on their pointers:

- a tiled kernel (``numba_drive.Tiled``): the address of its tiles (a C
  callback), run for ``t`` in ``range(tiles)`` by a ``prange`` loop here;
- any other kernel (a numba dispatcher): the address of a C entry generated
  for it (``entry(p_out, p_a, p_b, t)``: the pointers viewed as C-ordered
  arrays of the statement's shapes), called once; the kernel's own
  ``prange`` runs it in parallel.

The call has no side effect (XLA may remove or merge it like any pure op):
it reads its operands and writes only its result.  Differentiation, ``vmap``
and ``jit`` come from the primitive every backend shares
(``autograd_jax.einlocal_p``): its rules bind the forward and the derived
backward statements, each of which runs here as one such call.

The target's name carries a token drawn once per process: an XLA program
holds kernel addresses that are valid only in the process that compiled it,
so a program from XLA's persistent cache, made by another process, never
matches one here (its key holds the name).  Every address handed out stays
valid for the life of the process (the compiled objects are kept here).
"""
from __future__ import annotations

import functools
import math
import secrets
import threading

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic
from numba.np.ufunc.parallel import _launch_threads

from .. import cachedir
from ..errors import BackendError
from .numba_drive import Tiled, _call

__all__ = ["run", "target_name"]

_I64P = ir.IntType(64).as_pointer()
_I32P = ir.IntType(32).as_pointer()


@intrinsic
def _load64(typingctx, addr):
    """The int64 at address ``addr``."""
    def codegen(context, builder, sig, args):
        return builder.load(builder.inttoptr(args[0], _I64P))
    return types.int64(types.int64), codegen


@intrinsic
def _load32(typingctx, addr):
    """The int32 at address ``addr`` (an enum of the C API)."""
    def codegen(context, builder, sig, args):
        return builder.sext(builder.load(builder.inttoptr(args[0], _I32P)), ir.IntType(64))
    return types.int64(types.int64), codegen


@intrinsic
def _store64(typingctx, addr, value):
    def codegen(context, builder, sig, args):
        builder.store(args[1], builder.inttoptr(args[0], _I64P))
        return context.get_dummy_value()
    return types.none(types.int64, types.int64), codegen


@intrinsic
def _store32(typingctx, addr, value):
    def codegen(context, builder, sig, args):
        builder.store(builder.trunc(args[1], ir.IntType(32)), builder.inttoptr(args[0], _I32P))
        return context.get_dummy_value()
    return types.none(types.int64, types.int64), codegen


# the handler, loaded from numba's file cache, links to the threading
# layer's symbols: start it first
_launch_threads()


@intrinsic
def _acquire(typingctx, addr):
    """Wait (yielding the core) until the int64 at ``addr`` goes from 0 to 1."""
    def codegen(context, builder, sig, args):
        ptr = builder.inttoptr(args[0], _I64P)
        zero, one = ir.Constant(ir.IntType(64), 0), ir.Constant(ir.IntType(64), 1)
        spin = builder.append_basic_block("spin")
        done = builder.append_basic_block("acquired")
        builder.branch(spin)
        builder.position_at_end(spin)
        got = builder.extract_value(builder.cmpxchg(ptr, zero, one, "acquire", "monotonic"), 1)
        wait = builder.append_basic_block("wait")
        builder.cbranch(got, done, wait)
        builder.position_at_end(wait)      # held: give the core to the threads running the kernel
        yield_ = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), []), "sched_yield")
        builder.call(yield_, [])
        builder.branch(spin)
        builder.position_at_end(done)
        return context.get_dummy_value()
    return types.none(types.int64), codegen


@intrinsic
def _release(typingctx, addr):
    def codegen(context, builder, sig, args):
        builder.store_atomic(ir.Constant(ir.IntType(64), 0), builder.inttoptr(args[0], _I64P), "release", 8)
        return context.get_dummy_value()
    return types.none(types.int64), codegen


@numba.njit(parallel=True, cache=True)
def _tiles_parallel(addr, ptrs, n):
    for t in numba.prange(n):
        _call(addr, ptrs, t)


@numba.njit(cache=True)
def _run(addr, ptrs, tiles, parallel):
    if parallel:
        _tiles_parallel(addr, ptrs, tiles)
    else:
        _call(addr, ptrs, 0)


# Offsets into XLA's C API structs (x86-64 / aarch64 LP64: size_t and
# pointers 8 bytes, enums 4): XLA_FFI_CallFrame
_EXT, _STAGE, _ARGS, _RETS, _ATTRS = 8, 32, 72, 112, 160   # args.args, rets.rets, attrs.attrs
_DATA = 24                        # XLA_FFI_Buffer.data
_ARRAY_DATA = 16                  # XLA_FFI_Array.data
_METADATA = 1                     # XLA_FFI_Extension_Metadata
_EXECUTE = 3                      # XLA_FFI_ExecutionStage_EXECUTE
_API_MAJOR, _API_MINOR = 0, 3     # the C API version this handler is written against


@numba.cfunc(types.int64(types.int64), cache=True)
def _handler(frame):
    """``XLA_FFI_Error* handler(XLA_FFI_CallFrame*)``: NULL is success."""
    ext = _load64(frame + _EXT)
    if ext != 0:
        if _load32(ext + 8) == _METADATA:     # XLA asks which API version the handler speaks
            meta = _load64(ext + 24)          # XLA_FFI_Metadata*
            _store64(meta + 8, 24)            # .api_version.struct_size
            _store64(meta + 16, 0)            # .api_version.extension_start
            _store32(meta + 24, _API_MAJOR)
            _store32(meta + 28, _API_MINOR)
            _store32(meta + 32, 0)            # .traits
        return 0
    if _load32(frame + _STAGE) != _EXECUTE:
        return 0
    args = _load64(frame + _ARGS)
    k = _load64(_load64(_load64(frame + _ATTRS)) + _ARRAY_DATA)   # attrs[0]: the i64 array k
    addr, tiles, parallel, nargs, lock = _load64(k), _load64(k + 8), _load64(k + 16), _load64(k + 24), _load64(k + 32)
    out = _load64(_load64(_load64(frame + _RETS)) + _DATA)
    a = _load64(_load64(args) + _DATA)
    b = _load64(_load64(args + 8) + _DATA) if nargs > 1 else 0
    c = _load64(_load64(args + 16) + _DATA) if nargs > 2 else 0
    # two calls may run at once (programs run from several threads, or
    # independent calls of one program); one kernel at a time, each on all
    # of numba's threads (the workqueue threading layer aborts on a
    # concurrent launch)
    _acquire(lock)
    if nargs == 1:
        _run(addr, (out, a), tiles, parallel)
    elif nargs == 2:
        _run(addr, (out, a, b), tiles, parallel)
    else:
        _run(addr, (out, a, b, c), tiles, parallel)
    _release(lock)
    return 0


_lock = threading.Lock()
_target: list = []
_KEEP: list = []                  # everything whose address an XLA program may hold
_LOCK = np.zeros(8, np.int64)     # the handler's lock (its first element), shared by every call
_ENTRIES: dict = {}               # (kernel module, shapes, dtype) or a kept Tiled's id -> (address, tiles, parallel)


def target_name() -> str:
    """The FFI target of this process, registered on first use."""
    with _lock:
        if not _target:
            import jax
            name = f"einlocal_numba_{secrets.token_hex(6)}"
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(_handler.address), platform="cpu")
            _KEEP.append(_handler)
            _target.append(name)
        return _target[0]


def _entry_source(module: str, shapes, dtype: str) -> str:
    ps = [f"p{k}" for k in range(len(shapes))]
    sig = f"void({', '.join(['voidptr'] * len(shapes))}, int64)"
    views = ", ".join(f"numba.carray({p}, {tuple(s)}, numba.{dtype})" for p, s in zip(ps, shapes))
    return (f"# generated by einlocal.backends.numba_jax: a C entry for the kernel of module {module}\n"
            f"import sys\n\nimport numba\n\nkernel = sys.modules[{module!r}].kernel\n\n\n"
            f"@numba.cfunc({sig!r}, cache=True)\ndef entry({', '.join(ps)}, t):\n    kernel({views})\n")


def _callable(backend, k, fn, plan, dtype: str) -> tuple[int, int, int]:
    """(address, tiles, parallel) of compiled code for one kernel."""
    if isinstance(fn, Tiled):
        hit = _ENTRIES.get(id(fn))
        if hit is None:
            _KEEP.append(fn)
            hit = _ENTRIES[id(fn)] = (fn._tiles().address, fn.count, 1)
        return hit
    _, key = backend.module_path(k.source)
    shapes = (plan.out_shape, *(plan.shape[a.name] for a in plan.stmt.operands))
    ek = (key, shapes, dtype)
    hit = _ENTRIES.get(ek)
    if hit is None:
        src = _entry_source(f"einlocal_numba_{key}", shapes, dtype)
        epath, ekey = backend.module_path(src)
        mod = cachedir.load_module(f"einlocal_numba_entry_{ekey}", cachedir.write_code(epath, src))
        _KEEP.append(mod.entry)
        hit = _ENTRIES[ek] = (mod.entry.address, 1, 0)
    return hit


def _c_strides(shape) -> tuple[int, ...]:
    return tuple(math.prod(shape[k + 1:]) for k in range(len(shape)))


def run(backend, plan, operands: dict, init=None):
    """The statement ``plan`` (already lowered) on jax arrays or tracers, as
    one XLA custom call; ``init`` (a bias, broadcast against the output) is
    added after it, where XLA fuses the sum."""
    import jax
    names = [a.name for a in plan.stmt.operands]
    if not 1 <= len(names) <= 3:
        raise BackendError(f"loops:numba on jax arrays runs statements of 1 to 3 operands; {plan} has {len(names)}")
    arrays = [operands[n] for n in names]
    dtype = np.dtype(arrays[0].dtype)
    if dtype.name not in ("float32", "float64"):
        raise BackendError(f"loops:numba computes in float32 or float64; operand {names[0]!r} has dtype {dtype.name}")
    for n, a in zip(names, arrays):
        if tuple(a.shape) != tuple(plan.shape[n]):
            raise BackendError(f"loops:numba: operand {n!r} has shape {tuple(a.shape)}, but the kernel is "
                               f"generated for {plan.shape[n]} ({plan})")
        if np.dtype(a.dtype) != dtype:
            raise BackendError(f"loops:numba: operand {n!r} has dtype {a.dtype}, {names[0]!r} {dtype.name}")
    fn, jitted = _prepared(backend, plan, dtype)
    traced = any(isinstance(a, jax.core.Tracer) for a in arrays)
    y = (fn if traced else jitted)(*arrays)      # concrete arrays: one dispatch of a compiled program
    if init is not None:
        y = y + init
    return y


_PREPARED: dict = {}              # (backend id, plan, dtype) -> (backend, the custom call, it jitted)


def _prepared(backend, plan, dtype):
    """The custom call running ``plan`` on C-ordered ``dtype`` operands, its
    kernel compiled (or loaded) first, as on numpy arrays; made once."""
    key = (id(backend), plan, dtype.name)
    hit = _PREPARED.get(key)
    if hit is None or hit[0] is not backend:
        import jax
        names = [a.name for a in plan.stmt.operands]
        strides = {n: _c_strides(plan.shape[n]) for n in names}
        k, fn = backend._compiled(plan, dtype.name, strides, _c_strides(plan.out_shape))
        dummies = [np.empty((0,) * len(s), dtype) for s in (plan.out_shape, *(plan.shape[n] for n in names))]
        backend._ensure_compiled(plan, k, fn, dummies)     # timed and counted as on numpy arrays
        addr, tiles, parallel = _callable(backend, k, fn, plan, dtype.name)
        call = jax.ffi.ffi_call(target_name(), jax.ShapeDtypeStruct(tuple(plan.out_shape), dtype))
        bound = functools.partial(call, k=np.array([addr, tiles, parallel, len(names), _LOCK.ctypes.data], np.int64))
        hit = _PREPARED[key] = (backend, bound, jax.jit(bound))
    return hit[1], hit[2]
