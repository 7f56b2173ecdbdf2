"""How the harness calls what it times: an op bound to arrays, one pass of a backend or a peer as fn(set), a pass's cost."""
from __future__ import annotations

import math

__all__ = ["bind", "pass_cost", "pass_callable", "takes_out"]


def bind(op, arrays: dict, params: dict):
    """`op` (a catalogue op or an `el.Op`) bound to `arrays` (by argument name) and `params`:
    the one place the harness binds an op."""
    return op.bind_arrays(arrays, params)


def pass_cost(call, pass_: str, itemsize: int) -> tuple[int, int]:
    """(flops, minimum bytes) of one pass: forward from the statement; backward the
    derived statements of every array argument (dy and the inputs read once, the
    gradients written once); forward+backward the sum."""
    shapes = dict(call.arg_shapes)
    out_el = math.prod(call.out_shape)
    fwd = (call.flops(), call.min_bytes(itemsize))
    bwd_flops = sum(call.plan.backward[op].flops() for _, op, _ in call.operands)
    if call.bias is not None and call.bias[0] in shapes:
        bwd_flops += out_el
    operand_el = sum(math.prod(shapes[arg]) for arg, _, _ in call.operands)
    grads_el = sum(math.prod(s) for s in shapes.values())
    bwd = (bwd_flops, itemsize * (out_el + operand_el + grads_el))
    if pass_ == "forward":
        return fwd
    if pass_ == "backward":
        return bwd
    return fwd[0] + bwd[0], fwd[1] + bwd[1]


def takes_out(xp, peer) -> bool:
    """Whether the steady regime reuses outputs through ``out=``: not for a peer, nor for
    a library whose arrays are immutable (jax: repeated calls instead)."""
    return not peer and not xp.functional


def pass_callable(pass_: str, regime: str, mode, *, op=None, backend: str | None = None, params=None, xp=None,
                  call=None, dtype: str = "float32", has=lambda name: True, peer=None):
    """fn(set) that runs one pass on an input set (the op's arrays by name, and ``dy``):
    with `peer` = (forward, backward, params_for(x_shape)) the peer's functions, else
    `op` on `backend` (in the steady regime into outputs made here once, where the
    library takes ``out=``; `has(name)`: whether the sets hold that argument)."""
    if peer is not None:
        fwd_p, bwd_p, params_for = peer

        def fwd(s):
            return fwd_p(s["x"], s["weight"], s.get("bias"), **params_for(s["x"].shape))

        def bwd(s):
            return bwd_p(s["dy"], s["x"], s["weight"], s.get("bias"), **params_for(s["x"].shape))
    else:
        import numpy as np
        steady = regime == "steady" and takes_out(xp, None)
        y_out = xp.from_numpy(np.zeros(call.out_shape, dtype=dtype), "cpu") if steady else None
        g_out = (tuple(xp.from_numpy(np.zeros(dict(call.arg_shapes)[a], dtype=dtype), "cpu") if has(a) else None
                       for a in call.args) if steady else None)

        names = call.args

        def fwd(s):        # through the op's public entry point, as a user calls it
            return op.call_with({n: s.get(n) for n in names}, params, backend=backend, out=y_out)

        def bwd(s):
            return op.vjp_with(s["dy"], {n: s.get(n) for n in names}, params, backend=backend, grad=mode or "vjp",
                               out=g_out)
    if pass_ == "forward":
        return fwd
    if pass_ == "backward":
        return bwd
    return lambda s: (fwd(s), bwd(s))
