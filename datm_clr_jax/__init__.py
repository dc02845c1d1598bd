"""datm-clr-jax: DATM-CLR dataset distillation in JAX/Flax.

Modules, one concern each: data (sources, ZCA), models (ConvNet), augment (DSA), losses,
experts (trajectories), distill (the outer step and loop), evaluate (SPEC §7 protocol),
checkpointing (orbax), visualize (image grids), pipeline (the phases of a run).
"""

__version__ = "0.1.0"
