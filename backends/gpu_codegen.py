"""GPU kernels from one bound statement: the kernel plan (what each program
computes, which writes conflict, block sizes) and the CUDA C emitter for
``loops:cupy``; Triton's emitter, for ``loops:triton``, is `gpu_triton`.

    kp = kernel_plan(plan, "float32")          # plain data, printable
    gpu_triton.triton_source(kp)               # one @triton.jit kernel
    cuda_source(kp)                            # one extern "C" __global__ kernel

Every statement, forward or backward, becomes one of two modes:

- ``gather``: iterate over the output's elements.  A plain output (forward,
  weight gradient) sums over the summed indices inside the program.  An
  affine-indexed output (``plan.scatter``, the input gradient) is computed
  through the inverse index map: per output axis ``v = a*m + sum(taps) + c``
  the largest-range index ``m`` is solved, ``m = (v - c - taps) / a``, with a
  divisibility and a bounds test per tap; the taps join the summed loop.
  Every element is written exactly once, without atomics.
- ``atomic``: iterate over the statement's output indices and add into the
  zeroed output with atomics.  Chosen only for an affine-indexed output whose
  windows overlap (``plan.conflicts.overlapping``) where the gather would
  waste most of its loop on failed divisibility tests (strides >= 2x2), and
  never with ``deterministic=True``.

A reduction too long for the programs (threads) there are is split: when
the output gives fewer than ``SPLIT_TARGET`` of them, the outermost summed
indices are taken one value a program (``KernelPlan.split``), each program
writes its partial sums to its own slice of a ``(parts, *out)`` buffer, and
the caller sums that buffer over its first axis, in a fixed order, into the
output (deterministic).  The inner loop keeps at least ``SPLIT_MIN_INNER``
iterations and the buffer at most ``SPLIT_MAX_PARTIALS`` elements.  A
depthwise weight gradient (576 outputs, each a sum over 508032 products) is
the case this serves.

A program owns a tile of the output: rows x cols, where the rows are the
output coordinates that the largest operand (the weight, for a locally
connected layer) does not read, so each of its elements is loaded once per
row (batch) tile.  Two-operand statements that are a matrix product per
program (a shared-weight or grouped conv) use ``tl.dot`` over a vector of
the summed indices (``form="dot"``).  Loads are all masked (padding is a
masked load with ``other=0``); float16/bfloat16 accumulate in float32.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, replace

__all__ = ["KernelPlan", "Coord", "Solved", "kernel_plan", "cuda_source", "choose_split",
           "ATOMIC_WASTE", "INT32_LIMIT", "SPLIT_TARGET", "SPLIT_MIN_INNER", "SPLIT_MAX_PARTIALS"]

# Use atomics instead of the inverse-map gather when the gather would test
# at least this many candidate taps per valid one (the product of the solved
# coefficients, i.e. of the strides).
ATOMIC_WASTE = 4
INT32_LIMIT = 2 ** 31 - 1
# Split a reduction when the output gives fewer programs (Triton) or threads
# (CUDA C) than this: enough to fill a large GPU several times over.
SPLIT_TARGET = {"program": 1024, "thread": 1 << 17}
SPLIT_MIN_INNER = 64            # iterations each program still loops
SPLIT_MAX_PARTIALS = 1 << 24    # elements of the partial-sum buffer

_C_DTYPE = {"float32": "float", "float64": "double"}


@dataclass(frozen=True)
class Coord:
    """One coordinate of the iteration over the output: ``var`` in
    ``0..extent-1``; ``names`` are the index names it determines."""

    var: str
    extent: int
    names: tuple[str, ...]


@dataclass(frozen=True)
class Solved:
    """An index solved from an output coordinate: ``name = (coord - const -
    sum(coef*tap)) / coef_main``, valid where divisible and in range.
    ``name`` is None for an output axis with no index (valid where
    ``coord == const``)."""

    name: str | None
    coord: str
    coef: int
    taps: tuple[tuple[str, int], ...]
    const: int
    range: int


@dataclass(frozen=True)
class KernelPlan:
    """Everything an emitter needs; plain data."""

    plan: object                      # the bound Plan
    dtype: str                        # of every operand and the output
    mode: str                         # "gather" | "atomic"
    form: str                         # "fma" | "dot"
    coords: tuple[Coord, ...]         # the output iteration, in output order
    rows: tuple[str, ...]             # coordinate vars of the tile's rows (first = slowest)
    cols: tuple[str, ...]
    batch: tuple[str, ...]            # one value per program (dot form only)
    loop: tuple[tuple[str, int], ...] # summed indices (and taps), outermost first
    solved: tuple[Solved, ...]
    block: tuple[tuple[str, int], ...]  # BR, BC (fma); BM, BN, BK (dot)
    num_warps: int
    precision: str = "ieee"           # tl.dot input_precision for float32
    reason: str = ""
    split: tuple[tuple[str, int], ...] = ()  # summed indices taken one value a program (outermost first)
    name: str = field(default="", compare=False)

    @property
    def blocks(self) -> dict:
        return dict(self.block)

    @property
    def acc_dtype(self) -> str:
        return "float64" if self.dtype == "float64" else "float32"

    @property
    def extent(self) -> dict:
        return {c.var: c.extent for c in self.coords}

    def group_size(self, vars_) -> int:
        return math.prod(self.extent[v] for v in vars_)

    @property
    def parts(self) -> int:
        """Partial sums per output element: 1 unless the reduction is split."""
        return math.prod(e for _, e in self.split)

    @property
    def out_dtype(self) -> str:
        """What the kernel writes: the accumulation dtype where it adds into
        a buffer (atomics, partial sums), else the output's dtype."""
        return self.acc_dtype if self.mode == "atomic" or self.parts > 1 else self.dtype

    def workspace(self) -> tuple[int, str]:
        """(elements, description) of the buffer a launch needs besides the output."""
        out = self.plan.out_shape
        if self.parts > 1:
            return self.parts * math.prod(out), f"{self.out_dtype} partial sums {(self.parts, *out)}"
        if self.mode == "atomic":
            return math.prod(out), f"{self.out_dtype} accumulation buffer {out}"
        return 0, "none"

    def tiles(self) -> tuple[int, int, int, int]:
        """Programs along rows, cols, the batch and the split reduction."""
        b = self.blocks
        br, bc = (b["BR"], b["BC"]) if self.form == "fma" else (b["BM"], b["BN"])
        return (_cdiv(self.group_size(self.rows), br), _cdiv(self.group_size(self.cols), bc),
                self.group_size(self.batch), self.parts)

    def grid(self) -> tuple[int]:
        """The launch grid: every program on its first axis (CUDA allows at
        most 65535 along the other two), row tiles fastest, then column
        tiles, the batch, then the reduction's parts."""
        return (math.prod(self.tiles()),)

    def __str__(self) -> str:
        lines = [f"kernel plan for {self.plan}",
                 f"  mode {self.mode} ({self.reason}), form {self.form}, dtype {self.dtype} "
                 f"(accumulate {self.acc_dtype})",
                 f"  rows {', '.join(self.rows) or '-'}; cols {', '.join(self.cols) or '-'}; "
                 f"batch {', '.join(self.batch) or '-'}",
                 f"  loop {', '.join(f'{n}<{r}' for n, r in self.loop) or '-'}"
                 + (f"; split {', '.join(f'{n}<{r}' for n, r in self.split)} ({self.parts} partial sums)"
                    if self.split else ""),
                 f"  solved {', '.join(s.name or s.coord for s in self.solved) or '-'}",
                 f"  blocks {dict(self.block)}, tiles {' x '.join(map(str, self.tiles()))} (rows, cols, batch, parts), "
                 f"warps {self.num_warps}"]
        return "\n".join(lines)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _np2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _strides(shape) -> tuple[int, ...]:
    return tuple(math.prod(shape[k + 1:]) for k in range(len(shape)))


def _main(axis, ranges) -> str:
    """The index solved for on an affine output axis: the largest range."""
    return max(axis.names, key=lambda n: ranges[n])


def choose_mode(plan, deterministic: bool = False) -> tuple[str, str]:
    """("gather" | "atomic", why), from the write-conflict analysis."""
    if not plan.scatter:
        return "gather", "plain output: each element summed in one program"
    wc = plan.conflicts
    if not wc.overlapping:
        return "gather", "affine output without overlapping windows: inverse map, one write per element"
    r = plan.range
    waste = math.prod(abs(ax.coef(_main(ax, r))) for ax in plan.stmt.out.axes if ax.names)
    if deterministic:
        return "gather", "overlapping windows, deterministic=True: inverse map without atomics"
    if waste >= ATOMIC_WASTE:
        return "atomic", f"overlapping windows and strides {waste}x: the gather would test {waste} taps per hit"
    return "gather", "overlapping windows, unit strides: inverse map without atomics"


def choose_split(loop, units: int, out_elements: int, unit: str = "program") -> int:
    """How many of the outermost loop entries to take one value a program
    (thread), given the ``units`` the output alone gives: none when those
    reach ``SPLIT_TARGET[unit]``; else outermost first, while the units fall
    short, the inner loop keeps ``SPLIT_MIN_INNER`` iterations, the partial
    sums stay within ``SPLIT_MAX_PARTIALS`` and one entry is left to loop."""
    k, parts, inner = 0, 1, math.prod(e for _, e in loop)
    while (k < len(loop) - 1 and units * parts < SPLIT_TARGET[unit]
           and inner // loop[k][1] >= SPLIT_MIN_INNER
           and parts * loop[k][1] * out_elements <= SPLIT_MAX_PARTIALS):
        parts *= loop[k][1]
        inner //= loop[k][1]
        k += 1
    return k if parts > 1 else 0


def kernel_plan(plan, dtype: str, *, deterministic: bool = False, precision: str = "ieee",
                allow_dot: bool = True, unit: str = "program") -> KernelPlan:
    """The kernel for one bound statement and dtype (see the module doc);
    ``unit`` is what runs one tile: a Triton "program" (a tile of outputs)
    or a CUDA "thread" (one output element)."""
    stmt, r = plan.stmt, plan.range
    mode, reason = choose_mode(plan, deterministic)
    coords, solved, taps = [], [], []
    if mode == "gather":
        for k, ax in enumerate(stmt.out.axes):
            if ax.alone is not None:
                coords.append(Coord(f"i_{ax.alone}", plan.out_shape[k], (ax.alone,)))
                continue
            var = f"v_{k}"
            if not ax.names:
                coords.append(Coord(var, plan.out_shape[k], ()))
                solved.append(Solved(None, var, 1, (), ax.const, 1))
                continue
            m = _main(ax, r)
            rest = tuple((n, a) for n, a in ax.terms if n != m)
            coords.append(Coord(var, plan.out_shape[k], (m,)))
            solved.append(Solved(m, var, ax.coef(m), rest, ax.const, r[m]))
            taps.extend(n for n, _ in rest)
        loop = tuple((n, r[n]) for n in (*stmt.summed, *taps))
    else:
        coords = [Coord(f"i_{n}", r[n], (n,)) for n in stmt.out.names]
        loop = tuple((n, r[n]) for n in stmt.summed)
    coords = tuple(coords)
    sizes = {a.name: math.prod(plan.shape[a.name]) for a in stmt.operands}
    reads = {a.name: set(a.names) for a in stmt.operands}

    def read_by(c: Coord, op: str) -> bool:
        return bool(set(c.names) & reads[op])

    ktotal = math.prod(n for _, n in loop)
    form, rows, cols, batch = "fma", (), (), ()
    if allow_dot and len(stmt.operands) == 2 and dtype != "float64" and loop:
        a_op, b_op = (x.name for x in stmt.operands)
        only_a = tuple(c.var for c in coords if read_by(c, a_op) and not read_by(c, b_op))
        only_b = tuple(c.var for c in coords if read_by(c, b_op) and not read_by(c, a_op))
        both = tuple(c.var for c in coords if c.var not in only_a and c.var not in only_b)
        ext = {c.var: c.extent for c in coords}
        if (only_a and only_b and math.prod(ext[v] for v in both) <= 64 and ktotal >= 16
                and math.prod(ext[v] for v in only_a) >= 16 and math.prod(ext[v] for v in only_b) >= 8):
            form, rows, cols, batch = "dot", only_a, only_b, both
    if form == "fma":
        weight = max(stmt.operands, key=lambda a: (sizes[a.name], stmt.operands.index(a))).name
        rows = tuple(c.var for c in coords if not read_by(c, weight))
        cols = tuple(c.var for c in coords if read_by(c, weight))
    ext = {c.var: c.extent for c in coords}
    R, C = math.prod(ext[v] for v in rows), math.prod(ext[v] for v in cols)
    if form == "fma":
        # a tile of at most 2048 accumulators, 8 per thread: registers stay
        # below 255 with the taps unrolled; the batch (rows) tile up to 32
        bc = min(_np2(C), 64)
        br = min(_np2(R), max(1, 2048 // bc), 32)
        block = (("BR", br), ("BC", bc))
        warps = max(1, min(8, br * bc // 256))
    else:
        bm = 64 if R >= 64 else 32 if R >= 32 else 16
        bn = 64 if C >= 64 else 32 if C >= 32 else 16
        bk = 32 if ktotal >= 32 else 16
        block = (("BM", bm), ("BN", bn), ("BK", bk))
        warps = 4
    kp = KernelPlan(plan, dtype, mode, form, coords, rows, cols, batch, loop, tuple(solved), block, warps,
                    precision, reason)
    if mode == "gather":
        units = math.prod(kp.tiles()) if unit == "program" else math.prod(c.extent for c in coords)
        k = choose_split(loop, units, math.prod(plan.out_shape), unit)
        if k:
            kp = replace(kp, loop=loop[k:], split=loop[:k])
    digest = hashlib.sha1(repr((str(plan), plan.out_shape, dtype, mode, form, block, precision,
                                kp.split)).encode()).hexdigest()
    object.__setattr__(kp, "name", f"einlocal_{mode}_{form}_{digest[:12]}")
    return kp


# -- shared pieces ------------------------------------------------------------------


def _affine(ax, var) -> str:
    """An affine axis as code, ``var(name)`` giving each index's identifier."""
    parts = [f"{a} * {var(n)}" if a != 1 else var(n) for n, a in ax.terms]
    if ax.const or not parts:
        parts.append(str(ax.const))
    return "(" + " + ".join(parts) + ")"


def _bounds_needed(ax, size: int, ranges) -> bool:
    lo, hi = ax.bounds(ranges)
    return lo < 0 or hi >= size


def cuda_source(kp: KernelPlan) -> str:
    """CUDA C for ``cupy.RawKernel``: one thread per output coordinate point
    (all coordinates flattened, the last fastest) and part of a split
    reduction (slowest), the summed loop inside.  ``kernel(p_<operand>...,
    p_out)`` on ``cdiv(total * parts, 256)`` blocks of 256; with parts > 1,
    ``p_out`` is the ``(parts, *out)`` buffer of partial sums."""
    if kp.dtype not in _C_DTYPE:
        raise ValueError(f"CUDA C kernels are generated for {', '.join(_C_DTYPE)}, not {kp.dtype}")
    T = _C_DTYPE[kp.dtype]
    plan = kp.plan
    stmt, r = plan.stmt, plan.range
    ops = [a.name for a in stmt.operands]
    args = ", ".join([f"const {T}* __restrict__ p_{n}" for n in ops] + [f"{T}* __restrict__ p_out"])
    total = math.prod(c.extent for c in kp.coords)
    lines = [f"// {stmt}   mode={kp.mode} dtype={kp.dtype}"
             + (f" split={','.join(n for n, _ in kp.split)} ({kp.parts} partial sums)" if kp.split else ""),
             f'extern "C" __global__ void {kp.name}({args}) {{',
             "    long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;",
             f"    if (e >= {total * kp.parts}LL) return;"]
    decode = []
    ext = {**kp.extent, **{f"i_{n}": e for n, e in kp.split}}
    for vars_, of in (([c.var for c in kp.coords], "e"), ([f"i_{n}" for n, _ in kp.split], "part")):
        stride = 1
        for v in reversed(vars_):
            decode.append(f"    const long long {v} = ({of} / {stride}LL) % {ext[v]}LL;")
            stride *= ext[v]
    if kp.split:
        decode.insert(len(kp.coords), f"    const long long part = e / {total}LL;")
    lines += decode
    solved_coord = {s.name: s for s in kp.solved if s.name}
    var = lambda n: f"s_{n}" if n in solved_coord else f"i_{n}"   # noqa: E731
    lines.append(f"    {T} acc = 0;")
    ind = "    "
    for n, rng in kp.loop:
        lines.append(f"{ind}for (long long i_{n} = 0; i_{n} < {rng}; ++i_{n}) {{")
        ind += "    "
    for s in kp.solved:
        taps = "".join(f" - {a} * {var(n)}" for n, a in s.taps)
        num = f"({s.coord} - ({s.const}){taps})"
        if s.name is None:
            lines.append(f"{ind}if ({s.coord} != {s.const}) continue;")
            continue
        a = abs(s.coef)
        if s.coef < 0:
            num = f"(-{num})"
        lines.append(f"{ind}const long long num_{s.name} = {num};")
        test = f"num_{s.name} < 0 || num_{s.name} >= {a * s.range}"
        if a != 1:
            test += f" || num_{s.name} % {a} != 0"
        lines.append(f"{ind}if ({test}) continue;")
        lines.append(f"{ind}const long long s_{s.name} = num_{s.name} / {a};")
    factors = []
    for acc_ in stmt.operands:
        shape = plan.shape[acc_.name]
        addr = " + ".join(f"{st}LL * {_affine(ax, var)}" for ax, st in zip(acc_.axes, _strides(shape)))
        conds = []
        for ax, size in zip(acc_.axes, shape):
            if plan.pad and _bounds_needed(ax, size, r):
                ex = _affine(ax, var)
                conds.append(f"{ex} >= 0 && {ex} < {size}")
        if conds:
            lines.append(f"{ind}const {T} val_{acc_.name} = ({' && '.join(conds)}) ? p_{acc_.name}[{addr}] : ({T})0;")
        else:
            lines.append(f"{ind}const {T} val_{acc_.name} = p_{acc_.name}[{addr}];")
        factors.append(f"val_{acc_.name}")
    lines.append(f"{ind}acc += {' * '.join(factors)};")
    for _ in kp.loop:
        ind = ind[:-4]
        lines.append(f"{ind}}}")
    strides = _strides(plan.out_shape)
    if kp.mode == "gather":
        addr = " + ".join(f"{st}LL * {c.var}" for c, st in zip(kp.coords, strides))
        if kp.split:
            addr = f"{total}LL * part + {addr}"
        lines.append(f"    p_out[{addr}] = acc;")
    else:
        ivar = lambda n: f"i_{n}"   # noqa: E731
        conds = []
        for ax, size in zip(stmt.out.axes, plan.out_shape):
            if _bounds_needed(ax, size, r):
                ex = _affine(ax, ivar)
                conds.append(f"{ex} >= 0 && {ex} < {size}")
        addr = " + ".join(f"{st}LL * {_affine(ax, ivar)}" for ax, st in zip(stmt.out.axes, strides))
        guard = f"if ({' && '.join(conds)}) " if conds else ""
        lines.append(f"    {guard}atomicAdd(&p_out[{addr}], acc);")
    lines.append("}")
    return "\n".join(lines) + "\n"
