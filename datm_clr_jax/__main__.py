"""Command line: python -m datm_clr_jax --config=configs/X.py[:variant] [--config.a.b=v]
[--workdir=DIR] [--mode=MODE]. With no flags it runs the quickstart into checkpoints/quickstart/.
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from datm_clr_jax import cli, errors, preemption

ROOT = Path(__file__).resolve().parents[1]


def _phases(fv, config):
  from datm_clr_jax import pipeline  # Deferred: flag errors should not wait for JAX imports.
  pipeline.run(config, fv.workdir or str(ROOT / "checkpoints" / config.name), fv.mode,
               resume_changed=fv.resume_changed)


def _report(fv, config):
  from datm_clr_jax import report
  dirs = fv.report_dirs or [str(ROOT / "checkpoints")]
  print(f"report: {report.write_report(dirs, fv.workdir or str(ROOT / 'checkpoints/report'))}")


def _study(fv, config):
  from datm_clr_jax import study
  if not fv.study:
    raise errors.ConfigError("--mode=study needs --study=<plan.json>")
  root = fv.workdir or str(ROOT / "checkpoints" / Path(fv.study).resolve().parent.name)
  summary = study.run_study(fv.study, root, max_cells=fv.study_max_cells,
                            dry_run=fv.study_dry_run)
  for name in summary.get("missing", []):
    print(f"missing: {name}")
  print(f"study: {summary['verdict']}")


MODES = {"all": _phases, "experts": _phases, "distill": _phases, "evaluate": _phases,
         "export": _phases, "report": _report, "study": _study}
SPLIT_MODES = ("experts", "evaluate")  # what several processes of a distributed run share


def define_flags(fv: flags.FlagValues, argv: list[str]) -> None:
  """The command line's flags on fv; argv is where ml_collections reads --config.* overrides."""
  config_flags.DEFINE_config_file("config", str(ROOT / "configs" / "quickstart.py"),
                                  "Config file (ml_collections).", lock_config=True,
                                  flag_values=fv, sys_argv=argv)
  define = lambda kind, name, default, text, *a: getattr(flags, f"DEFINE_{kind}")(
      name, default, *a, text, flag_values=fv)
  define("string", "workdir", None, "Output directory; default checkpoints/<config.name>.")
  define("enum", "mode", "all", "Phases to run (all, experts, distill, evaluate), or export, "
         "report (report.md from results), study (the missing cells of --study).", list(MODES))
  define("bool", "resume_changed", False, "Resume a workdir's distillation although --config "
         "changes its logging or evaluation fields or extends distill.iterations.")
  define("list", "report_dirs", None, "--mode=report: folders searched for results.json.")
  define("bool", "distributed", False, "Join JAX's distributed runtime (cluster environment, "
         "or the three flags below): experts and evaluation seeds are split over processes.")
  define("string", "coordinator_address", None, "--distributed: HOST:PORT of process 0.")
  define("integer", "num_processes", None, "--distributed: how many.")
  define("integer", "process_id", None, "--distributed: this one's index.")
  define("string", "study", None, "--mode=study: the plan (JSON); results go beside it.")
  define("integer", "study_max_cells", None, "--mode=study: run at most this many cells.")
  define("bool", "study_dry_run", False, "--mode=study: only rewrite the summary.")


def run_mode(fv: flags.FlagValues, argv: list[str]) -> int:
  """Runs the mode of parsed flags; returns the exit status (0, 2: refused, 130: interrupted)."""
  try:
    if len(argv) > 1:
      raise errors.ConfigError(f"unexpected arguments: {argv[1:]}")
    config = cli.loaded_config(fv)
    if fv.distributed or fv.coordinator_address:
      from datm_clr_jax import distributed
      distributed.initialize(fv.coordinator_address, fv.num_processes, fv.process_id)
      if distributed.count() > 1 and fv.mode not in SPLIT_MODES:
        raise errors.ConfigError(f"--mode={fv.mode} does not split over processes; with several "
                                 "run --mode=experts, then --mode=distill as one process, then "
                                 "--mode=evaluate")
    MODES[fv.mode](fv, config)
  except errors.Error as e:  # expected failures: the one line that says what to do
    return cli.fail(e)
  except errors.Preempted as e:
    logging.warning("stopped by signal %d with the state saved; the same command resumes",
                    e.signum)
    return preemption.EXIT_PREEMPTED
  except KeyboardInterrupt:
    logging.warning("interrupted; checkpoints are kept: the same command resumes the run")
    return cli.INTERRUPTED
  except Exception as e:  # noqa: BLE001 -- only an operating system's error is answered here
    # A write that names no file (numpy's and matplotlib's do not) is named by its workdir.
    line = cli.os_error(e, default_path=fv.workdir or str(ROOT / "checkpoints"))
    if line is None:
      raise
    print(f"error: {line}; the checkpoints written before it are intact: free the space or "
          "fix the path, then run the same command", file=sys.stderr)
    return cli.IO_ERROR
  return 0


def main(argv: list[str]) -> int:
  """The command line on argv (argv[0] the program), in this process, with flags of its own."""
  fv = flags.FlagValues()
  try:
    cli.define(define_flags, fv, argv)
    rest = cli.parse(fv, argv)
  except errors.Error as e:
    return cli.fail(e)
  return run_mode(fv, rest)


if __name__ == "__main__":
  logging.set_verbosity(logging.INFO)
  preemption.install()
  app.run(lambda rest: sys.exit(run_mode(flags.FLAGS, rest)),
          flags_parser=lambda argv: cli.parse_or_exit(define_flags, flags.FLAGS, argv))
