"""DD-Ranking's scores: definitions against direct computations, and an evaluation that
writes every score."""

import json
import math

import numpy as np
import pytest

from conftest import tiny_config
from datm_clr_jax import evaluate, pipeline, results, scores


def test_normalisation_end_points_and_middle():
  assert scores.normalise(-1.0) == pytest.approx(0.0, abs=1e-15)
  assert scores.normalise(1.0) == pytest.approx(1.0)
  mid = (1 - math.exp(-1)) / (math.e - math.exp(-1))
  assert scores.normalise(0.0) == pytest.approx(mid)
  assert np.all(np.diff(scores.normalise(np.linspace(-1, 1, 9))) > 0)


def test_scores_against_a_direct_computation_from_accuracies():
  acc = {"distilled": [40.0, 44.0], "distilled_hard": [30.0, 31.0], "random": [20.0, 26.0],
         "distilled_noaug": [35.0, 36.0], "random_noaug": [18.0, 17.0]}
  got = scores.per_seed_scores(scores.METRICS, acc, full=80.0, lrs_weight=0.3, ars_weight=0.6)
  n = lambda a: (math.exp(a) - math.exp(-1)) / (math.e - math.exp(-1))
  for i in range(2):
    h = 0.80 - acc["distilled_hard"][i] / 100
    r = acc["distilled"][i] / 100 - acc["random"][i] / 100
    assert got["hlr"][i] == pytest.approx(100 * h)
    assert got["ior"][i] == pytest.approx(100 * r)
    assert got["lrs"][i] == pytest.approx(100 * n(0.3 * r - 0.7 * h))
    b = (0.6 * (acc["distilled"][i] - acc["random"][i])
         + 0.4 * (acc["distilled_noaug"][i] - acc["random_noaug"][i])) / 100
    assert got["ars"][i] == pytest.approx(100 * n(b))
  # A hard-label set is its own hard-label evaluation.
  hard = scores.per_seed_scores(("hlr",), {"distilled": [40.0]}, full=80.0)
  assert hard["hlr"] == [pytest.approx(40.0)]
  assert scores.needed_sets(("hlr",), hard_labels=True) == {"full"}
  assert scores.needed_sets(("lrs",), hard_labels=False) == {"full", "distilled_hard", "random"}


def test_the_hard_label_path_of_a_set_is_the_random_real_path():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(60, 8, 8, 3)).astype(np.float32)
  y = np.repeat(np.arange(3), 20)
  images, onehot = evaluate.random_real(x, y, ipc=2, num_classes=3, seed=1)
  np.testing.assert_array_equal(results.class_one_hot(6, 3), onehot)


def test_evaluate_writes_every_score_and_the_lr_grid_keeps_the_best(tmp_path, monkeypatch):
  config = tiny_config()
  config.eval.metrics = scores.METRICS
  config.eval.full_epochs = 1
  config.eval.random_real = False
  pipeline.run(config, str(tmp_path), "all")
  r = json.loads((tmp_path / "results.json").read_text())
  for name in ("distilled", "distilled_hard", "distilled_noaug", "random_teacher",
               "random_teacher_noaug"):
    assert len(r[name]["convnet"]["runs"]) == config.eval.num_eval, name
  assert set(r["scores"]["convnet"]) == {"hlr", "ior", "lrs", "ars"}
  full = r["full_data"]["convnet"]["mean"]
  want = scores.per_seed_scores(scores.METRICS, {
      "distilled": r["distilled"]["convnet"]["runs"],
      "distilled_hard": r["distilled_hard"]["convnet"]["runs"],
      "random": r["random_teacher"]["convnet"]["runs"],
      "distilled_noaug": r["distilled_noaug"]["convnet"]["runs"],
      "random_noaug": r["random_teacher_noaug"]["convnet"]["runs"]}, full)
  for k, v in want.items():
    assert r["scores"]["convnet"][k]["runs"] == pytest.approx(v)
  cache = json.loads((tmp_path / "full_data.json").read_text())
  assert [c["mean"] for c in cache.values()] == [full]
  # A second evaluation reuses the cached full-data accuracy and every kept evaluation.
  (tmp_path / "results.json").unlink()
  again = pipeline.run(config, str(tmp_path), "evaluate")
  assert again["full_data"]["convnet"]["mean"] == full
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert {f"score_{k}" for k in want} <= {rec.get("set") for rec in records}


  # DD-Ranking's lr choice for the random subsets: the best of the grid, said to be chosen on
  # the test set. A stand-in trainer whose accuracy grows with lr: 0.1 must win.
  tried = []

  def fake(net, images, labels, lr, *a, seeds, **k):
    tried.append(lr)
    return [100 * lr] * len(seeds)

  monkeypatch.setattr(evaluate, "evaluate_synset", fake)
  config.eval.metrics, config.eval.random_real, config.eval.resume = ("acc",), True, False
  config.eval.random_lr_grid = (0.001, 0.1, 0.01)
  got = pipeline.run(config, str(tmp_path), "evaluate")["random_real"]["convnet"]
  assert got["lr"] == 0.1 and got["mean"] == pytest.approx(10.0)
  assert "test accuracy" in got["lr_chosen_on"]
  assert sorted(tried) == sorted([0.001, 0.1, 0.01, again["syn_lr"]])  # the set keeps syn_lr
