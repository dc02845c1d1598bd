"""launch/rejudge.py's table: scores per cell and paired differences per arm."""

import math

import numpy as np
import pytest

from datm_clr_jax import study
from launch import rejudge


def test_the_table_pairs_every_score_and_the_compared_run_like_a_direct_computation():
  plan = {"baseline": "A0", "arms": {"A0": {}, "A1": {"control": "A0"}}}
  lrs = {("A0", 0): 20.0, ("A0", 1): 22.0, ("A0", 2): 21.0,
         ("A1", 0): 19.0, ("A1", 1): 23.5, ("A1", 2): 19.0}
  by_cell = {f"{a}_seed{s}": ({"arm": a, "seed": s, "accuracy": 30.0 + s},
                              {"acc": 30.0 + s, "lrs": v}) for (a, s), v in lrs.items()}
  compared = {name: rec["accuracy"] + 0.5 for name, (rec, _) in by_cell.items()}
  text = rejudge.table(plan, by_cell, compared, "the study")
  diffs = np.array([lrs["A1", s] - lrs["A0", s] for s in range(3)])
  se = np.std(diffs, ddof=1) / math.sqrt(3)
  row = f"| A1 | lrs | {np.mean(list(lrs[k] for k in lrs if k[0] == 'A1')):.2f} | "
  want = f"{diffs.mean():+.2f} +- {se:.2f} (n=3)"
  assert f"{row}{want} | {want} |" in text, text
  assert "| A1_seed2 | 32.50 | 32.00 | 32.00 | 19.00 |" in text  # compared, cell, acc, lrs
  assert "| A1 | compared acc | 31.50 | +0.00 +- 0.00 (n=3) |" in text
  assert "compared acc" not in rejudge.table(plan, by_cell)


def test_score_cells_scores_only_the_named_cells_and_keeps_every_scored_one(tmp_path, monkeypatch):
  import json
  results = {"distilled": {"convnet": {"mean": 31.0}},
             "scores": {"convnet": {"lrs": {"mean": 22.0}}}}
  for name, seed in (("A0_seed0", 0), ("A0_seed1", 1), ("A0_seed2", 2)):
    d = tmp_path / "runs" / name
    d.mkdir(parents=True)
    (d / "cell.json").write_text(json.dumps({"arm": "A0", "seed": seed, "accuracy": 31.0}))
    (d / "syn_set.npz").write_bytes(b"")
  (tmp_path / "runs/A0_seed2/scores.json").write_text(json.dumps(results))  # scored earlier
  scored = []
  monkeypatch.setattr(rejudge, "score_cell",
                      lambda plan, name, rec, npz, root: scored.append(name) or results)
  plan = {"_path": str(tmp_path / "plan.json")}
  by_cell = rejudge.score_cells(plan, only=["A0_seed1"])
  assert scored == ["A0_seed1"]
  assert sorted(by_cell) == ["A0_seed1", "A0_seed2"]
  assert by_cell["A0_seed1"][1] == {"acc": 31.0, "lrs": 22.0}
  rejudge.score_cells(plan)
  assert scored == ["A0_seed1", "A0_seed0"]
  with pytest.raises(study.StudyError, match="no finished cell named A0_seed9"):
    rejudge.score_cells(plan, only=["A0_seed9"])
