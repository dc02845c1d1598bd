"""Scores a study's distilled sets with DD-Ranking's label-robust scores (HLR, IOR, LRS).

  python -m launch.rejudge --study=launch/results/table1_r1/plan.json \
      [--sets=checkpoints/table1_r1] [--compare=RESULTS_DIR] [--metrics=acc,hlr,ior,lrs] \
      [--cells=MTT_seed1,MTT_seed2]

For every finished cell of the plan (runs/<cell>/cell.json) whose syn_set.npz is in the cell's
folder or under --sets/<cell>/, evaluates that set as an outside set (config.eval.synset)
with the cell's own config plus the scores, in checkpoints/scores/<study>/<cell>/. One
full-data accuracy serves every cell of every study (checkpoints/scores/full_data.json, keyed
by what it depends on). Resumable: a cell whose scores.json exists is kept. Writes
runs/<cell>/scores.json and scores.md beside the plan: every cell, each arm's mean per score,
and paired differences (standard errors over seeds) against the baseline and each arm's
control.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from absl import app, flags, logging

from datm_clr_jax import checkpointing, pipeline, study

STUDY = flags.DEFINE_string("study", None, "The study's plan.json.", required=True)
SETS = flags.DEFINE_string("sets", "", "Where cells' workdirs (with syn_set.npz) live.")
COMPARE = flags.DEFINE_string("compare", "", "Another results folder holding the same cells "
                              "(runs/<cell>/cell.json), e.g. the study they were made again "
                              "from: its accuracies are shown and paired beside the scores.")
METRICS = flags.DEFINE_list("metrics", ["acc", "hlr", "ior", "lrs"], "Scores to compute.")
CELLS = flags.DEFINE_list("cells", [], "Score only these cells now (e.g. to split the work "
                          "between processes); the table shows every cell scored so far.")
SHOWN = ("acc", "hlr", "ior", "lrs", "ars")


def score_cell(plan: dict, cell_name: str, rec: dict, npz: Path, root: Path) -> dict:
  """The cell's results.json with scores (evaluated now, or kept from an earlier call)."""
  cell = study.Cell(rec["arm"], rec["seed"], tuple(rec["overrides"]))
  config = study.cell_config(plan, cell, root, study.experts_path(plan, cell.arm, root))
  config.eval.synset = str(npz.resolve())
  config.eval.metrics = tuple(METRICS.value)
  config.eval.random_real = False
  config.eval.full_cache = str(root.parent / "full_data.json")
  return pipeline.run(config, str(root / cell_name), "evaluate")


def cell_scores(results: dict, arch: str = "convnet") -> dict[str, float]:
  """{score: mean over the evaluation seeds} of one cell, with its accuracy as 'acc'."""
  out = {"acc": results["distilled"][arch]["mean"]}
  out.update({k: v["mean"] for k, v in results.get("scores", {}).get(arch, {}).items()})
  return out


def table(plan: dict, by_cell: dict[str, tuple[dict, dict]],
          compared: dict[str, float] | None = None, compared_from: str = "") -> str:
  """scores.md: every cell, then each arm's mean and paired differences per score.

  by_cell: {cell: (its cell.json, cell_scores)}; compared: {cell: accuracy} of the same cells
  in another run of them (e.g. the study they were made again from), shown beside and paired
  like a score.
  """
  per_arm: dict[str, dict[str, dict[str, float]]] = {}
  for name, (rec, values) in by_cell.items():
    extra = {"compared acc": compared[name]} if compared and name in compared else {}
    for k, v in {**values, **extra}.items():
      per_arm.setdefault(rec["arm"], {}).setdefault(k, {})[str(rec["seed"])] = v
  metrics = [m for m in SHOWN if any(m in a for a in per_arm.values())]
  seeds = sorted({rec["seed"] for rec, _ in by_cell.values()})
  # The cell's own accuracy beside the re-evaluated one: the set and its evaluation are
  # deterministic, so they agree unless the evaluation's numerics moved.
  shown = (["compared acc"] if compared else []) + ["cell acc"] + metrics
  lines = ["| cell | " + " | ".join(shown) + " |", "|---" * (len(shown) + 1) + "|"]
  for name, (rec, values) in sorted(by_cell.items()):
    values = {**values, "cell acc": rec["accuracy"]}
    if compared and name in compared:
      values["compared acc"] = compared[name]
    lines.append(f"| {name} | " + " | ".join(
        f"{values[m]:.2f}" if m in values else "" for m in shown) + " |")
  base = plan["baseline"]
  lines += ["", f"| arm | score | mean | vs {base} (paired, SE) | vs its control |",
            "|---|---|---|---|---|"]
  for arm, spec in plan["arms"].items():
    if arm not in per_arm:
      continue
    control = spec.get("control")
    for m in (["compared acc"] if compared else []) + metrics:
      got = per_arm[arm].get(m, {})
      if not got:
        continue
      mean = sum(got.values()) / len(got)
      vs = lambda other: study._cell_text(  # pylint: disable=protected-access
          study.paired(got, per_arm.get(other, {}).get(m, {}), seeds)) if other else ""
      lines.append(f"| {arm} | {m} | {mean:.2f} | {vs(base) if arm != base else ''} | "
                   f"{vs(control)} |")
  return "\n".join(lines) + (
      "\n\nacc: ConvNet test %, re-evaluated now; cell acc: as the cell's run recorded it"
      + (f"; compared acc: the same cell in {compared_from}" if compared else "")
      + ". HLR and IOR in accuracy points; LRS x 100 (datm_clr_jax/scores.py). Each cell: "
      "the mean over its evaluation seeds; differences: mean paired difference over the "
      "distillation seeds +- its standard error.\n")


def compared_accuracies(results_dir: str) -> dict[str, float]:
  """{cell: accuracy} from another results folder's runs/<cell>/cell.json."""
  return {name: rec["accuracy"] for name, rec in study.read_cells(results_dir).items()}


def score_cells(plan: dict, sets: str = "", only=()) -> dict[str, tuple[dict, dict]]:
  """{cell: (its cell.json, cell_scores)} of every scored cell; scores the finished cells that
  have a set and no scores.json yet (of `only`, where given)."""
  results_dir = Path(plan["_path"]).parent
  root = Path("checkpoints") / "scores" / results_dir.name
  cells = study.read_cells(results_dir)
  unknown = sorted(set(only) - set(cells))
  if unknown:  # a mistyped name would otherwise score nothing, silently
    raise study.StudyError(f"no finished cell named {', '.join(unknown)} in {results_dir}")
  by_cell = {}
  for name, rec in cells.items():
    out = study.cell_dir(results_dir, name) / "scores.json"
    if not out.exists():
      if only and name not in only:
        continue
      candidates = [study.cell_dir(results_dir, name) / "syn_set.npz"]
      if sets:
        candidates.append(Path(sets) / name / "syn_set.npz")
      npz = next((p for p in candidates if p.exists()), None)
      if npz is None:
        logging.warning("%s: no syn_set.npz; rerun its distillation first", name)
        continue
      results = score_cell(plan, name, rec, npz, root)
      checkpointing.write_json(out, results)
      if not (study.cell_dir(results_dir, name) / "syn_set.npz").exists():
        shutil.copy2(npz, study.cell_dir(results_dir, name) / "syn_set.npz")
    by_cell[name] = (rec, cell_scores(json.loads(out.read_text())))
  return by_cell


def main(_):
  try:
    plan = study.load_plan(STUDY.value)
    by_cell = score_cells(plan, SETS.value, CELLS.value)
  except study.StudyError as e:
    raise SystemExit(f"rejudge: {e}") from None
  compared = compared_accuracies(COMPARE.value) if COMPARE.value else None
  text = table(plan, by_cell, compared, COMPARE.value)
  checkpointing.write_text(Path(plan["_path"]).parent / "scores.md", text)
  print(text)


if __name__ == "__main__":
  app.run(main)
