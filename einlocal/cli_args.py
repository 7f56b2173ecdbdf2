"""The op subcommands' arguments (check, bench, choose, source): a catalogue op
or a statement, its shapes and parameters, bound before any work."""
from __future__ import annotations

import argparse

__all__ = ["add_op_arguments", "op_kwargs", "PADDING_HELP"]


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.replace("x", ",").split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None


def _param(text: str):
    """'1' -> 1, '2,1' -> (2, 1), 'same' -> 'same'."""
    if text in ("same", "valid"):
        return text
    values = _ints(text)
    return values[0] if len(values) == 1 else values


def _padding(text: str):
    """'1', '1,2' (per axis), '1:0,2:1' ((before, after) per axis), 'same', 'valid'."""
    if text in ("same", "valid"):
        return text
    if ":" not in text:
        return _param(text)
    pairs = []
    for part in text.split(","):
        before, sep, after = part.partition(":")
        try:
            pairs.append((int(before), int(after)) if sep else (int(before),) * 2)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected BEFORE:AFTER per axis, e.g. 1:0,2:1, got {text!r}") from None
    return tuple(pairs)


PADDING_HELP = ("an int (every side), 'a,b' (a on both sides of axis 1, b of axis 2), 'top:bottom,left:right' "
                "(asymmetric; one 'left:right' for a 1-d op), 'same' or 'valid'")


def add_op_arguments(p: argparse.ArgumentParser, *, backends: bool = True) -> None:
    p.add_argument("op", nargs="?", default=None,
                   help="locally_connected2d, locally_connected1d, depthwise_conv2d or conv2d (or --statement)")
    p.add_argument("--statement", default=None, help="your own op instead: an index-notation statement "
                   "(el.Op), e.g. 'y[b,o,t] += x[b,c,2*t+k-1] * w[o,c,k,t]', its operands' shapes by --shape")
    p.add_argument("--pad", type=int, choices=(0,), default=None, help="with --statement: 0 makes reads outside "
                   "an operand zeros (else an error)")
    p.add_argument("--shape", action="append", default=[], metavar="NAME=DIMS",
                   help="with --statement: an operand's shape, e.g. x=4,3,40 (once per operand)")
    p.add_argument("--x", type=_ints, default=None, help="shape of x, e.g. 2,3,8,8")
    p.add_argument("--weight", type=_ints, default=None, help="shape of the weight")
    p.add_argument("--bias", type=_ints, default=None, help="shape of the bias (none by default)")
    p.add_argument("--stride", type=_param, default=None, help="stride: an int or a pair 'a,b'")
    p.add_argument("--padding", type=_padding, default=None, help=f"padding: {PADDING_HELP}")
    p.add_argument("--dilation", type=_param, default=None, help="dilation: an int or a pair 'a,b'")
    p.add_argument("--groups", type=int, default=None, help="conv2d groups")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64", "float16", "bfloat16"),
                   help="the arrays' dtype (default float32)")
    if backends:
        p.add_argument("--backends", default="", help="comma-separated names or prefixes (default: all available)")


def op_kwargs(args) -> tuple:
    """(op, shapes, params), the op bound to them: a bad op, shape or
    parameter is an einlocal error here, before any work."""
    from .arrays import Shaped
    from .catalogue import CATALOGUE
    from .errors import ShapeError
    if args.statement is not None:
        return _statement_op(args)
    if args.op not in CATALOGUE:
        raise ShapeError(f"unknown op {args.op!r}; valid: {', '.join(CATALOGUE)} (or --statement STATEMENT)")
    for name in ("x", "weight"):
        if getattr(args, name) is None:
            raise ShapeError(f"--{name} is required: the shape of {args.op}'s {name}, e.g. --{name} 2,3,8,8")
    if args.shape:
        raise ShapeError("--shape NAME=DIMS goes with --statement; a catalogue op takes --x, --weight, --bias")
    shapes = {"x": args.x, "weight": args.weight}
    if args.bias:
        shapes["bias"] = args.bias
    params = {k: getattr(args, k) for k in ("stride", "padding", "dilation", "groups") if getattr(args, k) is not None}
    op = CATALOGUE[args.op]
    op.bind_arrays({k: Shaped(v) for k, v in shapes.items()}, params)
    return op, shapes, params


def _statement_op(args) -> tuple:
    """(el.Op, shapes by operand name, {}) from --statement and its --shape options."""
    from .arrays import Shaped
    from .errors import ShapeError
    from .op import Op
    if args.op is not None:
        raise ShapeError(f"give an op ({args.op!r}) or --statement, not both")
    extra = [f"--{k}" for k in ("x", "weight", "bias", "stride", "padding", "dilation", "groups")
             if getattr(args, k) is not None]
    if extra:
        raise ShapeError(f"{extra[0]} goes with a catalogue op; a --statement takes --shape NAME=DIMS per operand")
    op = Op(args.statement, pad=args.pad)
    shapes = {}
    for text in args.shape:
        name, eq, dims = text.partition("=")
        if not eq or name not in op.inputs:
            raise ShapeError(f"--shape {text!r}: expected NAME=DIMS with NAME one of {', '.join(op.inputs)}")
        shapes[name] = _ints(dims)
    missing = [n for n in op.inputs if n not in shapes]
    if missing:
        raise ShapeError(f"--shape {missing[0]}=DIMS is missing (operands of the statement: {', '.join(op.inputs)})")
    op.bind_arrays({k: Shaped(v) for k, v in shapes.items()}, {})
    return op, shapes, {}
