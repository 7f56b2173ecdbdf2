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


def forward_runner(backend, call, plan):
    """``run(arrays, out=None)``: ``call``'s forward (``plan``: the statement
    ``backend`` runs for it) on numpy arrays with
    the shapes and dtypes of the call that built it (checked by the caller),
    into ``out`` where given (writable, overlapping no input, also checked);
    None where ``out``'s shape is not the kernel's output's and ``out`` is not
    C-contiguous (the generic path then views it, or says why it cannot)."""
    names = tuple(a.name for a in plan.stmt.operands)
    by_op = {op: (arg, tuple(shape)) for arg, op, shape in call.operands}
    order = tuple(by_op[n] for n in names)       # (argument, statement shape), in the kernel's order
    bias_arg, bias_shape = call.bias if call.bias is not None else (None, None)
    out_shape, result_shape = tuple(plan.out_shape), tuple(call.out_shape)
    kernels: dict = {}      # the arrays' strides and writability -> (Kernel, dispatcher)

    def run(arrays, out=None):
        ops = []
        for arg, shape in order:
            a = arrays[arg]
            ops.append(a if a.shape == shape else a.reshape(shape))
        if out is None:
            y = np.empty(out_shape, ops[0].dtype)
        elif out.shape == out_shape:
            y = out
        elif out.flags.c_contiguous:
            y = out.reshape(out_shape)
        else:
            return None
        args = (y, *ops)
        bias = None if bias_arg is None else arrays.get(bias_arg)
        if bias is not None:
            args += (np.broadcast_to(np.ascontiguousarray(bias.reshape(bias_shape)), out_shape),)
        layout = (backend.tiled, *((a.strides, a.flags.writeable) for a in args))
        hit = kernels.get(layout)
        if hit is None:
            hit = backend._compiled(plan, y.dtype.name, {n: element_strides(a) for n, a in zip(names, ops)},
                                    element_strides(y),
                                    None if bias is None else element_strides(args[-1]))
            backend._ensure_compiled(plan, *hit, args)
            kernels[layout] = hit
        backend._call(plan, *hit, args)
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


def launch_one_pass(backend, hit, dy, operands: dict, outs: dict, bias_shape, first: bool = False):
    """The one-pass backward as its first run (keyed by `one_pass_key`) ran
    it: ``hit`` is (plan, operand names, Kernel, dispatcher), or None where
    it did not apply (None again); ``first`` as `launch`'s."""
    if hit is None:
        return None
    plan, names, k, fn = hit
    db = None if bias_shape is None else np.empty(bias_shape, dy.dtype)
    grads = {n: outs[n] if outs.get(n) is not None else np.empty(plan.shape[n], dy.dtype) for n in names}
    r_x, r_w = k.args
    args = (grads[r_x], grads[r_w]) + (() if db is None else (db,)) + (dy, operands[r_x], operands[r_w])
    (backend._launch if first else backend._call)(plan, k, fn, args, "the one-pass backward of ")
    return grads, db
