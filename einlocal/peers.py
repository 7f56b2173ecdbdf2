"""The peers: how people write these layers without einlocal, as plain functions timed beside einlocal's backends.

The peers of the report workloads (`einlocal.workloads`).  Every peer takes and
returns einlocal's layouts (NCHW; LC weight (Cout, Cin, kh, kw, Ho, Wo), bias
(Cout, Ho, Wo); depthwise/grouped weight (Cout, Cin // groups, kh, kw), bias
(Cout,)), and has a backward ``*_vjp(dy, x, weight, bias, ...) -> (dx,
dweight, dbias)`` (dbias None without a bias).

    lc2d_slices_concat_numpy      report 1: per-output-channel slices, concatenate
    lc2d_im2col_numpy             numpy im2col + one batched matmul per position
    lc2d_unfold_einsum_torch      report 2: PyTorch's F.unfold + einsum recipe
    lc2d_patches_einsum_jax       jax conv_general_dilated_patches + einsum
    lc2d_local_jax                jax.lax.conv_general_dilated_local
    grouped_conv2d_torch          F.conv2d(groups=...) (report 3: groups=C)
    grouped_conv2d_jax            jax.lax.conv_general_dilated(feature_group_count=...)
"""
from __future__ import annotations

import functools

import numpy as np

__all__ = ["PEERS", "lc2d_slices_concat_numpy", "lc2d_slices_concat_numpy_vjp", "lc2d_im2col_numpy",
           "lc2d_im2col_numpy_vjp", "lc2d_unfold_einsum_torch", "lc2d_unfold_einsum_torch_vjp",
           "lc2d_patches_einsum_jax", "lc2d_patches_einsum_jax_vjp", "lc2d_local_jax", "lc2d_local_jax_vjp",
           "grouped_conv2d_torch", "grouped_conv2d_torch_vjp", "grouped_conv2d_jax", "grouped_conv2d_jax_vjp"]


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _pads(padding):
    """int, pair or pair of pairs -> ((top, bottom), (left, right))."""
    if isinstance(padding, int):
        return ((padding, padding),) * 2
    return tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)


# -- numpy ------------------------------------------------------------------

def lc2d_slices_concat_numpy(x, weight, bias=None):
    """Report 1 (Flux Local2D) in numpy: for each output channel, the weighted
    sum of shifted input slices, then concatenate the channels.  Stride 1, no
    padding or dilation (as in the report).

    x (N, Cin, H, W), weight (Cout, Cin, kh, kw, Ho, Wo) -> (N, Cout, Ho, Wo)"""
    Cout, Cin, kh, kw, Ho, Wo = weight.shape
    chans = []
    for o in range(Cout):
        acc = sum((weight[o, :, i, j] * x[:, :, i:i + Ho, j:j + Wo]).sum(axis=1) for i in range(kh) for j in range(kw))
        if bias is not None:
            acc = acc + bias[o]
        chans.append(acc[:, None])
    return np.concatenate(chans, axis=1)


def lc2d_slices_concat_numpy_vjp(dy, x, weight, bias=None):
    """The same slices, written backwards by hand."""
    Cout, Cin, kh, kw, Ho, Wo = weight.shape
    dx = np.zeros_like(x)
    dw = np.empty_like(weight)
    for o in range(Cout):
        g = dy[:, o][:, None]                                  # (N, 1, Ho, Wo)
        for i in range(kh):
            for j in range(kw):
                dw[o, :, i, j] = (g * x[:, :, i:i + Ho, j:j + Wo]).sum(axis=0)
                dx[:, :, i:i + Ho, j:j + Wo] += g * weight[o, :, i, j]
    return dx, dw, (None if bias is None else dy.sum(axis=0))


def _im2col(x, kernel, stride, pads, dilation):
    """Patches laid out (positions, N, Cin*kh*kw), contiguous."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    xp = np.pad(x, ((0, 0), (0, 0), *pads)) if any(p for pr in pads for p in pr) else x
    win = np.lib.stride_tricks.sliding_window_view(xp, (dh * (kh - 1) + 1, dw * (kw - 1) + 1), axis=(2, 3))
    win = win[:, :, ::sh, ::sw, ::dh, ::dw]                    # (N, Cin, Ho, Wo, kh, kw)
    N, Cin, Ho, Wo = win.shape[:4]
    return np.ascontiguousarray(win.transpose(2, 3, 0, 1, 4, 5)).reshape(Ho * Wo, N, Cin * kh * kw)


def lc2d_im2col_numpy(x, weight, bias=None, *, stride=1, padding=0, dilation=1):
    """numpy im2col + matmul: patches (positions, N, K) against weights
    (positions, K, Cout), one batched matmul.  x (N, Cin, H, W) -> (N, Cout, Ho, Wo)"""
    Cout, Cin, kh, kw, Ho, Wo = weight.shape
    cols = _im2col(x, (kh, kw), _pair(stride), _pads(padding), _pair(dilation))
    wmat = weight.reshape(Cout, Cin * kh * kw, Ho * Wo).transpose(2, 1, 0)
    y = np.matmul(cols, wmat)                                  # (L, N, Cout)
    y = y.transpose(1, 2, 0).reshape(x.shape[0], Cout, Ho, Wo)
    return y + bias if bias is not None else y


def lc2d_im2col_numpy_vjp(dy, x, weight, bias=None, *, stride=1, padding=0, dilation=1):
    """im2col backward by hand: dW = patches^T dy per position; dx = col2im(dy W^T)."""
    Cout, Cin, kh, kw, Ho, Wo = weight.shape
    N = x.shape[0]
    (sh, sw), pads, (dh, dwl) = _pair(stride), _pads(padding), _pair(dilation)
    cols = _im2col(x, (kh, kw), (sh, sw), pads, (dh, dwl))
    g = np.ascontiguousarray(dy.reshape(N, Cout, Ho * Wo).transpose(2, 0, 1))   # (L, N, Cout)
    dwm = np.matmul(cols.transpose(0, 2, 1), g)                # (L, K, Cout)
    dweight = dwm.transpose(2, 1, 0).reshape(weight.shape)
    wmat = weight.reshape(Cout, Cin * kh * kw, Ho * Wo).transpose(2, 0, 1)      # (L, Cout, K)
    dcols = np.matmul(g, wmat).reshape(Ho, Wo, N, Cin, kh, kw)
    (pt, pb), (pl, pr) = pads
    H, W = x.shape[2:]
    dxp = np.zeros((N, Cin, H + pt + pb, W + pl + pr), x.dtype)
    for i in range(kh):
        for j in range(kw):
            dxp[:, :, i * dh:i * dh + sh * (Ho - 1) + 1:sh, j * dwl:j * dwl + sw * (Wo - 1) + 1:sw] += \
                dcols[:, :, :, :, i, j].transpose(2, 3, 0, 1)
    dx = dxp[:, :, pt:pt + H, pl:pl + W]
    return np.ascontiguousarray(dx), dweight, (None if bias is None else dy.sum(axis=0))


# -- torch ------------------------------------------------------------------

def lc2d_unfold_einsum_torch(x, weight, bias=None, *, stride=1, padding=0, dilation=1):
    """Report 2's PyTorch recipe: ``F.unfold`` to (N, Cin*kh*kw, L), then
    ``einsum`` against the weight laid out per position (Cout, Cin*kh*kw, L).
    Symmetric padding only (``F.unfold``).  x (N, Cin, H, W) -> (N, Cout, Ho, Wo)"""
    import torch
    import torch.nn.functional as F
    Cout, Cin, kh, kw, Ho, Wo = weight.shape
    cols = F.unfold(x, (kh, kw), dilation=dilation, padding=padding, stride=stride)
    y = torch.einsum("nkl,okl->nol", cols, weight.reshape(Cout, Cin * kh * kw, Ho * Wo))
    y = y.reshape(x.shape[0], Cout, Ho, Wo)
    return y + bias if bias is not None else y


def _torch_vjp(fn, dy, x, weight, bias, **params):
    import torch
    leaves = [a.detach().requires_grad_() if a is not None else None for a in (x, weight, bias)]
    with torch.enable_grad():
        y = fn(*leaves, **params)
        grads = torch.autograd.grad(y, [a for a in leaves if a is not None], dy)
    grads = list(grads)
    return tuple(grads.pop(0) if a is not None else None for a in leaves)


def lc2d_unfold_einsum_torch_vjp(dy, x, weight, bias=None, **params):
    """torch autograd through the unfold + einsum recipe."""
    return _torch_vjp(lc2d_unfold_einsum_torch, dy, x, weight, bias, **params)


def grouped_conv2d_torch(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1):
    """``F.conv2d(groups=...)``: oneDNN/cuDNN.  Depthwise is groups=Cin with
    weight (Cin*m, 1, kh, kw).  Padding: int, pair or ((t, b), (l, r))."""
    import torch.nn.functional as F
    pads = _pads(padding)
    if any(a != b for a, b in pads):
        x = F.pad(x, (*pads[1], *pads[0]))
        pads = ((0, 0), (0, 0))
    return F.conv2d(x, weight, bias, stride, (pads[0][0], pads[1][0]), dilation, groups)


def grouped_conv2d_torch_vjp(dy, x, weight, bias=None, **params):
    """torch autograd through F.conv2d."""
    return _torch_vjp(grouped_conv2d_torch, dy, x, weight, bias, **params)


# -- jax --------------------------------------------------------------------

def _jax_lc_patches(x, weight, bias, stride, pads, dilation):
    import jax.numpy as jnp
    from jax import lax
    Cout, Cin, kh, kw, Ho, Wo = weight.shape
    patches = lax.conv_general_dilated_patches(x, (kh, kw), stride, pads, rhs_dilation=dilation,
                                               dimension_numbers=("NCHW", "OIHW", "NCHW"),
                                               precision=lax.Precision.HIGHEST)   # (N, Cin*kh*kw, Ho, Wo)
    y = jnp.einsum("nkhw,okhw->nohw", patches, weight.reshape(Cout, Cin * kh * kw, Ho, Wo),
                   precision=lax.Precision.HIGHEST)
    return y + bias if bias is not None else y


def _jax_lc_local(x, weight, bias, stride, pads, dilation):
    from jax import lax
    Cout, Cin, kh, kw, Ho, Wo = weight.shape
    hi = lax.Precision.HIGHEST
    y = lax.conv_general_dilated_local(x, weight.reshape(Cout, Cin * kh * kw, Ho, Wo), stride, pads, (kh, kw),
                                       rhs_dilation=dilation, dimension_numbers=("NCHW", "OIHW", "NCHW"),
                                       precision=(hi, hi))
    return y + bias if bias is not None else y


def _jax_grouped(x, weight, bias, stride, pads, dilation, groups):
    from jax import lax
    y = lax.conv_general_dilated(x, weight, stride, pads, rhs_dilation=dilation,
                                 dimension_numbers=("NCHW", "OIHW", "NCHW"), feature_group_count=groups,
                                 precision=lax.Precision.HIGHEST)
    return y + bias[None, :, None, None] if bias is not None else y


@functools.lru_cache(maxsize=None)
def _jax_jitted(name: str, has_bias: bool, static: tuple):
    """(forward, vjp) jitted for one peer and its static parameters."""
    import jax
    body = {"patches": _jax_lc_patches, "local": _jax_lc_local, "grouped": _jax_grouped}[name]

    def fwd(x, weight, bias):
        return body(x, weight, bias if has_bias else None, *static)

    def vjp(dy, x, weight, bias):
        args = (x, weight, bias) if has_bias else (x, weight)
        _, pull = jax.vjp(lambda *a: fwd(*a, *(() if has_bias else (None,))), *args)
        g = pull(dy)
        return tuple(g) + (() if has_bias else (None,))
    return jax.jit(fwd), jax.jit(vjp)


def _lc_static(stride, padding, dilation):
    return (_pair(stride), _pads(padding), _pair(dilation))


def lc2d_patches_einsum_jax(x, weight, bias=None, *, stride=1, padding=0, dilation=1):
    """jax: ``lax.conv_general_dilated_patches`` (N, Cin*kh*kw, Ho, Wo) then
    ``einsum`` with the weight per position; jitted."""
    return _jax_jitted("patches", bias is not None, _lc_static(stride, padding, dilation))[0](x, weight, bias)


def lc2d_patches_einsum_jax_vjp(dy, x, weight, bias=None, *, stride=1, padding=0, dilation=1):
    """jax.vjp of the patches + einsum peer, jitted."""
    return _jax_jitted("patches", bias is not None, _lc_static(stride, padding, dilation))[1](dy, x, weight, bias)


def lc2d_local_jax(x, weight, bias=None, *, stride=1, padding=0, dilation=1):
    """``jax.lax.conv_general_dilated_local`` (weight (Cout, Cin*kh*kw, Ho, Wo)); jitted."""
    return _jax_jitted("local", bias is not None, _lc_static(stride, padding, dilation))[0](x, weight, bias)


def lc2d_local_jax_vjp(dy, x, weight, bias=None, *, stride=1, padding=0, dilation=1):
    """jax.vjp of conv_general_dilated_local, jitted."""
    return _jax_jitted("local", bias is not None, _lc_static(stride, padding, dilation))[1](dy, x, weight, bias)


def grouped_conv2d_jax(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1):
    """``jax.lax.conv_general_dilated(feature_group_count=groups)``; jitted."""
    static = (*_lc_static(stride, padding, dilation), groups)
    return _jax_jitted("grouped", bias is not None, static)[0](x, weight, bias)


def grouped_conv2d_jax_vjp(dy, x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1):
    """jax.vjp of conv_general_dilated, jitted."""
    static = (*_lc_static(stride, padding, dilation), groups)
    return _jax_jitted("grouped", bias is not None, static)[1](dy, x, weight, bias)


# name -> (forward, backward, library, op it computes)
PEERS = {
    "slices+concatenate (numpy)": (lc2d_slices_concat_numpy, lc2d_slices_concat_numpy_vjp, "numpy", "locally_connected2d"),
    "im2col+matmul (numpy)": (lc2d_im2col_numpy, lc2d_im2col_numpy_vjp, "numpy", "locally_connected2d"),
    "unfold+einsum (torch)": (lc2d_unfold_einsum_torch, lc2d_unfold_einsum_torch_vjp, "torch", "locally_connected2d"),
    "patches+einsum (jax)": (lc2d_patches_einsum_jax, lc2d_patches_einsum_jax_vjp, "jax", "locally_connected2d"),
    "conv_general_dilated_local (jax)": (lc2d_local_jax, lc2d_local_jax_vjp, "jax", "locally_connected2d"),
    "F.conv2d(groups) (torch)": (grouped_conv2d_torch, grouped_conv2d_torch_vjp, "torch", "conv2d"),
    "conv_general_dilated (jax)": (grouped_conv2d_jax, grouped_conv2d_jax_vjp, "jax", "conv2d"),
}

# peers that make the very library call a native backend makes (its forward, and autograd through
# it for the backward): `einlocal compare --quick` times the native one and lists these as such
SAME_CALL = {
    "conv_general_dilated_local (jax)": "native:jax",
    "F.conv2d(groups) (torch)": "native:torch",
    "conv_general_dilated (jax)": "native:jax",
}
