"""The catalogue (docs/ops.md): locally connected 2d/1d, depthwise and grouped
convolution, each one statement plus parameter handling.  Channel axes are
reshaped for free so every statement stays plain."""
from __future__ import annotations

import functools
import operator

from .arrays import Shaped, shape_of
from . import fast
from .call import prepare, prepare_vjp
from .errors import ParameterError, ShapeError
from .plan import bind
from .run import Call, register_rebatch
from .spec import parse

__all__ = ["locally_connected2d", "locally_connected1d", "depthwise_conv2d", "conv2d", "CatalogueOp", "vjp"]


def _int(v):
    """``v`` as a Python int if it is integral (int, numpy integer, anything
    with ``__index__``; never a bool), else None."""
    if isinstance(v, bool) or getattr(v, "dtype", None) is not None and getattr(v, "ndim", 0) != 0:
        return None
    try:
        return operator.index(v)
    except TypeError:
        return None


def _tuple(v, n: int, what: str, *, minimum: int) -> tuple[int, ...]:
    """An integer or ``n`` integers (a tuple or list; of any integral type) -> ``n`` Python ints."""
    one = _int(v)
    t = (one,) * n if one is not None else tuple(_int(e) for e in v) if isinstance(v, (tuple, list)) else None
    if t is None or len(t) != n or any(e is None for e in t):
        raise ShapeError(f"{what} must be an int or {n} ints, got {v!r}")
    for k, e in enumerate(t):
        if e < minimum:
            raise ShapeError(f"{what} must be >= {minimum} on every axis, got {e} on spatial axis {k}")
    return t


def _pair(p):
    """``(before, after)`` from a 2-sequence of integers, else None."""
    if isinstance(p, (tuple, list)) and len(p) == 2:
        a, b = _int(p[0]), _int(p[1])
        if a is not None and b is not None:
            return a, b
    return None


def _padding(padding, kernel, dilation, stride, what="padding") -> tuple[tuple[int, int], ...]:
    """Every form docs/ops.md allows -> ((before, after), ...) per spatial axis."""
    n = len(kernel)
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * n
        if padding == "same":
            if any(s != 1 for s in stride):
                raise ShapeError(f"padding='same' needs stride 1, got stride {stride}")
            out = []
            for k, d in zip(kernel, dilation):
                total = d * (k - 1)
                out.append((total // 2, total - total // 2))   # the extra zero goes after
            return tuple(out)
        raise ShapeError(f"{what} must be an int, a pair, a pair of pairs, 'valid' or 'same'; got {padding!r}")
    one = _int(padding)
    if one is not None:
        pads = ((one, one),) * n
    elif n == 1 and _pair(padding) is not None:          # a 1-d (left, right) pair
        pads = (_pair(padding),)
    elif isinstance(padding, (tuple, list)) and len(padding) == n:
        pads = []
        for p in padding:
            e = _int(p)
            if e is not None:
                pads.append((e, e))
            elif _pair(p) is not None:
                pads.append(_pair(p))
            else:
                raise ShapeError(f"{what} entries must be ints or (before, after) pairs, got {p!r}")
        pads = tuple(pads)
    else:
        forms = f"{n} ints, {n} (before, after) pairs" if n > 1 else "(p,), (left, right), ((left, right),)"
        raise ShapeError(f"{what} must be an int, {forms}, 'valid' or 'same'; got {padding!r}")
    for k, (a, b) in enumerate(pads):
        if a < 0 or b < 0:
            raise ShapeError(f"{what} must be non-negative, got ({a}, {b}) on spatial axis {k}")
    return pads


def depthwise_multiplier(in_channels, out_channels, depth_multiplier, what: str) -> int:
    """The channel multiplier of a depthwise layer built as
    ``(in_channels, out_channels)`` or with ``depth_multiplier=``."""
    cin = _int(in_channels)
    if cin is None or cin < 1:
        raise ShapeError(f"{what}: in_channels must be a positive int, got {in_channels!r}")
    if out_channels is None and depth_multiplier is None:
        raise ShapeError(f"{what}: give out_channels (a multiple of in_channels = {cin}) or depth_multiplier=")
    m = None
    if depth_multiplier is not None:
        m = _int(depth_multiplier)
        if m is None or m < 1:
            raise ShapeError(f"{what}: depth_multiplier must be a positive int, got {depth_multiplier!r}")
    if out_channels is not None:
        cout = _int(out_channels)
        if cout is None or cout < 1:
            raise ShapeError(f"{what}: out_channels must be a positive int, got {out_channels!r}")
        if cout % cin:
            raise ShapeError(f"{what}: out_channels = {cout} is not a multiple of in_channels = {cin} (a depthwise "
                             f"layer has out_channels = in_channels * depth_multiplier)")
        if m is not None and m * cin != cout:
            raise ShapeError(f"{what}: out_channels = {cout} but in_channels * depth_multiplier = {cin} * {m} = "
                             f"{cin * m}")
        m = cout // cin
    return m


def _out_size(size, pad, k, d, s, axis: str) -> int:
    span = d * (k - 1) + 1
    padded = size + pad[0] + pad[1]
    if span > padded:
        raise ShapeError(f"kernel extent {span} (kernel {k}, dilation {d}) on axis {axis} is larger than the "
                         f"padded input {padded} (size {size} + padding {pad[0]} + {pad[1]})")
    return (padded - span) // s + 1


def _expr(out: str, tap: str, s: int, d: int, p: int) -> str:
    e = out if s == 1 else f"{out}*{s}"
    e += f"+{tap}" if d == 1 else f"+{tap}*{d}"
    return e + (f"-{p}" if p else "")


def _check_ndim(a, n: int, what: str, layout: str):
    if a is None:
        raise ShapeError(f"{what} is required")
    if not hasattr(a, "shape"):
        raise ShapeError(f"{what} must be an array, got {type(a).__name__}")
    if len(a.shape) != n:
        raise ShapeError(f"{what} must have {n} axes {layout}, got shape {shape_of(a)}")
    return shape_of(a)


def _spatial(params: dict, n: int):
    stride = _tuple(params.get("stride", 1), n, "stride", minimum=1)
    dilation = _tuple(params.get("dilation", 1), n, "dilation", minimum=1)
    return stride, dilation


@functools.lru_cache(maxsize=2048)
def _bind_lc(ndim: int, x_shape, w_shape, b_shape, stride, padding, dilation) -> Call:
    spatial = "hw"[:ndim] if ndim == 2 else "t"
    taps = "ij"[:ndim] if ndim == 2 else "k"
    N, Cin, *S = x_shape
    Cout, Cin_w, *rest = w_shape
    K, So = rest[:ndim], rest[ndim:]
    if Cin_w != Cin:
        raise ShapeError(f"weight axis 1 (Cin) is {Cin_w} but x axis 1 (Cin) is {Cin}")
    for k in K:
        if k < 1:
            raise ShapeError(f"weight kernel size must be positive, got {tuple(K)}")
    stride, dilation = stride, dilation
    pads = _padding(padding, K, dilation, stride)
    if padding == "same":
        expect = tuple(S)
    else:
        expect = tuple(_out_size(S[a], pads[a], K[a], dilation[a], stride[a], f"{a + 2} of x") for a in range(ndim))
    for a in range(ndim):
        if expect[a] <= 0:
            raise ShapeError(f"output size on spatial axis {a} is {expect[a]}: non-positive")
        if So[a] != expect[a]:
            raise ShapeError(
                f"weight axis {2 + ndim + a} (output size) is {So[a]} but x of spatial size {tuple(S)} with kernel "
                f"{tuple(K)}, stride {stride}, padding {pads}, dilation {dilation} gives {expect[a]}")
    out_shape = (N, Cout, *So)
    if b_shape is not None and tuple(b_shape) != (Cout, *So):
        raise ShapeError(f"bias must have shape {(Cout, *So)} (Cout, *output size), got {tuple(b_shape)}")
    reads = ", ".join(_expr(spatial[a], taps[a], stride[a], dilation[a], pads[a][0]) for a in range(ndim))
    text = f"y[n,o,{','.join(spatial)}] += x[n,c,{reads}] * wt[o,c,{','.join(taps)},{','.join(spatial)}]"
    pad = any(p for pr in pads for p in pr)
    plan_x = (max(N, 1), *tuple(x_shape)[1:])      # an empty batch plans as one (`Call.empty`)
    plan = bind(parse(text), (("wt", tuple(w_shape)), ("x", plan_x)), (), None, pad)
    plan = bind(plan.stmt, plan.shapes, (), None, pad)
    kind = "locally_connected2d" if ndim == 2 else "locally_connected1d"
    params = (("stride", stride), ("padding", pads), ("dilation", dilation))
    bias = None if b_shape is None else ("bias", (1, Cout, *So))
    arg_shapes = (("x", tuple(x_shape)), ("weight", tuple(w_shape))) + ((("bias", tuple(b_shape)),) if b_shape else ())
    return Call(kind, params, plan, ("x", "weight", "bias"),
                (("x", "x", tuple(x_shape)), ("weight", "wt", tuple(w_shape))), out_shape, bias, arg_shapes,
                empty=N == 0)


@functools.lru_cache(maxsize=2048)
def _bind_grouped(x_shape, w_shape, b_shape, stride, padding, dilation, groups, depthwise: bool) -> Call:
    N, Cin, H, W = x_shape
    Cout, Cg_w, kh, kw = w_shape
    if depthwise:
        if Cg_w != 1:
            raise ShapeError(f"depthwise weight axis 1 must be 1 (layout (C*m, 1, kh, kw)), got {Cg_w}")
        if Cout % Cin:
            raise ShapeError(f"depthwise weight axis 0 is {Cout}, not a multiple of x's {Cin} channels (C*m)")
        groups = Cin
    else:
        g = _int(groups)
        if g is None or g < 1:
            raise ShapeError(f"groups must be a positive int, got {groups!r}")
        groups = g
        if Cin % groups:
            raise ShapeError(f"groups={groups} does not divide x axis 1 (Cin) = {Cin}")
        if Cout % groups:
            raise ShapeError(f"groups={groups} does not divide weight axis 0 (Cout) = {Cout}")
        if Cg_w != Cin // groups:
            raise ShapeError(f"weight axis 1 is {Cg_w} but Cin // groups = {Cin} // {groups} = {Cin // groups}")
    if kh < 1 or kw < 1:
        raise ShapeError(f"weight kernel size must be positive, got ({kh}, {kw})")
    K = (kh, kw)
    pads = _padding(padding, K, dilation, stride)
    Ho, Wo = (_out_size((H, W)[a], pads[a], K[a], dilation[a], stride[a], f"{a + 2} of x") for a in range(2))
    if b_shape is not None and tuple(b_shape) != (Cout,):
        raise ShapeError(f"bias must have shape ({Cout},) (Cout,), got {tuple(b_shape)}")
    reads = ", ".join(_expr("hw"[a], "ij"[a], stride[a], dilation[a], pads[a][0]) for a in range(2))
    pad = any(p for pr in pads for p in pr)
    G, Og, Cg = groups, Cout // groups, Cin // groups
    if depthwise:
        text = f"y[n,c,m,h,w] += x[n,c,{reads}] * wt[c,m,i,j]"
        xs, ws, ys = (N, Cin, H, W), (Cin, Og, kh, kw), (N, Cin, Og, Ho, Wo)
        kind = "depthwise_conv2d"
        params = (("stride", stride), ("padding", pads), ("dilation", dilation), ("multiplier", Og))
    else:
        text = f"y[n,g,o,h,w] += x[n,g,c,{reads}] * wt[g,o,c,i,j]"
        xs, ws, ys = (N, G, Cg, H, W), (G, Og, Cg, kh, kw), (N, G, Og, Ho, Wo)
        kind = "conv2d"
        params = (("stride", stride), ("padding", pads), ("dilation", dilation), ("groups", groups))
    plan_xs = (max(N, 1), *xs[1:])                # an empty batch plans as one (`Call.empty`)
    plan = bind(parse(text), (("x", plan_xs), ("wt", ws)), (("h", Ho), ("w", Wo)), None, pad)
    bias = None if b_shape is None else ("bias", (1,) + ys[1:3] + (1, 1))
    arg_shapes = (("x", tuple(x_shape)), ("weight", tuple(w_shape))) + ((("bias", tuple(b_shape)),) if b_shape else ())
    return Call(kind, params, plan, ("x", "weight", "bias"), (("x", "x", xs), ("weight", "wt", ws)),
                (N, Cout, Ho, Wo), bias, arg_shapes, empty=N == 0)


class CatalogueOp:
    """A catalogue op: call it like a function; ``bind`` gives its ``Call``
    (plan, statement, shapes) without running anything.

    Every op (this class and ``el.Op``) offers the same binding interface:
    ``name``, ``arg_names``, ``split(args, kwargs)`` -> (arrays, params),
    ``bind_arrays(arrays, params)`` -> Call (arrays: anything with a
    ``.shape``), ``spec()`` (a JSON description to rebuild it), ``vjp``."""

    arg_names = ("x", "weight", "bias")

    def __init__(self, name: str, binder, doc: str):
        self.__name__ = self.name = name
        self._binder = binder
        self.__doc__ = doc
        register_rebatch(name, self._rebatch)

    def bind(self, x, weight, bias=None, **params) -> Call:
        return self.bind_arrays({"x": x, "weight": weight, "bias": bias}, params)

    def split(self, args: tuple, kwargs: dict) -> tuple[dict, dict]:
        """(arrays by argument name, the op's parameters) from a call's arguments."""
        if len(args) > 3:
            raise TypeError(f"{self.name}() takes x, weight and bias as arrays, got {len(args)} positional arguments")
        arrays = dict(zip(self.arg_names, args))
        params = dict(kwargs)
        for n in self.arg_names:
            if n in params:
                if n in arrays:
                    raise TypeError(f"{self.name}() got argument {n!r} twice")
                arrays[n] = params.pop(n)
        return arrays, params

    @property
    def parameters(self) -> tuple[str, ...]:
        """The op's parameters (keywords other than backend, out and grad)."""
        code = self._binder.__code__
        return code.co_varnames[code.co_argcount:code.co_argcount + code.co_kwonlyargcount]

    def bind_arrays(self, arrays: dict, params: dict) -> Call:
        unknown = [k for k in params if k not in self.parameters]
        if unknown:
            raise ParameterError(f"{self.name}() got an unexpected keyword argument {unknown[0]!r}; its parameters "
                                 f"are {', '.join(self.parameters)} (and backend, out, grad)")
        return self._binder(arrays.get("x"), arrays.get("weight"), arrays.get("bias"), **params)

    def spec(self) -> dict:
        return {"op": self.name}

    def call_with(self, arrays: dict, params: dict, **kw):
        """``self(...)`` with the arrays by name (the interface every op shares)."""
        return self(arrays.get("x"), arrays.get("weight"), arrays.get("bias"), **params, **kw)

    def vjp_with(self, dy, arrays: dict, params: dict, **kw) -> tuple:
        """``self.vjp(dy, ...)`` with the arrays by name: gradients in argument order."""
        return self.vjp(dy, arrays.get("x"), arrays.get("weight"), arrays.get("bias"), **params, **kw)

    def _rebatch(self, call: Call, n: int) -> Call:
        shapes = dict(call.arg_shapes)
        params = {k: v for k, v in call.params if k != "multiplier"}
        return self.bind_arrays({k: Shaped((n, *s[1:]) if k == "x" else s) for k, s in shapes.items()}, params)

    def __call__(self, x, weight, bias=None, *, backend="auto", out=None, grad="vjp", **params):
        arrays = {"x": x, "weight": weight, "bias": bias}
        return fast.forward(fast.key(self.name, (x, weight, bias), backend, grad, params, out), arrays, out,
                            lambda: prepare(self.bind(x, weight, bias, **params), arrays, backend=backend, out=out,
                                            grad=grad))

    def vjp(self, dy, x, weight, bias=None, *, backend="auto", wrt=None, out=None, grad="vjp", **params):
        arrays = {"x": x, "weight": weight, "bias": bias}
        return fast.gradients(fast.vjp_key(self.name, dy, (x, weight, bias), backend, grad, params, wrt, out),
                              dy, arrays, out,
                              lambda: prepare_vjp(self.bind(x, weight, bias, **params), dy, arrays, backend=backend,
                                                  wrt=wrt, out=out, grad=grad))

    def __repr__(self) -> str:
        return f"<einlocal op {self.name}>"


def _lc_binder(ndim: int):
    name = f"locally_connected{ndim}d"
    layout_x = "(N, Cin, H, W)" if ndim == 2 else "(N, Cin, L)"
    layout_w = "(Cout, Cin, kh, kw, Ho, Wo)" if ndim == 2 else "(Cout, Cin, k, Lo)"

    def binder(x, weight, bias, *, stride=1, padding=0, dilation=1):
        xs = _check_ndim(x, ndim + 2, "x", layout_x)
        ws = _check_ndim(weight, 2 + 2 * ndim, "weight", layout_w)
        bs = None if bias is None else _check_ndim(bias, 1 + ndim, "bias", "(Cout, *output size)")
        st, dl = _spatial({"stride": stride, "dilation": dilation}, ndim)
        pad = padding if isinstance(padding, str) else _padding(padding, ws[2:2 + ndim], dl, st)
        return _bind_lc(ndim, xs, ws, bs, st, pad, dl)
    binder.__name__ = name
    return binder


def _grouped_binder(depthwise: bool):
    def binder(x, weight, bias, *, stride=1, padding=0, dilation=1, groups=1):
        xs = _check_ndim(x, 4, "x", "(N, Cin, H, W)")
        ws = _check_ndim(weight, 4, "weight", "(C*m, 1, kh, kw)" if depthwise else "(Cout, Cin // groups, kh, kw)")
        bs = None if bias is None else _check_ndim(bias, 1, "bias", "(Cout,)")
        st, dl = _spatial({"stride": stride, "dilation": dilation}, 2)
        pad = padding if isinstance(padding, str) else _padding(padding, ws[2:], dl, st)
        return _bind_grouped(xs, ws, bs, st, pad, dl, groups, depthwise)
    return binder


def _depthwise_binder(x, weight, bias, *, stride=1, padding=0, dilation=1):
    return _grouped_binder(True)(x, weight, bias, stride=stride, padding=padding, dilation=dilation)


locally_connected2d = CatalogueOp("locally_connected2d", _lc_binder(2), """\
Locally connected 2d layer: a convolution with one kernel per output position.

    x (N, Cin, H, W), weight (Cout, Cin, kh, kw, Ho, Wo), bias (Cout, Ho, Wo) or None
    -> y (N, Cout, Ho, Wo)

Statement: y[n,o,h,w] += x[n,c,h*sh+i*dh-pt, w*sw+j*dw-pl] * wt[o,c,i,j,h,w].
stride, dilation: int or pair; padding: int, pair, pair of pairs, 'valid' or
'same'; backend: a name from el.backends() or 'auto'; out: overwritten.""")

locally_connected1d = CatalogueOp("locally_connected1d", _lc_binder(1), """\
Locally connected 1d layer.

    x (N, Cin, L), weight (Cout, Cin, k, Lo), bias (Cout, Lo) or None -> y (N, Cout, Lo)

Statement: y[n,o,t] += x[n,c,t*s+k*d-p] * wt[o,c,k,t].""")

depthwise_conv2d = CatalogueOp("depthwise_conv2d", _depthwise_binder, """\
Depthwise 2d convolution with channel multiplier m.

    x (N, C, H, W), weight (C*m, 1, kh, kw) (PyTorch's groups=C layout), bias (C*m,) or None
    -> y (N, C*m, Ho, Wo); output channel c*m + k reads input channel c.

Statement: y[n,c,m,h,w] += x[n,c,h*sh+i*dh-pt, w*sw+j*dw-pl] * wt[c,m,i,j].""")

conv2d = CatalogueOp("conv2d", _grouped_binder(False), """\
2d convolution with shared weights (the control), grouped with groups > 1.

    x (N, Cin, H, W), weight (Cout, Cin // groups, kh, kw), bias (Cout,) or None
    -> y (N, Cout, Ho, Wo)

Statement: y[n,g,o,h,w] += x[n,g,c,h*sh+i*dh-pt, w*sw+j*dw-pl] * wt[g,o,c,i,j].""")

CATALOGUE = {op.name: op for op in (locally_connected2d, locally_connected1d, depthwise_conv2d, conv2d)}


def vjp(fn, dy, *args, backend="auto", wrt=None, out=None, grad="vjp", **kwargs):
    """Gradients of a catalogue op (a tuple, one entry per array argument)
    or an ``el.Op`` (a dict by operand name)."""
    method = getattr(fn, "vjp", None)
    if method is None or not hasattr(fn, "bind_arrays"):
        raise TypeError(f"el.vjp takes a catalogue op or an el.Op, got {fn!r}")
    return method(dy, *args, backend=backend, wrt=wrt, out=out, grad=grad, **kwargs)
