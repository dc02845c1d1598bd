"""The study runner: plan checks, overrides, paired statistics, the decision rule, resume."""

import json
import math

import numpy as np
import pytest

from conftest import ROOT
from datm_clr_jax import config_file, errors, study

TINY = {"distill.iterations": 3, "eval.epochs": 2, "eval.progress_every": 0,
        "eval.random_real": False}  # on top of configs/quickstart.py:tiny


def _plan(tmp_path, **changes):
  plan = {"config": "configs/quickstart.py:tiny",
          "overrides": [f"{k}={v}" for k, v in TINY.items()],
          "dev_seeds": [0, 1], "heldout_seeds": [2], "baseline": "B0",
          "arms": {"B0": {"desc": "DATM", "overrides": ["clr.alpha=0.0"]},
                   "B1": {"desc": "fusion", "overrides": ["clr.alpha=0.1"], "control": "B0",
                          "contrastive": True},
                   "B2": {"desc": "better of B1/B3, fixed head", "from_best": ["B1", "B3"],
                          "overrides": ["clr.head=fixed"], "contrastive": True},
                   "B3": {"desc": "shared views", "overrides": ["clr.views=shared"],
                          "control": "B0", "contrastive": True}}}
  plan.update(changes)
  path = tmp_path / "study" / "plan.json"
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(plan))
  return path


def _cells(acc: dict) -> dict:
  """Fake finished cells from {arm: {seed: accuracy}}."""
  return {f"{a}_seed{s}": {"arm": a, "seed": s, "accuracy": v, "overrides": []}
          for a, seeds in acc.items() for s, v in seeds.items()}


def test_paired_differences_against_a_direct_computation():
  a = {"0": 30.0, "1": 32.5, "2": 31.0, "7": 1.0}
  b = {"0": 29.0, "1": 30.0, "2": 31.5}
  d = study.paired(a, b, [0, 1, 2, 3])
  diffs = np.array([1.0, 2.5, -0.5])
  assert d["n"] == 3 and d["diffs"] == {"0": 1.0, "1": 2.5, "2": -0.5}
  assert math.isclose(d["mean"], diffs.mean())
  assert math.isclose(d["se"], np.sqrt(np.sum((diffs - diffs.mean()) ** 2) / 2) / np.sqrt(3))
  assert study.paired(a, {"9": 1.0}, [0, 1]) is None
  assert not study.beats(d, 3)  # mean 1.0, SE 0.87: under 2 SE
  assert study.beats({"mean": 1.0, "se": 0.4, "n": 3}, 3)
  assert not study.beats({"mean": 1.0, "se": 0.4, "n": 2}, 3)  # a seed missing


def test_from_best_resolves_only_once_its_candidates_have_every_dev_cell(tmp_path):
  plan = study.load_plan(_plan(tmp_path))
  acc = {"B1": {"0": 30.0, "1": 31.0}, "B3": {"0": 33.0}}
  assert study.resolve(plan, acc)["B2"]["overrides"] is None
  assert [c.name for c in study.planned_cells(plan, acc)] == [
      "B0_seed0", "B1_seed0", "B3_seed0", "B0_seed1", "B1_seed1", "B3_seed1"]
  acc["B3"]["1"] = 28.0  # B3's dev mean 30.5, B1's 30.5: a tie goes to the first listed
  b2 = study.resolve(plan, acc)["B2"]
  assert b2 == {"overrides": ("clr.alpha=0.1", "clr.head=fixed"), "control": "B0",
                "based_on": "B1"}
  acc["B3"]["1"] = 29.0
  assert study.resolve(plan, acc)["B2"]["based_on"] == "B3"
  assert study.choose(plan, acc) is None  # B2 has no dev cell yet
  acc["B2"] = {"0": 40.0, "1": 40.0}
  assert study.choose(plan, acc) == "B2"
  held = [c.name for c in study.planned_cells(plan, acc)][-2:]
  assert held == ["B2_seed2", "B0_seed2"]  # B2's control is B3's, B0, given once


def test_the_verdict_follows_the_rule_on_held_out_seeds_only(tmp_path):
  plan = study.load_plan(_plan(tmp_path, heldout_seeds=[2, 3, 4]))
  acc = {"B0": {"0": 30.0, "1": 30.0, "2": 30.0, "3": 31.0, "4": 29.0},
         "B1": {"0": 35.0, "1": 35.0},
         "B3": {"0": 20.0, "1": 20.0}, "B2": {"0": 30.0, "1": 30.0}}
  s = study.summarize(plan, _cells(acc))
  assert s["chosen"] == "B1" and s["control"] == "B0"
  assert s["verdict"].startswith("pending") and s["missing"] == [
      "B1_seed2", "B1_seed3", "B1_seed4"]
  acc["B1"].update({"2": 31.0, "3": 32.0, "4": 30.5})  # diffs 1, 1, 1.5: mean 1.17, SE 0.17
  s = study.summarize(plan, _cells(acc))
  assert s["beats_baseline"] and "B1 (fusion) beats B0" in s["verdict"]
  assert s["arms"]["B1"]["seeds"] == {"0": 35.0, "1": 35.0, "2": 31.0, "3": 32.0, "4": 30.5}
  assert s["arms"]["B1"]["dev_mean"] == 35.0
  acc["B1"]["4"] = 27.0  # diffs 1, 1, -2: the dev seeds' +5 must not rescue it
  s = study.summarize(plan, _cells(acc))
  assert not s["beats_baseline"] and "does not beat" in s["verdict"]
  table = study.format_table(s)
  assert table.count("\n| B") == 4 and "+0.00 +- 1.00 (n=3)" in table


def test_a_plan_without_held_out_seeds_ends_at_its_dev_cells(tmp_path):
  plan = study.load_plan(_plan(tmp_path, heldout_seeds=[]))
  acc = {"B0": {"0": 30.0, "1": 30.0}, "B1": {"0": 35.0, "1": 35.0},
         "B3": {"0": 20.0, "1": 20.0}, "B2": {"0": 30.0}}
  assert study.summarize(plan, _cells(acc))["verdict"] == "pending: the dev cells are not all done"
  acc["B2"]["1"] = 30.0
  s = study.summarize(plan, _cells(acc))
  assert s["chosen"] == "B1" and s["missing"] == [] and "no verdict" in s["verdict"]
  assert "beats_baseline" not in s and "B1" in study.format_table(s)


@pytest.mark.parametrize("override,message", [
    ("clr.nosuch=1", "no field 'clr.nosuch'"), ("nosuch.alpha=1", "no section 'nosuch'"),
    ("clr.through_student=maybe", "True or False"), ("distill.ipc=one", "malformed"),
    ("clr.alpha", "field=value")])
def test_bad_overrides_are_named(override, message):
  config = study.base_config({"config": "configs/quickstart.py"})
  with pytest.raises(errors.ConfigError, match=message):
    config_file.apply_overrides(config, [override])


def test_overrides_keep_types_and_leave_the_base_alone():
  base = study.base_config({"config": "configs/quickstart.py"})
  c = config_file.apply_overrides(base, ["clr.alpha=0", "clr.through_student=False",
                                         "clr.views=extra", "eval.archs=('convnet','vgg11')"])
  assert c.clr.alpha == 0.0 and isinstance(c.clr.alpha, float)
  assert c.clr.through_student is False and c.clr.views == "extra"
  assert c.eval.archs == ("convnet", "vgg11")
  assert base.clr.alpha == 0.1 and base.clr.views == "shared"


@pytest.mark.parametrize("arms,message", [
    ({"B0": {"overrides": ["experts.epochs=2"]}}, "shared by every cell"),
    ({"B0": {}, "B1": {"control": "B9"}}, "'B9', which is not an arm"),
    ({"B0": {}, "B1": {"contrastive": True}}, "needs a control"),
])
def test_bad_plans_are_refused(tmp_path, arms, message):
  with pytest.raises(study.StudyError, match=message):
    study.load_plan(_plan(tmp_path, arms=arms))


def test_the_committed_plan_loads_and_names_every_arm_of_its_table():
  path = ROOT / "launch" / "results" / "clr_study" / "plan.json"
  plan = study.load_plan(path)
  table = (path.parent / "PLAN.md").read_text()
  for name in plan["arms"]:
    assert f"| {name} |" in table
  assert study.choose(plan, {}) is None
  assert len(study.planned_cells(plan, {})) == 3 * (len(plan["arms"]) - 1)  # A6 waits


def test_a_study_runs_resumes_and_refuses_a_changed_plan(tmp_path, monkeypatch):
  from datm_clr_jax import pipeline
  path = _plan(tmp_path, dev_seeds=[0], heldout_seeds=[1])
  root = tmp_path / "root"
  calls = []
  real_run = pipeline.run
  monkeypatch.setattr(pipeline, "run", lambda c, w, m: calls.append(m) or real_run(c, w, m))

  s = study.run_study(path, root, max_cells=2)
  assert calls == ["experts", "distill", "evaluate", "distill", "evaluate"]
  assert sorted(study.read_cells(path.parent)) == ["B0_seed0", "B1_seed0"]
  assert s["verdict"].startswith("pending")

  s = study.run_study(path, root)
  cells = study.read_cells(path.parent)
  # 4 arms on the dev seed, then the chosen arm and its control/the baseline on seed 1.
  assert len(cells) == 4 + len({s["chosen"], s["control"], "B0"}), sorted(cells)
  for name, rec in cells.items():
    results = json.loads((path.parent / "runs" / name / "results.json").read_text())
    assert rec["accuracy"] == results["distilled"]["convnet"]["mean"]
    assert (path.parent / "runs" / name / "metrics.jsonl").exists()
  acc = {}
  for rec in cells.values():
    acc.setdefault(rec["arm"], {})[rec["seed"]] = rec["accuracy"]
  dev_means = {a: acc[a][0] for a in ("B1", "B2", "B3")}
  assert s["chosen"] == max(dev_means, key=dev_means.get)
  assert not s["beats_baseline"]  # one held-out seed has no standard error
  assert len({rec["experts_sha256"] for rec in cells.values()}) == 1
  assert all(rec["machine"] and "code_commit" in rec for rec in cells.values())
  assert all(rec["platform"]["jax"] and rec["platform"]["backend"] == "cpu"
             for rec in cells.values())
  on_disk = json.loads((path.parent / "summary.json").read_text())
  assert on_disk["chosen"] == s["chosen"] and set(on_disk["arms"]) == {"B0", "B1", "B2", "B3"}
  assert (path.parent / "table.md").exists()
  assert sorted(p.name for p in path.parent.glob("curves_seed*.png")) == [
      "curves_seed0.png", "curves_seed1.png"]

  calls.clear()
  study.run_study(path, root)
  assert calls == []  # nothing is missing: nothing runs

  # Other experts than the finished cells matched: refused before any cell runs.
  import shutil
  shutil.rmtree(path.parent / "runs" / "B3_seed0")
  b0 = path.parent / "runs" / "B0_seed0" / "cell.json"
  b0.write_text(json.dumps({**json.loads(b0.read_text()), "experts_sha256": "other"}))
  calls.clear()
  with pytest.raises(study.StudyError, match="not the ones the finished cells matched"):
    study.run_study(path, root)
  assert "distill" not in calls

  plan = json.loads(path.read_text())
  plan["arms"]["B1"]["overrides"] = ["clr.alpha=0.2"]
  path.write_text(json.dumps(plan))
  with pytest.raises(study.StudyError, match="B1_seed0 was run with overrides"):
    study.run_study(path, root)


def test_difference_intervals_are_the_summary_differences_at_two_standard_errors(tmp_path):
  plan = study.load_plan(_plan(tmp_path, heldout_seeds=[2, 3, 4]))
  acc = {"B0": {"0": 30.0, "1": 31.0, "2": 30.0, "3": 31.0, "4": 29.0},
         "B1": {"0": 31.0, "1": 33.0, "2": 31.0, "3": 32.0, "4": 30.5},
         "B3": {"0": 20.0, "1": 20.0}, "B2": {"0": 30.0}}
  s = study.summarize(plan, _cells(acc))
  panels = study.difference_intervals(s)
  ctrl, base = panels["against its own control (alpha 0)"], panels["against B0"]
  dev = np.array([1.0, 2.0])  # B1 - B0 on seeds 0, 1
  held = np.array([1.0, 1.0, 1.5])
  b1 = dict(ctrl)["B1 fusion"]
  assert math.isclose(b1["dev seeds"][0], dev.mean())
  assert math.isclose(b1["dev seeds"][1], 2 * dev.std(ddof=1) / np.sqrt(2))
  assert math.isclose(b1["held-out seeds"][1], 2 * held.std(ddof=1) / np.sqrt(3))
  assert [label for label, _ in ctrl] == ["B1 fusion", "B2 better of B1/B3, fixed head",
                                          "B3 shared views"]
  b2 = dict(ctrl)["B2 better of B1/B3, fixed head"]["dev seeds"]
  assert b2[0] == 0.0 and math.isnan(b2[1])  # one seed: a centre, no interval
  assert "B0 DATM" not in dict(base) and "held-out seeds" not in dict(base)["B3 shared views"]
  path = study.save_differences(s, tmp_path)
  assert path.name == "differences.png" and path.stat().st_size > 0


def test_a_table_plan_runs_each_arm_on_its_own_config_and_experts(tmp_path):
  gsam = tmp_path / "tiny_gsam.py"  # a preset on GSAM experts, like FTD's
  gsam.write_text("from datm_clr_jax import config_file\n\n\ndef get_config():\n"
                  "  config = config_file.load('configs/quickstart.py:tiny', [])\n"
                  "  config.experts.optimizer = 'gsam'\n  return config\n")
  ftd = ["method=ftd", "distill.labels=hard", "distill.init=real", "distill.threshold=0.0",
         "distill.ema_decay=0.5"]
  arms = {"D": {"desc": "DATM", "overrides": ["clr.alpha=0.0"]},
          "F": {"desc": "FTD-like", "config": str(gsam), "experts_dir": "experts_gsam",
                "overrides": ftd}}
  path = _plan(tmp_path, dev_seeds=[0], heldout_seeds=[], baseline="D", arms=arms)
  s = study.run_study(path, tmp_path / "root")
  assert s["verdict"] == "table: all 2 cells done"
  cells = study.read_cells(path.parent)
  f = cells["F_seed0"]
  assert f["experts_dir"] == "experts_gsam" and "experts_dir" not in cells["D_seed0"]
  assert f["experts_sha256"] != cells["D_seed0"]["experts_sha256"]
  meta = json.loads((path.parent / "experts_gsam" / "meta.json").read_text())
  assert meta["kind"]["experts.optimizer"] == "gsam"
  results = json.loads((path.parent / "runs" / "F_seed0" / "results.json").read_text())
  assert f["accuracy_ema"] == results["distilled_ema"]["convnet"]["mean"]
  with np.load(path.parent / "runs" / "F_seed0" / "syn_set.npz") as z:
    assert z["syn_images"].shape == z["ema_images"].shape
    np.testing.assert_array_equal(z["syn_labels"], np.eye(z["syn_labels"].shape[1]))
  assert s["arms"]["F"]["ema"]["seeds"] == {"0": f["accuracy_ema"]}
  table = (path.parent / "table.md").read_text()
  assert "| F EMA |" in table and "Status: table: all 2 cells done" in table
  head = table.splitlines()[0]  # a table plan has no controls and no held-out seeds
  assert head == "| arm | what | seed 0 | dev mean | vs D (dev) |", head
  # An arm that would share D's experts folder with GSAM experts is refused before any run.
  arms["G"] = {"desc": "GSAM in D's folder", "config": str(gsam)}
  path = _plan(tmp_path, dev_seeds=[0], heldout_seeds=[], baseline="D", arms=arms)
  with pytest.raises(study.StudyError, match="arms D and G share the experts.*experts.optimizer"):
    study.run_study(path, tmp_path / "root")
