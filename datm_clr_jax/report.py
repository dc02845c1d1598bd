"""The reproduction report: our results beside the published numbers (the paper's tables).

`--mode=report --report_dirs=DIR[,DIR...]` reads every results.json under those folders and
writes into --workdir: report.md, report.png, runs/<workdir name>.json (a copy of each
results.json read), images_<setting>.png (the first synthetic image of each class, one row per
run whose workdir holds its syn_set.npz) and curves_<setting>.png (the distillation curves of
the runs whose workdir holds metrics.jsonl, overlaid). Each of our numbers carries the protocol
it came from (full or reduced, and what was reduced); a setting or method we have not run reads
"not run". The paper's numbers are quoted as published, labelled "paper".
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from datm_clr_jax import checkpointing, methods, visualize
from datm_clr_jax.errors import ConfigError
from datm_clr_jax.visualize import plt

# The DATM-CLR paper's Table 1 (ConvNet, mean, std), Table 2 and Table 3.
SETTINGS = (("cifar10", 1), ("cifar10", 10), ("cifar10", 50), ("cifar100", 1), ("cifar100", 10),
            ("tiny", 1))
PAPER = {
    "random_real": {("cifar10", 1): (15.4, 0.3), ("cifar10", 10): (31.0, 0.5),
                    ("cifar10", 50): (50.6, 0.3), ("cifar100", 1): (4.2, 0.3),
                    ("cifar100", 10): (14.6, 0.5), ("tiny", 1): (1.4, 0.1)},
    "datm": {("cifar10", 1): (46.9, 0.5), ("cifar10", 10): (66.8, 0.2),
             ("cifar10", 50): (76.1, 0.3), ("cifar100", 1): (27.9, 0.2),
             ("cifar100", 10): (47.2, 0.4), ("tiny", 1): (13.6, 0.3)},
    "datm_clr": {("cifar10", 1): (53.0, 0.4), ("cifar10", 10): (70.2, 0.3),
                 ("cifar10", 50): (77.6, 0.3), ("cifar100", 1): (28.7, 0.2),
                 ("cifar100", 10): (48.7, 0.3), ("tiny", 1): (14.8, 0.2)},
}
CROSS_ARCHS = (("convnet", "ConvNet"), ("resnet18", "ResNet18"), ("vgg11", "VGG11"),
               ("alexnet", "AlexNet"))
PAPER_CROSS = {"random_real": (15.46, 13.97, 12.07, 10.55), "datm": (46.91, 44.70, 43.62, 43.68),
               "datm_clr": (53.00, 49.36, 48.98, 48.55)}
PAPER_STRATEGY = {  # (strategy, views) -> C10 IPC1, C10 IPC10, C100 IPC1
    ("update", "single"): (44.92, 66.22, 24.92), ("update", "multiple"): (46.72, 67.70, 26.23),
    ("fusion", "single"): (48.25, 68.24, 27.60), ("fusion", "multiple"): (53.00, 70.23, 28.74)}
METHOD_NAMES = {"random_real": "Random real", "datm": "DATM", "datm_clr": "DATM-CLR",
                "mtt": "MTT", "tesla": "TESLA", "ftd": "FTD"}
BASELINES = ("mtt", "tesla", "ftd")  # listed where a run of theirs exists


def _published(method: str) -> dict:
  """{(dataset, ipc): (mean, std)} of a baseline's Table 1 row (methods.PUBLISHED)."""
  out = {}
  for name, value in zip(methods.SETTINGS, methods.PUBLISHED[method]):
    if "+-" in value:
      ds, ipc = name.rsplit("_ipc", 1)
      out[(ds, int(ipc))] = tuple(float(x) for x in value.split("+-"))
  return out


PAPER.update({m: _published(m) for m in BASELINES})
FULL = {"width": 128, "iterations": 10000, "eval_epochs": 1000, "num_experts": 100,
        "expert_epochs_trained": 50}


def dataset_key(source: str, num_classes: int | None) -> str:
  s = source.lower()
  if "tiny" in s:
    return "tiny"
  if "cifar100" in s or ("cifar" in s and num_classes == 100):
    return "cifar100"
  if "cifar10" in s or "cifar-10" in s:
    return "cifar10"
  return s.split(":")[0]


def protocol_label(r: dict) -> str:
  """'full' or 'reduced (...)': what differs from the full-scale protocol."""
  p = r.get("protocol", {})
  diffs = []
  width = p.get("model", {}).get("width")
  if width is not None and width != FULL["width"]:
    diffs.append(f"width {width}")
  for key, name in (("num_experts", "experts"), ("expert_epochs_trained", "expert epochs"),
                    ("eval_epochs", "eval epochs")):
    if p.get(key) is not None and p[key] < FULL[key]:
      diffs.append(f"{p[key]} {name}")
  done = p.get("distill_iterations")
  if done is not None and done < FULL["iterations"]:
    diffs.append(f"{done} iterations")
  if "jpeg" in r.get("dataset", "").lower():
    diffs.append("JPEG CIFAR copy")
  n = f"N={p['num_inner_steps']}" if "num_inner_steps" in p else ""
  if p.get("num_segments", 1) != 1:
    # The caption's reading of Table 3's "Multiple": several trajectories per iteration.
    n = ", ".join(filter(None, [n, f"{p['num_segments']} trajectory segments per iteration"]))
  # What changes the method without changing the protocol's size: never pooled together.
  if p.get("student_momentum"):
    n = ", ".join(filter(None, [n, f"student momentum {p['student_momentum']}"]))
  if p.get("experts_optimizer", "sgd") != "sgd":
    n = ", ".join(filter(None, [n, f"{p['experts_optimizer'].upper()} experts"]))
  label = "full" if not diffs else "reduced: " + ", ".join(diffs)
  return f"{label}; {n}" if n else label


def load_results(dirs) -> list[dict]:
  """Every results.json under the given folders, each with its path and setting key."""
  found = []
  for d in dirs:
    for path in sorted(Path(d).glob("**/results.json")):
      r = json.loads(path.read_text())
      r["_path"] = str(path)
      r["_setting"] = (dataset_key(r["dataset"], r.get("protocol", {}).get("num_classes")),
                       r["ipc"])
      found.append(r)
  return found


# The paper's contrastive hyperparameters (§6); a run that differs in any of them is a variant.
PAPER_CLR = {"alpha": 0.1, "beta": 1.0, "lam": 0.1, "loss": "supcon", "temperature": 0.1,
             "head": "random"}
MAIN_CLR = ("fusion", "multiple", "")  # Table 1's DATM-CLR: Fusion, multiple views, paper values


def clr_key(r: dict) -> tuple[str, str, str] | None:
  """(strategy, views, variant) of a DATM-CLR run; variant '' means the paper's values."""
  clr = r.get("protocol", {}).get("clr")
  if r.get("method") != "datm_clr" or not clr:
    return None
  # Fusion ignores lam and Update ignores alpha, so only the one in use makes a variant.
  keys = ("alpha" if clr["strategy"] == "fusion" else "lam", "beta", "loss", "temperature",
          "head")
  variant = ", ".join(f"{k} {clr[k]}" for k in keys if clr.get(k, PAPER_CLR[k]) != PAPER_CLR[k])
  return clr["strategy"], clr["view_mode"], variant


def clr_name(key: tuple[str, str, str]) -> str:
  """'DATM-CLR' for the main setting, else e.g. 'DATM-CLR (update, multiple; lam 0.05)'."""
  if key == MAIN_CLR:
    return METHOD_NAMES["datm_clr"]
  return f"DATM-CLR ({key[0]}, {key[1]}" + (f"; {key[2]})" if key[2] else ")")


def method_name(r: dict) -> str:
  """'DATM', or 'DATM-CLR' with its variant (clr_name) for a contrastive run."""
  key = clr_key(r)
  return clr_name(key) if key else METHOD_NAMES.get(r["method"], r["method"])


def run_name(r: dict) -> str:
  """'DATM-CLR, datm_clr_seed0': the method and the workdir name."""
  return f"{method_name(r)}, {Path(r['_path']).parent.name}"


def collect(results: list[dict], method: str, setting, arch: str = "convnet",
            protocol: str | None = None, clr: tuple[str, str, str] = MAIN_CLR) -> dict | None:
  """Pools the runs of one method at one setting: per-run means and the spread across runs.

  DATM-CLR pools only runs of one contrastive configuration `clr` (see clr_key).

  DATM and DATM-CLR runs of one seed evaluate the same random-real subsets (the subsets follow
  the evaluation seeds), so random real counts each set of evaluation seeds once.
  """
  means, evals, labels, seen = [], [], set(), set()
  for r in results:
    if r["_setting"] != setting:
      continue
    if method == "random_real":
      block = r.get("random_real", {})
    elif r.get("method") == method and (method != "datm_clr" or clr_key(r) == clr):
      block = r.get("distilled", {})
    else:
      continue
    label = protocol_label(r)
    if arch not in block or (protocol is not None and label != protocol):
      continue
    if method == "random_real":
      # Checked only now: a cross-architecture evaluation may have added random real to one
      # of the runs that share these subsets, and that run is the one to read.
      key = (label, tuple(r.get("eval_seeds") or [r["_path"]]))
      if key in seen:
        continue
      seen.add(key)
    means.append(block[arch]["mean"])
    evals.append(len(block[arch]["runs"]))
    labels.add(label)
  if not means:
    return None
  return {"mean": float(np.mean(means)), "std": float(np.std(means)) if len(means) > 1 else
          None, "per_run": means, "evals": evals, "protocols": sorted(labels)}


def fmt(c: dict | None) -> str:
  if c is None:
    return "not run"
  if len(c["per_run"]) == 1:
    return f"{c['mean']:.2f} ({c['evals'][0]} evals)"
  return (f"{c['mean']:.2f} +- {c['std']:.2f} over {len(c['per_run'])} distillations "
          f"({', '.join(f'{m:.2f}' for m in c['per_run'])})")


def run_summary(block: dict) -> str:
  """'46.20 +- 0.80 (3 evals)' for the first architecture of one run's block."""
  arch = "convnet" if "convnet" in block else next(iter(block))
  b = block[arch]
  where = "" if arch == "convnet" else f", {arch}"
  return f"{b['mean']:.2f} +- {b['std']:.2f} ({len(b['runs'])} evals{where})"


def setting_name(setting) -> str:
  ds, ipc = setting
  return {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "tiny": "Tiny-ImageNet"}.get(
      ds, ds) + f" IPC {ipc}"


def all_settings(results: list[dict]) -> list:
  """The paper's settings, then any other setting our results cover (e.g. digits)."""
  return list(SETTINGS) + sorted({r["_setting"] for r in results} - set(SETTINGS))


def cell(results: list[dict], notes: list[str], **kw) -> str:
  """Our mean for one cell of Table 2 or 3, per protocol ('46.20 x3 [1]': the mean over 3
  distillation runs, protocol footnote 1), never pooled across protocols; notes collects the
  protocol of each footnote number."""
  parts = []
  for proto in sorted({protocol_label(r) for r in results}):
    c = collect(results, protocol=proto, **kw)
    if c is not None:
      if proto not in notes:
        notes.append(proto)
      parts.append(f"{c['mean']:.2f} x{len(c['per_run'])} [{notes.index(proto) + 1}]")
  return " / ".join(parts) or "not run"


def footnotes(notes: list[str]) -> list[str]:
  if not notes:
    return []
  return ["", "xN: the mean over N distillation runs; [k]: the protocol of those runs.", "",
          *(f"[{i + 1}] {proto}  " for i, proto in enumerate(notes))]


def build_report(results: list[dict]) -> str:
  """The report as markdown."""
  lines = ["# Reproduction report", "",
           "Ours: mean test accuracy (%) of the distilled set over evaluation seeds; with several "
           "distillation runs, the mean +- std across runs. Paper: its Tables 1-3, as published. A "
           "reduced-protocol number is not a reproduction of the paper's number beside it.", ""]
  settings = all_settings(results)
  lines += ["## Table 1 shape (ConvNet)", "",
            "| setting | method | ours | protocol | paper |", "|---|---|---|---|---|"]
  for setting in settings:
    protocols = sorted({protocol_label(r) for r in results if r["_setting"] == setting}) or [None]
    variants = sorted({clr_key(r) for r in results if r["_setting"] == setting} - {None, MAIN_CLR})
    rows = ([("datm_clr", MAIN_CLR, METHOD_NAMES["datm_clr"])]
            + [("datm_clr", v, clr_name(v)) for v in variants]
            + [(m, MAIN_CLR, METHOD_NAMES[m]) for m in BASELINES
               if any(r["_setting"] == setting and r.get("method") == m for r in results)]
            + [(m, MAIN_CLR, METHOD_NAMES[m]) for m in ("datm", "random_real")])
    for method, clr, name in rows:
      # The paper's number sits beside the method it reports: not beside our variants.
      paper = PAPER[method].get(setting) if clr == MAIN_CLR else None
      pools = [(proto, collect(results, method, setting, protocol=proto, clr=clr))
               for proto in protocols]
      pools = [(proto, c) for proto, c in pools if c is not None]
      if not pools and clr != MAIN_CLR:
        continue
      for proto, c in pools or [("-", None)]:  # one 'not run' row where it never ran
        lines.append(f"| {setting_name(setting)} | {name} | {fmt(c)} | {proto} | "
                     f"{f'{paper[0]} +- {paper[1]}' if paper else '-'} |")
  lines += ["", "## Table 2 shape: cross-architecture, CIFAR-10 IPC 1", "",
            "| method | " + " | ".join(f"{n} ours | {n} paper" for _, n in CROSS_ARCHS) + " |",
            "|---|" + "---|---|" * len(CROSS_ARCHS)]
  notes = []
  for method in ("random_real", "datm", "datm_clr"):
    cells = []
    for i, (arch, _) in enumerate(CROSS_ARCHS):
      cells += [cell(results, notes, method=method, setting=("cifar10", 1), arch=arch),
                f"{PAPER_CROSS[method][i]:.2f}"]
    lines.append(f"| {METHOD_NAMES[method]} | " + " | ".join(cells) + " |")
  lines += footnotes(notes)
  lines += ["", "## Table 3 shape: contrastive strategy x views", "",
            "| strategy | views | C10 IPC1 ours | paper | C10 IPC10 ours | paper | C100 IPC1 ours "
            "| paper |", "|---|---|---|---|---|---|---|---|"]
  notes = []
  for (strategy, views), paper in PAPER_STRATEGY.items():
    cells = []
    for i, setting in enumerate((("cifar10", 1), ("cifar10", 10), ("cifar100", 1))):
      cells += [cell(results, notes, method="datm_clr", setting=setting,
                     clr=(strategy, views, "")), f"{paper[i]:.2f}"]
    lines.append(f"| {strategy} | {views} | " + " | ".join(cells) + " |")
  lines += footnotes(notes)
  lines += ["", "## Runs read", "",
            "Mean +- std over the evaluation seeds of each run (ConvNet where evaluated).", ""]
  for r in results:
    p = r.get("protocol", {})
    accs = "; ".join(f"{name} {run_summary(r.get(key, {}))}"
                     for key, name in (("distilled", "distilled"), ("random_real", "random real"))
                     if r.get(key))
    got = r.get("scores", {}).get("convnet", {})
    if got:  # DD-Ranking's scores (datm_clr_jax/scores.py), ConvNet
      accs += "; " + ", ".join(f"{k.upper()} {v['mean']:.2f} +- {v['std']:.2f}"
                               for k, v in got.items())
    lines.append(f"- `{r['_path']}`: {method_name(r)}, {setting_name(r['_setting'])}, "
                 f"{protocol_label(r)}, selection: {p.get('selection', 'unknown')}"
                 + (f"; {accs}" if accs else ""))
  if not results:
    lines.append("- none: every row above is 'not run'")
  return "\n".join(lines) + "\n"


def load_tables(dirs) -> list[tuple[Path, dict]]:
  """(path, summary) of every study summary.json under `dirs` whose plan is a table."""
  found = []
  for d in dirs:
    for path in sorted(Path(d).rglob("summary.json")):
      try:
        summary = json.loads(path.read_text())
      except json.JSONDecodeError:
        continue
      if str(summary.get("verdict", "")).startswith("table"):
        found.append((path, summary))
  return found


def _seeds_text(seeds: dict) -> str:
  values = list(seeds.values())
  if not values:
    return "not run"
  spread = f" +- {np.std(values):.2f}" if len(values) > 1 else ""
  return f"{np.mean(values):.2f}{spread} (n={len(values)})"


def _diff_text(d: dict | None) -> str:
  if not d:
    return "-"
  se = "" if d.get("se") is None or np.isnan(d["se"]) else f" +- {d['se']:.2f}"
  return f"{d['mean']:+.2f}{se}"


def table1_section(path: Path, summary: dict) -> list[str]:
  """A study table (e.g. launch/results/table1_r1) beside the paper's Table 1 at CIFAR-10
  IPC 1: every arm's mean over distillation seeds, its paired difference against the
  baseline, and the published number of its method, labelled as what it is."""
  from datm_clr_jax import methods  # pylint: disable=import-outside-toplevel
  paper = methods.published("cifar10_ipc1")
  base = summary["baseline"]
  lines = [f"## Table 1 at a reduced protocol: `{path.parent}`", "",
           "Every arm of the study on the same distillation seeds (paired). Ours: ConvNet %, mean "
           "+- std over distillation seeds (each the mean of its evaluation seeds); the paired "
           f"difference against {base} +- its standard error. The paper's column is its Table 1 "
           "(CIFAR-10 IPC 1, full scale): a reduced protocol does not reproduce it.", "",
           f"| arm | what | ours | vs {base} | paper (C10 IPC 1, full scale) |",
           "|---|---|---|---|---|"]
  for name, a in summary["arms"].items():
    method = a.get("method")
    lines.append(f"| {name} | {a['desc']} | {_seeds_text(a['seeds'])} | "
                 f"{_diff_text(a.get('vs_baseline_dev'))} | "
                 f"{paper.get(method, '-') if method else '-'} |")
    if "ema" in a:
      lines.append(f"| {name} EMA | its images' moving average | {_seeds_text(a['ema']['seeds'])}"
                   f" | {_diff_text(a['ema'].get('vs_baseline_dev'))} | - |")
  lines += ["", f"Status: {summary['verdict']}.", ""]
  return lines


def plot(results: list[dict], path) -> None:
  """Bars per setting: ours (where run) beside the paper, for each method."""
  settings = all_settings(results)
  methods = ("random_real", "datm", "datm_clr")
  fig, ax = plt.subplots(figsize=(1.8 * len(settings) + 2, 4))
  width = 0.13
  for j, method in enumerate(methods):
    xs = np.arange(len(settings)) + (j - 1) * 2 * width
    paper = [PAPER[method].get(s, (np.nan,))[0] for s in settings]
    ours = [(collect(results, method, s) or {"mean": np.nan})["mean"] for s in settings]
    ax.bar(xs - width / 2, paper, width, color=f"C{j}", alpha=0.35,
           label=f"{METHOD_NAMES[method]} (paper)")
    ax.bar(xs + width / 2, ours, width, color=f"C{j}", label=f"{METHOD_NAMES[method]} (ours)")
  ax.set_xticks(np.arange(len(settings)), [setting_name(s) for s in settings], fontsize=8)
  ax.set_ylabel("test accuracy %")
  ax.set_title("Ours (any protocol; see report.md) beside the paper; missing bar = not run")
  ax.legend(fontsize=7, ncol=3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def save_images(results: list[dict], out_dir, max_classes: int = 10, max_rows: int = 24) -> list:
  """One PNG per setting: the first synthetic image of each class (up to max_classes), a row per
  run whose workdir has syn_set.npz. Returns the paths written."""
  written = []
  for setting in all_settings(results):
    rows, names, classes = [], [], []
    for r in results:
      npz = Path(r["_path"]).parent / "syn_set.npz"
      if r["_setting"] != setting or r.get("method") == "random_real" or not npz.exists():
        continue
      with np.load(npz) as z:
        if "syn_images_pixels" not in z.files:  # not a set this package wrote
          continue
        rows.append(z["syn_images_pixels"][::r["ipc"]][:max_classes])
        if "class_names" in z.files:
          classes = [str(c) for c in z["class_names"][:max_classes]]
      names.append(run_name(r))
    if rows:
      path = Path(out_dir) / f"images_{setting[0]}_ipc{setting[1]}.png"
      visualize.save_rows(rows[:max_rows], names[:max_rows], classes, path)
      written.append(path)
  return written


def save_curves(results: list[dict], out_dir, max_runs: int = 10) -> list:
  """One PNG per setting: the distillation curves (L_tm, contrastive loss, syn_lr) of every run
  whose workdir has a metrics.jsonl, overlaid. Returns the paths written."""
  written = []
  for setting in all_settings(results):
    runs = {}
    for r in results:
      metrics = Path(r["_path"]).parent / "metrics.jsonl"
      if r["_setting"] != setting or not metrics.exists():
        continue
      records = checkpointing.read_jsonl(metrics)
      if any(rec.get("phase") == "distill" for rec in records):
        runs[run_name(r)] = records
    path = Path(out_dir) / f"curves_{setting[0]}_ipc{setting[1]}.png"
    if runs and visualize.save_curves(dict(list(runs.items())[:max_runs]), path,
                                      phases=("distill",)):
      written.append(path)
  return written


def write_report(dirs, out_dir) -> Path:
  """Reads results under `dirs`; writes report.md, report.png, images_*.png, curves_*.png and
  runs/ there."""
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  missing = [d for d in dirs if not Path(d).exists()]
  if missing:
    raise ConfigError(f"--report_dirs: no such folder(s) {missing}")
  results = load_results(dirs)
  images = save_images(results, out)
  text = build_report(results)
  for path, summary in load_tables(dirs):
    text += "\n" + "\n".join(table1_section(path, summary))
  if images:
    text += ("\n## Distilled images\n\nThe first synthetic image of each class, one row per run "
             "(pixel space, clipped to [0, 1]).\n\n"
             + "".join(f"![{p.stem}]({p.name})\n" for p in images))
  curves = save_curves(results, out)
  if curves:
    text += ("\n## Distillation curves\n\nPer logged iteration, from each run's metrics.jsonl: "
             "thin lines are the logged losses, thick ones their centred mean.\n\n"
             + "".join(f"![{p.stem}]({p.name})\n" for p in curves))
  (out / "report.md").write_text(text)
  plot(results, out / "report.png")
  # A copy of every results.json read, so the report folder can be committed on its own.
  runs = out / "runs"
  runs.mkdir(exist_ok=True)
  used = set()
  for r in results:
    path = Path(r["_path"])
    name = path.parent.name
    if name in used:  # same workdir name under two report dirs
      name = f"{path.parent.parent.name}_{name}"
    used.add(name)
    (runs / f"{name}.json").write_text(path.read_text())
  return out / "report.md"
