"""Spreading work over several devices with `jax.sharding` (one mesh axis, 'd').

What is independent is split: experts and evaluation seeds are separate networks, so their
leading axis is sharded and each device trains its share. Distillation is data parallel: the
synthetic set and every unrolled minibatch are split along the image axis, and XLA inserts
the reductions (the step's result is the single-device result up to float reassociation).

With one device every helper is the identity, so single-device code paths are unchanged.
Multi-GPU: all local GPUs are used. Several processes or hosts (distributed.py) split the
experts and evaluation seeds between them; each one's mesh spans its own local devices.
Tested on the CPU with `XLA_FLAGS=--xla_force_host_platform_device_count=4`.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "d"

# How a group of independent networks (experts, evaluation seeds) is trained in one compiled
# call: all at once under jax.vmap, or one after another under lax.map.
NETWORK_LOOPS = ("auto", "vmap", "map")


def resolve_network_loop(loop: str, num_devices: int, field: str) -> str:
  """'auto' -> 'map' on a single device, else 'vmap' (sharding over devices needs it).

  Batched convolutions (vmap over networks) were slower than the same networks in turn on
  a CPU and on a GPU (docs/performance.md).
  `field` names the config field in the error.
  """
  if loop not in NETWORK_LOOPS:
    raise ValueError(f"{field} must be one of {NETWORK_LOOPS}, got {loop!r}")
  if loop == "auto":
    return "map" if num_devices == 1 else "vmap"
  return loop


def over_networks(fn, loop: str, in_axes: tuple):
  """fn of one network, applied to a group of independent ones: `loop` 'vmap' or 'map'.

  in_axes: per positional argument, 0 (sliced along its leading axis, one slice per network)
  or None (shared by all). 'map' runs the networks one after another under lax.map.
  """
  if loop == "vmap":
    return jax.vmap(fn, in_axes=in_axes)
  if loop != "map":
    raise ValueError(f"loop must be 'vmap' or 'map' (resolve 'auto' first), got {loop!r}")

  def in_turn(*args):
    def one(sliced):
      it = iter(sliced)
      return fn(*(next(it) if axis == 0 else a for a, axis in zip(args, in_axes)))
    return jax.lax.map(one, tuple(a for a, axis in zip(args, in_axes) if axis == 0))

  return in_turn


def device_mesh(enabled: bool = True) -> Mesh | None:
  """A 1-D mesh over this process's devices, or None with a single one (or when disabled)."""
  devices = jax.local_devices()
  if not enabled or len(devices) == 1:
    return None
  return Mesh(np.asarray(devices), (AXIS,))


def num_devices(mesh: Mesh | None) -> int:
  """How many devices a `device_mesh()` result spans (1 for None)."""
  return 1 if mesh is None else mesh.size


def _spec(x, mesh: Mesh) -> PartitionSpec:
  splittable = np.ndim(x) > 0 and np.shape(x)[0] % mesh.size == 0
  return PartitionSpec(AXIS) if splittable else PartitionSpec()


def shard_leading(tree, mesh: Mesh | None):
  """Places each array split along axis 0 over the mesh (replicated when not divisible)."""
  if mesh is None:
    return tree
  return jax.tree_util.tree_map(
      lambda x: jax.device_put(x, NamedSharding(mesh, _spec(x, mesh))), tree)


def replicate(tree, mesh: Mesh | None):
  """Places each array whole on every device of the mesh."""
  if mesh is None:
    return tree
  return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def constrain_batch(x: jax.Array, mesh: Mesh | None, axis: int = 0) -> jax.Array:
  """Inside jit: asks XLA to keep a batch split along its batch axis (`axis`: 0 for (B, ...),
  1 for the (N, B, ...) stack of every inner step's batch), when B divides evenly."""
  if mesh is None or x.shape[axis] % mesh.size:
    return x
  spec = PartitionSpec(*([None] * axis), AXIS)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
