"""Repeated calls of ``loops:numba`` on numpy arrays: the compiled kernel
launched with as little Python as can be between the call and it (a
forward repeat from `einlocal.fast`; a statement's run or a one-pass
backward run again as its first run was, from `NumbaLoops`).

A repeat usually follows other work that has evicted the interpreter's code
and data from the caches, and then each Python function on the way costs
far more than back to back: after a 2048 x 2048 matmul, a tiny locally
connected layer's call took 347 us through the generic path (a third of
it its kernel: launching a parallel loop wakes a sleeping thread), and its
``loops:numba`` forward alone (``NumbaLoops._run``) 241 us.  A repeat's key
proves the arrays' shapes and dtypes; what it does not prove (where the
arrays lie in memory) picks the kernel from what this call site has run.
"""
from __future__ import annotations

import numpy as np

__all__ = ["forward_runner", "element_strides", "statement_key", "launch", "one_pass_key", "launch_one_pass"]


def element_strides(a) -> tuple[int, ...]:
    """A numpy array's strides in elements."""
    return tuple(s // a.itemsize for s in a.strides)


def forward_runner(backend, call):
    """``run(arrays, out=None)``: ``call``'s forward on numpy arrays with the
    shapes and dtypes of the call that built it (checked by the caller),
    into ``out`` where given (writable, overlapping no input, also checked).
    The first run for a layout is the statement's (`NumbaLoops._run`); a
    repeat is its `launch`, found by the arrays' strides and writability
    alone (`statement_key`'s whole key cost 40 us more a call after a
    matmul).  None where ``out``'s shape is not the statement's and ``out``
    is not C-contiguous (the generic path then views it, or says why it
    cannot)."""
    plan = call.plan
    operands = tuple((op, arg, tuple(shape)) for arg, op, shape in call.operands)
    bias_arg, bias_shape = call.bias if call.bias is not None else (None, None)
    out_shape, result_shape = tuple(plan.out_shape), tuple(call.out_shape)
    hits: dict = {}         # the arrays' strides and writability -> what their first run launched

    def run(arrays, out=None):
        ops = {}
        for op, arg, shape in operands:
            a = arrays[arg]
            ops[op] = a if a.shape == shape else a.reshape(shape)
        if out is None or out.shape == out_shape:
            y = out
        elif out.flags.c_contiguous:
            y = out.reshape(out_shape)
        else:
            return None
        bias = None if bias_arg is None else arrays.get(bias_arg)
        init = None if bias is None else bias.reshape(bias_shape)
        layout = (backend.tiled, None if y is None else y.strides, None if init is None else init.strides,
                  *((a.strides, a.flags.writeable) for a in ops.values()))
        hit = hits.get(layout)
        if hit is None:
            result = backend._run(plan, ops, y, init)
            hits[layout] = backend._repeats.get(statement_key(plan, ops, y, init, None, backend.tiled))
            y = result
        else:
            y = launch(backend, hit, ops, y, init, None)
        if out is not None:
            return out
        return y if y.shape == result_shape else y.reshape(result_shape)
    return run


def _layout(a):
    return None if a is None else (a.shape, a.dtype, a.strides, a.flags.writeable)


def statement_key(plan, operands: dict, out, init, sums, tiled: bool):
    """What a run of one bound statement (`NumbaLoops._run`) on numpy
    arrays depends on (and whether tiled nests may run it), hashable: the
    key of a repeat that `launch` runs with none of the first run's checks;
    None where an array is not numpy's."""
    arrays = (*operands.values(), out, init, None if sums is None else sums[1])
    if any(a is not None and type(a) is not np.ndarray for a in arrays):
        return None
    return (plan, tiled, tuple((n, _layout(a)) for n, a in operands.items()), _layout(out), _layout(init),
            None if sums is None else (sums[0], _layout(sums[1])))


def launch(backend, hit, operands: dict, out, init, sums, first: bool = False):
    """Run a statement as its first run (keyed by `statement_key`) did:
    ``hit`` is (the plan it ran, its operands' order, Kernel, dispatcher);
    ``first``: that run, its dispatcher compiled for these arrays first."""
    plan, names, k, fn = hit
    y = np.empty(plan.out_shape, next(iter(operands.values())).dtype) if out is None else out
    args = (y, *(operands[n] for n in names))
    if init is not None:
        args += (np.broadcast_to(np.ascontiguousarray(init), plan.out_shape),)
    if sums is not None:
        args += (sums[1],)
    (backend._launch if first else backend._call)(plan, k, fn, args)
    return y


def one_pass_key(plan, dy, operands: dict, outs: dict, names, bias_shape):
    """`statement_key` of a pointwise layer's backward in one pass
    (`NumbaLoops._one_pass`): ``dy``, the operands and the gradients' outs."""
    outs = tuple(outs.get(n) for n in names)
    if type(dy) is not np.ndarray or any(type(operands[n]) is not np.ndarray for n in names) or \
            any(o is not None and type(o) is not np.ndarray for o in outs):
        return None
    return ("one pass", plan, bias_shape, _layout(dy), tuple(_layout(operands[n]) for n in names),
            tuple(_layout(o) for o in outs))


def launch_one_pass(backend, hit, dy, operands: dict, outs: dict, bias_shape, first: bool = False, db_out=None):
    """The one-pass backward as its first run (keyed by `one_pass_key`) ran
    it: ``hit`` is (plan, operand names, Kernel, dispatcher), or None where
    it did not apply (None again); ``first`` as `launch`'s; the bias's
    sums into ``db_out`` where given (C-ordered, ``bias_shape``)."""
    if hit is None:
        return None
    plan, names, k, fn = hit
    db = None if bias_shape is None else db_out if db_out is not None else np.empty(bias_shape, dy.dtype)
    grads = {n: outs[n] if outs.get(n) is not None else np.empty(plan.shape[n], dy.dtype) for n in names}
    r_x, r_w = k.args
    args = (grads[r_x], grads[r_w]) + (() if db is None else (db,)) + (dy, operands[r_x], operands[r_w])
    (backend._launch if first else backend._call)(plan, k, fn, args, "the one-pass backward of ")
    return grads, db
