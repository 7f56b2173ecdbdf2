"""A locally connected layer whose weight is split by output rows across
devices, with halo exchange between neighbours (einlocal.shard).

    XLA_FLAGS=--xla_force_host_platform_device_count=2 python examples/sharded_local2d.py

On a host with several GPUs, run it without XLA_FLAGS: ``shard.mesh()`` spans
``jax.devices()`` (every GPU; with ``jax.distributed.initialize()``, every
host's), each GPU holds Ho/d rows of the weight, and the halos travel as
NCCL collective-permutes.  H and Ho must be divisible by the device count.
"""
import os
import re

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import einlocal.jax as elj  # noqa: E402
import einlocal.shard as shard  # noqa: E402

mesh = shard.mesh()                                   # one axis, "rows", over every device
d = mesh.shape["rows"]
H = W = 32 * d
params = elj.init_locally_connected2d(jax.random.key(0), 8, 8, 3, (H, W), padding=1)
x = jax.random.normal(jax.random.key(1), (4, 8, H, W))
x, w, b = shard.place(mesh, x, params["weight"], params["bias"])


@jax.jit
def loss(x, w, b):
    y = shard.locally_connected2d(x, w, b, mesh=mesh, padding=1)
    return jnp.mean(jnp.tanh(y) ** 2)


value, (dw, db) = jax.value_and_grad(loss, (1, 2))(x, w, b)
print(f"{d} devices; weight {w.shape} = {w.nbytes / 2**20:.1f} MiB, per device "
      f"{[f'{s.data.nbytes / 2**20:.1f} MiB' for s in w.addressable_shards]}")
print(f"loss {value:.6f}; dweight sharded as {dw.sharding.spec}")
hlo = jax.jit(jax.grad(loss, (0, 1, 2))).lower(x, w, b).compile().as_text()
moves = re.findall(r"=\s*(\w+\[[\d,]*\])\S*\s+(all-gather|all-to-all|collective-permute|all-reduce)", hlo)
print("collectives in the compiled gradient (result shape: one halo row, op):",
      sorted(set(moves)))
single = jnp.mean(jnp.tanh(elj.locally_connected2d(x, w, b, padding=1)) ** 2)
print(f"single-device loss {single:.6f}")
