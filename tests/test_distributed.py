"""Two CPU processes through JAX's distributed runtime: experts and evaluation seeds split,
results identical to one process."""

import json
import socket
import subprocess
import sys

import numpy as np

from conftest import ROOT
from datm_clr_jax import checkpointing, experts
FLAGS = ["--config=configs/quickstart.py:tiny", "--config.experts.parallel=1",
         "--config.eval.random_real=True", "--config.eval.progress_every=0"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run(workdir, *args, processes=1):
  """Runs the command line as `processes` processes on localhost; returns their outputs."""
  cmd = [sys.executable, "-m", "datm_clr_jax", f"--workdir={workdir}", *FLAGS, *args]
  if processes == 1:
    outs = [subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)]
  else:
    port = _free_port()
    procs = [subprocess.Popen(cmd + [f"--coordinator_address=127.0.0.1:{port}",
                                     f"--num_processes={processes}", f"--process_id={i}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=ROOT) for i in range(processes)]
    outs = []
    for p in procs:
      out, err = p.communicate(timeout=600)
      outs.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
  for o in outs:
    assert o.returncode == 0, o.stderr[-3000:]
  return outs


def _trajectories(root):
  return {k: np.asarray(checkpointing.restore_tree(experts.expert_path(root, k))["trajectory"])
          for k in experts.finished_experts(root)}


def test_two_processes_split_experts_and_evaluation_seeds(tmp_path):
  one, two = tmp_path / "one", tmp_path / "two"
  _run(one, "--mode=experts")
  outs = _run(two, "--mode=experts", processes=2)
  # One round: process 0 trained expert 0, process 1 expert 1; process 0 saved both.
  assert "experts 1-1 epoch" in outs[1].stderr and "experts 1-1 epoch" not in outs[0].stderr
  single, split = _trajectories(one / "experts"), _trajectories(two / "experts")
  assert sorted(split) == [0, 1] and sorted(single) == [0, 1]
  for k in single:
    np.testing.assert_array_equal(split[k], single[k])

  _run(two, "--mode=distill")
  _run(two, "--mode=evaluate", processes=2)
  together = json.loads((two / "results.json").read_text())
  _run(two, "--mode=evaluate", "--config.eval.resume=False")
  alone = json.loads((two / "results.json").read_text())
  for key in ("distilled", "random_real"):
    assert together[key]["convnet"]["runs"] == alone[key]["convnet"]["runs"]
    assert len(alone[key]["convnet"]["runs"]) == 2


def test_modes_that_do_not_split_are_refused_under_several_processes(tmp_path):
  port = _free_port()
  cmd = [sys.executable, "-m", "datm_clr_jax", f"--workdir={tmp_path}", *FLAGS,
         "--mode=distill", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2"]
  procs = [subprocess.Popen(cmd + [f"--process_id={i}"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT) for i in range(2)]
  for p in procs:
    _, err = p.communicate(timeout=300)
    assert p.returncode == 2 and "does not split over processes" in err
