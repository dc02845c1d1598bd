"""Runs and faults: signals in every phase, kills at random points, a second process, a full
disk and a changed config, each against a real run of the command line."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import ROOT, tiny_config
from datm_clr_jax import __main__ as cli_main
from datm_clr_jax import checkpointing, errors, locking, pipeline, preemption

TINY = "--config=configs/quickstart.py:tiny"
# Long enough to be caught mid-phase: more expert epochs, iterations and evaluation epochs.
LONG = [TINY, "--config.experts.epochs=20", "--config.distill.iterations=400",
        "--config.distill.checkpoint_every=100", "--config.distill.log_every=25",
        "--config.eval.epochs=400", "--config.eval.progress_every=100"]


class _Run:
  """The command line in a process of its own; its stderr lines collect in .lines."""

  def __init__(self, workdir, *args, ignore_sigint=False):
    cmd = [sys.executable, "-m", "datm_clr_jax", f"--workdir={workdir}", *args]
    if ignore_sigint:  # as a script's background job starts it: SIGINT ignored, inherited
      cmd = ["bash", "-c", 'trap "" INT; exec "$@"', "bash", *cmd]
    self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)
    self.lines = []
    self._reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stderr),
                                    daemon=True)
    self._reader.start()

  def wait_for(self, ready, timeout=300):
    t0 = time.time()
    while not ready():
      assert self.proc.poll() is None, f"ended early ({self.proc.returncode}): {self.err}"
      assert time.time() - t0 < timeout, "timed out waiting"
      time.sleep(0.05)

  def stop(self, sig=None):
    """Sends sig (None: SIGKILL) and returns the exit status."""
    self.proc.send_signal(sig) if sig is not None else self.proc.kill()
    rc = self.proc.wait(timeout=300)
    self._reader.join(timeout=30)
    return rc

  @property
  def err(self) -> str:
    return "".join(self.lines)[-3000:]


def _records(workdir, phase):
  return [r for r in checkpointing.read_jsonl(workdir / "metrics.jsonl") if r["phase"] == phase]


def test_signals_and_kills_in_every_phase_lose_nothing(tmp_path):
  """SIGTERM in the experts, SIGINT (ignored by the shell that started the process, as in the
  background of a script) in distillation, kill -9 at random points of its checkpoints,
  SIGTERM in the evaluation: each stop keeps what it finished, and the last run ends on the
  arrays and accuracies of one uninterrupted run."""
  work = tmp_path / "stopped"
  run = _Run(work, *LONG)  # experts: the epoch in hand is finished and saved
  run.wait_for(lambda: len(_records(work, "experts")) >= 2)
  assert run.stop(signal.SIGTERM) == preemption.EXIT_PREEMPTED, run.err
  assert any((work / "experts" / "in_progress").iterdir()) and "Traceback" not in run.err

  run = _Run(work, *LONG, ignore_sigint=True)  # distillation: the iteration in hand is saved
  run.wait_for(lambda: len(_records(work, "distill")) >= 2)
  assert run.stop(signal.SIGINT) == preemption.EXIT_PREEMPTED, run.err
  assert "stopped: saved iteration" in run.err or "stopped by signal 2" in run.err
  assert max(int(d.name) for d in (work / "distill").iterdir() if d.name.isdigit()) >= 50

  rng = np.random.default_rng(0)
  for _ in range(3):  # kill -9: at most the work since the last checkpoint is lost
    run = _Run(work, *LONG)
    time.sleep(float(rng.uniform(2.0, 7.0)))
    run.stop()

  (work / "syn_set.npz").unlink(missing_ok=True)
  (work / "results.json").unlink(missing_ok=True)
  run = _Run(work, *LONG)  # evaluation: the set in hand is evaluated and recorded
  run.wait_for(lambda: any("evaluate distilled" in l and "epoch" in l for l in run.lines),
               timeout=600)
  assert run.stop(signal.SIGTERM) == preemption.EXIT_PREEMPTED, run.err
  kept = json.loads((work / "results.json").read_text())
  assert kept["distilled"] and not kept["random_real"]

  run = _Run(work, *LONG)
  assert run.proc.wait(timeout=600) == 0, run.err
  straight = tmp_path / "straight"
  assert cli_main.main(["datm_clr_jax", f"--workdir={straight}", *LONG]) == 0
  with np.load(work / "syn_set.npz") as a, np.load(straight / "syn_set.npz") as b:
    for key in ("syn_images", "syn_labels", "syn_lr"):
      np.testing.assert_array_equal(a[key], b[key])
  ours, theirs = (json.loads((w / "results.json").read_text()) for w in (work, straight))
  assert ours["distilled"] == theirs["distilled"]
  assert ours["random_real"] == theirs["random_real"]
  steps = [r["step"] for r in _records(work, "distill")]
  assert steps == sorted(set(steps)) and steps[-1] == 400  # every record once, in order


def test_a_second_process_on_a_workdir_is_refused(tmp_path, capsys):
  """The lock names its holder; a holder killed with -9 leaves no lock behind."""
  with locking.WorkdirLock(tmp_path):
    assert cli_main.main(["datm_clr_jax", TINY, f"--workdir={tmp_path}"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and f"in use by pid {os.getpid()} on " in err[0], err
  assert not (tmp_path / "experts").exists()
  holder = subprocess.Popen([sys.executable, "-c", "import sys, time; "
                             "from datm_clr_jax import locking; "
                             f"locking.WorkdirLock({str(tmp_path)!r}).acquire(); "
                             "print('held', flush=True); time.sleep(600)"],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == "held"
  with pytest.raises(locking.BusyError, match=f"pid {holder.pid}"):
    locking.WorkdirLock(tmp_path).acquire()
  holder.kill()
  holder.wait()
  locking.WorkdirLock(tmp_path).acquire().release()


def test_a_changed_config_is_refused_and_writes_nothing(tmp_path, capsys):
  assert cli_main.main(["datm_clr_jax", TINY, f"--workdir={tmp_path}"]) == 0
  before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
  capsys.readouterr()
  for args, message in [
      (["--config.clr.alpha=0", "--config.distill.iterations=6"],
       "clr.alpha 0.1 -> 0.0; distill.iterations 4 -> 6): use another --workdir"),
      (["--config.distill.iterations=6"], "rerun with --resume_changed"),
      (["--config.model.width=16"], "the experts in"),
      (["--config.distill.iterations=6", "--config.clr.alpha=0", "--resume_changed"],
       "clr.alpha 0.1 -> 0.0)"),
  ]:
    assert cli_main.main(["datm_clr_jax", TINY, f"--workdir={tmp_path}", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], (args, err)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before, args
  # Evaluation settings leave the set as it is; more iterations with the flag resume it.
  assert cli_main.main(["datm_clr_jax", TINY, f"--workdir={tmp_path}", "--mode=evaluate",
                        "--config.eval.epochs=3", "--config.eval.random_real=false"]) == 0
  assert cli_main.main(["datm_clr_jax", TINY, f"--workdir={tmp_path}", "--mode=distill",
                        "--config.distill.iterations=6", "--resume_changed"]) == 0
  assert max(int(d.name) for d in (tmp_path / "distill").iterdir() if d.name.isdigit()) == 6


def _mount_tmpfs(path, size):
  path.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                    capture_output=True).returncode:
    pytest.skip("mounting a small tmpfs needs root; a full disk cannot be made here")
  return path


def test_a_full_disk_is_one_line_and_costs_no_checkpoint(tmp_path, capsys):
  """The disk fills before or during a checkpoint: one line naming the path and the cause,
  every step on disk readable, no partial folder left."""
  disk = _mount_tmpfs(tmp_path / "disk", "4m")
  try:
    work = disk / "w"
    config = tiny_config()
    config.eval.random_real = False
    pipeline.run(config, str(work), "all")
    template = pipeline.Run(config, str(tmp_path / "t")).state_template()
    for keep_kb in (12, 40):
      free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
      (disk / "filler").write_bytes(b"\0" * max(0, free - keep_kb * 1024))
      capsys.readouterr()
      assert cli_main.main(["datm_clr_jax", TINY, f"--workdir={work}", "--mode=distill",
                            "--config.distill.iterations=400", "--resume_changed"]) == 74
      err = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error: ")]
      assert len(err) == 1 and "No space left on device" in err[0] and str(disk) in err[0], err
      assert not list((work / "distill").glob("*.orbax-checkpoint-tmp*"))
      with checkpointing.StepCheckpoints(work / "distill") as ckpt:
        for d in (work / "distill").iterdir():
          assert int(ckpt.restore(int(d.name), template).iteration) == int(d.name)
      (disk / "filler").unlink()
  finally:
    subprocess.run(["umount", str(disk)], check=False)


def test_a_signal_inside_a_deferred_block_waits_for_its_end():
  """Outside deferred() a signal stops at once; inside, the block runs to its end first."""
  before = {sig: signal.getsignal(sig) for sig in preemption.SIGNALS}
  preemption.install()
  done = []
  try:
    with pytest.raises(errors.Preempted) as stopped:
      with preemption.deferred():
        os.kill(os.getpid(), signal.SIGTERM)
        done.append("rest of the block")
    assert done == ["rest of the block"] and stopped.value.signum == signal.SIGTERM
    preemption.reset()
    with pytest.raises(errors.Preempted):
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(1)  # the handler runs at the next bytecode; nothing after it should
      done.append("after the signal")
    assert done == ["rest of the block"]
  finally:
    preemption.reset()
    for sig, handler in before.items():
      signal.signal(sig, handler)
