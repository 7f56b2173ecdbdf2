"""``native:jax``: XLA's own convolutions for every catalogue op:
``lax.conv_general_dilated`` (``feature_group_count`` for grouped and
depthwise) and ``lax.conv_general_dilated_local`` for locally connected
layers.  Jitted and cached per call; backward is ``jax.vjp``."""
from __future__ import annotations

import functools

from ..errors import BackendError
from .base import Backend, add_bias
from .namespaces import namespace

__all__ = ["NativeJax"]


def _conv(call, x, wt):
    """The op on statement-shaped ``x``, ``wt`` (traced); statement-shaped result."""
    from jax import lax
    p = call.param
    shapes = dict(call.arg_shapes)
    x = x.reshape(shapes["x"])                     # the public layouts: free reshapes
    wt = wt.reshape(shapes["weight"])
    hi = lax.Precision.HIGHEST
    if call.kind in ("locally_connected2d", "locally_connected1d"):
        nd = 2 if call.kind == "locally_connected2d" else 1
        cout, cin, *rest = wt.shape
        kernel, spatial_out = tuple(rest[:nd]), tuple(rest[nd:])
        # rhs (O, I, *output positions) with I ordered (Cin, *kernel): our
        # weight (Cout, Cin, *kernel, *positions) is that layout already
        rhs = wt.reshape((cout, cin * (kernel[0] * (kernel[1] if nd == 2 else 1)), *spatial_out))
        spec = ("NCHW", "OIHW", "NCHW") if nd == 2 else ("NCH", "OIH", "NCH")
        # filter_shape: the receptive window; rhs_dilation: the dilation of
        # its taps in the input (atrous), as in conv_general_dilated
        y = lax.conv_general_dilated_local(x, rhs, p["stride"], p["padding"], kernel,
                                           rhs_dilation=p["dilation"], dimension_numbers=spec,
                                           precision=(hi, hi))
    else:
        groups = x.shape[1] if call.kind == "depthwise_conv2d" else p["groups"]
        y = lax.conv_general_dilated(x, wt, p["stride"], p["padding"], rhs_dilation=p["dilation"],
                                     dimension_numbers=("NCHW", "OIHW", "NCHW"),
                                     feature_group_count=groups, precision=hi)
    return y.reshape(call.plan.out_shape)


@functools.lru_cache(maxsize=256)
def _forward(call):
    import jax
    return jax.jit(functools.partial(_conv, call))


@functools.lru_cache(maxsize=256)
def _backward(call, wrt: tuple):
    """Jitted (x, wt, dy) -> gradients of ``wrt`` only (XLA drops the rest)."""
    import jax

    def grads(x, wt, dy):
        ops = {"x": x, "wt": wt}

        def f(*ws):
            return _conv(call, **{**ops, **dict(zip(wrt, ws))})
        _, pull = jax.vjp(f, *(ops[n] for n in wrt))
        return pull(dy)
    return jax.jit(grads)


class NativeJax(Backend):
    """Runs catalogue ops only (``general = False``): ``kinds`` lists them."""
    compile_s = namespace("jax").compile_s

    strategy = "native"
    engine = "jax"
    takes = ("jax",)
    requires = ("jax",)
    general = False
    kinds = ("locally_connected2d", "locally_connected1d", "depthwise_conv2d", "conv2d")

    def cannot(self, plan, *, library: str, device: str, call=None) -> str | None:
        reason = super().cannot(plan, library=library, device=device, call=call)
        if reason:
            return reason
        kind = getattr(call, "kind", "op")
        if kind not in self.kinds:
            return f"{self.name} runs catalogue ops ({', '.join(self.kinds)}), not a statement written with el.Op"
        return None

    def execute(self, plan, operands: dict, out=None):
        raise BackendError(f"{self.name} runs whole catalogue ops (forward/vjp), not single statements")

    def forward(self, call, operands: dict, out=None, bias=None):
        return add_bias(_forward(call)(operands["x"], operands["wt"]), bias)

    def vjp(self, call, dy, operands: dict, wrt, outs: dict) -> dict:
        grads = _backward(call, tuple(wrt))(operands["x"], operands["wt"], dy)
        return dict(zip(wrt, grads))


def make(engine="jax"):
    return NativeJax()
