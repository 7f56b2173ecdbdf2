"""PyTorch layers: ``LocallyConnected2d``, ``LocallyConnected1d`` and
``DepthwiseConv2d`` as ``torch.nn.Module``s, over einlocal ops registered as
``torch.library`` custom ops (``einlocal::locally_connected2d``, ...), so
they run under ``torch.compile`` without graph breaks.

    import einlocal.torch as elt
    layer = elt.LocallyConnected2d(4, 2, kernel_size=1, input_size=(256, 256))
    y = layer(x)                    # x (N, 4, 256, 256) -> y (N, 2, 256, 256)

The custom op's eager implementation calls the catalogue op (so
``backend="auto"`` is resolved there, never while tracing), its fake
implementation gives only the result's shape, and its autograd formula runs
einlocal's derived backward statements for the inputs autograd asks for.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from . import catalogue, registry
from .catalogue import _int, _out_size, _padding, _tuple, depthwise_multiplier
from .errors import BackendError, ShapeError

__all__ = ["LocallyConnected2d", "LocallyConnected1d", "DepthwiseConv2d",
           "locally_connected2d", "locally_connected1d", "depthwise_conv2d", "OPS"]


# --------------------------------------------------------------------------
# Custom ops: one forward and one gradient op per catalogue op.  Every op has
# the signature (x, weight, bias?, stride, padding, dilation, backend), with
# padding flattened to (before, after) per spatial axis.

def _pairs(flat: list[int]) -> tuple[tuple[int, int], ...]:
    return tuple((flat[k], flat[k + 1]) for k in range(0, len(flat), 2))


def _params(stride, padding, dilation) -> dict:
    return {"stride": tuple(stride), "padding": _pairs(padding), "dilation": tuple(dilation)}


def _lc_out_shape(ndim: int):
    def out_shape(x, weight, stride, padding, dilation):
        return (x.shape[0], weight.shape[0], *weight.shape[2 + ndim:])
    return out_shape


def _depthwise_out_shape(x, weight, stride, padding, dilation):
    kernel = weight.shape[2:]
    sizes = [(x.shape[2 + a] + padding[2 * a] + padding[2 * a + 1] - dilation[a] * (kernel[a] - 1) - 1)
             // stride[a] + 1 for a in range(2)]
    return (x.shape[0], weight.shape[0], *sizes)


def _register(name: str, op, out_shape):
    """Register ``einlocal::name`` and ``einlocal::name_vjp`` for catalogue
    op ``op``; returns the forward custom op."""

    @torch.library.custom_op(f"einlocal::{name}", mutates_args=())
    def forward_op(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: list[int], padding: list[int],
                   dilation: list[int], backend: str) -> Tensor:
        with torch.no_grad():      # autograd is this op's own formula below
            y = op(x, weight, bias, backend=backend, **_params(stride, padding, dilation))
        return y.contiguous()      # the layout the fake implementation promises, whatever the backend

    @forward_op.register_fake
    def _(x, weight, bias, stride, padding, dilation, backend):
        return x.new_empty(out_shape(x, weight, stride, padding, dilation))

    @torch.library.custom_op(f"einlocal::{name}_vjp", mutates_args=())
    def vjp_op(dy: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: list[int],
               padding: list[int], dilation: list[int], backend: str, wrt: list[bool]) -> list[Tensor]:
        names = tuple(n for n, want in zip(("x", "weight", "bias"), wrt) if want)
        with torch.no_grad():
            grads = op.vjp(dy, x, weight, bias, backend=backend, wrt=names, **_params(stride, padding, dilation))
        return [g.contiguous() for g, want in zip(grads, wrt) if want]

    @vjp_op.register_fake
    def _(dy, x, weight, bias, stride, padding, dilation, backend, wrt):
        return [a.new_empty(a.shape) for a, want in zip((x, weight, bias), wrt) if want]

    def setup_context(ctx, inputs, output):
        x, weight, bias, stride, padding, dilation, backend = inputs
        ctx.params = (stride, padding, dilation, backend)
        ctx.save_for_backward(x, weight, bias)

    def backward(ctx, dy):
        x, weight, bias = ctx.saved_tensors
        wrt = [bool(n) for n in ctx.needs_input_grad[:3]]
        wrt[2] = wrt[2] and bias is not None
        grads = iter(vjp_op(dy, x, weight, bias, *ctx.params, wrt) if any(wrt) else [])
        return (*(next(grads) if want else None for want in wrt), None, None, None, None)

    forward_op.register_autograd(backward, setup_context=setup_context)
    return forward_op


OPS = {
    "locally_connected2d": _register("locally_connected2d", catalogue.locally_connected2d, _lc_out_shape(2)),
    "locally_connected1d": _register("locally_connected1d", catalogue.locally_connected1d, _lc_out_shape(1)),
    "depthwise_conv2d": _register("depthwise_conv2d", catalogue.depthwise_conv2d, _depthwise_out_shape),
}


def _flat_args(ndim: int, kernel, stride, padding, dilation):
    """Public parameter forms -> the custom ops' int lists."""
    stride = _tuple(stride, ndim, "stride", minimum=1)
    dilation = _tuple(dilation, ndim, "dilation", minimum=1)
    pads = _padding(padding, tuple(kernel), dilation, stride)
    return list(stride), [p for pair in pads for p in pair], list(dilation)


def _functional(name: str, ndim: int, kernel_axes: slice):
    def fn(x: Tensor, weight: Tensor, bias: Tensor | None = None, *, stride=1, padding=0, dilation=1,
           backend: str = "auto") -> Tensor:
        s, p, d = _flat_args(ndim, weight.shape[kernel_axes], stride, padding, dilation)
        return OPS[name](x, weight, bias, s, p, d, backend)
    fn.__name__ = name
    fn.__doc__ = (f"``einlocal.{name}`` as a torch custom op (traceable by torch.compile); "
                  f"layouts as in einlocal.{name}.")
    return fn


locally_connected2d = _functional("locally_connected2d", 2, slice(2, 4))
locally_connected1d = _functional("locally_connected1d", 1, slice(2, 3))
depthwise_conv2d = _functional("depthwise_conv2d", 2, slice(2, 4))


# --------------------------------------------------------------------------
# Modules

def _positive(value, what: str) -> int:
    v = _int(value)
    if v is None or v < 1:
        raise ShapeError(f"{what} must be a positive int, got {value!r}")
    return v


def _check_backend(name) -> str:
    """'auto' or a registered name whose engine can take torch tensors."""
    if name == "auto":
        return name
    if not isinstance(name, str) or name not in registry.NAMES:
        raise BackendError(f"unknown backend {name!r}; valid names: auto, {', '.join(registry.NAMES)}")
    if name in registry.available() and "torch" not in registry.get(name).takes:
        raise BackendError(f"backend {name!r} takes {' or '.join(registry.get(name).takes)} arrays, not torch "
                           f"tensors; valid here: auto, {', '.join(_torch_backends())}")
    return name


def _torch_backends() -> list[str]:
    return [n for n in registry.available() if "torch" in registry.get(n).takes]


def _init_uniform_(tensor: Tensor, fan_in: int) -> None:
    """``nn.Conv2d.reset_parameters`` for a given fan-in: kaiming-uniform
    with a = sqrt(5), i.e. uniform(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    gain = nn.init.calculate_gain("leaky_relu", math.sqrt(5))
    bound = math.sqrt(3.0) * gain / math.sqrt(fan_in)
    nn.init.uniform_(tensor, -bound, bound)


class _Local(nn.Module):
    """Shared parts: parameters, initialisation, the forward call."""

    _op_name = ""
    ndim = 2

    def _setup(self, weight_shape, bias_shape, fan_in: int, bias: bool, backend, device, dtype):
        factory = {"device": device, "dtype": dtype}
        self.backend = _check_backend(backend)
        self.fan_in = fan_in
        self.weight = nn.Parameter(torch.empty(weight_shape, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(bias_shape, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """As ``nn.Conv2d``: weight and bias uniform in +-1/sqrt(fan_in)."""
        _init_uniform_(self.weight, self.fan_in)
        if self.bias is not None:
            bound = 1 / math.sqrt(self.fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def _flat_padding(self) -> list[int]:
        return [p for pair in self.padding for p in pair]

    def _check_input(self, x: Tensor, spatial) -> None:
        if x.dim() != 2 + self.ndim:
            raise ShapeError(f"{type(self).__name__} takes x with {2 + self.ndim} axes, got shape {tuple(x.shape)}")
        channels = self.weight.shape[1] if self._op_name != "depthwise_conv2d" else self.channels
        if x.shape[1] != channels:
            raise ShapeError(f"{type(self).__name__} expects {channels} input channels on x axis 1, "
                             f"got x of shape {tuple(x.shape)}")
        if spatial is not None and tuple(x.shape[2:]) != tuple(spatial):
            raise ShapeError(f"{type(self).__name__} was built for input_size {tuple(spatial)}, "
                             f"got x of shape {tuple(x.shape)}")

    def _call_op(self, x: Tensor) -> Tensor:
        if type(x) is Tensor and not torch.compiler.is_compiling():
            # eager: the catalogue op itself (its fast path for repeated calls; a native backend recorded
            # by autograd as it is); the custom op is what a compiled or exported graph holds
            return getattr(catalogue, self._op_name)(x, self.weight, self.bias, stride=self.stride,
                                                     padding=self.padding, dilation=self.dilation,
                                                     backend=self.backend)
        return OPS[self._op_name](x, self.weight, self.bias, list(self.stride), self._flat_padding(),
                                  list(self.dilation), self.backend)

    def _repr_tail(self) -> str:
        s = ""
        if any(p for pair in self.padding for p in pair):
            s += f", padding={self.padding}"
        if any(d != 1 for d in self.dilation):
            s += f", dilation={self.dilation}"
        if self.bias is None:
            s += ", bias=False"
        return s + f", backend={self.backend!r}"


class _LocallyConnected(_Local):
    def __init__(self, in_channels, out_channels, kernel_size, input_size, stride, padding, dilation, bias,
                 backend, device, dtype):
        super().__init__()
        n, name = self.ndim, type(self).__name__
        self.in_channels = _positive(in_channels, f"{name}: in_channels")
        self.out_channels = _positive(out_channels, f"{name}: out_channels")
        self.kernel_size = _tuple(kernel_size, n, f"{name}: kernel_size", minimum=1)
        self.input_size = _tuple(input_size, n, f"{name}: input_size", minimum=1)
        self.stride = _tuple(stride, n, f"{name}: stride", minimum=1)
        self.dilation = _tuple(dilation, n, f"{name}: dilation", minimum=1)
        self.padding = _padding(padding, self.kernel_size, self.dilation, self.stride, f"{name}: padding")
        self.output_size = self._output_size(name)
        fan_in = self.in_channels * math.prod(self.kernel_size)
        self._setup((self.out_channels, self.in_channels, *self.kernel_size, *self.output_size),
                    (self.out_channels, *self.output_size), fan_in, bias, backend, device, dtype)

    def _output_size(self, name: str) -> tuple[int, ...]:
        sizes = []
        for a in range(self.ndim):
            k, d, s, (before, after) = self.kernel_size[a], self.dilation[a], self.stride[a], self.padding[a]
            padded, span = self.input_size[a] + before + after, d * (k - 1) + 1
            if span > padded:
                raise ShapeError(
                    f"{name}: output size on spatial axis {a} would be non-positive: kernel extent {span} "
                    f"(kernel_size {k}, dilation {d}) exceeds the padded input {padded} "
                    f"(input_size {self.input_size[a]} + padding {before} + {after})")
            sizes.append(_out_size(self.input_size[a], (before, after), k, d, s, str(a)))
        return tuple(sizes)

    def forward(self, x: Tensor) -> Tensor:
        """x (N, Cin, *input_size) -> (N, Cout, *output_size)."""
        self._check_input(x, self.input_size)
        return self._call_op(x)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"input_size={self.input_size}, output_size={self.output_size}, stride={self.stride}"
                + self._repr_tail())


class LocallyConnected2d(_LocallyConnected):
    """A 2d convolution with one kernel per output position (Keras'
    LocallyConnected2D, in PyTorch's NCHW layout).

    x (N, in_channels, H, W) -> y (N, out_channels, Ho, Wo), where
    (H, W) = input_size and Ho, Wo follow nn.Conv2d's formula.
    weight (out_channels, in_channels, kh, kw, Ho, Wo); bias (out_channels, Ho, Wo).
    stride, dilation: int or pair; padding: int, pair, pair of pairs,
    'valid' or 'same'.  backend: 'auto' or a name from
    ``el.backends(el.locally_connected2d, like=x)``; it may be reassigned.
    Initialised as nn.Conv2d: uniform in +-1/sqrt(in_channels*kh*kw).
    """

    _op_name = "locally_connected2d"
    ndim = 2

    def __init__(self, in_channels: int, out_channels: int, kernel_size, input_size, stride=1, padding=0,
                 dilation=1, bias: bool = True, backend: str = "auto", device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, input_size, stride, padding, dilation, bias,
                         backend, device, dtype)


class LocallyConnected1d(_LocallyConnected):
    """A 1d convolution with one kernel per output position.

    x (N, in_channels, L) -> y (N, out_channels, Lo), L = input_size.
    weight (out_channels, in_channels, k, Lo); bias (out_channels, Lo).
    Initialised as nn.Conv1d: uniform in +-1/sqrt(in_channels*k).
    """

    _op_name = "locally_connected1d"
    ndim = 1

    def __init__(self, in_channels: int, out_channels: int, kernel_size, input_size, stride=1, padding=0,
                 dilation=1, bias: bool = True, backend: str = "auto", device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, input_size, stride, padding, dilation, bias,
                         backend, device, dtype)


class DepthwiseConv2d(_Local):
    """Depthwise 2d convolution, with ``nn.Conv2d``'s arguments:
    ``DepthwiseConv2d(in_channels, out_channels, kernel_size)`` is
    ``nn.Conv2d(in_channels, out_channels, kernel_size, groups=in_channels)``
    computed by einlocal; ``out_channels`` is a multiple of ``in_channels``
    (the channel multiplier ``out_channels // in_channels``).  Alternatively
    give ``depth_multiplier=m`` instead of ``out_channels`` (Keras' name).

    x (N, in_channels, H, W) -> y (N, out_channels, Ho, Wo); output channel
    c*m + k reads input channel c.
    weight (out_channels, 1, kh, kw) (PyTorch's layout); bias (out_channels,).
    Initialised as nn.Conv2d: uniform in +-1/sqrt(kh*kw).
    """

    _op_name = "depthwise_conv2d"
    ndim = 2

    def __init__(self, in_channels: int, out_channels: int | None = None, kernel_size=None, stride=1, padding=0,
                 dilation=1, bias: bool = True, backend: str = "auto", device=None, dtype=None, *,
                 depth_multiplier: int | None = None):
        super().__init__()
        name = type(self).__name__
        self.in_channels = self.channels = _positive(in_channels, f"{name}: in_channels")
        self.multiplier = depthwise_multiplier(in_channels, out_channels, depth_multiplier, name)
        if kernel_size is None:
            raise ShapeError(f"{name}: kernel_size is required")
        self.kernel_size = _tuple(kernel_size, 2, f"{name}: kernel_size", minimum=1)
        self.stride = _tuple(stride, 2, f"{name}: stride", minimum=1)
        self.dilation = _tuple(dilation, 2, f"{name}: dilation", minimum=1)
        self.padding = _padding(padding, self.kernel_size, self.dilation, self.stride, f"{name}: padding")
        # the smallest input the kernel's extent fits in, per spatial axis (padding counted)
        self._min_input = tuple(d * (k - 1) + 1 - sum(p)
                                for k, d, p in zip(self.kernel_size, self.dilation, self.padding))
        out = self.channels * self.multiplier
        self._setup((out, 1, *self.kernel_size), (out,), math.prod(self.kernel_size), bias, backend, device, dtype)

    @property
    def out_channels(self) -> int:
        return self.channels * self.multiplier

    def forward(self, x: Tensor) -> Tensor:
        """x (N, channels, H, W) -> (N, channels*multiplier, Ho, Wo)."""
        self._check_input(x, None)
        if x.shape[2] >= self._min_input[0] and x.shape[3] >= self._min_input[1]:
            return self._call_op(x)
        for a in range(2):
            (before, after), k, d = self.padding[a], self.kernel_size[a], self.dilation[a]
            if d * (k - 1) + 1 > x.shape[2 + a] + before + after:
                raise ShapeError(f"{type(self).__name__}: kernel extent {d * (k - 1) + 1} (kernel_size {k}, "
                                 f"dilation {d}) exceeds the padded input {x.shape[2 + a] + before + after} on "
                                 f"x axis {2 + a} (size {x.shape[2 + a]} + padding {before} + {after})")
        return self._call_op(x)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}" + self._repr_tail())
