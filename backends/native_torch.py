"""``native:torch``: PyTorch's own convolution (``F.conv2d`` with groups,
stride, dilation; asymmetric padding through ``F.pad``) for the catalogue
ops that are one: conv2d and depthwise_conv2d.  The peer (oneDNN, cuDNN)
the array strategies are measured against; backward is torch autograd."""
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

    def execute(self, plan, operands: dict, out=None):
        raise BackendError(f"{self.name} runs whole catalogue ops (forward/vjp), not single statements")

    def conv(self, call, x, wt):
        """The op on statement-shaped ``x``, ``wt``; the result statement-shaped."""
        import torch.nn.functional as F
        p = call.param
        shapes = dict(call.arg_shapes)
        x = x.reshape(shapes["x"])                 # the public layouts: free reshapes
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
        """torch autograd through the native conv; only ``wrt`` is computed
        (conv backward skips what no input asks for)."""
        import torch
        with torch.enable_grad():
            leaves = {n: operands[n].detach().requires_grad_(n in wrt) for n in ("x", "wt")}
            y = self.conv(call, leaves["x"], leaves["wt"])
            grads = torch.autograd.grad(y, [leaves[n] for n in wrt], dy)
        result = {}
        for n, g in zip(wrt, grads):
            o = outs.get(n)
            result[n] = o.copy_(g) if o is not None else g
        return result


def make(engine="torch"):
    return NativeTorch()
