"""Label- and augmentation-robust scores of a distilled set (DD-Ranking's definitions).

Soft labels carry knowledge of their own: a random real subset trained on a teacher's soft
labels also gains accuracy. These scores separate what the images carry from what the labels
(and the augmentation) add. With accuracies as fractions in [0, 1], per evaluation seed:

  HLR = Acc(full real data, hard labels) - Acc(synthetic images, hard labels)
  IOR = Acc(synthetic, its own labels) - Acc(random real subset, the same kind of labels)
  LRS = N(w IOR - (1 - w) HLR)
  ARS = N(g (syn_aug - rdm_aug) + (1 - g) (syn_noaug - rdm_noaug))
  N(a) = (e^a - e^-1) / (e - e^-1), which maps [-1, 1] onto [0, 1]

The random subset takes the set's label kind: one-hot for hard-label sets, a teacher's soft
labels (an expert's final checkpoint) for soft-label sets. Results hold HLR and IOR in
accuracy points and LRS and ARS times 100. DD-Ranking v0.2.0 passes percentages into N; this
code passes fractions, as the definitions read (docs/usage.md: Scores).
"""

from __future__ import annotations

import math

import numpy as np

METRICS = ("acc", "hlr", "ior", "lrs", "ars")


def normalise(a):
  """N(a) = (e^a - e^-1) / (e - e^-1): 0 at a = -1, 1 at a = 1."""
  return (np.exp(a) - math.exp(-1)) / (math.e - math.exp(-1))


def hlr(full, syn_hard):
  """Hard label recovery, fractions: what the images lack against the full real data."""
  return np.asarray(full) - np.asarray(syn_hard)


def ior(syn, random):
  """Improvement over random, fractions: the set against a random real subset."""
  return np.asarray(syn) - np.asarray(random)


def lrs(hlr_value, ior_value, weight: float = 0.5):
  """Label-robust score in [0, 1] from HLR and IOR (fractions)."""
  return normalise(weight * np.asarray(ior_value) - (1 - weight) * np.asarray(hlr_value))


def ars(syn_aug, random_aug, syn_noaug, random_noaug, weight: float = 0.5):
  """Augmentation-robust score in [0, 1] (fractions): the set's gain over random, trained with
  and without augmentation, weighted by `weight` and 1 - weight."""
  gain = (weight * (np.asarray(syn_aug) - np.asarray(random_aug))
          + (1 - weight) * (np.asarray(syn_noaug) - np.asarray(random_noaug)))
  return normalise(gain)


def needed_sets(metrics, hard_labels: bool) -> set[str]:
  """The evaluations `metrics` need beyond the distilled set: 'distilled_hard' (skipped for a
  hard-label set, whose own evaluation is it), 'random' (a random subset with the set's kind
  of labels), 'distilled_noaug', 'random_noaug' and 'full' (the full real data)."""
  need = set()
  if {"hlr", "lrs"} & set(metrics):
    need |= {"full"} | (set() if hard_labels else {"distilled_hard"})
  if {"ior", "lrs"} & set(metrics):
    need.add("random")
  if "ars" in metrics:
    need |= {"random", "distilled_noaug", "random_noaug"}
  return need


def per_seed_scores(metrics, acc: dict, full: float, *, lrs_weight: float = 0.5,
                    ars_weight: float = 0.5) -> dict[str, list[float]]:
  """{metric: one value per evaluation seed} from accuracies in percent.

  acc: {'distilled', 'distilled_hard', 'random', 'distilled_noaug', 'random_noaug'}: each a
  list over the same seeds (percent); full: the full-data accuracy (percent). HLR and IOR come
  back in accuracy points, LRS and ARS times 100.
  """
  f = {k: np.asarray(v, np.float64) / 100 for k, v in acc.items()}
  out = {}
  h = i = None
  if {"hlr", "lrs"} & set(metrics):
    h = hlr(full / 100, f.get("distilled_hard", f["distilled"]))
  if {"ior", "lrs"} & set(metrics):
    i = ior(f["distilled"], f["random"])
  if "hlr" in metrics:
    out["hlr"] = list(100 * h)
  if "ior" in metrics:
    out["ior"] = list(100 * i)
  if "lrs" in metrics:
    out["lrs"] = list(100 * lrs(h, i, lrs_weight))
  if "ars" in metrics:
    out["ars"] = list(100 * ars(f["distilled"], f["random"], f["distilled_noaug"],
                                f["random_noaug"], ars_weight))
  return {k: [float(x) for x in v] for k, v in out.items()}
