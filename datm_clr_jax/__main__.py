"""Command line: `python -m datm_clr_jax --config=configs/X.py [--config.a.b=v] [--workdir=D]`.

With no flags it runs the quickstart (configs/quickstart.py) into checkpoints/quickstart/.
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

_ROOT = Path(__file__).resolve().parents[1]



def _unknown_field(error: Exception) -> str:
  """The one line for a --config.<field> override that names no field of the config."""
  key = str(error).split("'")[1] if "'" in str(error) else str(error)
  given = [a.split("=", 1)[0] for a in sys.argv[1:] if a.startswith("--config.")]
  culprit = next((g for g in given if key in g.split(".")), ", ".join(given) or "--config")
  return (f"error: {culprit}: the config has no field {key!r}; see configs/default.py for "
          "the fields")


try:
  # ml_collections applies --config.<field> overrides while the flag is defined.
  config_flags.DEFINE_config_file(
      "config", str(_ROOT / "configs" / "quickstart.py"), "Config file (ml_collections).",
      lock_config=True)
except (AttributeError, KeyError) as e:
  print(_unknown_field(e), file=sys.stderr)
  sys.exit(2)
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Output directory; default checkpoints/<config.name>.")
_MODE = flags.DEFINE_enum("mode", "all",
                          ["all", "experts", "distill", "evaluate", "export", "report",
                           "study"],
                          "Which phases to run; 'report' writes report.md from results; "
                          "'study' runs the missing cells of --study's plan.")
_REPORT_DIRS = flags.DEFINE_list("report_dirs", None,
                                 "--mode=report: folders searched for results.json "
                                 "(default: checkpoints/).")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Join JAX's distributed runtime (cluster environment, or the three "
    "flags below): experts and evaluation seeds are split over the processes.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "--distributed: HOST:PORT of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "--distributed: how many.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "--distributed: this one's index.")
_STUDY = flags.DEFINE_string("study", None, "--mode=study: the plan (JSON), e.g. "
                             "launch/results/clr_study/plan.json; results go beside it.")
_STUDY_MAX_CELLS = flags.DEFINE_integer("study_max_cells", None,
                                        "--mode=study: run at most this many cells.")
_STUDY_DRY_RUN = flags.DEFINE_bool("study_dry_run", False,
                                   "--mode=study: only rewrite the summary and list what is "
                                   "missing.")


def _study(workdir: str | None) -> None:
  from datm_clr_jax import study
  if not _STUDY.value:
    raise app.UsageError("--mode=study needs --study=<plan.json>")
  root = workdir or str(_ROOT / "checkpoints" / Path(_STUDY.value).resolve().parent.name)
  summary = study.run_study(_STUDY.value, root, max_cells=_STUDY_MAX_CELLS.value,
                            dry_run=_STUDY_DRY_RUN.value)
  for name in summary.get("missing", []):
    print(f"missing: {name}")
  print(f"study: {summary['verdict']}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from datm_clr_jax import pipeline  # Deferred: flag errors should not wait for JAX imports.
  try:
    config = flags.FLAGS.config
    config.name  # pylint: disable=pointless-statement  (a failed load raises only on use)
  except OSError:  # ml_collections loads the file lazily, and its error says little
    path = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--config=")][-1]
    why = ("no such file" if not Path(path).is_file() else
           f"it does not load: `python {path}` shows why")
    print(f"error: --config={path}: {why}; the configs are in configs/", file=sys.stderr)
    sys.exit(2)
  if _MODE.value == "report":
    from datm_clr_jax import report
    dirs = _REPORT_DIRS.value or [str(_ROOT / "checkpoints")]
    out = _WORKDIR.value or str(_ROOT / "checkpoints" / "report")
    try:
      print(f"report: {report.write_report(dirs, out)}")
    except FileNotFoundError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
    return
  workdir = _WORKDIR.value or str(_ROOT / "checkpoints" / config.name)
  from datm_clr_jax import study
  expected = (study.StudyError, pipeline.ConfigError, pipeline.data.DataError,
              pipeline.checkpointing.CheckpointError)
  if _DISTRIBUTED.value or _COORDINATOR.value:
    from datm_clr_jax import distributed
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    if distributed.count() > 1 and _MODE.value not in ("experts", "evaluate"):
      print(f"error: --mode={_MODE.value} does not split over processes; with several run "
            "--mode=experts, then --mode=distill as one process, then --mode=evaluate",
            file=sys.stderr)
      sys.exit(2)
  if _MODE.value != "study":
    try:
      pipeline.preflight(config, workdir, _MODE.value)
    except expected as e:  # before any log line or work: the one line says what to do
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
  logging.info("workdir %s, mode %s", workdir, _MODE.value)
  try:
    if _MODE.value == "study":
      _study(_WORKDIR.value)
    else:
      pipeline.run(config, workdir, _MODE.value)
  except (study.StudyError, pipeline.ConfigError, pipeline.data.DataError, pipeline.checkpointing.CheckpointError,
          pipeline.distill.DistillError, pipeline.torch_io.TorchIOError) as e:
    # Expected failures get one line that says what to do, not a JAX traceback.
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except KeyboardInterrupt:
    logging.warning("interrupted; checkpoints are kept: the same command resumes the run")
    sys.exit(130)


def _parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:  # absl would add a second line about --helpshort
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except (AttributeError, KeyError) as e:  # an override of a field the config lacks
    print(_unknown_field(e), file=sys.stderr)
    sys.exit(2)


def run():
  logging.set_verbosity(logging.INFO)
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
