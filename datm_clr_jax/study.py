"""Pre-registered ablation studies: arms (config overrides) x distillation seeds, paired.

A plan is a JSON file, written (and committed) before any of its results exist:

  {"config": "configs/cifar10_r1.py",          base config, relative to the repository
   "overrides": ["eval.random_real=False"],     for every cell (what follows --config.)
   "dev_seeds": [0, 1, 2], "heldout_seeds": [3, 4, 5],
   "baseline": "A0",
   "experts_dir": "experts",                    optional, relative to the plan
   "arms": {"A0": {"desc": "DATM", "overrides": ["clr.alpha=0.0"]},
            "F": {"desc": "FTD", "config": "configs/cifar10_r1.py:ftd",
                  "experts_dir": "experts_gsam"},
            "A1": {"desc": "...", "overrides": [...], "control": "A0", "contrastive": true},
            "A6": {"desc": "...", "from_best": ["A2", "A4"], "overrides": [...],
                   "contrastive": true}}}

An arm may name its own `config` (e.g. a method's preset) and `experts_dir`; the arms that
share an experts folder must ask for experts of one kind (experts.kind). An arm with
`from_best` inherits the overrides and the control of whichever of those arms has
the higher dev-seed mean, so it can run only once their dev cells are done. Every arm runs on
the dev seeds; then the contrastive arm with the highest dev-seed mean (the chosen arm), its
control and the baseline run on the held-out seeds, which no choice looks at. The decision
rule: the chosen arm beats the baseline if, on the held-out seeds, its mean paired difference
against its control and against the baseline each exceed twice their standard error. A plan
without contrastive arms is a table: every arm on every dev seed, paired against the baseline.

The cells of one experts folder share its experts (trained once, or found there) and all
share the data cache. A finished cell leaves results.json, metrics.jsonl and its distilled
set syn_set.npz under <results>/runs/<arm>_seed<s>/; the runner skips those, so the same command resumes a study,
and it refuses a cell whose recorded overrides are no longer the plan's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
from pathlib import Path

import ml_collections
import numpy as np
from absl import logging

from datm_clr_jax import checkpointing, config_file
from datm_clr_jax.errors import StudyError

_REPO = Path(__file__).resolve().parents[1]
# Fields every arm must share: the experts and data are common to all cells.
SHARED_PREFIXES = ("experts.", "data.", "seed")


@dataclasses.dataclass(frozen=True)
class Cell:
  arm: str
  seed: int
  overrides: tuple[str, ...]  # the arm's resolved overrides (after the plan's common ones)

  @property
  def name(self) -> str:
    return f"{self.arm}_seed{self.seed}"


# ----------------------------------------------------------------------------- plan and config


def load_plan(path) -> dict:
  """Reads and checks a plan; raises StudyError naming what is wrong."""
  path = Path(path)
  if not path.is_file():
    raise StudyError(f"no study plan at {path}")
  try:
    plan = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise StudyError(f"{path} is not valid JSON: {e}") from None
  for field in ("config", "dev_seeds", "heldout_seeds", "baseline", "arms"):
    if field not in plan:
      raise StudyError(f"{path}: the plan has no {field!r}")
  arms = plan["arms"]
  if plan["baseline"] not in arms:
    raise StudyError(f"{path}: baseline {plan['baseline']!r} is not an arm")
  if set(plan["dev_seeds"]) & set(plan["heldout_seeds"]):
    raise StudyError(f"{path}: dev_seeds and heldout_seeds overlap")
  for name, arm in arms.items():
    for ref in [arm.get("control")] + list(arm.get("from_best", [])):
      if ref is not None and ref not in arms:
        raise StudyError(f"{path}: arm {name} refers to {ref!r}, which is not an arm")
    if any("from_best" in arms[a] for a in arm.get("from_best", [])):
      raise StudyError(f"{path}: arm {name}: from_best arms cannot themselves be from_best")
    if arm.get("contrastive") and not (arm.get("control") or arm.get("from_best")):
      raise StudyError(f"{path}: contrastive arm {name} needs a control (its alpha-0 twin)")
    for o in arm.get("overrides", []):
      if o.split("=", 1)[0].startswith(SHARED_PREFIXES):
        raise StudyError(f"{path}: arm {name} overrides {o!r}; experts, data and seeds are "
                         "shared by every cell (set them in the plan's 'overrides')")
  plan["_path"] = str(path.resolve())
  return plan


def base_config(plan: dict, arm: str | None = None) -> ml_collections.ConfigDict:
  """The config file of `arm` (its own, else the plan's; a path relative to the repository,
  or `path:variant`) with the plan's common overrides."""
  path = plan["arms"][arm].get("config", plan["config"]) if arm else plan["config"]
  return config_file.load(path, plan.get("overrides", []))


def is_table(plan: dict) -> bool:
  """A plan without contrastive arms: no decision rule, every arm on every dev seed."""
  return not any(arm.get("contrastive") for arm in plan["arms"].values())


def experts_dir_of(plan: dict, arm: str) -> str:
  """The arm's experts folder as the plan names it ('' for the runner's own)."""
  return plan["arms"][arm].get("experts_dir", plan.get("experts_dir", ""))


# ----------------------------------------------------------------------------- results


def cell_dir(results_dir, cell_name: str) -> Path:
  return Path(results_dir) / "runs" / cell_name


def read_cells(results_dir) -> dict[str, dict]:
  """{cell name: its record} for every finished cell under results_dir/runs."""
  out = {}
  for f in sorted(Path(results_dir).glob("runs/*/cell.json")):
    out[f.parent.name] = json.loads(f.read_text())
  return out


def cell_accuracy(results: dict, arch: str = "convnet", set_name: str = "distilled"
                  ) -> float | None:
  """Mean test accuracy in percent over the evaluation seeds of a results.json (None where
  it has no such set, e.g. no EMA)."""
  got = results.get(set_name, {}).get(arch)
  return None if got is None else float(got["mean"])


def paired(a: dict, b: dict, seeds) -> dict | None:
  """Paired differences a - b over the seeds both hold: mean, standard error, n, each diff."""
  common = [s for s in seeds if str(s) in a and str(s) in b]
  if not common:
    return None
  d = np.array([a[str(s)] - b[str(s)] for s in common])
  se = float(np.std(d, ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("nan")
  return {"mean": float(np.mean(d)), "se": se, "n": len(d),
          "diffs": {str(s): float(x) for s, x in zip(common, d)}}


def beats(diff: dict | None, n_needed: int) -> bool:
  """The decision rule for one comparison: all seeds present and mean > 2 standard errors."""
  return (diff is not None and diff["n"] == n_needed and not math.isnan(diff["se"])
          and diff["mean"] > 2 * diff["se"])


def _dev_mean(seeds_acc: dict, dev_seeds) -> float | None:
  if not all(str(s) in seeds_acc for s in dev_seeds):
    return None
  return float(np.mean([seeds_acc[str(s)] for s in dev_seeds]))


def resolve(plan: dict, accuracies: dict[str, dict]) -> dict[str, dict]:
  """Each arm's overrides and control, with from_best arms resolved where possible.

  accuracies: {arm: {seed (str): accuracy}}. Returns {arm: {"overrides": tuple | None,
  "control": str | None, "based_on": str | None}}; overrides is None while an arm's
  from_best candidates still miss dev cells.
  """
  out = {}
  for name, arm in plan["arms"].items():
    own = tuple(arm.get("overrides", []))
    if "from_best" not in arm:
      out[name] = {"overrides": own, "control": arm.get("control"), "based_on": None}
      continue
    means = {c: _dev_mean(accuracies.get(c, {}), plan["dev_seeds"]) for c in arm["from_best"]}
    if any(m is None for m in means.values()):
      out[name] = {"overrides": None, "control": None, "based_on": None}
      continue
    best = max(arm["from_best"], key=lambda c: (means[c], -arm["from_best"].index(c)))
    base = plan["arms"][best]
    out[name] = {"overrides": tuple(base.get("overrides", [])) + own,
                 "control": base.get("control"), "based_on": best}
  return out


def choose(plan: dict, accuracies: dict[str, dict]) -> str | None:
  """The contrastive arm with the highest dev-seed mean, once every contrastive arm has all
  its dev cells (ties go to the arm listed first)."""
  best, best_mean = None, -math.inf
  for name, arm in plan["arms"].items():
    if not arm.get("contrastive"):
      continue
    m = _dev_mean(accuracies.get(name, {}), plan["dev_seeds"])
    if m is None:
      return None
    if m > best_mean:
      best, best_mean = name, m
  return best


def planned_cells(plan: dict, accuracies: dict[str, dict]) -> list[Cell]:
  """Every cell the plan asks for that can be named now, in the order they should run:
  dev seeds seed by seed, then the held-out seeds of the chosen arm, its control and the
  baseline."""
  arms = resolve(plan, accuracies)
  cells = [Cell(a, s, arms[a]["overrides"]) for s in plan["dev_seeds"] for a in plan["arms"]
           if arms[a]["overrides"] is not None]
  chosen = choose(plan, accuracies)
  if chosen is not None:
    heldout = [chosen, arms[chosen]["control"], plan["baseline"]]
    heldout = list(dict.fromkeys(a for a in heldout if a))
    cells += [Cell(a, s, arms[a]["overrides"]) for s in plan["heldout_seeds"] for a in heldout]
  return cells


def summarize(plan: dict, cells: dict[str, dict]) -> dict:
  """summary.json: every arm's accuracy per seed, its paired differences against its
  control and the baseline (dev and held-out seeds), the chosen arm and the verdict."""
  acc, ema, method = {}, {}, {}
  for rec in cells.values():
    acc.setdefault(rec["arm"], {})[str(rec["seed"])] = rec["accuracy"]
    if "method" in rec:
      method[rec["arm"]] = rec["method"]
    if rec.get("accuracy_ema") is not None:  # FTD: its images' moving average as well
      ema.setdefault(rec["arm"], {})[str(rec["seed"])] = rec["accuracy_ema"]
  arms = resolve(plan, acc)
  base, dev, held = plan["baseline"], plan["dev_seeds"], plan["heldout_seeds"]
  out_arms = {}
  for name, arm in plan["arms"].items():
    r = arms[name]
    entry = {"desc": arm.get("desc", ""), "overrides": list(r["overrides"] or []),
             "control": r["control"], "contrastive": bool(arm.get("contrastive")),
             "seeds": dict(sorted(acc.get(name, {}).items(), key=lambda kv: int(kv[0]))),
             "dev_mean": _dev_mean(acc.get(name, {}), dev)}
    if r["based_on"]:
      entry["based_on"] = r["based_on"]
    if name in method:
      entry["method"] = method[name]
    if name in ema:
      entry["ema"] = {"seeds": dict(sorted(ema[name].items(), key=lambda kv: int(kv[0]))),
                      "dev_mean": _dev_mean(ema[name], dev),
                      "vs_baseline_dev": paired(ema[name], acc.get(base, {}), dev)}
    for label, seeds in (("dev", dev), ("heldout", held)):
      if r["control"]:
        entry[f"vs_control_{label}"] = paired(acc.get(name, {}), acc.get(r["control"], {}),
                                              seeds)
      if name != base:
        entry[f"vs_baseline_{label}"] = paired(acc.get(name, {}), acc.get(base, {}), seeds)
    out_arms[name] = entry
  chosen = choose(plan, acc)
  summary = {"plan": Path(plan["_path"]).name, "dev_seeds": dev, "heldout_seeds": held,
             "baseline": base, "arms": out_arms, "chosen": chosen,
             "control": arms[chosen]["control"] if chosen else None}
  expected = planned_cells(plan, acc)
  missing = [c.name for c in expected if c.name not in cells]
  if is_table(plan):
    summary["verdict"] = (f"table: {len(missing)} of {len(expected)} cells still to run"
                          if missing else f"table: all {len(expected)} cells done")
    summary["missing"] = missing
    return summary
  if chosen is None or missing:
    summary["verdict"] = (f"pending: {len(missing)} cells still to run" if chosen else
                          "pending: the dev cells are not all done")
    summary["missing"] = missing
    return summary
  if not held:  # a plan of dev cells only (e.g. a study's cells made again) has no verdict
    summary["verdict"] = (f"dev cells done: {chosen} has the best dev mean of the contrastive "
                          "arms; no held-out seeds are planned, so the rule gives no verdict")
    summary["missing"] = []
    return summary
  c = out_arms[chosen]
  vs_c, vs_b = c.get("vs_control_heldout"), c.get("vs_baseline_heldout")
  fmt = lambda d: f"{d['mean']:+.2f} +- {d['se']:.2f} (SE, n={d['n']})"
  wins = beats(vs_c, len(held)) and beats(vs_b, len(held))
  summary["verdict"] = (
      f"{chosen} ({c['desc']}) {'beats' if wins else 'does not beat'} {base} on the held-out "
      f"seeds {held}: paired difference {fmt(vs_c)} against its control {summary['control']}, "
      f"{fmt(vs_b)} against {base}; the rule asks for both above twice their SE")
  summary["beats_baseline"] = wins
  return summary


def _cell_text(d: dict | None) -> str:
  if d is None:
    return ""
  se = "" if math.isnan(d["se"]) else f" +- {d['se']:.2f}"
  return f"{d['mean']:+.2f}{se} (n={d['n']})"


def format_table(summary: dict) -> str:
  """A markdown table of every arm and seed, with the paired differences. Columns no arm can
  fill (controls in a table plan, held-out seeds where none are planned) are left out."""
  seeds = summary["dev_seeds"] + summary["heldout_seeds"]
  base = summary["baseline"]
  diffs = [("vs_control_dev", "vs control (dev)"), ("vs_baseline_dev", f"vs {base} (dev)"),
           ("vs_control_heldout", "vs control (held-out)"),
           ("vs_baseline_heldout", f"vs {base} (held-out)")]
  controls = any(a["control"] for a in summary["arms"].values())
  diffs = [(k, t) for k, t in diffs if (controls or "control" not in k)
           and (summary["heldout_seeds"] or "heldout" not in k)]
  head = (["arm", "what"] + [f"seed {s}" for s in seeds] + ["dev mean"]
          + (["control"] if controls else []) + [t for _, t in diffs])
  rows = [head, ["---"] * len(head)]
  for name, a in summary["arms"].items():
    row = [name, a["desc"] + (f" [{a['based_on']}]" if a.get("based_on") else "")]
    row += [f"{a['seeds'][str(s)]:.2f}" if str(s) in a["seeds"] else "" for s in seeds]
    row += ["" if a["dev_mean"] is None else f"{a['dev_mean']:.2f}"]
    row += [a["control"] or ""] if controls else []
    row += [_cell_text(a.get(k)) for k, _ in diffs]
    rows.append(row)
    if "ema" in a:  # FTD's moving average of the same cells' images
      e = a["ema"]
      row = [f"{name} EMA", "the moving average of its images"]
      row += [f"{e['seeds'][str(s)]:.2f}" if str(s) in e["seeds"] else "" for s in seeds]
      row += ["" if e["dev_mean"] is None else f"{e['dev_mean']:.2f}"]
      row += [""] if controls else []
      row += [_cell_text(e["vs_baseline_dev"]) if k == "vs_baseline_dev" else ""
              for k, _ in diffs]
      rows.append(row)
  lines = ["| " + " | ".join(r) + " |" for r in rows]
  return ("\n".join(lines) + "\n\nAccuracy: ConvNet test %, mean over the evaluation seeds of "
          "one distillation seed. Differences: mean paired difference +- its standard error "
          "over the seeds both arms hold.\n\n" + (
              f"Status: {summary['verdict']}\n" if summary["verdict"].startswith("table")
              else f"Chosen: {summary['chosen']}. Verdict: {summary['verdict']}\n"))


def save_seed_curves(results_dir) -> list[Path]:
  """curves_seed<s>.png: per distillation seed, every arm's distillation curves (L_tm,
  L_contrast, syn_lr, the gradient diagnostics, whitened RMS) overlaid, one colour per arm."""
  from datm_clr_jax import visualize  # pylint: disable=import-outside-toplevel
  results_dir = Path(results_dir)
  by_seed: dict = {}
  for name, rec in read_cells(results_dir).items():
    metrics = cell_dir(results_dir, name) / "metrics.jsonl"
    if metrics.exists():
      by_seed.setdefault(rec["seed"], {})[rec["arm"]] = checkpointing.read_jsonl(metrics)
  out = []
  for seed, runs in sorted(by_seed.items()):
    path = results_dir / f"curves_seed{seed}.png"
    try:
      if visualize.save_curves(dict(sorted(runs.items(), key=lambda kv: _arm_order(kv[0]))),
                               path, phases=("distill",)):
        out.append(path)
    except Exception as e:  # noqa: BLE001 - a figure must never stop a study
      logging.warning("study: %s not drawn (%s)", path, e)
  return out


def difference_intervals(summary: dict) -> dict[str, list[tuple[str, dict]]]:
  """The paired differences of summary.json as intervals, mean +- 2 SE (the rule's bar):
  {panel title: [(arm, {"dev seeds" | "held-out seeds": (mean, 2 SE)}), ...]}, a panel
  against each arm's own control and one against the baseline, arms without that
  comparison left out."""
  base = summary["baseline"]
  panels = {"against its own control (alpha 0)": [], f"against {base}": []}
  for name, a in summary["arms"].items():
    for title, key in zip(panels, ("vs_control", "vs_baseline")):
      d = {label: (diff["mean"], 2 * diff["se"])
           for label, diff in (("dev seeds", a.get(f"{key}_dev")),
                               ("held-out seeds", a.get(f"{key}_heldout"))) if diff}
      if d:
        panels[title].append((f"{name} {a['desc']}"[:48], d))
  return {t: rows for t, rows in panels.items() if rows}


def save_differences(summary: dict, results_dir) -> Path | None:
  """differences.png: difference_intervals drawn, one panel per comparison."""
  from datm_clr_jax import visualize  # pylint: disable=import-outside-toplevel
  panels = difference_intervals(summary)
  if not panels:
    return None
  path = Path(results_dir) / "differences.png"
  try:
    visualize.save_intervals(panels, path, "paired difference, accuracy points (+- 2 SE)")
  except Exception as e:  # noqa: BLE001 - a figure must never stop a study
    logging.warning("study: %s not drawn (%s)", path, e)
    return None
  return path


def _arm_order(name: str):
  digits = "".join(c for c in name if c.isdigit())
  return (name.rstrip("0123456789"), int(digits) if digits else 0)


def write_summary(plan: dict, results_dir) -> dict:
  results_dir = Path(results_dir)
  summary = summarize(plan, read_cells(results_dir))
  checkpointing.write_json(results_dir / "summary.json", summary)
  checkpointing.write_text(results_dir / "table.md", format_table(summary))
  save_seed_curves(results_dir)
  save_differences(summary, results_dir)
  return summary


# ----------------------------------------------------------------------------- running


def trajectories_fingerprint(experts_dir) -> str:
  """sha256 of the experts' trajectories: every cell records which experts it matched."""
  from datm_clr_jax import experts  # pylint: disable=import-outside-toplevel
  h = hashlib.sha256()
  for k in experts.finished_experts(experts_dir):
    tree = checkpointing.restore_tree(experts.expert_path(experts_dir, k))
    h.update(np.ascontiguousarray(np.asarray(tree["trajectory"], np.float32)).tobytes())
  return h.hexdigest()


def machine() -> str:
  """The CPU model (or platform) a cell ran on: cells of one study may run on several."""
  import platform  # pylint: disable=import-outside-toplevel
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def platform_record() -> dict:
  """What a cell's numerics depend on beyond the code: XLA:CPU picks kernels by the CPU's
  vector extensions, so one model name can round differently on two machines."""
  import jax  # pylint: disable=import-outside-toplevel
  import jaxlib  # pylint: disable=import-outside-toplevel
  flags = set()
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("flags"):
        flags = set(line.split(":", 1)[1].split())
        break
  except OSError:
    pass
  isa = [f for f in ("avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "avx2", "fma")
         if f in flags]
  return {"backend": jax.default_backend(), "cpus": os.cpu_count(), "cpu_isa": isa,
          "jax": jax.__version__, "jaxlib": jaxlib.__version__}


def _git_head() -> str | None:
  import subprocess  # pylint: disable=import-outside-toplevel
  try:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=_REPO, capture_output=True,
                         text=True, timeout=10)
  except (OSError, subprocess.TimeoutExpired):
    return None
  return out.stdout.strip() or None if out.returncode == 0 else None


# Read once, when the code is loaded: a commit made while a study runs must not be credited
# with the cells that the already-loaded code goes on to run.
_CODE_COMMIT = _git_head()


def code_commit() -> str | None:
  """The git commit checked out when this process loaded the code (None outside git)."""
  return _CODE_COMMIT


def cell_config(plan: dict, cell: Cell, root: Path, experts_dir: Path):
  config = config_file.apply_overrides(base_config(plan, cell.arm), cell.overrides)
  config.seed = cell.seed
  config.experts.dir = str(experts_dir)
  config.data.cache_dir = str(root / "cache")
  return config


def experts_path(plan: dict, arm: str, root: Path) -> Path:
  """Where the arm's experts live: its (or the plan's) experts_dir, relative to the plan,
  else the runner's own folder under root."""
  named = experts_dir_of(plan, arm)
  return Path(plan["_path"]).parent / named if named else root / "experts_run" / "experts"


def _experts_workdir(plan: dict, arm: str, root: Path) -> Path:
  named = experts_dir_of(plan, arm)
  same = named == plan.get("experts_dir", "")
  return root / ("experts_run" if same else f"experts_run_{Path(named).name}")


def _check_experts_kinds(plan: dict, root: Path) -> None:
  """Arms that share an experts folder must ask for experts of one kind."""
  from datm_clr_jax import experts  # pylint: disable=import-outside-toplevel
  seen: dict[str, tuple[str, dict]] = {}
  for name, arm in plan["arms"].items():
    where = experts_path(plan, name, root)
    config = cell_config(plan, Cell(name, 0, tuple(arm.get("overrides", []))), root, where)
    kind = experts.kind(config)
    first = seen.setdefault(str(where), (name, kind))
    if first[1] != kind:
      field = next(f for f in kind if kind[f] != first[1].get(f))
      raise StudyError(f"arms {first[0]} and {name} share the experts in {where} but ask for "
                       f"{field}={first[1].get(field)!r} and {kind[field]!r}: give one of "
                       "them its own experts_dir")


def run_study(plan_path, root, results_dir=None, *, max_cells: int | None = None,
              dry_run: bool = False) -> dict:
  """Runs the plan's missing cells (at most max_cells), then writes summary.json and table.md.

  root: where the experts, data cache and each cell's workdir live (checkpoints/...).
  results_dir: where finished cells and the summary go (default: the plan's folder).
  The plan's (or an arm's) optional `experts_dir` (relative to the plan) holds the experts,
  so that cells run on other machines or days match the very same trajectories.
  """
  from datm_clr_jax import checks, pipeline  # pylint: disable=import-outside-toplevel

  plan = load_plan(plan_path)
  results_dir = Path(results_dir) if results_dir else Path(plan["_path"]).parent
  root = Path(root)
  # Every arm's config is built and validated before anything trains.
  for cell in planned_cells(plan, {}) + [Cell(a, 0, tuple(arm.get("overrides", [])))
                                         for a, arm in plan["arms"].items()]:
    checks.validate_config(cell_config(plan, cell, root, experts_path(plan, cell.arm, root)))
  _check_experts_kinds(plan, root)
  done_cells = read_cells(results_dir)
  for name, rec in done_cells.items():
    if rec["arm"] not in plan["arms"]:
      raise StudyError(f"{cell_dir(results_dir, name)} belongs to arm {rec['arm']!r}, which "
                       "the plan no longer has")
  fingerprints: dict[str, str] = {}  # experts folder as the plan names it -> sha256
  ran = 0
  while not dry_run:
    acc = {}
    for rec in done_cells.values():
      acc.setdefault(rec["arm"], {})[str(rec["seed"])] = rec["accuracy"]
    todo = []
    for c in planned_cells(plan, acc):
      rec = done_cells.get(c.name)
      if rec is None:
        todo.append(c)
      elif tuple(rec["overrides"]) != c.overrides:
        raise StudyError(f"{cell_dir(results_dir, c.name)} was run with overrides "
                         f"{rec['overrides']}, the plan now says {list(c.overrides)}: restore "
                         "the plan, or delete that cell to run it again")
    if not todo or (max_cells is not None and ran >= max_cells):
      break
    cell = todo[0]
    named, where = experts_dir_of(plan, cell.arm), experts_path(plan, cell.arm, root)
    if named not in fingerprints:
      pipeline.run(cell_config(plan, cell, root, where),
                   str(_experts_workdir(plan, cell.arm, root)), "experts")
      fingerprints[named] = trajectories_fingerprint(where)
      other = {r.get("experts_sha256") for r in done_cells.values()
               if r.get("experts_dir", plan.get("experts_dir", "")) == named}
      other -= {fingerprints[named], None}
      if other:
        raise StudyError(f"the experts in {where} (sha256 {fingerprints[named][:12]}...) are "
                         f"not the ones the finished cells matched ({sorted(other)}): restore "
                         "them, or start the study over in a new folder")
    logging.info("study: cell %s (%d left): %s", cell.name, len(todo), " ".join(cell.overrides))
    workdir = root / cell.name
    config = cell_config(plan, cell, root, where)
    pipeline.run(config, str(workdir), "distill")
    results = pipeline.run(config, str(workdir), "evaluate")
    out = cell_dir(results_dir, cell.name)
    out.mkdir(parents=True, exist_ok=True)
    for f in ("results.json", "metrics.jsonl", "syn_set.npz"):
      shutil.copy2(workdir / f, out / f)
    rec = {"arm": cell.arm, "seed": cell.seed, "overrides": list(cell.overrides),
           "accuracy": cell_accuracy(results), "experts_sha256": fingerprints[named],
           "machine": machine(), "platform": platform_record(), "code_commit": code_commit(),
           "method": results["method"]}
    if named != plan.get("experts_dir", ""):
      rec["experts_dir"] = named
    if cell_accuracy(results, set_name="distilled_ema") is not None:
      rec["accuracy_ema"] = cell_accuracy(results, set_name="distilled_ema")
    checkpointing.write_json(out / "cell.json", rec)
    done_cells[cell.name] = rec
    ran += 1
    write_summary(plan, results_dir)
  by_folder: dict = {}
  for rec in done_cells.values():
    by_folder.setdefault(rec.get("experts_dir", plan.get("experts_dir", "")), set()).add(
        rec.get("experts_sha256"))
  for folder, prints in by_folder.items():
    if len(prints) > 1:
      where = folder or "the runner's folder"
      raise StudyError(f"cells in {results_dir} matched different experts in {where} "
                       f"({sorted(prints, key=str)}): the cells of one experts folder must "
                       "share its experts")
  return write_summary(plan, results_dir)
