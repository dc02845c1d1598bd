"""The outer loop of distillation: the initial set, the difficulty schedule, and the loop that
runs the compiled step (step.make_distill_step) with checkpoints, logging and resumption.

Iteration i always takes the key fold_in(PRNGKey(seed), i), so a run resumed from a
checkpoint continues the very same sequence of experts, start epochs and augmentations.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from datm_clr_jax import checkpointing, errors, preemption
from datm_clr_jax.errors import DistillError
from datm_clr_jax.models import Network
from datm_clr_jax.step import BAD_LR, NON_FINITE, STATUS_NAMES, SynState


def start_epoch_upper(it: int, *, max_start_epoch: int, sequential: bool,
                      current_max_start_epoch: int, expansion_end: int) -> int:
  """DATM's difficulty schedule: the exclusive upper bound of the start epoch at iteration it."""
  if not sequential:
    return max_start_epoch
  grow = int((max_start_epoch - current_max_start_epoch) * it / max(expansion_end, 1))
  return min(max_start_epoch, current_max_start_epoch + grow)


def schedule(distill_config):
  """it -> the start epoch's exclusive upper bound, DATM's schedule as config.distill sets it."""
  d = distill_config
  return functools.partial(start_epoch_upper, max_start_epoch=d.max_start_epoch,
                           sequential=d.sequential,
                           current_max_start_epoch=d.current_max_start_epoch,
                           expansion_end=d.expansion_end)


def expert_logits(network: Network, final_params: np.ndarray, x: np.ndarray,
                  chunk: int = 1000) -> np.ndarray:
  """Logits of each expert on x: final_params (K, P), x (M,H,W,C) -> (K, M, C)."""
  network = network.for_vmap()
  fwd = jax.jit(jax.vmap(lambda p, xb: network.apply_flat(p, xb)[0], in_axes=(0, None)))
  return np.concatenate([np.asarray(fwd(final_params, x[i:i + chunk]))
                         for i in range(0, len(x), chunk)], axis=1)


def initial_synset(network: Network, x_train: np.ndarray, y_train: np.ndarray,
                   final_params: np.ndarray, *, ipc: int, num_classes: int, init: str,
                   seed: int, labels: str = "learned") -> tuple[np.ndarray, np.ndarray]:
  """Initial synthetic images and label logits, class-major (DATM's initialisation).

  Args:
    x_train, y_train: (N, H, W, C) normalised images, (N,) labels.
    final_params: (K, P) final-epoch expert parameters.
    init: 'samples_predicted_correctly' (real images expert 0 classifies correctly) or 'real'.
    labels: the run's distill.labels; 'hard' (MTT) gets one-hot rows instead of logits.
  Returns:
    syn_images (C*ipc, H, W, C) and label logits (C*ipc, num_classes): the mean final-epoch
    logits of the experts that classify the image correctly (all experts if none does).
  """
  if init not in ("samples_predicted_correctly", "real"):
    raise DistillError(f"unknown distill.init {init!r}; use 'samples_predicted_correctly' or "
                       "'real'")
  rng = np.random.default_rng(seed)
  if init == "samples_predicted_correctly":
    # One pass over the whole training set, not one per class: the per-class pools differ in
    # size, and each new shape would compile the forward pass again.
    predicted = expert_logits(network, final_params[:1], x_train)[0].argmax(-1)
  chosen = []
  for c in range(num_classes):
    pool = np.flatnonzero(y_train == c)
    if len(pool) < ipc:
      raise DistillError(f"ipc={ipc} but class {c} has only {len(pool)} training images; "
                         "lower distill.ipc")
    pool = rng.permutation(pool)
    if init == "samples_predicted_correctly":
      pred = predicted[pool]
      good = pool[pred == c]
      if len(good) < ipc:
        logging.warning("class %d: expert 0 classifies only %d images correctly (< ipc %d); "
                        "filling with other real images", c, len(good), ipc)
        good = np.concatenate([good, pool[pred != c]])
      pool = good
    chosen.append(pool[:ipc])
  idx = np.concatenate(chosen)
  images = x_train[idx]
  if labels == "hard":
    return images.astype(np.float32), np.eye(num_classes, dtype=np.float32)[y_train[idx]]
  logits = expert_logits(network, final_params, images)  # (K, n, C)
  correct = logits.argmax(-1) == y_train[idx][None]  # (K, n)
  weight = np.where(correct.any(0)[None], correct, True).astype(np.float32)
  labels = (logits * weight[..., None]).sum(0) / weight.sum(0)[:, None]
  return images.astype(np.float32), labels.astype(np.float32)


def check_finite_state(state: SynState) -> None:
  """Raises DistillError if the synthetic set itself holds NaN/inf (a corrupted resume)."""
  for name in ("syn_images", "syn_labels", "syn_lr"):
    if not np.all(np.isfinite(np.asarray(getattr(state, name)))):
      raise DistillError(f"{name} contains NaN or inf; the checkpoint is unusable: delete the "
                         "distill/ folder of the workdir to restart distillation")
  if float(state.syn_lr) <= 0:
    raise DistillError(f"syn_lr is {float(state.syn_lr)} <= 0 in the restored state; lower "
                       "distill.lr_lr and restart distillation")


def _report(pending, *, start: int, iterations: int, log_every: int, counts: dict, t0: float,
            log) -> None:
  """Counts, warns about and logs a batch of fetched per-iteration metrics."""
  for done, upper, m in pending:
    status = int(m.pop("status"))
    counts[STATUS_NAMES[status]] += 1
    if status == NON_FINITE:
      logging.warning("iteration %d: non-finite loss or gradient; update skipped", done - 1)
    elif status == BAD_LR:
      logging.warning("iteration %d: syn_lr would become %s (not positive); update skipped. "
                      "If this repeats, lower distill.lr_lr", done - 1, float(m["proposed_syn_lr"]))
    at_log_step = done % log_every == 0 or done == iterations
    if not (at_log_step or status in (NON_FINITE, BAD_LR)):
      continue
    rec = {"phase": "distill", "step": done, **{k: float(v) for k, v in m.items()},
           "expert": int(m["expert"]), "status": STATUS_NAMES[status], "start_upper": upper,
           "seconds": round(time.time() - t0, 2)}
    if at_log_step:
      rate = (done - start) / max(time.time() - t0, 1e-9)
      cosine = f"  cos(g_tm, g_con) {rec['grad_cosine']:+.2f}" if "grad_cosine" in rec else ""
      logging.info("distill %d/%d: L_tm %.4f  L_con %.4f  syn_lr %.5f  skipped %d%s  "
                   "(%.2f it/s, ~%.0fs left)", done, iterations, rec["l_tm"], rec["l_contrast"],
                   rec["syn_lr"], done - start - counts["accepted"], cosine, rate,
                   (iterations - done) / max(rate, 1e-9))
    if log:
      log(rec)


def run_distillation(step, state: SynState, trajectories, *, iterations: int, seed: int,
                     schedule, ckpt: checkpointing.StepCheckpoints | None, checkpoint_every: int,
                     log_every: int, log=None, every: int = 0, on_every=None,
                     on_save=None, diagnose=None) -> SynState:
  """The outer loop: runs `step` from state.iteration to `iterations`, checkpointing.

  `diagnose` (make_diagnostics), if given, runs on each logged iteration's inputs before its
  step, and its metrics join that iteration's record.

  `on_every(done, state)`, if given, runs after every `every` iterations and after the last
  (after that iteration's checkpoint, so a kill inside it is resumed correctly).
  `on_save(done)`, if given, runs after every checkpoint (the pipeline redraws its curves).

  Iteration i uses key fold_in(PRNGKey(seed), i), so a resumed run continues the very same
  sequence of experts, start epochs and augmentations. Metrics stay on device and are fetched
  once per `log_every` iterations (or checkpoint), so the host never waits on each step.
  """
  base = jax.random.PRNGKey(seed)
  traj = jnp.asarray(trajectories)
  start = int(state.iteration)
  counts = {name: 0 for name in STATUS_NAMES.values()}
  t0 = time.time()
  pending = []
  saved = start
  report = lambda records: _report(jax.device_get(records), start=start, iterations=iterations,
                                   log_every=log_every, counts=counts, t0=t0, log=log)
  try:
    for it in range(start, iterations):
      # A signal waits for this iteration and its checkpoint (preemption.deferred).
      with preemption.deferred():
        upper = schedule(it)
        done = it + 1
        args = (traj, jnp.asarray(upper, jnp.int32), jax.random.fold_in(base, it))
        diag = (diagnose(state, *args) if diagnose is not None
                and (done % log_every == 0 or done == iterations) else {})
        state, m = step(state, *args)
        pending.append((done, upper, {**m, **diag}))
        save = ckpt is not None and (done % checkpoint_every == 0 or done == iterations)
        if done % log_every == 0 or done == iterations or save:
          report(pending)
          pending = []
        if save:
          ckpt.save(done, state)
          saved = done
          if on_save is not None:
            on_save(done)
        if on_every is not None and (done % every == 0 or done == iterations):
          on_every(done, state)
  except KeyboardInterrupt:
    # `state` is always a finished iteration's output (the step is functional), so it can be
    # saved as is: a stop (Ctrl-C, SIGINT or SIGTERM) loses nothing.
    done = int(state.iteration)
    if ckpt is not None and done > saved:
      try:
        with preemption.deferred():  # a second signal must not cut this save short
          report(pending)
          ckpt.save(done, state)
      except errors.Preempted:
        pass
      logging.warning("stopped: saved iteration %d; the same command resumes from it", done)
    raise
  if iterations > start:
    logging.info("distill: %s", ", ".join(f"{k} {v}" for k, v in counts.items()))
  return state
