"""Report 1's training example with einlocal.torch.LocallyConnected2d: a 1x1
locally connected layer (d x d positions, cin -> cout) fitted to random data
with MSE and Adam, batch 32; prints the time per epoch for every backend
that can run it on torch tensors on this device.

    python examples/train_local2d.py                       # the report's sizes: n=1024, d=256
    python examples/train_local2d.py --samples 128 --epochs 2 --backends bmm:torch,loops:numba
    python examples/train_local2d.py --device cuda --compile

numpy-only and jax-only backends (bmm:numpy, einsum:jax, ...) cannot sit in
a torch model: they take other arrays, and einlocal never copies silently.
The peer row is the report's own formulation (one slice per output channel,
broadcast multiply, sum, concatenate) written in PyTorch.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import einlocal as el
from einlocal import registry
from einlocal.torch import LocallyConnected2d


class SlicesConcat(torch.nn.Module):
    """The report's Local2D: cat([sum(W[..., i] * x, channels) + b[..., i] for i in cout])."""

    def __init__(self, cin: int, cout: int, d: int, device=None):
        super().__init__()
        bound = 1 / cin ** 0.5
        self.weight = torch.nn.Parameter(torch.empty(cout, cin, d, d, device=device).uniform_(-bound, bound))
        self.bias = torch.nn.Parameter(torch.empty(cout, d, d, device=device).uniform_(-bound, bound))

    def forward(self, x):
        return torch.cat([(self.weight[i] * x).sum(1, keepdim=True) + self.bias[i] for i in range(len(self.weight))],
                         dim=1)


def train(model, x, y, *, epochs: int, batch: int, sync) -> tuple[list[float], float]:
    """Seconds per epoch and the last batch's loss."""
    opt = torch.optim.Adam(model.parameters())
    times, loss = [], float("nan")
    for _ in range(epochs):
        sync()
        t0 = time.perf_counter()
        for k in range(0, len(x), batch):
            opt.zero_grad(set_to_none=True)
            out = torch.nn.functional.mse_loss(model(x[k:k + batch]), y[k:k + batch])
            out.backward()
            opt.step()
        sync()
        times.append(time.perf_counter() - t0)
        loss = out.item()
    return times, loss


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=1024, help="n, the number of samples (report: 1024)")
    p.add_argument("--size", type=int, default=256, help="d: inputs are d x d (report: 256)")
    p.add_argument("--cin", type=int, default=4)
    p.add_argument("--cout", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--epochs", type=int, default=3, help="epochs per backend; the first includes warm-up")
    p.add_argument("--backends", default="", help="comma-separated names (default: every one that can run here)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true", help="also time torch.compile(model) (inductor)")
    p.add_argument("--no-peer", action="store_true", help="skip the report's slices+concatenate formulation")
    a = p.parse_args(argv)

    device = torch.device(a.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    x = torch.rand(a.samples, a.cin, a.size, a.size, device=device)
    y = torch.rand(a.samples, a.cout, a.size, a.size, device=device)
    probe = {"x": x[:1], "weight": torch.empty(a.cout, a.cin, 1, 1, a.size, a.size, device=device),
             "bias": torch.empty(a.cout, a.size, a.size, device=device)}
    runnable = el.backends(el.locally_connected2d, like=probe)
    names = [n for n in a.backends.split(",") if n] or ["auto"] + runnable
    not_torch = [n for n in registry.available() if "torch" not in registry.get(n).takes]

    print(f"Local2D 1x1: n={a.samples}, d={a.size}, cin={a.cin}, cout={a.cout}, batch {a.batch}, Adam, MSE; "
          f"device {device}, float32, {a.epochs} epochs each (epoch 1 includes warm-up)")
    print(f"not usable in a torch model (they take other arrays): {', '.join(not_torch) or 'none'}")
    print(f"{'backend':<26}{'epoch 1 (s)':>12}{'median of rest (s)':>20}{'last loss':>12}")
    rows = [(n, lambda n=n: LocallyConnected2d(a.cin, a.cout, 1, a.size, backend=n, device=device)) for n in names]
    if a.compile:
        rows += [(f"{n} +compile", lambda n=n: torch.compile(
            LocallyConnected2d(a.cin, a.cout, 1, a.size, backend=n, device=device), fullgraph=True)) for n in names]
    if not a.no_peer:
        rows.append(("peer: slices+concatenate", lambda: SlicesConcat(a.cin, a.cout, a.size, device=device)))
    for name, make in rows:
        torch.manual_seed(1)
        try:
            times, loss = train(make(), x, y, epochs=a.epochs, batch=a.batch, sync=sync)
        except (el.BackendError, el.MemoryBudgetError) as e:
            print(f"{name:<26}  skipped: {e}")
            continue
        rest = f"{statistics.median(times[1:]):.3f}" if len(times) > 1 else "-"
        print(f"{name:<26}{times[0]:>12.3f}{rest:>20}{loss:>12.5f}")


if __name__ == "__main__":
    main()
