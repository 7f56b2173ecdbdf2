"""Explicit SIMD vectors for numba kernels: a vector type and the few
intrinsics the register-tiled loop nests (``numba_tiles``) are written in.

numba's loop vectoriser widens only innermost loops and keeps accumulators in
memory, and its SLP vectoriser is off by default (it miscompiles); a tile of
accumulators held in registers across a reduction needs vectors spelled out:

    acc = vsplat(numba.float32(0), 8)            # <8 x float> in a register
    acc = vfma(vload(x, off, 8), vsplat(w, 8), acc)
    vstore(y, off2, acc)

Every load and store takes an array and an *element offset from its first
element*: the caller computes offsets from strides it knows (the generated
source bakes them in), so one base register plus constant displacements
address a whole tile.  Nothing is bounds-checked: the generator proves every
offset in range before it emits one.
"""
from __future__ import annotations

import os
import platform

import numba
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

__all__ = ["Vec", "vsplat", "vload", "vload_lanes", "vload_into", "vload_bits", "vstore", "vstore_lanes", "vstore_nt",
           "line_gap", "sfence", "sload", "sstore", "vfma", "vsum", "prefetch", "prefetchw", "LANES", "REGISTERS",
           "VECTOR_BITS", "NONTEMPORAL_STORES", "NONTEMPORAL_AWAY", "L2_BYTES"]


def _vector_bits() -> int:
    """The register width numba's target has: 512 bits with AVX-512F (32
    registers), else 256 (AVX2: 16; narrower targets split the vectors).
    ``EINLOCAL_VECTOR_BITS=256|512`` overrides; a ``NUMBA_CPU_NAME`` other
    than the host gets 256 unless ``NUMBA_CPU_FEATURES`` names avx512f."""
    env = os.environ.get("EINLOCAL_VECTOR_BITS")
    if env:
        if env not in ("256", "512"):
            raise ValueError(f"EINLOCAL_VECTOR_BITS must be 256 or 512, got {env!r}")
        return int(env)
    from numba.core import config
    if config.CPU_FEATURES:
        return 512 if "+avx512f" in config.CPU_FEATURES else 256
    if config.CPU_NAME not in (None, "host"):
        return 256
    import llvmlite.binding as llvm
    return 512 if llvm.get_host_cpu_features().get("avx512f") else 256


VECTOR_BITS = _vector_bits()


def _vendor(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's vendor id ("GenuineIntel", "AuthenticAMD"), or "" where unknown."""
    from ..machine import cpu_fields
    return cpu_fields(cpuinfo).get("vendor_id", "")


def _nontemporal_stores() -> tuple[bool, bool]:
    """Whether non-temporal stores serve outputs written once (`vstore_nt`):
    anywhere, and in a kernel that keeps its loads 512 bytes and more off
    the stores' page offset (`numba_fused`).  On Intel they save the
    read-for-ownership of every line, but on AMD (measured on Zen 3) a load
    whose address matches a non-temporal store still in flight in its low
    12 bits waits for it to reach memory: W1's forward took 1.1 to 24 ms by
    the arrays' addresses mod 4096 (numpy's large arrays all lie 16 bytes
    past a page: 8 ms), against 1.6 to 2.7 ms with plain stores; so there
    only the second.  ``EINLOCAL_NONTEMPORAL=0|1`` says none or both."""
    env = os.environ.get("EINLOCAL_NONTEMPORAL")
    if env:
        if env not in ("0", "1"):
            raise ValueError(f"EINLOCAL_NONTEMPORAL must be 0 or 1, got {env!r}")
        return env == "1", env == "1"
    return _vendor() != "AuthenticAMD", True


NONTEMPORAL_STORES, NONTEMPORAL_AWAY = _nontemporal_stores()


def _l2_bytes() -> int:
    """A core's L2 (`einlocal.machine.cache_bytes`), 512 KB where the system does not say."""
    from ..machine import cache_bytes
    return cache_bytes(2) or 512 * 2**10


L2_BYTES = _l2_bytes()

# lanes in one register, per dtype (the width the generator uses), and how many registers
LANES = {"float32": VECTOR_BITS // 32, "float64": VECTOR_BITS // 64}
REGISTERS = 32 if VECTOR_BITS == 512 else 16
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)


class Vec(types.Type):
    """``lanes`` values of ``dtype`` held as one LLVM vector."""

    def __init__(self, dtype, lanes: int):
        self.dtype, self.lanes = dtype, lanes
        super().__init__(name=f"Vec({dtype}x{lanes})")


@register_model(Vec)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.VectorType(dmm.lookup(fe_type.dtype).get_value_type(), fe_type.lanes))


def _lanes(lanes) -> int | None:
    return lanes.literal_value if isinstance(lanes, types.IntegerLiteral) else None


def _address(context, builder, arrty, arr, off, offty):
    """Pointer to element ``off`` counted from the array's first element."""
    data = context.make_array(arrty)(context, builder, arr).data
    return builder.gep(data, [context.cast(builder, off, offty, types.intp)])


def _vector_of(arr, lanes) -> Vec | None:
    """The vector type of ``lanes`` (a literal) elements of array ``arr``;
    None where the call does not type."""
    n = _lanes(lanes)
    return Vec(arr.dtype, n) if n is not None and isinstance(arr, types.Array) else None


def _int32(builder, v):
    w = v.type.width
    return builder.trunc(v, _I32) if w > 32 else builder.sext(v, _I32) if w < 32 else v


def _lane_window(builder, lanes: int, lo, hi):
    """<lanes x i1>: lane k is on when lo <= k < hi."""
    vty = ir.VectorType(_I32, lanes)
    iota = ir.Constant(vty, list(range(lanes)))

    def splat(x):
        v = builder.insert_element(ir.Constant(vty, ir.Undefined), _int32(builder, x), ir.Constant(_I32, 0))
        return builder.shuffle_vector(v, v, ir.Constant(vty, [0] * lanes))
    return builder.and_(builder.icmp_signed(">=", iota, splat(lo)), builder.icmp_signed("<", iota, splat(hi)))


def _suffix(vec: Vec) -> str:
    return f"v{vec.lanes}f{vec.dtype.bitwidth}"


def _align(dtype) -> int:
    return dtype.bitwidth // 8


@intrinsic
def vsplat(typingctx, x, lanes):
    """A vector with every lane ``x``."""
    n = _lanes(lanes)
    if n is None or not isinstance(x, types.Float):
        return None
    vt = Vec(x, n)

    def codegen(context, builder, sig, args):
        llvt = context.get_value_type(vt)
        v = builder.insert_element(ir.Constant(llvt, ir.Undefined), args[0], ir.Constant(_I32, 0))
        return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, n), [0] * n))
    return vt(x, lanes), codegen


@intrinsic
def vload(typingctx, arr, off, lanes):
    """``lanes`` consecutive elements starting at element offset ``off``."""
    vt = _vector_of(arr, lanes)
    if vt is None:
        return None

    def codegen(context, builder, sig, args):
        p = _address(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        llvt = context.get_value_type(vt)
        return builder.load(builder.bitcast(p, llvt.as_pointer()), align=_align(arr.dtype))
    return vt(arr, off, lanes), codegen


def _masked_load(builder, p, vec: Vec, llvt, mask, passthru):
    """``llvm.masked.load`` at ``p`` of the lanes on in ``mask``, the others from ``passthru``."""
    fnty = ir.FunctionType(llvt, [p.type, _I32, mask.type, llvt])
    fn = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.masked.load.{_suffix(vec)}.p0")
    return builder.call(fn, [p, ir.Constant(_I32, _align(vec.dtype)), mask, passthru])


@intrinsic
def vload_lanes(typingctx, arr, off, lanes, lo, hi):
    """Lanes ``lo <= k < hi`` loaded from element offset ``off`` (lane k at
    ``off + k``), the others zero: their memory is never touched, so a
    vector may hang over an array's edge (padding, a partial last vector)."""
    vt = _vector_of(arr, lanes)
    if vt is None:
        return None

    def codegen(context, builder, sig, args):
        p = _address(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        llvt = context.get_value_type(vt)
        return _masked_load(builder, p, vt, llvt, _lane_window(builder, vt.lanes, args[3], args[4]),
                            ir.Constant(llvt, None))
    return vt(arr, off, lanes, lo, hi), codegen


@intrinsic
def vload_into(typingctx, arr, off, lo, hi, prev):
    """``prev`` with lanes ``lo <= k < hi`` replaced by the elements at
    ``off + k`` (the others' memory is never touched): a vector gathered
    from pieces, one masked load each."""
    if not isinstance(prev, Vec) or not isinstance(arr, types.Array) or prev.dtype != arr.dtype:
        return None

    def codegen(context, builder, sig, args):
        p = _address(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        return _masked_load(builder, p, prev, args[4].type, _lane_window(builder, prev.lanes, args[2], args[3]),
                            args[4])
    return prev(arr, off, lo, hi, prev), codegen


@intrinsic
def vload_bits(typingctx, arr, off, lanes, bits):
    """The lanes k whose bit ``1 << k`` is set in the integer ``bits``,
    loaded from element offset ``off + k``, the others zero (their memory
    never touched): any set of lanes, in one masked load."""
    vt = _vector_of(arr, lanes)
    if vt is None or not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        p = _address(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        llvt = context.get_value_type(vt)
        mask = builder.bitcast(builder.trunc(args[3], ir.IntType(vt.lanes)), ir.VectorType(ir.IntType(1), vt.lanes))
        return _masked_load(builder, p, vt, llvt, mask, ir.Constant(llvt, None))
    return vt(arr, off, lanes, bits), codegen


@intrinsic
def vstore_lanes(typingctx, arr, off, v, lo, hi):
    """Write lanes ``lo <= k < hi`` of ``v`` to element offset ``off + k``;
    the other lanes' memory is never touched.  Every lane: a plain store;
    none: nothing (a masked store, vmaskmovps, is microcoded on AMD)."""
    if not isinstance(v, Vec) or not isinstance(arr, types.Array):
        return None
    n = v.lanes

    def codegen(context, builder, sig, args):
        p = _address(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        lo, hi = (context.cast(builder, a, t, types.int64) for a, t in zip(args[3:], sig.args[3:]))
        every = builder.and_(builder.icmp_signed("<=", lo, ir.Constant(lo.type, 0)),
                             builder.icmp_signed(">=", hi, ir.Constant(hi.type, n)))
        with builder.if_else(every) as (plain, partial):
            with plain:
                builder.store(args[2], builder.bitcast(p, args[2].type.as_pointer()), align=_align(arr.dtype))
            with partial:
                with builder.if_then(builder.icmp_signed("<", lo, hi)):
                    mask = _lane_window(builder, n, args[3], args[4])
                    fnty = ir.FunctionType(ir.VoidType(), [args[2].type, p.type, _I32, mask.type])
                    fn = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.masked.store.{_suffix(v)}.p0")
                    builder.call(fn, [args[2], p, ir.Constant(_I32, _align(arr.dtype)), mask])
        return context.get_dummy_value()
    return types.none(arr, off, v, lo, hi), codegen


@intrinsic
def vstore(typingctx, arr, off, v):
    """Write every lane of ``v`` from element offset ``off``."""
    if not isinstance(v, Vec) or not isinstance(arr, types.Array):
        return None

    def codegen(context, builder, sig, args):
        p = _address(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        builder.store(args[2], builder.bitcast(p, args[2].type.as_pointer()), align=_align(arr.dtype))
        return context.get_dummy_value()
    return types.none(arr, off, v), codegen


_X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")


@intrinsic
def vstore_nt(typingctx, arr, off, v):
    """``vstore`` with a non-temporal hint (x86): the line is written
    without being read first (no read-for-ownership) and bypasses the
    caches, for outputs written once and not read back soon.  At any
    alignment: where the address is a multiple of the vector's bytes, one
    vector store (``vmovntps``); elsewhere LLVM splits it into 8-byte
    ``movnti``, eight a 64-byte vector (W1's one-pass backward, dx 16 bytes
    past a line as numpy places it: 4.6-4.9 ms split, 3.6-3.8 with its
    stores started at a boundary, `line_gap`; 2-core AVX-512 Xeon, after a
    cache flush).  A kernel ends with ``sfence()``."""
    if not isinstance(v, Vec) or not isinstance(arr, types.Array):
        return None

    def codegen(context, builder, sig, args):
        p = _address(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        vp = builder.bitcast(p, args[2].type.as_pointer())
        if not _X86:
            builder.store(args[2], vp, align=_align(arr.dtype))
            return context.get_dummy_value()
        nt = builder.module.add_metadata([ir.Constant(_I32, 1)])
        width = v.lanes * _align(arr.dtype)
        low = builder.and_(builder.ptrtoint(p, _I64), ir.Constant(_I64, width - 1))
        with builder.if_else(builder.icmp_unsigned("==", low, ir.Constant(_I64, 0)), likely=True) as (whole, split):
            with whole:
                builder.store(args[2], vp, align=width).set_metadata("nontemporal", nt)
            with split:
                builder.store(args[2], vp, align=_align(arr.dtype)).set_metadata("nontemporal", nt)
        return context.get_dummy_value()
    return types.none(arr, off, v), codegen


@intrinsic
def line_gap(typingctx, arr, off, lanes):
    """Elements from element ``off`` of ``arr`` to the first at an address
    that is a multiple of ``lanes`` elements' bytes (0 to lanes - 1): a run
    of `vstore_nt` stores started that far in is whole vector stores."""
    n = _lanes(lanes)
    if n is None or not isinstance(arr, types.Array):
        return None

    def codegen(context, builder, sig, args):
        p = _address(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        item, width = _align(arr.dtype), n * _align(arr.dtype)
        gap = builder.and_(builder.neg(builder.ptrtoint(p, _I64)), ir.Constant(_I64, width - 1))
        return builder.udiv(gap, ir.Constant(_I64, item))
    return types.int64(arr, off, lanes), codegen


@intrinsic
def sfence(typingctx):
    """Order this thread's non-temporal stores before its later stores
    (x86 ``sfence``; nothing elsewhere)."""
    def codegen(context, builder, sig, args):
        if _X86:
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                "llvm.x86.sse.sfence")
            builder.call(fn, [])
        return context.get_dummy_value()
    return types.none(), codegen


def _prefetch(arr, rw: int):
    """``llvm.prefetch`` (all levels) of the line holding element ``off``
    of ``arr``: for a read (``rw`` 0) or a write (1)."""
    if not isinstance(arr, types.Array):
        return None

    def codegen(context, builder, sig, args):
        p = _address(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [p.type, _I32, _I32, _I32]), "llvm.prefetch.p0")
        builder.call(fn, [p, ir.Constant(_I32, rw), ir.Constant(_I32, 3), ir.Constant(_I32, 1)])
        return context.get_dummy_value()
    return codegen


@intrinsic
def prefetch(typingctx, arr, off):
    """Ask for the cache line holding element ``off`` to be brought into
    the caches for a read.  A hint: it never faults, so ``off`` may lie past
    the array's end (the last steps of a loop that prefetches ahead)."""
    codegen = _prefetch(arr, 0)
    return None if codegen is None else (types.none(arr, off), codegen)


@intrinsic
def prefetchw(typingctx, arr, off):
    """``prefetch`` for a write: the line is brought in owned (x86
    ``prefetchw``), so a store to it later does not wait for the
    read-for-ownership.  Never faults."""
    codegen = _prefetch(arr, 1)
    return None if codegen is None else (types.none(arr, off), codegen)


@intrinsic
def sload(typingctx, arr, off):
    """The element at offset ``off``."""
    if not isinstance(arr, types.Array):
        return None

    def codegen(context, builder, sig, args):
        p = _address(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        return builder.load(p, align=_align(arr.dtype))
    return arr.dtype(arr, off), codegen


@intrinsic
def sstore(typingctx, arr, off, x):
    """Write ``x`` (converted to the array's dtype) at offset ``off``."""
    if not isinstance(arr, types.Array):
        return None

    def codegen(context, builder, sig, args):
        p = _address(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        builder.store(context.cast(builder, args[2], sig.args[2], arr.dtype), p, align=_align(arr.dtype))
        return context.get_dummy_value()
    return types.none(arr, off, x), codegen


@intrinsic
def vfma(typingctx, a, b, c):
    """``a * b + c`` lane by lane, one rounding (llvm.fma)."""
    if not (isinstance(a, Vec) and a == b == c):
        return None

    def codegen(context, builder, sig, args):
        t = args[0].type
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(t, [t, t, t]), f"llvm.fma.{_suffix(a)}")
        return builder.call(fn, list(args))
    return a(a, b, c), codegen


@intrinsic
def vsum(typingctx, v):
    """The sum of the lanes (pairwise halving)."""
    if not isinstance(v, Vec):
        return None

    def codegen(context, builder, sig, args):
        x, n = args[0], v.lanes
        while n > 1:
            n //= 2
            lo = builder.shuffle_vector(x, x, ir.Constant(ir.VectorType(_I32, n), list(range(n))))
            hi = builder.shuffle_vector(x, x, ir.Constant(ir.VectorType(_I32, n), list(range(n, 2 * n))))
            x = builder.fadd(lo, hi)
        return builder.extract_element(x, ir.Constant(_I32, 0))
    return v.dtype(v), codegen
