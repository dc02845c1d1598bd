"""DATM-CLR distillation: the synthetic state, the jit-compiled outer step, and the outer loop.

One outer iteration (SPEC §5, §6; the paper's Algorithm 1):
  1. sample an expert and a start epoch t (inside the step, from its key);
  2. unroll N student updates from theta_t with `lax.scan`, each a plain SGD step of the
     soft-label cross-entropy on a DSA view of a synthetic minibatch; with Contrastive Update
     the student loss also carries lambda * L_contrast;
  3. L_tm = ||theta_N - theta_{t+M}||^2 / ||theta_t - theta_{t+M}||^2; with Contrastive Fusion
     the outer loss is alpha * mean_n L_contrast(theta_n) + beta * L_tm;
  4. differentiate through the unroll with respect to the images, the label logits, syn_lr
     (and a learned projection head) and apply SGD-with-momentum updates, unless the update is
     skipped (L_tm over threshold, a non-finite loss or gradient, or syn_lr going <= 0).

Readings of the paper, each a StepConfig switch (SPEC §6, §6.1; the contrastive study,
launch/results/clr_study, compares them):
  * views: 'extra' draws two contrastive views beside the CE view, whose minibatch and key are
    exactly plain DATM's, so alpha = 0 is bit-for-bit DATM; 'shared' is Algorithm 1 (lines 6,
    10): two views per inner step, both with view_mode DSA, the CE on the first.
  * student_momentum: 0 is DATM/MTT's plain SGD student; the paper's §4.1 says momentum 0.5
    (v <- mu v + g, theta <- theta - syn_lr v, v = 0 at the start of each iteration).
  * through_student: whether the contrastive gradient also flows back through the student's
    parameters theta_n (which depend on the images through the earlier steps), or reaches the
    images at fixed theta_n only.
  * head: re-drawn at random each outer iteration ('random'), one random head for the whole
    run ('fixed', drawn from the seed and checkpointed), or learned by the outer optimiser.
  * The skip threshold is applied to L_tm alone (DATM's quantity), not to the total loss.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.ad_checkpoint import checkpoint_name

from datm_clr_jax import augment, checkpointing, losses, sharding
from datm_clr_jax.models import CONV_INPUT_GRAD, CONV_OUTPUT, HEAD_HIDDEN, Network, ProjectionHead

# Status codes returned by the step for each iteration.
ACCEPTED, OVER_THRESHOLD, NON_FINITE, BAD_LR = 0, 1, 2, 3
STATUS_NAMES = {ACCEPTED: "accepted", OVER_THRESHOLD: "over_threshold",
                NON_FINITE: "non_finite", BAD_LR: "syn_lr_not_positive"}


HEADS = ("random", "fixed", "learned")
DSA_VIEW = "dsa_view"  # checkpoint name of each augmented view (kept under remat_convs)
VIEWS = ("extra", "shared")


class DistillError(ValueError):
  """Bad distillation input or state; the message says what to do."""


@flax.struct.dataclass
class SynState:
  """Everything the outer loop learns and must checkpoint.

  Attributes:
    syn_images: (n, H, W, C) synthetic images (normalised space), class-major.
    syn_labels: (n, C) label logits.
    syn_lr: () the student's learning rate.
    head: projection-head params (a pytree; empty dict unless the head is learned).
    opt_images, opt_labels, opt_lr, opt_head: optax SGD-momentum states.
    iteration: () int32, the number of outer iterations done.
  """

  syn_images: jax.Array
  syn_labels: jax.Array
  syn_lr: jax.Array
  head: Any
  opt_images: Any
  opt_labels: Any
  opt_lr: Any
  opt_head: Any
  iteration: jax.Array


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Static settings of the outer step (hashable, so they can close over a jit)."""

  num_inner_steps: int
  expert_epochs: int
  min_start_epoch: int
  batch_syn: int
  threshold: float
  strategy: str = "color_crop_cutout_flip_scale_rotate"
  dsa_mode: str = "single"
  clr_strategy: str = "fusion"  # 'fusion' | 'update' | 'none'
  alpha: float = 0.1
  beta: float = 1.0
  lam: float = 0.1
  contrastive: str = "supcon"
  temperature: float = 0.1
  view_mode: str = "multiple"
  head: str = "random"  # 'random' (per iteration) | 'fixed' (per run) | 'learned'
  views: str = "extra"  # 'extra' (two views beside DATM's CE view) | 'shared' (Algorithm 1)
  through_student: bool = True  # the contrastive gradient also flows through theta_n
  student_momentum: float = 0.0  # the student's SGD momentum (DATM: 0; paper §4.1: 0.5)
  proj_hidden: int = 0
  proj_dim: int = 128
  learn_labels: bool = True
  remat: bool = True
  remat_convs: bool = False  # with remat, also keep conv outputs, DSA views, head hidden (~N)
  unroll: int = 1
  num_segments: int = 1  # trajectory segments matched per outer iteration, losses averaged
  segment_loop: str = "map"  # 'vmap' (segments at once) | 'map' (in turn); resolved

  @property
  def contrast_on(self) -> bool:
    return self.clr_strategy in ("fusion", "update") and (
        self.alpha != 0 if self.clr_strategy == "fusion" else self.lam != 0)


@dataclasses.dataclass(frozen=True)
class OuterOptim:
  lr_img: float
  lr_lr: float
  lr_y: float
  lr_head: float = 0.01
  momentum_img: float = 0.5
  momentum_lr: float = 0.5
  momentum_y: float = 0.9
  momentum_head: float = 0.5

  def optimizers(self):
    return (optax.sgd(self.lr_img, self.momentum_img), optax.sgd(self.lr_y, self.momentum_y),
            optax.sgd(self.lr_lr, self.momentum_lr), optax.sgd(self.lr_head, self.momentum_head))


def feature_dim(network: Network, image_shape) -> int:
  _, f = jax.eval_shape(lambda x: network.module.apply(
      network.module.init(jax.random.PRNGKey(0), x, train=False), x, train=False),
                        jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))
  return int(f.shape[-1])


def make_head(cfg: StepConfig, feat_dim: int) -> ProjectionHead:
  return ProjectionHead(hidden=cfg.proj_hidden or feat_dim, out_dim=cfg.proj_dim)


def init_head_params(head: ProjectionHead, key, feat_dim: int):
  return head.init(key, jnp.zeros((1, feat_dim)))["params"]


def init_state(syn_images, syn_labels, syn_lr: float, opt: OuterOptim, head_params=None
               ) -> SynState:
  """A fresh SynState. Shapes: syn_images (n,H,W,C), syn_labels (n,C)."""
  o_img, o_y, o_lr, o_head = opt.optimizers()
  syn_images = jnp.asarray(syn_images, jnp.float32)
  syn_labels = jnp.asarray(syn_labels, jnp.float32)
  lr = jnp.asarray(syn_lr, jnp.float32)
  head = head_params if head_params is not None else {}
  return SynState(syn_images, syn_labels, lr, head, o_img.init(syn_images),
                  o_y.init(syn_labels), o_lr.init(lr), o_head.init(head),
                  jnp.zeros((), jnp.int32))


def minibatch_indices(key, num_syn: int, batch_syn: int, num_steps: int) -> jax.Array:
  """(num_steps, batch_syn) indices: chunks of fresh permutations, one permutation per pass."""
  chunks = num_syn // batch_syn
  passes = -(-num_steps // chunks)
  perms = jax.vmap(lambda k: jax.random.permutation(k, num_syn))(jax.random.split(key, passes))
  return perms[:, :chunks * batch_syn].reshape(passes * chunks, batch_syn)[:num_steps]


def step_keys(key):
  """Splits an iteration key into (expert, start, batch, augmentation, head) keys."""
  return jax.random.split(key, 5)


def make_outer_loss(network: Network, cfg: StepConfig, syn_classes: jax.Array, feat_dim: int,
                    mesh=None):
  """Returns outer_loss(learned, theta0, target, key) -> (loss, (l_tm, l_con)).

  learned = (syn_images (n,H,W,C), syn_labels (n,C), syn_lr (), head params);
  theta0, target: flat (P,) expert parameters at t and t + M. With a `mesh`, every
  minibatch is split over its devices (data parallel).
  """
  head_module = make_head(cfg, feat_dim)

  def outer_loss(learned, theta0, target, key, head_key):
    images, label_logits, lr, head = learned
    if cfg.contrast_on and cfg.head == "random":
      head = init_head_params(head_module, head_key, feat_dim)
    elif cfg.head == "fixed":
      head = jax.lax.stop_gradient(head)  # drawn once per run: nothing learns it
    _, _, k_batch, k_aug, _ = step_keys(key)
    idx = minibatch_indices(k_batch, images.shape[0], cfg.batch_syn, cfg.num_inner_steps)
    aug_keys = jax.random.split(k_aug, cfg.num_inner_steps)
    probs = jax.nn.softmax(label_logits, axis=-1)
    shared = cfg.views == "shared"
    update = cfg.contrast_on and cfg.clr_strategy == "update"
    # The views depend on the images and keys only, never on theta. Where the step keeps them
    # anyway (no remat, or remat_convs), the 'multiple'-mode ones are drawn before the scan, all
    # N steps' at once (faster for DATM-CLR's two views; launch/results/benchmark_cpu.md). The
    # 'single'-mode CE view stays in the step: batched, lax.switch would run every op family
    # (slower, same file). Plain remat draws and recomputes every view inside the step, so
    # memory stays flat in N. Likewise under Fusion, which the student never descends, the
    # head and L_contrast run after the scan, once on all N steps' features (one large head
    # matmul in place of N small ones that each read the head's weights; same file), except
    # under plain remat, where the N steps' features would be held.
    views_first = not cfg.remat or cfg.remat_convs
    head_after = cfg.contrast_on and not update and views_first

    def contrast(feats, cls):
      """L_contrast of (2b, F) features: the first b one view, the last b the other."""
      z = head_module.apply({"params": head}, feats)
      b = feats.shape[0] // 2
      return losses.contrastive_loss(cfg.contrastive, z[:b], z[b:], cls, cfg.temperature)

    def view(x, k, mode):
      return checkpoint_name(augment.dsa(x, k, cfg.strategy, mode), DSA_VIEW)

    # The (DSA mode, key) of each view an inner step sees, in the order student_losses reads
    # them: the CE view; with the contrastive term the second view (shared: the CE view is the
    # first, drawn with DATM's key), or two views beside the CE one (extra).
    specs = [(cfg.view_mode if shared else cfg.dsa_mode, 0)]
    if cfg.contrast_on:
      specs += [(cfg.view_mode, 2)] if shared else [(cfg.view_mode, 1), (cfg.view_mode, 2)]
    early = [j for j, (mode, _) in enumerate(specs) if views_first and mode == "multiple"]
    late = [j for j in range(len(specs)) if j not in early]

    def draw_views(x, k, which):
      """The views `which` (indices into specs) of one step's minibatch x (b,H,W,C)."""
      k1, k2 = jax.random.split(jax.random.fold_in(k, 1))
      keys = (k, k1, k2)
      return tuple(view(x, keys[specs[j][1]], specs[j][0]) for j in which)

    def student_losses(theta, views, y):
      """(CE of the student's view, the contrastive views' features (2b, F)) at student
      parameters theta; without the contrastive term the features are a placeholder 0."""
      x_ce = views[0]
      if not cfg.contrast_on:
        return losses.soft_cross_entropy(network.apply_flat(theta, x_ce)[0], y), jnp.zeros(
            (), theta.dtype)
      x1, x2 = (x_ce, views[1]) if shared else views[1:]
      if shared and cfg.through_student:
        # One forward of the first view serves the CE and the contrastive features.
        logits, f1 = network.apply_flat(theta, x_ce)
        f2 = network.apply_flat(theta, x2)[1]
        return losses.soft_cross_entropy(logits, y), jnp.concatenate([f1, f2])
      theta_con = theta if cfg.through_student else jax.lax.stop_gradient(theta)
      _, feats = network.apply_flat(theta_con, jnp.concatenate([x1, x2]))
      ce = losses.soft_cross_entropy(network.apply_flat(theta, x_ce)[0], y)
      return ce, feats

    early_views = jax.vmap(lambda x, k: draw_views(x, k, early))(
        sharding.constrain_batch(images[idx], mesh, axis=1), aug_keys) if early else ()

    def inner(carry, xs):
      theta, velocity = carry if cfg.student_momentum else (carry, None)
      i, k, pre = xs
      drawn = dict(zip(early, (sharding.constrain_batch(v, mesh) for v in pre)))
      drawn.update(zip(late, draw_views(sharding.constrain_batch(images[i], mesh), k, late)))
      views = tuple(drawn[j] for j in range(len(specs)))
      y, cls = probs[i], syn_classes[i]
      if cfg.contrast_on and not head_after:
        # Update descends CE + lambda L_contrast; Fusion the CE alone, L_contrast riding along.
        def student_loss(th):
          ce, feats = student_losses(th, views, y)
          con = contrast(feats, cls)
          return (ce + cfg.lam * con if update else ce), con
      else:
        student_loss = lambda th: student_losses(th, views, y)  # the features leave the step
      g, out = jax.grad(student_loss, has_aux=True)(theta)
      g = checkpoint_name(g, "inner_grad")
      if cfg.student_momentum:
        velocity = cfg.student_momentum * velocity + g
        return (theta - lr * velocity, velocity), out
      return theta - lr * g, out

    if cfg.remat:
      # Keeping each step's gradient (P floats, like the scan's saved theta) spares the
      # recomputation its weight-gradient matmuls: d(theta - lr g)/d lr needs g itself, the
      # rest of the backward pass needs only activations and their gradients. remat_convs
      # also keeps the convolutions' outputs and input gradients, the DSA views and, where the
      # head runs in the step (Update), its hidden layer, sparing their recomputation (DSA's
      # many small kernels cost more than their FLOPs say; the head's (2b, F) x (F, F) matmul
      # would run twice) for one step's activations (every image the step sees) held per step:
      # memory ~N.
      kept = ("inner_grad",) + ((CONV_OUTPUT, CONV_INPUT_GRAD, DSA_VIEW, HEAD_HIDDEN)
                                if cfg.remat_convs else ())
      inner = jax.checkpoint(inner, policy=jax.checkpoint_policies.save_only_these_names(*kept))
    carry0 = (theta0, jnp.zeros_like(theta0)) if cfg.student_momentum else theta0
    carry_n, outs = jax.lax.scan(inner, carry0, (idx, aug_keys, early_views), unroll=cfg.unroll)
    theta_n = carry_n[0] if cfg.student_momentum else carry_n
    l_tm = losses.trajectory_loss(theta_n, theta0, target)
    # outs: each step's L_contrast (N,) (zeros without the term), or its features (N, 2b, F).
    cons = jax.vmap(contrast)(outs, syn_classes[idx]) if head_after else outs
    l_con = jnp.mean(cons)
    if cfg.clr_strategy == "fusion" and cfg.contrast_on:
      total = cfg.alpha * l_con + cfg.beta * l_tm
    else:
      total = l_tm
    return total, (l_tm, l_con)

  return outer_loss


def segment_keys(key, num_segments: int) -> jax.Array:
  """(num_segments, 2) keys, one per trajectory segment; one segment uses `key` itself."""
  if num_segments == 1:
    return key[None]
  return jax.random.split(key, num_segments)


def sample_segment(key, trajectories, upper, cfg: StepConfig):
  """One segment's (expert (), start epoch (), theta0 (P,), target (P,)) from its key.

  trajectories: (K, T, P); the start epoch is drawn from [min_start_epoch, upper).
  """
  k_expert, k_start, _, _, _ = step_keys(key)
  expert = jax.random.randint(k_expert, (), 0, trajectories.shape[0])
  start = jax.random.randint(k_start, (), cfg.min_start_epoch, upper)
  return (expert, start, trajectories[expert, start],
          trajectories[expert, start + cfg.expert_epochs])


def make_segments_loss(network: Network, cfg: StepConfig, syn_classes: jax.Array,
                       feat_dim: int, mesh=None):
  """Returns loss(learned, trajectories, upper, key) -> (loss, (l_tm, l_con, experts, starts)).

  The outer loss averaged over cfg.num_segments trajectory segments, each with its own
  expert, start epoch, minibatches and augmentations (drawn from segment_keys(key)) and one
  projection head for all. With one segment this is the reference's single match, keyed
  exactly as before segments existed. l_tm and l_con are means over the segments; experts and
  starts are (num_segments,).
  """
  loop = cfg.segment_loop if cfg.num_segments > 1 else "map"
  net = network.for_vmap() if loop == "vmap" else network
  outer_loss = make_outer_loss(net, cfg, syn_classes, feat_dim, mesh)

  def loss(learned, trajectories, upper, key):
    head_key = step_keys(key)[4]
    keys = segment_keys(key, cfg.num_segments)
    experts, starts, theta0s, targets = jax.vmap(
        lambda k: sample_segment(k, trajectories, upper, cfg))(keys)
    one = lambda theta0, target, k: outer_loss(learned, theta0, target, k, head_key)
    if cfg.num_segments == 1:
      total, (l_tm, l_con) = one(theta0s[0], targets[0], keys[0])
    else:
      totals, (l_tms, l_cons) = sharding.over_networks(one, loop, (0, 0, 0))(
          theta0s, targets, keys)
      total, l_tm, l_con = jnp.mean(totals), jnp.mean(l_tms), jnp.mean(l_cons)
    return total, (l_tm, l_con, experts, starts)

  return loss


def make_distill_step(network: Network, cfg: StepConfig, opt: OuterOptim, syn_classes,
                      feat_dim: int, mesh=None):
  """Builds the jit-compiled outer step.

  step(state, trajectories (K, T, P), upper (), key) -> (state, metrics). `upper` is the
  exclusive upper bound of the start epoch (the difficulty schedule's current value); the
  expert, start epoch, minibatches and augmentations are all drawn from `key` on device
  (cfg.num_segments of each, see make_segments_loss; the threshold applies to their mean
  L_tm, and the metrics name the first segment's expert and start epoch).
  With a `mesh` (sharding.device_mesh()), minibatches are split over its devices.
  """
  syn_classes = jnp.asarray(syn_classes, jnp.int32)
  segments_loss = make_segments_loss(network, cfg, syn_classes, feat_dim, mesh)
  o_img, o_y, o_lr, o_head = opt.optimizers()

  def step(state: SynState, trajectories, upper, key):
    learned = (state.syn_images, state.syn_labels, state.syn_lr, state.head)
    (total, (l_tm, l_con, experts, starts)), grads = jax.value_and_grad(
        segments_loss, has_aux=True)(learned, trajectories, upper, key)
    expert, start = experts[0], starts[0]
    g_img, g_y, g_lr, g_head = grads
    if not cfg.learn_labels:
      g_y = jnp.zeros_like(g_y)

    u_img, new_o_img = o_img.update(g_img, state.opt_images)
    u_y, new_o_y = o_y.update(g_y, state.opt_labels)
    u_lr, new_o_lr = o_lr.update(g_lr, state.opt_lr)
    u_head, new_o_head = o_head.update(g_head, state.opt_head)
    new_lr = state.syn_lr + u_lr

    leaves = jax.tree_util.tree_leaves((total, grads))
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(l)) for l in leaves]))
    lr_ok = jnp.isfinite(new_lr) & (new_lr > 0)
    status = jnp.where(~finite, NON_FINITE,
                       jnp.where(l_tm > cfg.threshold, OVER_THRESHOLD,
                                 jnp.where(~lr_ok, BAD_LR, ACCEPTED)))
    ok = status == ACCEPTED
    pick = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, old)
    new_state = SynState(
        syn_images=pick(optax.apply_updates(state.syn_images, u_img), state.syn_images),
        syn_labels=pick(optax.apply_updates(state.syn_labels, u_y), state.syn_labels),
        syn_lr=pick(new_lr, state.syn_lr),
        head=pick(optax.apply_updates(state.head, u_head), state.head),
        opt_images=pick(new_o_img, state.opt_images),
        opt_labels=pick(new_o_y, state.opt_labels),
        opt_lr=pick(new_o_lr, state.opt_lr),
        opt_head=pick(new_o_head, state.opt_head),
        iteration=state.iteration + 1)
    metrics = {"loss": total, "l_tm": l_tm, "l_contrast": l_con, "status": status,
               "expert": expert, "start_epoch": start, "syn_lr": new_state.syn_lr,
               "proposed_syn_lr": new_lr,
               "grad_norm_images": jnp.linalg.norm(g_img.ravel()),
               "image_rms": jnp.sqrt(jnp.mean(jnp.square(new_state.syn_images)))}
    return new_state, metrics

  return jax.jit(step)


def make_parallel_step(network: Network, cfg: StepConfig, opt: OuterOptim, syn_classes,
                       feat_dim: int):
  """K independent distillation runs as one compiled program (one outer iteration of each).

  step(states, trajectories (K_experts, T, P), upper (), keys (K, 2)) -> (states, metrics):
  `states` is a SynState whose every leaf has a leading run axis K (stack_states), and run k
  takes iteration key keys[k] (a run's own fold_in(PRNGKey(seed_k), i)). The runs share the
  experts and the schedule; each matches its own expert and start epoch. On a latency-bound
  accelerator (IPC 1) K runs cost far less than K programs; on a CPU, already busy with one
  run, they cost more than K separate steps (launch/results/benchmark_cpu.md). The results
  equal K separate steps up to float reassociation (tested).
  """
  single = make_distill_step(network.for_vmap(), cfg, opt, syn_classes, feat_dim)
  return jax.jit(jax.vmap(single, in_axes=(0, None, None, 0)))


def stack_states(states: list[SynState]) -> SynState:
  """K SynStates -> one with a leading run axis on every leaf (for make_parallel_step)."""
  return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *states)


def unstack_states(states: SynState) -> list[SynState]:
  """The inverse of stack_states."""
  k = int(states.iteration.shape[0])
  return [jax.tree_util.tree_map(lambda x, i=i: x[i], states) for i in range(k)]


def make_diagnostics(network: Network, cfg: StepConfig, syn_classes, feat_dim: int, mesh=None):
  """Builds diagnose(state, trajectories, upper, key) -> metrics, jit-compiled.

  Splits the image gradient that `make_distill_step` computes from the same arguments into
  its trajectory-matching part g_tm = d(beta L_tm)/dx and, under Contrastive Fusion, its
  contrastive part g_con = d(alpha L_contrast)/dx (g_tm + g_con is the step's image
  gradient): their norms and the cosine between them. Pure: it changes nothing, so a run
  gives the same sets with or without it. Costs two backward passes through the unroll.
  """
  syn_classes = jnp.asarray(syn_classes, jnp.int32)
  segments_loss = make_segments_loss(network, cfg, syn_classes, feat_dim, mesh)
  fusion = cfg.contrast_on and cfg.clr_strategy == "fusion"

  def diagnose(state: SynState, trajectories, upper, key):
    def parts(images):
      learned = (images, state.syn_labels, state.syn_lr, state.head)
      _, (l_tm, l_con, _, _) = segments_loss(learned, trajectories, upper, key)
      return l_tm, l_con

    (_, _), vjp = jax.vjp(parts, state.syn_images)
    one, zero = jnp.ones(()), jnp.zeros(())
    g_tm = vjp((cfg.beta * one if fusion else one, zero))[0].ravel()
    out = {"grad_norm_tm": jnp.linalg.norm(g_tm)}
    if fusion:
      g_con = vjp((zero, cfg.alpha * one))[0].ravel()
      n_con = jnp.linalg.norm(g_con)
      out["grad_norm_contrast"] = n_con
      out["grad_cosine"] = jnp.dot(g_tm, g_con) / jnp.maximum(out["grad_norm_tm"] * n_con,
                                                              1e-30)
    return out

  return jax.jit(diagnose)


def start_epoch_upper(it: int, *, max_start_epoch: int, sequential: bool,
                      current_max_start_epoch: int, expansion_end: int) -> int:
  """DATM's difficulty schedule: the exclusive upper bound of the start epoch at iteration it."""
  if not sequential:
    return max_start_epoch
  grow = int((max_start_epoch - current_max_start_epoch) * it / max(expansion_end, 1))
  return min(max_start_epoch, current_max_start_epoch + grow)


# ----------------------------------------------------------------------------- initialisation


def expert_logits(network: Network, final_params: np.ndarray, x: np.ndarray,
                  chunk: int = 1000) -> np.ndarray:
  """Logits of each expert on x: final_params (K, P), x (M,H,W,C) -> (K, M, C)."""
  network = network.for_vmap()
  fwd = jax.jit(jax.vmap(lambda p, xb: network.apply_flat(p, xb)[0], in_axes=(0, None)))
  return np.concatenate([np.asarray(fwd(final_params, x[i:i + chunk]))
                         for i in range(0, len(x), chunk)], axis=1)


def initial_synset(network: Network, x_train: np.ndarray, y_train: np.ndarray,
                   final_params: np.ndarray, *, ipc: int, num_classes: int, init: str,
                   seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Initial synthetic images and label logits (SPEC §5.6), class-major.

  Args:
    x_train, y_train: (N, H, W, C) normalised images, (N,) labels.
    final_params: (K, P) final-epoch expert parameters.
    init: 'samples_predicted_correctly' (real images expert 0 classifies correctly) or 'real'.
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
  try:
    for it in range(start, iterations):
      upper = schedule(it)
      done = it + 1
      args = (traj, jnp.asarray(upper, jnp.int32), jax.random.fold_in(base, it))
      diag = (diagnose(state, *args) if diagnose is not None
              and (done % log_every == 0 or done == iterations) else {})
      state, m = step(state, *args)
      m = {**m, **diag}
      pending.append((done, upper, m))
      save = ckpt is not None and (done % checkpoint_every == 0 or done == iterations)
      if done % log_every == 0 or done == iterations or save:
        _report(jax.device_get(pending), start=start, iterations=iterations,
                log_every=log_every, counts=counts, t0=t0, log=log)
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
    # saved as is: an interrupt (Ctrl-C, SIGINT from a time limit) loses nothing.
    done = int(state.iteration)
    if ckpt is not None and done > saved:
      ckpt.save(done, state)
      logging.warning("interrupted: saved iteration %d; the same command resumes from it", done)
    raise
  if iterations > start:
    logging.info("distill: %s", ", ".join(f"{k} {v}" for k, v in counts.items()))
  return state
