"""Report 4: a conv layer over sets of different sizes, aggregated per set.

    python examples/ragged_sets.py

m = 1000 locations, each with 20..40 single-channel 16x16 images; a 5x5
conv 1 -> 4 is applied to every image and the outputs are averaged per
location.  ``per_item`` calls the layer once per set; ``packed`` concatenates
whole sets into chunks of ~1000 images, one call per chunk, and averages with
torch's segment ops (index_add_).  Both are differentiable.  The layer uses
torch's own conv (``native:torch``), as report 4's loop did.
"""
import time

import torch

import einlocal as el
from einlocal import ragged

wl = ragged.workload(n_sets=1000, n_range=(20, 40), library="torch")
weight = wl.weight.clone().requires_grad_(True)
layer = lambda x: torch.relu(el.conv2d(x, weight, backend="native:torch"))   # any function of a batch  # noqa: E731

for strategy in ragged.STRATEGIES:
    t = time.perf_counter()
    z = ragged.apply(layer, wl.sets, reduce="mean", strategy=strategy, chunk=1000)   # (1000, 4, 12, 12)
    (g,) = torch.autograd.grad(z.square().mean(), weight)
    print(f"{strategy:>8}: {len(wl.sets)} sets, {wl.items} images -> {tuple(z.shape)}, "
          f"forward+backward {1e3 * (time.perf_counter() - t):.0f} ms, |dweight| = {g.norm():.4f}")
