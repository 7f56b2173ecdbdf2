"""Weights from elsewhere: converters between einlocal's layouts (docs/ops.md)
and those of Keras ``LocallyConnected1D/2D``, ``jax.lax.conv_general_dilated_local``
/ flax ``ConvLocal``, and PyTorch ``nn.Conv2d``.

einlocal's layouts: locally connected 2d weight (Cout, Cin, kh, kw, Ho, Wo),
bias (Cout, Ho, Wo); 1d weight (Cout, Cin, k, Lo), bias (Cout, Lo);
depthwise weight (C*m, 1, kh, kw), bias (C*m,).

The array converters take and return numpy, torch, jax or cupy arrays (the
result is of the input's library, contiguous).  The ``*_torch_conv``
converters build modules of ``einlocal.torch``.
"""
from __future__ import annotations

import math

from .arrays import library_of, shape_of
from .errors import ShapeError

__all__ = [
    "to_keras_locally_connected2d", "from_keras_locally_connected2d",
    "to_keras_locally_connected1d", "from_keras_locally_connected1d",
    "to_jax_local", "from_jax_local", "to_flax_conv_local", "from_flax_conv_local",
    "depthwise_from_torch_conv", "to_torch_conv", "locally_connected_from_torch_conv",
]

_FORMATS = ("channels_last", "channels_first")


def _permute(a, axes):
    """``a`` transposed to ``axes``, contiguous, in its own library."""
    lib = library_of(a)
    if lib == "torch":
        return a.permute(*axes).contiguous()
    if lib == "numpy":
        import numpy as np
        return np.ascontiguousarray(a.transpose(axes))
    if lib == "cupy":
        import cupy
        return cupy.ascontiguousarray(a.transpose(axes))
    if lib == "jax":
        return a.transpose(axes)
    raise ShapeError(f"expected a numpy, torch, jax or cupy array, got {type(a).__name__}")


def _reshape(a, shape):
    return a.reshape(tuple(shape))


def _ndim(a, n: int, what: str, layout: str) -> tuple[int, ...]:
    if library_of(a) is None:
        raise ShapeError(f"{what} must be a numpy, torch, jax or cupy array, got {type(a).__name__}")
    s = shape_of(a)
    if len(s) != n:
        raise ShapeError(f"{what} must have {n} axes {layout}, got shape {s}")
    return s


def _format(data_format: str) -> bool:
    """True for channels_last."""
    if data_format not in _FORMATS:
        raise ShapeError(f"data_format must be 'channels_last' or 'channels_first', got {data_format!r}")
    return data_format == "channels_last"


def _pair(v, what: str) -> tuple[int, ...]:
    t = (v, v) if isinstance(v, int) else tuple(v)
    if len(t) != 2 or not all(isinstance(e, int) and e >= 1 for e in t):
        raise ShapeError(f"{what} must be a positive int or pair, got {v!r}")
    return t


# --------------------------------------------------------------------------
# Keras LocallyConnected2D / 1D (implementation=1, the default).
#
# Keras' kernel is (Ho*Wo, kh*kw*Cin, Cout): output positions row-major, and
# each patch flattened as the input slice is laid out, so (kh, kw, Cin) with
# channels_last and (Cin, kh, kw) with channels_first.  Its bias is stored
# (Ho, Wo, Cout) in both formats; with channels_first, Keras' bias_add
# *reshapes* (does not transpose) it to (Cout, Ho, Wo).

def to_keras_locally_connected2d(weight, bias=None, *, data_format: str = "channels_last"):
    """einlocal (weight (Cout, Cin, kh, kw, Ho, Wo), bias (Cout, Ho, Wo) or
    None) -> Keras LocallyConnected2D (kernel (Ho*Wo, kh*kw*Cin, Cout), bias
    (Ho, Wo, Cout) or None)."""
    last = _format(data_format)
    Cout, Cin, kh, kw, Ho, Wo = _ndim(weight, 6, "weight", "(Cout, Cin, kh, kw, Ho, Wo)")
    axes = (4, 5, 2, 3, 1, 0) if last else (4, 5, 1, 2, 3, 0)
    kernel = _reshape(_permute(weight, axes), (Ho * Wo, kh * kw * Cin, Cout))
    if bias is None:
        return kernel, None
    _check_shape(bias, (Cout, Ho, Wo), "bias", "(Cout, Ho, Wo)")
    return kernel, (_permute(bias, (1, 2, 0)) if last else _copy(_reshape(bias, (Ho, Wo, Cout))))


def from_keras_locally_connected2d(kernel, bias=None, *, kernel_size, output_size,
                                   data_format: str = "channels_last"):
    """Keras LocallyConnected2D (kernel (Ho*Wo, kh*kw*Cin, Cout), bias
    (Ho, Wo, Cout) or None) -> einlocal (weight (Cout, Cin, kh, kw, Ho, Wo),
    bias (Cout, Ho, Wo) or None).  ``kernel_size`` (kh, kw) and
    ``output_size`` (Ho, Wo) unflatten Keras' merged axes."""
    last = _format(data_format)
    P, F, Cout = _ndim(kernel, 3, "kernel", "(Ho*Wo, kh*kw*Cin, Cout)")
    kh, kw = _pair(kernel_size, "kernel_size")
    Ho, Wo = _pair(output_size, "output_size")
    if P != Ho * Wo:
        raise ShapeError(f"kernel axis 0 is {P} but output_size {(Ho, Wo)} gives Ho*Wo = {Ho * Wo}")
    if F % (kh * kw):
        raise ShapeError(f"kernel axis 1 is {F}, not a multiple of kh*kw = {kh}*{kw} = {kh * kw}")
    Cin = F // (kh * kw)
    if last:
        weight = _permute(_reshape(kernel, (Ho, Wo, kh, kw, Cin, Cout)), (5, 4, 2, 3, 0, 1))
    else:
        weight = _permute(_reshape(kernel, (Ho, Wo, Cin, kh, kw, Cout)), (5, 2, 3, 4, 0, 1))
    if bias is None:
        return weight, None
    _check_shape(bias, (Ho, Wo, Cout), "bias", "(Ho, Wo, Cout)")
    return weight, (_permute(bias, (2, 0, 1)) if last else _copy(_reshape(bias, (Cout, Ho, Wo))))


def to_keras_locally_connected1d(weight, bias=None, *, data_format: str = "channels_last"):
    """einlocal (weight (Cout, Cin, k, Lo), bias (Cout, Lo) or None) ->
    Keras LocallyConnected1D (kernel (Lo, k*Cin, Cout), bias (Lo, Cout) or None)."""
    last = _format(data_format)
    Cout, Cin, k, Lo = _ndim(weight, 4, "weight", "(Cout, Cin, k, Lo)")
    kernel = _reshape(_permute(weight, (3, 2, 1, 0) if last else (3, 1, 2, 0)), (Lo, k * Cin, Cout))
    if bias is None:
        return kernel, None
    _check_shape(bias, (Cout, Lo), "bias", "(Cout, Lo)")
    return kernel, (_permute(bias, (1, 0)) if last else _copy(_reshape(bias, (Lo, Cout))))


def from_keras_locally_connected1d(kernel, bias=None, *, kernel_size: int, data_format: str = "channels_last"):
    """Keras LocallyConnected1D (kernel (Lo, k*Cin, Cout), bias (Lo, Cout) or
    None) -> einlocal (weight (Cout, Cin, k, Lo), bias (Cout, Lo) or None)."""
    last = _format(data_format)
    Lo, F, Cout = _ndim(kernel, 3, "kernel", "(Lo, k*Cin, Cout)")
    if not isinstance(kernel_size, int) or kernel_size < 1:
        raise ShapeError(f"kernel_size must be a positive int, got {kernel_size!r}")
    k = kernel_size
    if F % k:
        raise ShapeError(f"kernel axis 1 is {F}, not a multiple of kernel_size {k}")
    Cin = F // k
    if last:
        weight = _permute(_reshape(kernel, (Lo, k, Cin, Cout)), (3, 2, 1, 0))
    else:
        weight = _permute(_reshape(kernel, (Lo, Cin, k, Cout)), (3, 1, 2, 0))
    if bias is None:
        return weight, None
    _check_shape(bias, (Lo, Cout), "bias", "(Lo, Cout)")
    return weight, (_permute(bias, (1, 0)) if last else _copy(_reshape(bias, (Cout, Lo))))


def _check_shape(a, shape, what: str, layout: str):
    s = _ndim(a, len(shape), what, layout)
    if s != tuple(shape):
        raise ShapeError(f"{what} must have shape {tuple(shape)} {layout}, got {s}")


def _copy(a):
    lib = library_of(a)
    if lib == "torch":
        return a.clone()
    if lib == "jax":
        return a
    return a.copy()


# --------------------------------------------------------------------------
# jax.lax.conv_general_dilated_local and flax ConvLocal.
#
# The local kernel's axes are named by ``rhs_spec`` (e.g. "OIHW", the
# default, or "HWIO", flax's): O = Cout, H and W = the *output* positions,
# and I = Cin fused with the receptive window, flattened in the order
# "C" + the spatial letters as they appear in rhs_spec.  H is einlocal's
# first spatial axis and W its second.

def _jax_axes(rhs_spec: str):
    """einlocal axes (o=0, c=1, i=2, j=3, h=4, w=5) in rhs_spec order, with
    the I group expanded."""
    if not isinstance(rhs_spec, str) or sorted(rhs_spec) != sorted("OIHW"):
        raise ShapeError(f"rhs_spec must be a permutation of 'OIHW' (H, W: the output positions), got {rhs_spec!r}")
    window = {"H": 2, "W": 3}
    spatial = [ch for ch in rhs_spec if ch in "HW"]
    axes, groups = [], []
    for ch in rhs_spec:
        if ch == "O":
            group = [0]
        elif ch == "I":
            group = [1] + [window[s] for s in spatial]
        else:
            group = [{"H": 4, "W": 5}[ch]]
        axes += group
        groups.append(group)
    return axes, groups


def to_jax_local(weight, rhs_spec: str = "OIHW"):
    """einlocal weight (Cout, Cin, kh, kw, Ho, Wo) -> the ``rhs`` of
    ``jax.lax.conv_general_dilated_local`` with ``rhs_spec`` (default
    "OIHW": (Cout, Cin*kh*kw, Ho, Wo), a free reshape; flax's "HWIO":
    (Ho, Wo, Cin*kh*kw, Cout)).  Call jax with ``filter_shape``,
    ``window_strides``, ``padding`` and ``rhs_dilation`` listed in the order
    H and W appear in rhs_spec."""
    shape = _ndim(weight, 6, "weight", "(Cout, Cin, kh, kw, Ho, Wo)")
    axes, groups = _jax_axes(rhs_spec)
    return _reshape(_permute(weight, axes), [math.prod(shape[a] for a in g) for g in groups])


def from_jax_local(kernel, kernel_size, rhs_spec: str = "OIHW"):
    """The ``rhs`` of ``jax.lax.conv_general_dilated_local`` with
    ``rhs_spec`` -> einlocal weight (Cout, Cin, kh, kw, Ho, Wo).
    ``kernel_size`` is (kh, kw) in einlocal's order (H first)."""
    shape = _ndim(kernel, 4, "kernel", f"({', '.join(rhs_spec)})")
    kh, kw = _pair(kernel_size, "kernel_size")
    axes, groups = _jax_axes(rhs_spec)
    fused = shape[rhs_spec.index("I")]
    if fused % (kh * kw):
        raise ShapeError(f"kernel axis {rhs_spec.index('I')} (I) is {fused}, not a multiple of kh*kw = {kh * kw}")
    sizes = {0: shape[rhs_spec.index("O")], 1: fused // (kh * kw), 2: kh, 3: kw,
             4: shape[rhs_spec.index("H")], 5: shape[rhs_spec.index("W")]}
    expanded = _reshape(kernel, [sizes[a] for a in axes])
    inverse = [axes.index(a) for a in range(6)]
    return _permute(expanded, inverse)


def to_flax_conv_local(weight, bias=None):
    """einlocal (weight (Cout, Cin, kh, kw, Ho, Wo), bias (Cout, Ho, Wo) or
    None) -> flax ``ConvLocal`` params (kernel (Ho, Wo, Cin*kh*kw, Cout),
    bias (Ho, Wo, Cout) or None), for NHWC inputs."""
    kernel = to_jax_local(weight, "HWIO")
    if bias is None:
        return kernel, None
    Cout, _, _, _, Ho, Wo = shape_of(weight)
    _check_shape(bias, (Cout, Ho, Wo), "bias", "(Cout, Ho, Wo)")
    return kernel, _permute(bias, (1, 2, 0))


def from_flax_conv_local(kernel, bias=None, *, kernel_size):
    """flax ``ConvLocal`` params (kernel (Ho, Wo, Cin*kh*kw, Cout), bias
    (Ho, Wo, Cout) or None) -> einlocal (weight, bias)."""
    weight = from_jax_local(kernel, kernel_size, "HWIO")
    if bias is None:
        return weight, None
    Cout, _, _, _, Ho, Wo = shape_of(weight)
    _check_shape(bias, (Ho, Wo, Cout), "bias", "(Ho, Wo, Cout)")
    return weight, _permute(bias, (2, 0, 1))


# --------------------------------------------------------------------------
# PyTorch nn.Conv2d.  A depthwise ``nn.Conv2d(C, C*m, k, groups=C)`` weight
# (C*m, 1, kh, kw) is already einlocal's depthwise layout, and a grouped
# conv's weight (Cout, Cin // groups, kh, kw) is el.conv2d's: these build
# modules, copying the parameters.

def _conv_padding(conv):
    if isinstance(conv.padding, str):
        return conv.padding
    return tuple(conv.padding)


def _check_conv(conv, what: str):
    import torch
    if not isinstance(conv, torch.nn.Conv2d):
        raise ShapeError(f"{what} takes a torch.nn.Conv2d, got {type(conv).__name__}")
    if conv.padding_mode != "zeros":
        raise ShapeError(f"{what}: padding_mode={conv.padding_mode!r} is not supported (einlocal pads with zeros)")


def depthwise_from_torch_conv(conv, *, backend: str = "auto"):
    """``nn.Conv2d(C, C*m, k, groups=C)`` -> ``einlocal.torch.DepthwiseConv2d``
    with the same parameters (copied), device and dtype."""
    import torch
    from .torch import DepthwiseConv2d
    _check_conv(conv, "depthwise_from_torch_conv")
    C, out = conv.in_channels, conv.out_channels
    if conv.groups != C or out % C:
        raise ShapeError(f"depthwise_from_torch_conv needs groups == in_channels and out_channels a multiple of "
                         f"it; got in_channels {C}, out_channels {out}, groups {conv.groups}")
    layer = DepthwiseConv2d(C, out, tuple(conv.kernel_size), stride=tuple(conv.stride),
                            padding=_conv_padding(conv), dilation=tuple(conv.dilation), bias=conv.bias is not None,
                            backend=backend, device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(conv.weight)
        if conv.bias is not None:
            layer.bias.copy_(conv.bias)
    return layer


def to_torch_conv(layer):
    """``einlocal.torch.DepthwiseConv2d`` -> the equivalent
    ``nn.Conv2d(C, C*m, k, groups=C)`` with the same parameters (copied)."""
    import torch
    from .torch import DepthwiseConv2d
    if not isinstance(layer, DepthwiseConv2d):
        raise ShapeError(f"to_torch_conv takes an einlocal.torch.DepthwiseConv2d, got {type(layer).__name__} "
                         f"(a locally connected layer has no nn.Conv2d equivalent)")
    pads = layer.padding
    if any(a != b for a, b in pads):
        raise ShapeError(f"to_torch_conv: nn.Conv2d pads symmetrically, but this layer's padding is {pads}")
    conv = torch.nn.Conv2d(layer.channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                           padding=tuple(a for a, _ in pads), dilation=layer.dilation, groups=layer.channels,
                           bias=layer.bias is not None, device=layer.weight.device, dtype=layer.weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(layer.weight)
        if layer.bias is not None:
            conv.bias.copy_(layer.bias)
    return conv


def locally_connected_from_torch_conv(conv, input_size, *, backend: str = "auto"):
    """A shared-weight ``nn.Conv2d`` (groups=1) -> an
    ``einlocal.torch.LocallyConnected2d`` for inputs of ``input_size`` whose
    every position starts with the conv's kernel (and bias): the same
    function, now free to untie while training."""
    import torch
    from .torch import LocallyConnected2d
    _check_conv(conv, "locally_connected_from_torch_conv")
    if conv.groups != 1:
        raise ShapeError(f"locally_connected_from_torch_conv needs groups=1, got groups={conv.groups}")
    layer = LocallyConnected2d(conv.in_channels, conv.out_channels, tuple(conv.kernel_size), input_size,
                               stride=tuple(conv.stride), padding=_conv_padding(conv),
                               dilation=tuple(conv.dilation), bias=conv.bias is not None, backend=backend,
                               device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(conv.weight[..., None, None].expand_as(layer.weight))
        if conv.bias is not None:
            layer.bias.copy_(conv.bias[:, None, None].expand_as(layer.bias))
    return layer
