"""datm-clr-jax: DATM-CLR dataset distillation in JAX/Flax.

As a library (arrays in, arrays and metrics out; see `api` and docs/usage.md):
  load_config, load_dataset, train_experts, distill, evaluate_set, SyntheticSet.
As a program: python -m datm_clr_jax --config=configs/X.py (the README).

Modules, one concern each:
  data (sources, ZCA)        models (architectures)        kernels (their XLA:CPU forms)
  augment (DSA)              losses                        experts (trajectories)
  step (the outer step)      distillation (its loop)       evaluate (training on a set)
  checks (config, preflight) pipeline (a run in a workdir) results (results.json, export)
  selection, outside (which set is evaluated)              checkpointing, metric_writers
  report, study, visualize, torch_io, sharding, distributed, cli, errors
"""

__version__ = "0.1.0"

_API = ("load_config", "load_dataset", "train_experts", "distill", "evaluate_set",
        "SyntheticSet")
__all__ = list(_API) + ["Error"]

from datm_clr_jax.errors import Error  # noqa: E402


def __getattr__(name):
  # The API imports JAX; `python -m datm_clr_jax` must answer a bad flag before it does.
  if name in _API:
    from datm_clr_jax import api  # pylint: disable=import-outside-toplevel
    return getattr(api, name)
  raise AttributeError(f"module 'datm_clr_jax' has no attribute {name!r}")
