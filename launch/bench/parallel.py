"""K independent distillation runs compiled into one program (the benchmark's 'runs' section).

On a latency-bound accelerator at IPC 1, K runs in one program cost far less than K programs;
on a CPU, already busy with one run, they cost more than K separate steps
(docs/performance.md), so the library's runs stay one per process.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from datm_clr_jax import step


def make_parallel_step(network, cfg: step.StepConfig, opt: step.OuterOptim, syn_classes,
                       feat_dim: int):
  """step(states, trajectories (K_experts, T, P), upper (), keys (K, 2)) -> (states, metrics).

  `states` is a SynState whose every leaf has a leading run axis K (stack_states), and run k
  takes iteration key keys[k]. The runs share the experts and the schedule; each matches its
  own expert and start epoch. The results equal K separate steps up to float reassociation.
  """
  single = step.make_distill_step(network.for_vmap(), cfg, opt, syn_classes, feat_dim)
  return jax.jit(jax.vmap(single, in_axes=(0, None, None, 0)))


def stack_states(states: list[step.SynState]) -> step.SynState:
  """K SynStates -> one with a leading run axis on every leaf (for make_parallel_step)."""
  return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *states)


def unstack_states(states: step.SynState) -> list[step.SynState]:
  """The inverse of stack_states."""
  k = int(states.iteration.shape[0])
  return [jax.tree_util.tree_map(lambda x, i=i: x[i], states) for i in range(k)]
