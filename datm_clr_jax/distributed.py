"""Several processes or hosts through JAX's distributed runtime (`jax.distributed`).

What is split: expert training (in each round process i trains the i-th expert group still
missing; the trajectories are gathered to process 0, which writes them: expert k depends only
on (seed, k), so they equal a single process's) and evaluation (process 0 reads the set and
sends it to the others; process i trains every P-th evaluation seed; the accuracies are
gathered and process 0 writes results.json). Only process 0 reads the workdir and writes its
results (the others write their config.json and metrics.process<i>.jsonl), so the hosts
need no shared filesystem, only the data each.
What is not: distillation, a sequential outer loop, runs as one process (`--mode=distill`
without these flags); the command line refuses the other modes under several processes.
Within a process every local device is used as before (sharding.py).

Launch: `--distributed` reads the cluster's environment (SLURM, Open MPI, ... as
`jax.distributed.initialize()` detects them); on one machine or elsewhere give
`--coordinator_address=HOST:PORT --num_processes=P --process_id=i` to every process.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from absl import logging


_joined = False  # set by initialize(); until then this is the only process


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Joins the distributed runtime (before any other JAX call); CPU collectives use gloo."""
  global _joined  # pylint: disable=global-statement
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # ignored off the CPU
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
  _joined = True
  logging.info("distributed: process %d of %d, %d local devices", jax.process_index(),
               jax.process_count(), jax.local_device_count())


def index() -> int:
  """This process's index (0 unless initialize() joined a distributed run). Cheap: asking
  JAX before it has a backend would start one (and log) during preflight checks."""
  return jax.process_index() if _joined else 0


def count() -> int:
  return jax.process_count() if _joined else 1


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier of the same name (no-op alone)."""
  if count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(name)


def my_share(items: list, process: int | None = None, processes: int | None = None) -> list:
  """The items this process handles: every P-th one, starting at its index."""
  process = index() if process is None else process
  processes = count() if processes is None else processes
  return items[process::processes]


def gather(x: np.ndarray) -> np.ndarray:
  """(P, *x.shape): every process's x (same shape and dtype everywhere), in process order."""
  if count() == 1:
    return np.asarray(x)[None]
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return np.asarray(multihost_utils.process_allgather(np.asarray(x)))


def from_process_0(tree):
  """Process 0's values of a pytree of arrays (same shapes everywhere), on every process."""
  if count() == 1:
    return tree
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return jax.tree_util.tree_map(np.asarray, multihost_utils.broadcast_one_to_all(tree))


def gather_shares(mine, total: int) -> list[float]:
  """Every process's `my_share` values, back in the order of the full list of `total` items.

  mine: this process's values (floats), in the order of my_share(range(total)).
  """
  processes = count()
  if processes == 1:
    return [float(v) for v in mine]
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  width = math.ceil(total / processes)
  padded = np.full((width,), np.nan, np.float64)
  padded[:len(mine)] = mine
  # Sent as the float64 bits (uint32 pairs): JAX arrays are 32-bit without x64, and the
  # gathered numbers must be exactly the ones each process computed.
  every = np.asarray(multihost_utils.process_allgather(padded.view(np.uint32)))
  every = np.ascontiguousarray(every).view(np.float64).reshape(processes, width)
  return [float(every[i % processes, i // processes]) for i in range(total)]
