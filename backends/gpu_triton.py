"""Triton source for a kernel plan (`gpu_codegen.kernel_plan`): one
``@triton.jit`` kernel a statement, the ``fma`` form (a rows x cols tile of
multiply-adds) or the ``dot`` form (``tl.dot`` over a vector of the summed
indices), gathering or adding atomically as the plan's mode says.  Every
load is masked; every program is launched on the grid's first axis."""
from __future__ import annotations

import math

from .gpu_codegen import KernelPlan, _affine, _bounds_needed, _strides

__all__ = ["triton_source"]

_TL_DTYPE = {"float16": "tl.float16", "bfloat16": "tl.bfloat16", "float32": "tl.float32", "float64": "tl.float64"}


def _decode(vars_, ext, offs: str, prefix: str = "") -> list[str]:
    """Lines that decode a flat offset into coordinates, the last fastest."""
    lines = []
    stride = 1
    for v in reversed(vars_):
        e = ext[v]
        expr = f"({offs} // {stride}) % {e}" if stride > 1 else f"{offs} % {e}"
        lines.append(f"{prefix}{v} = {expr}")
        stride *= e
    return list(reversed(lines))


def _triton_header(kp: KernelPlan) -> list[str]:
    ops = [a.name for a in kp.plan.stmt.operands]
    args = ", ".join([f"p_{n}" for n in ops] + ["p_out"])
    return ["import triton", "import triton.language as tl", "", "",
            "@triton.jit", f"def {kp.name}({args}):",
            f'    """{kp.plan.stmt}   mode={kp.mode} form={kp.form} dtype={kp.dtype}"""']


def _program_tile(kp: KernelPlan, ind: str, rows: str, cols: str) -> list[str]:
    """The program's rows, columns, batch element and part of a split
    reduction (its split indices' values) from its index, every program on
    the grid's first axis (`KernelPlan.grid`)."""
    nr, nc, nb, _ = kp.tiles()
    split = {f"i_{n}": e for n, e in kp.split}
    return [f"{ind}pid = tl.program_id(0)",
            f"{ind}offs_r = (pid % {nr}) * {rows} + tl.arange(0, {rows})[:, None]",
            f"{ind}offs_c = (pid // {nr} % {nc}) * {cols} + tl.arange(0, {cols})[None, :]",
            *([f"{ind}offs_b = pid // {nr * nc} % {nb}"] if kp.batch else []),
            *([f"{ind}part = pid // {nr * nc * nb}"] if split else []),
            *_decode(list(split), split, "part", ind)]


def triton_source(kp: KernelPlan) -> str:
    """The Triton source of one kernel: ``kernel(p_<operand>..., p_out)``,
    launched on ``kp.grid()``."""
    return (_triton_dot if kp.form == "dot" else _triton_fma)(kp)


def _unread(kp: KernelPlan) -> list[str]:
    read = {n for a in kp.plan.stmt.operands for n in a.names}
    return [s.name for s in kp.solved if s.name and s.name not in read]


def _solved_lines(kp: KernelPlan, var, ind: str, suffix: str = "", only=None) -> list[str]:
    """Solve each index from its coordinate (those in ``only``, if given);
    ``ok_<name>`` marks validity."""
    lines = []
    for s in kp.solved:
        if only is not None and s.name not in only:
            continue
        taps = "".join(f" - {a} * {var(n)}" for n, a in s.taps)
        const = f" - {s.const}" if s.const > 0 else f" + {-s.const}" if s.const < 0 else ""
        num = f"({s.coord}{const}{taps})"
        tag = (s.name or s.coord) + suffix
        if s.name is None:
            lines.append(f"{ind}ok_{tag} = {s.coord} == {s.const}")
            continue
        a = abs(s.coef)
        if s.coef < 0:
            num = f"(0 - {num})"
        lines.append(f"{ind}num_{tag} = {num}")
        cond = f"(num_{tag} >= 0) & (num_{tag} < {a * s.range})"
        if a != 1:
            cond += f" & (num_{tag} % {a} == 0)"
            lines.append(f"{ind}s_{tag} = num_{tag} // {a}")
        else:
            lines.append(f"{ind}s_{tag} = num_{tag}")
        lines.append(f"{ind}ok_{tag} = {cond}")
    return lines


def _operand_load(kp: KernelPlan, acc, var, ind: str, group_mask, suffix: str = "", zero: str = "",
                  dtype_cast: bool = True) -> list[str]:
    """``val_<name> = tl.load(...)`` for one operand, masked by the tile
    groups it depends on, its solved validity and its bounds."""
    plan = kp.plan
    r = plan.range
    shape = plan.shape[acc.name]
    strides = _strides(shape)
    solved_names = {s.name: s for s in kp.solved if s.name}
    addr = " + ".join(f"{st} * {_affine(ax, var)}" for ax, st in zip(acc.axes, strides))
    masks = list(group_mask(acc))
    for n in acc.names:
        if n in solved_names:
            masks.append(f"ok_{n}{suffix}")
    for ax, size in zip(acc.axes, shape):
        if plan.pad and _bounds_needed(ax, size, r):
            e = _affine(ax, var)
            masks.append(f"({e} >= 0) & ({e} < {size})")
    mask = " & ".join(dict.fromkeys(masks)) or "True"
    cast = f".to({_TL_DTYPE[kp.acc_dtype]})" if dtype_cast else ""
    return [f"{ind}val_{acc.name} = tl.load(p_{acc.name} + {addr}{zero}, mask={mask}, other=0.0){cast}"]


def _unsolved_masks(kp: KernelPlan, suffix: str = "") -> list[str]:
    """Validity of solved indices (or constant axes) that no operand reads."""
    read = {n for a in kp.plan.stmt.operands for n in a.names}
    return [f"ok_{s.name or s.coord}{suffix}" for s in kp.solved if s.name is None or s.name not in read]


def _store_lines(kp: KernelPlan, ind: str, mask: str) -> list[str]:
    plan = kp.plan
    out = plan.stmt.out
    strides = _strides(plan.out_shape)
    if kp.mode == "gather":
        addr = " + ".join(f"{st} * {c.var}" for c, st in zip(kp.coords, strides))
        if kp.split:   # this program's slice of the (parts, *out) partial sums
            addr = f"{math.prod(plan.out_shape)} * part + {addr}"
        return [f"{ind}tl.store(p_out + {addr}, acc.to(p_out.dtype.element_ty), mask={mask})"]
    var = lambda n: f"i_{n}"   # noqa: E731
    masks = [mask]
    for ax, size in zip(out.axes, plan.out_shape):
        if _bounds_needed(ax, size, plan.range):
            e = _affine(ax, var)
            masks.append(f"({e} >= 0) & ({e} < {size})")
    addr = " + ".join(f"{st} * {_affine(ax, var)}" for ax, st in zip(out.axes, strides))
    return [f"{ind}tl.atomic_add(p_out + {addr}, acc, mask={' & '.join(masks)}, sem=\"relaxed\")"]


def _triton_fma(kp: KernelPlan) -> str:
    b = kp.blocks
    ext = kp.extent
    R, C = kp.group_size(kp.rows), kp.group_size(kp.cols)
    lines = _triton_header(kp)
    ind = "    "
    lines += [f"{ind}BR: tl.constexpr = {b['BR']}", f"{ind}BC: tl.constexpr = {b['BC']}",
              *_program_tile(kp, ind, "BR", "BC"), f"{ind}rmask = offs_r < {R}", f"{ind}cmask = offs_c < {C}"]
    lines += _decode(kp.rows, ext, "offs_r", ind) + _decode(kp.cols, ext, "offs_c", ind)
    coord_of = {}
    for c in kp.coords:
        for n in c.names:
            coord_of[n] = c.var
    row_set, col_set = set(kp.rows), set(kp.cols)
    solved_coord = {s.name: s.coord for s in kp.solved if s.name}

    def var(n):
        if n in solved_coord:
            return f"s_{n}"
        return f"i_{n}"

    def group_mask(acc):
        m = []
        for n in acc.names:
            cv = coord_of.get(n)
            if cv in row_set:
                m.append("rmask")
            if cv in col_set:
                m.append("cmask")
        return sorted(set(m), key=["rmask", "cmask"].index)

    lines.append(f"{ind}acc = tl.zeros([BR, BC], dtype={_TL_DTYPE[kp.acc_dtype]})")
    for n, rng in kp.loop:
        rng_fn = "tl.static_range" if rng <= 4 else "range"
        lines.append(f"{ind}for i_{n} in {rng_fn}(0, {rng}):")
        ind += "    "
    lines += _solved_lines(kp, var, ind)
    for acc_ in kp.plan.stmt.operands:
        lines += _operand_load(kp, acc_, var, ind, group_mask)
    term = " * ".join(f"val_{a.name}" for a in kp.plan.stmt.operands)
    extra = _unsolved_masks(kp)
    if extra:
        term = f"tl.where({' & '.join(extra)}, {term}, 0.0)"
    lines.append(f"{ind}acc += {term}")
    ind = "    "
    lines += _store_lines(kp, ind, "rmask & cmask")
    return "\n".join(lines) + "\n"


def _triton_dot(kp: KernelPlan) -> str:
    b = kp.blocks
    ext = kp.extent
    R, C, K = kp.group_size(kp.rows), kp.group_size(kp.cols), math.prod(n for _, n in kp.loop)
    a_op, b_op = kp.plan.stmt.operands
    lines = _triton_header(kp)
    ind = "    "
    lines += [f"{ind}BM: tl.constexpr = {b['BM']}", f"{ind}BN: tl.constexpr = {b['BN']}",
              f"{ind}BK: tl.constexpr = {b['BK']}", *_program_tile(kp, ind, "BM", "BN"),
              f"{ind}rmask = offs_r < {R}", f"{ind}cmask = offs_c < {C}",
              f"{ind}zero_a = tl.zeros([BM, BK], dtype=tl.int32)",
              f"{ind}zero_b = tl.zeros([BK, BN], dtype=tl.int32)"]
    lines += _decode(kp.rows, ext, "offs_r", ind) + _decode(kp.cols, ext, "offs_c", ind)
    lines += _decode(kp.batch, ext, "offs_b", ind)
    loop_names = [n for n, _ in kp.loop]
    solved_coord = {s.name: s.coord for s in kp.solved if s.name}

    def var_for(side):
        def var(n):
            if n in loop_names:
                return f"k{side}_{n}"
            if n in solved_coord:
                return f"s_{n}_{side}"
            return f"i_{n}"
        return var

    lines.append(f"{ind}acc = tl.zeros([BM, BN], dtype=tl.float32)")
    lines.append(f"{ind}for k0 in range(0, {K}, BK):")
    ind2 = ind + "    "
    lines += [f"{ind2}offs_ka = k0 + tl.arange(0, BK)[None, :]", f"{ind2}offs_kb = k0 + tl.arange(0, BK)[:, None]",
              f"{ind2}kmask_a = offs_ka < {K}", f"{ind2}kmask_b = offs_kb < {K}"]
    kext = dict(kp.loop)
    lines += _decode(loop_names, kext, "offs_ka", ind2 + "ka_")
    lines += _decode(loop_names, kext, "offs_kb", ind2 + "kb_")
    for side, op, gm in (("a", a_op, ["rmask", "kmask_a"]), ("b", b_op, ["kmask_b", "cmask"])):
        var = var_for(side)
        needed = set(op.names) if side == "b" else set(op.names) | {None} | set(_unread(kp))
        lines += _solved_lines(kp, var, ind2, f"_{side}", only=needed)
        lines += _operand_load(kp, op, var, ind2, lambda acc, gm=gm: gm, suffix=f"_{side}",
                               zero=f" + zero_{side}", dtype_cast=False)
    extra = _unsolved_masks(kp, "_a")
    if extra:
        lines.append(f"{ind2}val_{a_op.name} = tl.where({' & '.join(extra)}, val_{a_op.name}, 0.0)")
    prec = f', input_precision="{kp.precision}"' if kp.dtype == "float32" else ""
    lines.append(f"{ind2}acc = tl.dot(val_{a_op.name}, val_{b_op.name}, acc{prec})")
    lines += _store_lines(kp, ind, "rmask & cmask")
    return "\n".join(lines) + "\n"
