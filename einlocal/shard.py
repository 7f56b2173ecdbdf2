"""A locally connected layer sharded over output rows across JAX devices.

A locally connected weight grows with the output area (one kernel per output
position), so the layer is split by output rows: device k of the mesh axis
holds rows [k*Ho/d, (k+1)*Ho/d) of the weight, the bias and the output, and
rows [k*H/d, (k+1)*H/d) of the input.  Its output rows read input rows

    [h0*S - P, (h1-1)*S + (kh-1)*D - P]      (S stride, P top padding, D dilation)

that is its own block plus a halo of a few rows from each neighbour, which
arrive by ``jax.lax.ppermute`` (a collective-permute of halo size).  The
first device's top halo and the last device's bottom halo are zeros: the
padding.  Neither the weight nor the input is ever gathered; the backward
pass (``jax.grad``) moves the halo gradients back the same way, and each
device runs the derived backward statements on its own block.

    import jax, einlocal.shard as shard
    mesh = shard.mesh()                               # every device, axis "rows"
    x, w, b = shard.place(mesh, x, w, b)              # each device gets its rows
    y = jax.jit(lambda x, w, b: shard.locally_connected2d(x, w, b, mesh=mesh, padding=1))(x, w, b)

The same code runs on several GPUs: ``shard.mesh()`` spans ``jax.devices()``,
which lists the GPUs of a multi-GPU host (or, after
``jax.distributed.initialize()``, of every host), and XLA lowers the
collective-permutes to NCCL point-to-point transfers.  On a CPU, two host
devices come from ``XLA_FLAGS=--xla_force_host_platform_device_count=2``
(set before jax is imported).  The mesh axis size must divide both H and Ho.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from einlocal.catalogue import _out_size, _padding, _tuple
from einlocal.errors import ShapeError

__all__ = ["mesh", "place", "specs", "halo", "locally_connected2d"]


def mesh(devices=None, axis: str = "rows") -> Mesh:
    """A one-axis mesh over ``devices`` (default: every device, ``jax.devices()``)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.array(devices), (axis,))


def specs(axis: str = "rows") -> dict:
    """PartitionSpecs of x (N, Cin, H, W), weight (Cout, Cin, kh, kw, Ho, Wo),
    bias (Cout, Ho, Wo) and y (N, Cout, Ho, Wo): rows split over ``axis``."""
    return {"x": P(None, None, axis, None), "weight": P(None, None, None, None, axis, None),
            "bias": P(None, axis, None), "y": P(None, None, axis, None)}


def place(mesh: Mesh, x, weight, bias=None, axis: str | None = None):
    """(x, weight, bias) put on the mesh, each device holding its rows."""
    axis = axis or mesh.axis_names[0]
    s = specs(axis)
    put = lambda a, k: None if a is None else jax.device_put(a, NamedSharding(mesh, s[k]))  # noqa: E731
    return put(x, "x"), put(weight, "weight"), put(bias, "bias")


def halo(H: int, Ho: int, devices: int, kernel: int, stride: int = 1, pad_top: int = 0, dilation: int = 1):
    """(rows from the device above, rows from the device below, input rows
    each device reads, per-device start offsets into [above | own | below])."""
    hb, Hb = Ho // devices, H // devices
    span = (hb - 1) * stride + (kernel - 1) * dilation + 1
    starts = [k * (hb * stride - Hb) - pad_top for k in range(devices)]   # relative to own block
    above = max(0, *(-s for s in starts))
    below = max(0, *(s + span - Hb for s in starts))
    return above, below, span, tuple(s + above for s in starts)


def locally_connected2d(x, weight, bias=None, *, mesh: Mesh, axis: str | None = None, stride=1, padding=0,
                        dilation=1, backend: str = "einsum:jax"):
    """``el.locally_connected2d`` with rows sharded over ``mesh``'s ``axis``.

    x (N, Cin, H, W), weight (Cout, Cin, kh, kw, Ho, Wo), bias (Cout, Ho, Wo)
    or None -> y (N, Cout, Ho, Wo), sharded like ``specs(axis)``.  Works under
    ``jit``, ``grad`` and ``jvp``; arrays not yet placed are resharded by jax."""
    from einlocal.jax import locally_connected2d as local_op
    axis = axis or mesh.axis_names[0]
    d = mesh.shape[axis]
    N, Cin, H, W = x.shape
    Cout, _, kh, kw, Ho, Wo = weight.shape
    st = _tuple(stride, 2, "stride", minimum=1)
    dl = _tuple(dilation, 2, "dilation", minimum=1)
    pads = _padding(padding, (kh, kw), dl, st)
    expect = _out_size(H, pads[0], kh, dl[0], st[0], "2 of x")
    if Ho != expect:
        raise ShapeError(f"weight axis 4 (Ho) is {Ho} but x with H={H}, kernel {kh}, stride {st[0]}, "
                         f"padding {pads[0]}, dilation {dl[0]} gives {expect}")
    if H % d or Ho % d:
        raise ShapeError(f"mesh axis {axis!r} has {d} devices, which must divide x axis 2 (H) = {H} "
                         f"and weight axis 4 (Ho) = {Ho}")
    above, below, span, starts = halo(H, Ho, d, kh, st[0], pads[0][0], dl[0])
    if above > H // d or below > H // d:
        raise ShapeError(f"the halo ({above} rows above, {below} below) exceeds one device's block of "
                         f"{H // d} input rows: use fewer devices on axis {axis!r}")
    local_pad = ((0, 0), pads[1])
    starts = jnp.asarray(starts, jnp.int32)

    def per_device(x, w, *b):
        k = jax.lax.axis_index(axis)
        parts = []
        if above:   # my last rows go to the device below, which reads them as its top halo
            parts.append(jax.lax.ppermute(x[:, :, -above:], axis, [(i, i + 1) for i in range(d - 1)]))
        parts.append(x)
        if below:   # my first rows go to the device above
            parts.append(jax.lax.ppermute(x[:, :, :below], axis, [(i + 1, i) for i in range(d - 1)]))
        ext = jnp.concatenate(parts, axis=2) if len(parts) > 1 else x
        window = jax.lax.dynamic_slice_in_dim(ext, starts[k], span, axis=2)
        return local_op(window, w, *(b or (None,)), stride=st, padding=local_pad, dilation=dl, backend=backend)

    s = specs(axis)
    in_specs = (s["x"], s["weight"]) + ((s["bias"],) if bias is not None else ())
    args = (x, weight) + ((bias,) if bias is not None else ())
    f = jax.shard_map(per_device, mesh=mesh, in_specs=in_specs, out_specs=s["y"], check_vma=False)
    return f(*args)
