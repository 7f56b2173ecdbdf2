"""einlocal for JAX users: the catalogue ops as jax functions, and parameter
initialisation.

    import jax, einlocal.jax as elj
    params = elj.init_locally_connected2d(jax.random.key(0), 3, 8, 3, (32, 32))
    y = elj.locally_connected2d(x, params["weight"], params["bias"], padding=1)

The functions work under ``jax.jit``, ``jax.grad``/``jax.vjp`` (the derived
backward statements run, not jax's transpose of the forward lowering),
``jax.jvp``/``jax.linearize`` (the op is linear in each argument, so the
tangent is the op applied to each tangent), ``jax.vmap`` (a batch of inputs is
folded into the op's batch axis) and ``jax.hessian`` -- see
``einlocal.backends.autograd_jax``.  Shapes and parameters are those of
docs/ops.md; numpy inputs are taken as ``jnp.asarray`` takes them, as jax.numpy
functions do.  ``backend`` is any jax backend name (``el.backends()``);
the default, ``"einsum:jax"``, needs no measuring inside a trace.
No flax dependency: parameters are a plain dict ``{"weight": ..., "bias": ...}``.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from einlocal import catalogue
from einlocal.catalogue import _out_size, _padding, _tuple, depthwise_multiplier
from einlocal.errors import ShapeError

__all__ = ["locally_connected2d", "locally_connected1d", "depthwise_conv2d", "conv2d",
           "init_locally_connected2d", "init_locally_connected1d", "init_depthwise_conv2d", "init_conv2d",
           "DEFAULT_BACKEND"]

DEFAULT_BACKEND = "einsum:jax"


def _as_jax(a):
    return a if a is None or isinstance(a, jax.Array) else jnp.asarray(a)


def _run(op, x, weight, bias, backend, params):
    return op(_as_jax(x), _as_jax(weight), _as_jax(bias), backend=backend, **params)


def locally_connected2d(x, weight, bias=None, *, stride=1, padding=0, dilation=1, backend=DEFAULT_BACKEND):
    """x (N, Cin, H, W), weight (Cout, Cin, kh, kw, Ho, Wo), bias (Cout, Ho, Wo) or None
    -> (N, Cout, Ho, Wo).  ``el.locally_connected2d`` on jax arrays."""
    return _run(catalogue.locally_connected2d, x, weight, bias, backend,
                dict(stride=stride, padding=padding, dilation=dilation))


def locally_connected1d(x, weight, bias=None, *, stride=1, padding=0, dilation=1, backend=DEFAULT_BACKEND):
    """x (N, Cin, L), weight (Cout, Cin, k, Lo), bias (Cout, Lo) or None -> (N, Cout, Lo)."""
    return _run(catalogue.locally_connected1d, x, weight, bias, backend,
                dict(stride=stride, padding=padding, dilation=dilation))


def depthwise_conv2d(x, weight, bias=None, *, stride=1, padding=0, dilation=1, backend=DEFAULT_BACKEND):
    """x (N, C, H, W), weight (C*m, 1, kh, kw), bias (C*m,) or None -> (N, C*m, Ho, Wo)."""
    return _run(catalogue.depthwise_conv2d, x, weight, bias, backend,
                dict(stride=stride, padding=padding, dilation=dilation))


def conv2d(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1, backend=DEFAULT_BACKEND):
    """x (N, Cin, H, W), weight (Cout, Cin // groups, kh, kw), bias (Cout,) or None
    -> (N, Cout, Ho, Wo)."""
    return _run(catalogue.conv2d, x, weight, bias, backend,
                dict(stride=stride, padding=padding, dilation=dilation, groups=groups))


# -- initialisation ---------------------------------------------------------------

def _uniform(key, shape, fan_in: int, dtype):
    """torch.nn.Conv2d's scheme: kaiming_uniform(a=sqrt(5)) is U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def _params(key, weight_shape, bias_shape, fan_in, bias, dtype) -> dict:
    kw, kb = jax.random.split(key)
    return {"weight": _uniform(kw, weight_shape, fan_in, dtype),
            "bias": _uniform(kb, bias_shape, fan_in, dtype) if bias else None}


def _output_size(ndim, input_size, kernel, stride, padding, dilation):
    size = _tuple(input_size, ndim, "input_size", minimum=1)
    stride = _tuple(stride, ndim, "stride", minimum=1)
    dilation = _tuple(dilation, ndim, "dilation", minimum=1)
    if padding == "same":
        _padding(padding, kernel, dilation, stride)   # checks stride 1
        return size
    pads = _padding(padding, kernel, dilation, stride)
    return tuple(_out_size(size[a], pads[a], kernel[a], dilation[a], stride[a], f"{a} of input_size")
                 for a in range(ndim))


def init_locally_connected2d(key, in_channels: int, out_channels: int, kernel_size, input_size, *,
                             stride=1, padding=0, dilation=1, bias=True, dtype=jnp.float32) -> dict:
    """{"weight": (Cout, Cin, kh, kw, Ho, Wo), "bias": (Cout, Ho, Wo) or None}, uniform in
    +-1/sqrt(Cin*kh*kw) like torch.nn.Conv2d; ``input_size`` is (H, W)."""
    k = _tuple(kernel_size, 2, "kernel_size", minimum=1)
    out = _output_size(2, input_size, k, stride, padding, dilation)
    return _params(key, (out_channels, in_channels, *k, *out), (out_channels, *out),
                   in_channels * k[0] * k[1], bias, dtype)


def init_locally_connected1d(key, in_channels: int, out_channels: int, kernel_size, input_size, *,
                             stride=1, padding=0, dilation=1, bias=True, dtype=jnp.float32) -> dict:
    """{"weight": (Cout, Cin, k, Lo), "bias": (Cout, Lo) or None}; ``input_size`` is L."""
    k = _tuple(kernel_size, 1, "kernel_size", minimum=1)
    out = _output_size(1, input_size, k, stride, padding, dilation)
    return _params(key, (out_channels, in_channels, *k, *out), (out_channels, *out), in_channels * k[0], bias, dtype)


def init_depthwise_conv2d(key, in_channels: int, out_channels: int | None = None, kernel_size=None, *,
                          depth_multiplier: int | None = None, bias=True, dtype=jnp.float32) -> dict:
    """{"weight": (out_channels, 1, kh, kw), "bias": (out_channels,) or None}, as
    ``nn.Conv2d(in_channels, out_channels, kernel_size, groups=in_channels)``: out_channels a
    multiple of in_channels (or ``depth_multiplier=m`` for out_channels = in_channels * m);
    fan-in kh*kw."""
    m = depthwise_multiplier(in_channels, out_channels, depth_multiplier, "init_depthwise_conv2d")
    if kernel_size is None:
        raise ShapeError("init_depthwise_conv2d: kernel_size is required")
    k = _tuple(kernel_size, 2, "kernel_size", minimum=1)
    out = int(in_channels) * m
    return _params(key, (out, 1, *k), (out,), k[0] * k[1], bias, dtype)


def init_conv2d(key, in_channels: int, out_channels: int, kernel_size, *, groups=1, bias=True,
                dtype=jnp.float32) -> dict:
    """{"weight": (Cout, Cin // groups, kh, kw), "bias": (Cout,) or None}, as torch.nn.Conv2d."""
    k = _tuple(kernel_size, 2, "kernel_size", minimum=1)
    if in_channels % groups or out_channels % groups:
        from einlocal.errors import ShapeError
        raise ShapeError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
    fan_in = in_channels // groups * k[0] * k[1]
    return _params(key, (out_channels, in_channels // groups, *k), (out_channels,), fan_in, bias, dtype)
