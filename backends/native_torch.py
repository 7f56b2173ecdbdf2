"""``native:torch``: PyTorch's own convolution (``F.conv2d`` with groups,
stride, dilation; asymmetric padding through ``F.pad``) for the catalogue
ops that are one: conv2d and depthwise_conv2d.  The peer (oneDNN, cuDNN)
the array strategies are measured against; backward is PyTorch's own
convolution backward."""
from __future__ import annotations

from ..errors import BackendError
from .base import Backend, add_bias

__all__ = ["NativeTorch"]


class NativeTorch(Backend):
    """Runs catalogue ops only (``general = False``): ``kinds`` lists them."""

    strategy = "native"
    engine = "torch"
    takes = ("torch",)
    requires = ("torch",)
    general = False
    kinds = ("conv2d", "depthwise_conv2d")

    def cannot(self, plan, *, library: str, device: str, call=None) -> str | None:
        reason = super().cannot(plan, library=library, device=device, call=call)
        if reason:
            return reason
        kind = getattr(call, "kind", "op")
        if kind == "op":
            return f"{self.name} runs catalogue ops ({', '.join(self.kinds)}), not a statement written with el.Op"
        if kind not in self.kinds:
            return (f"PyTorch has no {kind} (no locally connected convolution); "
                    f"{self.name} runs {', '.join(self.kinds)}")
        return None

    def own_autodiff(self, library: str) -> bool:
        return True       # its vjp is torch autograd through F.conv2d: autograd records the forward itself

    def runner(self, call, library: str):
        """``F.conv2d`` itself on the public arrays (their layouts are
        PyTorch's) where the padding is symmetric."""
        (pt, pb), (pl, pr) = call.param["padding"]
        if call.empty or pt != pb or pl != pr:
            return None
        from torch import conv2d
        p = call.param
        shapes = dict(call.arg_shapes)
        stride, padding, dilation = p["stride"], (pt, pl), p["dilation"]
        groups = shapes["x"][1] if call.kind == "depthwise_conv2d" else p["groups"]

        def run(arrays):
            return conv2d(arrays["x"], arrays["weight"], arrays.get("bias"), stride, padding, dilation, groups)
        return run

    def execute(self, plan, operands: dict, out=None):
        raise BackendError(f"{self.name} runs whole catalogue ops (forward/vjp), not single statements")

    def conv(self, call, x, wt):
        """The op on statement-shaped ``x``, ``wt``; the result statement-shaped."""
        import torch.nn.functional as F
        p = call.param
        shapes = dict(call.arg_shapes)
        if x.shape != shapes["x"]:                 # the public layouts: free reshapes
            x = x.reshape(shapes["x"])
        if wt.shape != shapes["weight"]:
            wt = wt.reshape(shapes["weight"])
        (pt, pb), (pl, pr) = p["padding"]
        if pt == pb and pl == pr:
            padding = (pt, pl)
        else:                                      # asymmetric: pad once, then 'valid'
            x = F.pad(x, (pl, pr, pt, pb))
            padding = (0, 0)
        groups = x.shape[1] if call.kind == "depthwise_conv2d" else p["groups"]
        y = F.conv2d(x, wt, None, p["stride"], padding, p["dilation"], groups)
        return y.reshape(call.plan.out_shape)

    def forward(self, call, operands: dict, out=None, bias=None):
        y = add_bias(self.conv(call, operands["x"], operands["wt"]), bias)
        if out is not None:
            out.copy_(y)
            return out
        return y

    def vjp(self, call, dy, operands: dict, wrt, outs: dict) -> dict:
        """PyTorch's own convolution backward (``aten.convolution_backward``,
        what autograd runs for ``F.conv2d``), for only the gradients in ``wrt``;
        no autograd needed, so it also runs inside a custom op's backward."""
        import torch
        import torch.nn.functional as F
        p = call.param
        shapes = dict(call.arg_shapes)
        x = operands["x"].reshape(shapes["x"])
        wt = operands["wt"].reshape(shapes["weight"])
        (pt, pb), (pl, pr) = p["padding"]
        symmetric = pt == pb and pl == pr
        if not symmetric:
            x = F.pad(x, (pl, pr, pt, pb))
        groups = x.shape[1] if call.kind == "depthwise_conv2d" else p["groups"]
        dy4 = dy.reshape(x.shape[0], wt.shape[0], *dy.shape[-2:])
        dx, dw, _ = torch.ops.aten.convolution_backward(
            dy4, x, wt, None, list(p["stride"]), [pt, pl] if symmetric else [0, 0], list(p["dilation"]), False,
            [0, 0], groups, ["x" in wrt, "wt" in wrt, False])
        if dx is not None and not symmetric:
            dx = dx[:, :, pt:dx.shape[2] - pb, pl:dx.shape[3] - pr]
        result = {}
        for n, g in (("x", dx), ("wt", dw)):
            if n not in wrt:
                continue
            g = g.reshape(operands[n].shape)
            o = outs.get(n)
            result[n] = o.copy_(g) if o is not None else g
        return result


def make(engine="torch"):
    return NativeTorch()
