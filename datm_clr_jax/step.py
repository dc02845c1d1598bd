"""The outer step: one iteration of trajectory matching with a contrastive term.

One call of the compiled step (`make_distill_step`) follows the paper's Algorithm 1:
  1. draw an expert and a start epoch t from the iteration's key (`sample_segment`);
  2. unroll N student updates from theta_t with `lax.scan` (`student_step`): each takes a
     synthetic minibatch and its DSA views (`ViewPlan`), and descends the soft-label
     cross-entropy (plus lambda L_contrast under Contrastive Update);
  3. L_tm = ||theta_N - theta_{t+M}||^2 / ||theta_t - theta_{t+M}||^2; under Contrastive
     Fusion the outer loss is alpha mean_n L_contrast(theta_n) + beta L_tm (`make_outer_loss`);
  4. differentiate through the unroll with respect to the images, the label logits, syn_lr
     (and a learned projection head) and apply SGD-with-momentum updates, unless the update is
     skipped: L_tm over the threshold, a non-finite loss or gradient, or syn_lr going <= 0.

Readings of the paper where it is silent or contradicts itself, each a StepConfig switch
(launch/results/clr_study compares them):
  * views: 'extra' draws two contrastive views beside the CE view, whose minibatch and key are
    plain DATM's, so alpha = 0 is bit for bit DATM; 'shared' is Algorithm 1 (lines 6, 10): two
    views per inner step, the CE on the first.
  * student_momentum: 0 is DATM's plain-SGD student; the paper's §4.1 says momentum 0.5.
  * through_student: whether the contrastive gradient also flows back through the student's
    parameters theta_n, or reaches the images at fixed theta_n only.
  * head: re-drawn at random each iteration ('random'), drawn once per run ('fixed') or
    learned by the outer optimiser ('learned').
  * The skip threshold applies to L_tm alone (DATM's quantity), not to the total loss.

The other methods of the paper's Table 1 are switches of the same step (datm_clr_jax/methods.py
sets them): `labels` ('hard' one-hot for MTT and FTD, 'teacher' for TESLA's soft labels),
`threshold` 0 (no skip rule), `ema_decay` (FTD's moving average of the images) and
`gradient` 'tesla' (TESLA's first-order estimator, datm_clr_jax/tesla.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax.ad_checkpoint import checkpoint_name

from datm_clr_jax import augment, losses, sharding
from datm_clr_jax.errors import ConfigError
from datm_clr_jax.kernels import CONV_INPUT_GRAD, CONV_OUTPUT
from datm_clr_jax.models import HEAD_HIDDEN, Network, ProjectionHead

# Status of each iteration's update.
ACCEPTED, OVER_THRESHOLD, NON_FINITE, BAD_LR = 0, 1, 2, 3
STATUS_NAMES = {ACCEPTED: "accepted", OVER_THRESHOLD: "over_threshold",
                NON_FINITE: "non_finite", BAD_LR: "syn_lr_not_positive"}

CLR_STRATEGIES = ("fusion", "update", "none")
# What the student's cross-entropy aims at: the learned label logits (DATM), the experts'
# initial logits kept fixed, one-hot classes (MTT, FTD), or the target checkpoint's softmax
# on the current images, recomputed every iteration (TESLA's teacher labels).
LABELS = ("learned", "experts", "hard", "teacher")
GRADIENTS = ("unrolled", "tesla")
HEADS = ("random", "fixed", "learned")
VIEWS = ("extra", "shared")
# Checkpoint names (jax.ad_checkpoint) of what a remat policy may keep.
DSA_VIEW = "dsa_view"
INNER_GRAD = "inner_grad"


@flax.struct.dataclass
class SynState:
  """Everything the outer loop learns and checkpoints.

  Attributes:
    syn_images: (n, H, W, C) synthetic images (normalised space), class-major.
    syn_labels: (n, C) label logits.
    syn_lr: () the student's learning rate.
    head: projection-head params (a pytree; empty dict unless the head is fixed or learned).
    opt_images, opt_labels, opt_lr, opt_head: optax SGD-momentum states.
    iteration: () int32, the number of outer iterations done.

  A run with an image EMA (FTD) keeps an EMASynState, which adds the moving average; a
  SynState's checkpoints stay what they were.
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

  @property
  def learned(self) -> tuple:
    """(syn_images, syn_labels, syn_lr, head): what the outer loss is differentiated in."""
    return self.syn_images, self.syn_labels, self.syn_lr, self.head


@flax.struct.dataclass
class EMASynState(SynState):
  """SynState plus ema_images (n, H, W, C): FTD's moving average of the synthetic images."""

  ema_images: jax.Array = None


def contrast_on(clr_strategy: str, alpha: float, lam: float) -> bool:
  """Whether the contrastive term exists at all: a zero weight switches it off."""
  return clr_strategy in ("fusion", "update") and (
      alpha != 0 if clr_strategy == "fusion" else lam != 0)


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Static settings of the outer step (hashable, so they can close over a jit)."""

  num_inner_steps: int  # N
  expert_epochs: int  # M
  min_start_epoch: int
  batch_syn: int
  threshold: float  # skip the update when L_tm exceeds this; 0: never (MTT)
  strategy: str = augment.DEFAULT_STRATEGY  # DSA op families
  dsa_mode: str = "single"  # DSA mode of DATM's CE view
  clr_strategy: str = "fusion"  # 'fusion' | 'update' | 'none'
  alpha: float = 0.1
  beta: float = 1.0
  lam: float = 0.1
  contrastive: str = "supcon"
  temperature: float = 0.1
  view_mode: str = "multiple"  # DSA mode of the contrastive views
  head: str = "random"  # 'random' (per iteration) | 'fixed' (per run) | 'learned'
  views: str = "extra"  # 'extra' (two views beside DATM's CE view) | 'shared' (Algorithm 1)
  through_student: bool = True  # the contrastive gradient also flows through theta_n
  student_momentum: float = 0.0  # the student's SGD momentum (DATM: 0; paper §4.1: 0.5)
  proj_hidden: int = 0  # hidden width of the head; 0: the feature width
  proj_dim: int = 128
  labels: str = "learned"  # LABELS
  gradient: str = "unrolled"  # 'unrolled' (through the whole scan) | 'tesla' (first order)
  ema_decay: float = 0.0  # FTD: ema <- d ema + (1 - d) images after every iteration; 0: none
  remat: bool = True  # recompute each inner step in the backward pass: memory flat in N
  remat_convs: bool = False  # with remat, keep conv outputs, DSA views, head hidden: ~N
  unroll: int = 1
  num_segments: int = 1  # trajectory segments matched per outer iteration, losses averaged
  segment_loop: str = "map"  # 'vmap' (segments at once) | 'map' (in turn); resolved

  @property
  def contrast_on(self) -> bool:
    return contrast_on(self.clr_strategy, self.alpha, self.lam)

  @property
  def fusion(self) -> bool:
    return self.contrast_on and self.clr_strategy == "fusion"

  @property
  def update(self) -> bool:
    return self.contrast_on and self.clr_strategy == "update"

  @classmethod
  def from_config(cls, config, num_syn: int, num_devices: int = 1) -> StepConfig:
    """The step's settings from a run config (its distill, clr and dsa sections).

    num_syn: the number of synthetic images (batch_syn 0 means all of them); num_devices:
    what 'auto' segment_loop resolves against.
    """
    d, c = config.distill, config.clr
    batch_syn = d.batch_syn or num_syn
    if batch_syn > num_syn or num_syn % batch_syn:
      raise ConfigError(f"config.distill.batch_syn={batch_syn} must divide the {num_syn} "
                        "synthetic images")
    return cls(
        num_inner_steps=d.num_inner_steps, expert_epochs=d.expert_epochs,
        min_start_epoch=d.min_start_epoch, batch_syn=batch_syn, threshold=d.threshold,
        strategy=config.dsa.strategy, dsa_mode=config.dsa.mode, clr_strategy=c.strategy,
        alpha=c.alpha, beta=c.beta, lam=c.lam, contrastive=c.loss, temperature=c.temperature,
        view_mode=c.view_mode, head=c.head, views=c.views, through_student=c.through_student,
        student_momentum=d.student_momentum, proj_hidden=c.proj_hidden, proj_dim=c.proj_dim,
        labels=d.labels, gradient=d.gradient, ema_decay=d.ema_decay, remat=d.remat, remat_convs=d.remat_convs,
        unroll=d.scan_unroll, num_segments=d.num_segments,
        segment_loop=sharding.resolve_network_loop(d.segment_loop, num_devices,
                                                   "distill.segment_loop"))


@dataclasses.dataclass(frozen=True)
class OuterOptim:
  """SGD with momentum for each learned part (the reference's values as defaults)."""

  lr_img: float
  lr_lr: float
  lr_y: float
  lr_head: float = 0.01
  momentum_img: float = 0.5
  momentum_lr: float = 0.5
  momentum_y: float = 0.9
  momentum_head: float = 0.5

  @classmethod
  def from_config(cls, config) -> OuterOptim:
    d, c = config.distill, config.clr
    return cls(lr_img=d.lr_img, lr_lr=d.lr_lr, lr_y=d.lr_y, lr_head=c.lr_head,
               momentum_img=d.momentum_img, momentum_lr=d.momentum_lr,
               momentum_y=d.momentum_y, momentum_head=c.momentum_head)

  def optimizers(self):
    """optax optimisers of (images, labels, syn_lr, head)."""
    return (optax.sgd(self.lr_img, self.momentum_img), optax.sgd(self.lr_y, self.momentum_y),
            optax.sgd(self.lr_lr, self.momentum_lr), optax.sgd(self.lr_head, self.momentum_head))


def init_state(syn_images, syn_labels, syn_lr: float, opt: OuterOptim, head_params=None,
               ema: bool = False) -> SynState:
  """A fresh SynState (an EMASynState whose average starts at the images when `ema`).
  Shapes: syn_images (n,H,W,C), syn_labels (n,C)."""
  o_img, o_y, o_lr, o_head = opt.optimizers()
  syn_images = jnp.asarray(syn_images, jnp.float32)
  syn_labels = jnp.asarray(syn_labels, jnp.float32)
  lr = jnp.asarray(syn_lr, jnp.float32)
  head = head_params if head_params is not None else {}
  parts = (syn_images, syn_labels, lr, head, o_img.init(syn_images), o_y.init(syn_labels),
           o_lr.init(lr), o_head.init(head), jnp.zeros((), jnp.int32))
  return EMASynState(*parts, ema_images=syn_images) if ema else SynState(*parts)


def with_images(state: SynState, syn_images) -> SynState:
  """The state with new images; an EMA restarts from them (a fresh run's initial set)."""
  state = state.replace(syn_images=jnp.asarray(syn_images, jnp.float32))
  if isinstance(state, EMASynState):
    state = state.replace(ema_images=state.syn_images)
  return state


def ema_update(state: SynState, decay: float) -> SynState:
  """FTD's shadow of the images after an iteration: d ema + (1 - d) images (no bias
  correction, no warm-up); a state without an EMA as it is."""
  if not isinstance(state, EMASynState):
    return state
  return state.replace(ema_images=decay * state.ema_images + (1 - decay) * state.syn_images)


def label_targets(cfg: StepConfig, network: Network, label_logits, syn_classes, images, target):
  """(n, C) the distributions the student's cross-entropy aims at (LABELS).

  label_logits (n, C), syn_classes (n,), images (n,H,W,C), target (P,) the expert's
  parameters at t + M (read by 'teacher' only, never differentiated).
  """
  if cfg.labels == "hard":
    return jax.nn.one_hot(syn_classes, label_logits.shape[-1], dtype=label_logits.dtype)
  if cfg.labels == "teacher":
    logits = network.apply_flat(target, images)[0]
    return jax.lax.stop_gradient(jax.nn.softmax(logits, axis=-1))
  return jax.nn.softmax(label_logits, axis=-1)


# ------------------------------------------------------------------------- the projection head


def make_head(cfg: StepConfig, feat_dim: int) -> ProjectionHead:
  return ProjectionHead(hidden=cfg.proj_hidden or feat_dim, out_dim=cfg.proj_dim)


def init_head_params(head: ProjectionHead, key, feat_dim: int):
  return head.init(key, jnp.zeros((1, feat_dim)))["params"]


def run_head(cfg: StepConfig, feat_dim: int, seed: int):
  """The head a run keeps in its state: drawn once from the seed when it is fixed or learned
  (and the contrastive term is on), else None (a random head is drawn in every step)."""
  if cfg.head in ("learned", "fixed") and cfg.contrast_on:
    return init_head_params(make_head(cfg, feat_dim), jax.random.PRNGKey(seed), feat_dim)
  return None


def step_head(cfg: StepConfig, head_module: ProjectionHead, head, head_key, feat_dim: int):
  """The head one step uses: a fresh random one, the run's fixed one (never learned), or
  the learned one from the state."""
  if cfg.contrast_on and cfg.head == "random":
    return init_head_params(head_module, head_key, feat_dim)
  if cfg.head == "fixed":
    return jax.lax.stop_gradient(head)
  return head


def contrastive_term(head_module: ProjectionHead, cfg: StepConfig, head, feats, cls):
  """L_contrast of (2b, F) features, the first b one view's and the last b the other's;
  cls (b,) the images' classes."""
  z = head_module.apply({"params": head}, feats)
  b = feats.shape[0] // 2
  return losses.contrastive_loss(cfg.contrastive, z[:b], z[b:], cls, cfg.temperature)


# ------------------------------------------------------------------------------- the views


@dataclasses.dataclass(frozen=True)
class ViewPlan:
  """The DSA views each inner step sees and where each is drawn, fixed by the StepConfig.

  Attributes:
    specs: (DSA mode, key index) per view, in the order the student reads them: the CE view
      first; with the contrastive term the second view (shared: the CE view is the first),
      or two views beside the CE one (extra). Key 0 is the step's own (DATM's), 1 and 2 are
      drawn from it.
    early: the views drawn before the scan for all N steps at once ('multiple'-mode views,
      where the step keeps its views anyway: no remat, or remat_convs). The 'single'-mode CE
      view stays in the step: batched, its lax.switch would run every op family.
    late: the views drawn inside each step (under plain remat all of them, so memory stays
      flat in N).
    head_after: whether the head and L_contrast run once after the scan on all N steps'
      features (Fusion, where the student never descends L_contrast and the features are
      kept anyway) instead of inside each step.
  """

  specs: tuple[tuple[str, int], ...]
  early: tuple[int, ...]
  late: tuple[int, ...]
  head_after: bool

  @classmethod
  def from_step_config(cls, cfg: StepConfig) -> ViewPlan:
    shared = cfg.views == "shared"
    specs = [(cfg.view_mode if shared else cfg.dsa_mode, 0)]
    if cfg.contrast_on:
      specs += [(cfg.view_mode, 2)] if shared else [(cfg.view_mode, 1), (cfg.view_mode, 2)]
    views_first = not cfg.remat or cfg.remat_convs
    early = tuple(j for j, (mode, _) in enumerate(specs) if views_first and mode == "multiple")
    late = tuple(j for j in range(len(specs)) if j not in early)
    return cls(tuple(specs), early, late, head_after=cfg.fusion and views_first)


def draw_views(plan: ViewPlan, strategy: str, x, key, which) -> tuple:
  """The views `which` (indices into plan.specs) of one step's minibatch x (b,H,W,C)."""
  k1, k2 = jax.random.split(jax.random.fold_in(key, 1))
  keys = (key, k1, k2)
  return tuple(checkpoint_name(augment.dsa(x, keys[plan.specs[j][1]], strategy,
                                           plan.specs[j][0]), DSA_VIEW) for j in which)


def remat_policy(cfg: StepConfig):
  """What the backward pass keeps of each inner step instead of recomputing it.

  Each step's gradient (P floats, like the scan's saved theta) spares the recomputation of
  its weight-gradient matmuls: d(theta - lr g)/d lr needs g itself. remat_convs also keeps
  the convolutions' outputs and input gradients, the DSA views and the head's hidden layer
  (where the head runs in the step), for one step's activations held per step: memory ~N.
  """
  kept = (INNER_GRAD,) + ((CONV_OUTPUT, CONV_INPUT_GRAD, DSA_VIEW, HEAD_HIDDEN)
                          if cfg.remat_convs else ())
  return jax.checkpoint_policies.save_only_these_names(*kept)


# ------------------------------------------------------------------------------- the student


def student_losses(network: Network, cfg: StepConfig, theta, views, y):
  """(CE of the student on the CE view, the contrastive views' features (2b, F)) at student
  parameters theta (P,); y (b, C) the target distributions. Without the contrastive term the
  features are a placeholder 0."""
  x_ce = views[0]
  if not cfg.contrast_on:
    return losses.soft_cross_entropy(network.apply_flat(theta, x_ce)[0], y), jnp.zeros(
        (), theta.dtype)
  shared = cfg.views == "shared"
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


def student_objective(network: Network, cfg: StepConfig, plan: ViewPlan, contrast, views, y,
                      cls):
  """theta -> (what the student descends, what the step outputs): under Update
  CE + lambda L_contrast; otherwise the CE, with L_contrast riding along, or, where the head
  runs after the scan, the features."""
  if not cfg.contrast_on or plan.head_after:
    return lambda theta: student_losses(network, cfg, theta, views, y)

  def objective(theta):
    ce, feats = student_losses(network, cfg, theta, views, y)
    con = contrast(feats, cls)
    return (ce + cfg.lam * con if cfg.update else ce), con

  return objective


def student_update(carry, g, lr, momentum: float):
  """theta <- theta - lr g; with momentum the paper's v <- mu v + g, theta <- theta - lr v
  (carry (theta, v), v = 0 at the start of each iteration)."""
  if not momentum:
    return carry - lr * g
  theta, velocity = carry
  velocity = momentum * velocity + g
  return theta - lr * velocity, velocity


def student_step(network: Network, cfg: StepConfig, plan: ViewPlan, contrast, carry, xs, *,
                 images, probs, syn_classes, lr, mesh=None):
  """One inner step of the scan.

  carry: theta (P,), or (theta, velocity) with student momentum; xs: (idx (b,) minibatch
  indices, the step's key, its early views (plan.early, each (b,H,W,C))). images (n,H,W,C),
  probs (n,C) the label distributions, syn_classes (n,), lr (). Returns the new carry and
  the step's output: its L_contrast (), its contrastive features (2b, F) when the head runs
  after the scan, or 0 without the contrastive term.
  """
  i, k, pre = xs
  drawn = dict(zip(plan.early, (sharding.constrain_batch(v, mesh) for v in pre)))
  drawn.update(zip(plan.late, draw_views(plan, cfg.strategy,
                                         sharding.constrain_batch(images[i], mesh), k,
                                         plan.late)))
  views = tuple(drawn[j] for j in range(len(plan.specs)))
  objective = student_objective(network, cfg, plan, contrast, views, probs[i], syn_classes[i])
  theta = carry[0] if cfg.student_momentum else carry
  g, out = jax.grad(objective, has_aux=True)(theta)
  g = checkpoint_name(g, INNER_GRAD)
  return student_update(carry, g, lr, cfg.student_momentum), out


def minibatch_indices(key, num_syn: int, batch_syn: int, num_steps: int) -> jax.Array:
  """(num_steps, batch_syn) indices: chunks of fresh permutations, one permutation per pass."""
  chunks = num_syn // batch_syn
  passes = -(-num_steps // chunks)
  perms = jax.vmap(lambda k: jax.random.permutation(k, num_syn))(jax.random.split(key, passes))
  return perms[:, :chunks * batch_syn].reshape(passes * chunks, batch_syn)[:num_steps]


def step_keys(key):
  """Splits an iteration key into (expert, start, batch, augmentation, head) keys."""
  return jax.random.split(key, 5)


# ----------------------------------------------------------------------------- the outer loss


def make_outer_loss(network: Network, cfg: StepConfig, syn_classes: jax.Array, feat_dim: int,
                    mesh=None):
  """Returns outer_loss(learned, theta0, target, key, head_key) -> (loss, (l_tm, l_con)).

  learned = (syn_images (n,H,W,C), syn_labels (n,C), syn_lr (), head params); theta0 and
  target: flat (P,) expert parameters at t and t + M; syn_classes (n,). With a `mesh`,
  every minibatch is split over its devices (data parallel).
  """
  plan = ViewPlan.from_step_config(cfg)
  head_module = make_head(cfg, feat_dim)

  def outer_loss(learned, theta0, target, key, head_key):
    images, label_logits, lr, head = learned
    head = step_head(cfg, head_module, head, head_key, feat_dim)
    contrast = lambda feats, cls: contrastive_term(head_module, cfg, head, feats, cls)
    _, _, k_batch, k_aug, _ = step_keys(key)
    idx = minibatch_indices(k_batch, images.shape[0], cfg.batch_syn, cfg.num_inner_steps)
    aug_keys = jax.random.split(k_aug, cfg.num_inner_steps)
    probs = label_targets(cfg, network, label_logits, syn_classes, images, target)
    early_views = jax.vmap(lambda x, k: draw_views(plan, cfg.strategy, x, k, plan.early))(
        sharding.constrain_batch(images[idx], mesh, axis=1), aug_keys) if plan.early else ()

    def inner(carry, xs):
      return student_step(network, cfg, plan, contrast, carry, xs, images=images, probs=probs,
                          syn_classes=syn_classes, lr=lr, mesh=mesh)

    if cfg.remat:
      inner = jax.checkpoint(inner, policy=remat_policy(cfg))
    carry0 = (theta0, jnp.zeros_like(theta0)) if cfg.student_momentum else theta0
    carry_n, outs = jax.lax.scan(inner, carry0, (idx, aug_keys, early_views), unroll=cfg.unroll)
    theta_n = carry_n[0] if cfg.student_momentum else carry_n
    l_tm = losses.trajectory_loss(theta_n, theta0, target)
    cons = jax.vmap(contrast)(outs, syn_classes[idx]) if plan.head_after else outs
    l_con = jnp.mean(cons)
    total = cfg.alpha * l_con + cfg.beta * l_tm if cfg.fusion else l_tm
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
  projection head for all; one segment is the reference's single match. l_tm and l_con are
  means over the segments; experts and starts are (num_segments,).
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


# ----------------------------------------------------------------------------- the update


def outer_update(opt: OuterOptim, state: SynState, grads) -> SynState:
  """The SGD-momentum update of everything learned, before the skip rule; iteration as is."""
  o_img, o_y, o_lr, o_head = opt.optimizers()
  g_img, g_y, g_lr, g_head = grads
  u_img, opt_images = o_img.update(g_img, state.opt_images)
  u_y, opt_labels = o_y.update(g_y, state.opt_labels)
  u_lr, opt_lr = o_lr.update(g_lr, state.opt_lr)
  u_head, opt_head = o_head.update(g_head, state.opt_head)
  return state.replace(
      syn_images=optax.apply_updates(state.syn_images, u_img),
      syn_labels=optax.apply_updates(state.syn_labels, u_y),
      syn_lr=state.syn_lr + u_lr, head=optax.apply_updates(state.head, u_head),
      opt_images=opt_images, opt_labels=opt_labels, opt_lr=opt_lr, opt_head=opt_head)


def update_status(total, grads, l_tm, new_lr, threshold: float):
  """ACCEPTED, or why the update is skipped (a non-finite value, L_tm over the threshold
  unless it is 0, syn_lr not positive), as a () int32."""
  leaves = jax.tree_util.tree_leaves((total, grads))
  finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(l)) for l in leaves]))
  lr_ok = jnp.isfinite(new_lr) & (new_lr > 0)
  over = l_tm > threshold if threshold else jnp.zeros((), bool)
  return jnp.where(~finite, NON_FINITE,
                   jnp.where(over, OVER_THRESHOLD,
                             jnp.where(~lr_ok, BAD_LR, ACCEPTED)))


def make_distill_step(network: Network, cfg: StepConfig, opt: OuterOptim, syn_classes,
                      feat_dim: int, mesh=None):
  """Builds the jit-compiled outer step.

  step(state, trajectories (K, T, P), upper (), key) -> (state, metrics). `upper` is the
  exclusive upper bound of the start epoch (the difficulty schedule's current value); the
  expert, start epoch, minibatches and augmentations are all drawn from `key` on device
  (cfg.num_segments of each: the threshold applies to their mean L_tm, and the metrics name
  the first segment's expert and start epoch). With a `mesh` (sharding.device_mesh()),
  minibatches are split over its devices.
  """
  syn_classes = jnp.asarray(syn_classes, jnp.int32)
  if cfg.gradient == "tesla":
    from datm_clr_jax import tesla  # pylint: disable=import-outside-toplevel
    loss_and_grads = tesla.make_value_and_grad(network, cfg, syn_classes)
  else:
    loss_and_grads = jax.value_and_grad(
        make_segments_loss(network, cfg, syn_classes, feat_dim, mesh), has_aux=True)

  def step(state: SynState, trajectories, upper, key):
    (total, (l_tm, l_con, experts, starts)), grads = loss_and_grads(
        state.learned, trajectories, upper, key)
    if cfg.labels != "learned":
      grads = (grads[0], jnp.zeros_like(grads[1]), *grads[2:])
    proposed = outer_update(opt, state, grads)
    status = update_status(total, grads, l_tm, proposed.syn_lr, cfg.threshold)
    new_state = jax.tree_util.tree_map(lambda a, b: jnp.where(status == ACCEPTED, a, b),
                                       proposed, state).replace(iteration=state.iteration + 1)
    new_state = ema_update(new_state, cfg.ema_decay)
    metrics = {"loss": total, "l_tm": l_tm, "l_contrast": l_con, "status": status,
               "expert": experts[0], "start_epoch": starts[0], "syn_lr": new_state.syn_lr,
               "proposed_syn_lr": proposed.syn_lr,
               "grad_norm_images": jnp.linalg.norm(grads[0].ravel()),
               "image_rms": jnp.sqrt(jnp.mean(jnp.square(new_state.syn_images)))}
    return new_state, metrics

  return jax.jit(step)


def make_diagnostics(network: Network, cfg: StepConfig, syn_classes, feat_dim: int, mesh=None):
  """Builds diagnose(state, trajectories, upper, key) -> metrics, jit-compiled.

  Splits the image gradient that `make_distill_step` computes from the same arguments into
  its trajectory-matching part g_tm = d(beta L_tm)/dx and, under Contrastive Fusion, its
  contrastive part g_con = d(alpha L_contrast)/dx (g_tm + g_con is the step's image
  gradient): their norms and the cosine between them. Pure: a run gives the same sets with
  or without it. Costs two backward passes through the unroll.
  """
  syn_classes = jnp.asarray(syn_classes, jnp.int32)
  segments_loss = make_segments_loss(network, cfg, syn_classes, feat_dim, mesh)

  def diagnose(state: SynState, trajectories, upper, key):
    def parts(images):
      learned = (images, state.syn_labels, state.syn_lr, state.head)
      _, (l_tm, l_con, _, _) = segments_loss(learned, trajectories, upper, key)
      return l_tm, l_con

    (_, _), vjp = jax.vjp(parts, state.syn_images)
    one, zero = jnp.ones(()), jnp.zeros(())
    g_tm = vjp((cfg.beta * one if cfg.fusion else one, zero))[0].ravel()
    out = {"grad_norm_tm": jnp.linalg.norm(g_tm)}
    if cfg.fusion:
      g_con = vjp((zero, cfg.alpha * one))[0].ravel()
      n_con = jnp.linalg.norm(g_con)
      out["grad_norm_contrast"] = n_con
      out["grad_cosine"] = jnp.dot(g_tm, g_con) / jnp.maximum(out["grad_norm_tm"] * n_con,
                                                              1e-30)
    return out

  return jax.jit(diagnose)
