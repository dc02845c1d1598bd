"""The reproduction report: our numbers beside the paper's, 'not run' where we have none."""

import json

import numpy as np

from datm_clr_jax import __main__ as cli_main
from datm_clr_jax import report


def fake_result(method, mean, *, seed=0, width=32, source="image_folder:/x/cifar10-jpeg.zip",
                strategy="fusion", views="multiple", **clr):
  runs = [mean - 1.0, mean, mean + 1.0]
  block = {"convnet": {"mean": mean, "std": 0.8, "runs": runs}}
  return {"dataset": source, "ipc": 1, "method": method, "distilled": block,
          "eval_seeds": [10_000 + 100 * seed + i for i in range(3)],
          "random_real": {"convnet": {"mean": 20.0 + seed, "std": 1.0, "runs": [20.0 + seed]}},
          "protocol": {"eval_epochs": 1000, "num_inner_steps": 20, "distill_iterations": 500,
                       "num_experts": 5, "model": {"width": width}, "num_classes": 10,
                       "clr": {"strategy": strategy, "view_mode": views, **clr},
                       "selection": "final iteration (no test-set selection)"}}


def write(tmp_path, name, r):
  (tmp_path / name).mkdir(parents=True)
  (tmp_path / name / "results.json").write_text(json.dumps(r))


def test_report_pools_runs_and_marks_missing(tmp_path):
  write(tmp_path, "clr0", fake_result("datm_clr", 30.0, seed=0))
  write(tmp_path, "clr1", fake_result("datm_clr", 32.0, seed=1))
  write(tmp_path, "datm0", fake_result("datm", 28.0))
  text = report.build_report(report.load_results([tmp_path]))
  row = next(l for l in text.splitlines() if l.startswith("| CIFAR-10 IPC 1 | DATM-CLR"))
  assert "31.00 +- 1.00 over 2 distillations (30.00, 32.00)" in row
  assert "reduced: width 32, 5 experts, 500 iterations, JPEG CIFAR copy; N=20" in row
  assert row.endswith("53.0 +- 0.4 |")  # the paper's number, quoted
  assert "| CIFAR-100 IPC 1 | DATM-CLR | not run | - | 28.7 +- 0.2 |" in text
  # Table 2: only the ConvNet column has numbers; Table 3: only Fusion/multiple at C10 IPC1.
  assert "| DATM-CLR | 31.00 x2 [1] | 53.00 | not run | 49.36 |" in text
  assert "| fusion | multiple | 31.00 x2 [1] | 53.00 | not run | 70.23 |" in text
  assert "[1] reduced: width 32, 5 experts, 500 iterations, JPEG CIFAR copy; N=20" in text
  assert "| update | single | not run | 44.92 |" in text
  # datm0 shares clr0's evaluation seeds, hence its random-real subsets: counted once.
  assert "| CIFAR-10 IPC 1 | Random real | 20.50 +- 0.50 over 2 distillations (20.00, 21.00)" in text
  assert "DATM-CLR, CIFAR-10 IPC 1" in text and "distilled 32.00 +- 0.80 (3 evals)" in text


def test_report_keeps_clr_variants_apart(tmp_path):
  write(tmp_path, "main", fake_result("datm_clr", 30.0, alpha=0.1, lam=0.5))  # lam unused
  write(tmp_path, "upd", fake_result("datm_clr", 40.0, strategy="update", alpha=0.1, lam=0.1))
  write(tmp_path, "small", fake_result("datm_clr", 50.0, alpha=0.01))
  text = report.build_report(report.load_results([tmp_path]))
  rows = [l for l in text.splitlines() if l.startswith("| CIFAR-10 IPC 1 | DATM-CLR")]
  assert rows[0].startswith("| CIFAR-10 IPC 1 | DATM-CLR | 30.00 (3 evals) |")
  assert rows[0].endswith("53.0 +- 0.4 |")
  assert rows[1].startswith("| CIFAR-10 IPC 1 | DATM-CLR (fusion, multiple; alpha 0.01) | 50.00")
  assert rows[2].startswith("| CIFAR-10 IPC 1 | DATM-CLR (update, multiple) | 40.00")
  assert rows[1].endswith("| - |") and rows[2].endswith("| - |")  # no paper number beside
  assert len(rows) == 3
  # Table 3: Update with the paper's lam is its row; the alpha 0.01 run is in no Table 3 cell.
  assert "| update | multiple | 40.00 x1 [1] | 46.72 |" in text
  assert "| fusion | multiple | 30.00 x1 [1] | 53.00 |" in text
  assert "| DATM-CLR | 30.00 x1 [1] | 53.00 |" in text  # Table 2 uses the main setting only


def test_tables_2_and_3_keep_protocols_apart(tmp_path):
  write(tmp_path, "small", fake_result("datm_clr", 30.0, width=32))
  write(tmp_path, "wide", fake_result("datm_clr", 50.0, width=128))
  text = report.build_report(report.load_results([tmp_path]))
  assert "| DATM-CLR | 50.00 x1 [1] / 30.00 x1 [2] | 53.00 |" in text  # not pooled into 40.00
  assert "| fusion | multiple | 50.00 x1 [1] / 30.00 x1 [2] | 53.00 |" in text
  assert "[1] reduced: 5 experts, 500 iterations, JPEG CIFAR copy; N=20" in text
  assert "[2] reduced: width 32, 5 experts" in text


def test_report_command_writes_markdown_and_figure(tmp_path, monkeypatch, capsys):
  write(tmp_path / "runs", "a", fake_result("datm_clr", 30.0))
  np.savez(tmp_path / "runs" / "a" / "syn_set.npz", syn_images_pixels=np.ones((10, 8, 8, 3)),
           class_names=np.array([f"c{i}" for i in range(10)]))
  (tmp_path / "runs" / "a" / "metrics.jsonl").write_text("".join(
      json.dumps({"phase": "distill", "step": s, "l_tm": 1.0 / s, "l_contrast": 2.0,
                  "syn_lr": 0.01, "status": "accepted"}) + "\n" for s in range(1, 4)))
  write(tmp_path / "runs", "b", fake_result("datm", 28.0))
  np.savez(tmp_path / "runs" / "b" / "syn_set.npz", other=np.ones(3))  # not ours: no picture row
  (tmp_path / "runs" / "b" / "metrics.jsonl").write_text(  # experts only: no curve of its own
      json.dumps({"phase": "experts", "epoch": 1, "train_loss": 2.0}) + "\n")
  assert cli_main.main(["datm_clr_jax", "--mode=report", f"--report_dirs={tmp_path / 'runs'}",
                        f"--workdir={tmp_path / 'rep'}"]) == 0
  assert (tmp_path / "rep" / "report.md").exists() and (tmp_path / "rep" / "report.png").exists()
  assert (tmp_path / "rep" / "images_cifar10_ipc1.png").exists()
  text = (tmp_path / "rep" / "report.md").read_text()
  assert "![images_cifar10_ipc1](images_cifar10_ipc1.png)" in text
  assert "![curves_cifar10_ipc1](curves_cifar10_ipc1.png)" in text
  drawn, real = [], report.visualize.save_curves
  monkeypatch.setattr(report.visualize, "save_curves",
                      lambda runs, *a, **k: drawn.append(sorted(runs)) or real(runs, *a, **k))
  paths = report.save_curves(report.load_results([tmp_path / "runs"]), tmp_path / "c")
  assert paths == [tmp_path / "c" / "curves_cifar10_ipc1.png"]
  assert drawn == [["DATM-CLR, a"]]  # b logged no distillation: not in the overlay
  assert (json.loads((tmp_path / "rep" / "runs" / "a.json").read_text())["distilled"]
          == fake_result("datm_clr", 30.0)["distilled"])
  capsys.readouterr()
  assert cli_main.main(["datm_clr_jax", "--mode=report", "--report_dirs=/no/such/dir"]) == 2
  assert "no such folder" in capsys.readouterr().err


def test_protocol_label_names_short_expert_trajectories():
  r = {"dataset": "cifar10", "protocol": {"num_experts": 10, "expert_epochs_trained": 6,
                                          "distill_iterations": 453, "num_inner_steps": 80}}
  assert report.protocol_label(r) == "reduced: 10 experts, 6 expert epochs, 453 iterations; N=80"
  r["protocol"].update(num_experts=100, expert_epochs_trained=50, distill_iterations=10000)
  assert report.protocol_label(r) == "full; N=80"


def test_protocol_label_names_trajectory_segments():
  r = {"dataset": "cifar10", "protocol": {"num_experts": 100, "expert_epochs_trained": 50,
                                          "distill_iterations": 10000, "num_inner_steps": 80}}
  single = report.protocol_label(r)
  r["protocol"]["num_segments"] = 4
  assert report.protocol_label(r) == "full; N=80, 4 trajectory segments per iteration"
  # Never pooled with single-segment runs: cells split by protocol label.
  assert report.protocol_label(r) != single


def test_random_real_of_another_architecture_is_read_from_the_run_that_has_it(tmp_path):
  clr = fake_result("datm_clr", 30.0)  # shares datm's evaluation seeds, read first
  datm = fake_result("datm", 28.0)
  datm["random_real"]["vgg11"] = {"mean": 15.0, "std": 1.6, "runs": [15.0]}
  write(tmp_path, "a_clr", clr)
  write(tmp_path, "b_datm", datm)
  text = report.build_report(report.load_results([tmp_path]))
  assert "| Random real | 20.00 x1 [1] | 15.46 | not run | 13.97 | 15.00 x1 [1] | 12.07 |" in text


def test_a_study_table_is_rendered_beside_the_papers_table_1(tmp_path):
  from datm_clr_jax import methods, study
  plan = {"config": "configs/quickstart.py:tiny", "dev_seeds": [0, 1], "heldout_seeds": [],
          "baseline": "D", "arms": {"D": {"desc": "DATM"}, "M": {"desc": "MTT"},
                                    "F": {"desc": "FTD"}}, "_path": str(tmp_path / "plan.json")}
  cells = {f"{a}_seed{s}": {"arm": a, "seed": s, "accuracy": acc, "overrides": [],
                            "method": m, **({"accuracy_ema": acc - 5} if a == "F" else {})}
           for a, m, accs in (("D", "datm", (30.0, 32.0)), ("M", "mtt", (25.0, 26.0)),
                              ("F", "ftd", (26.0, 25.0)))
           for s, acc in enumerate(accs)}
  out = tmp_path / "study"
  out.mkdir()
  (out / "summary.json").write_text(json.dumps(study.summarize(plan, cells)))
  report.write_report([str(out)], str(tmp_path / "report"))
  text = (tmp_path / "report" / "report.md").read_text()
  paper = methods.published("cifar10_ipc1")
  assert f"| M | MTT | 25.50 +- 0.50 (n=2) | -5.50 +- 0.50 | {paper['mtt']} |" in text
  assert f"| D | DATM | 31.00 +- 1.00 (n=2) | - | {paper['datm']} |" in text
  assert "| F EMA | its images' moving average | 20.50 +- 0.50 (n=2) | -10.50 +- 1.50 | - |" in text
  assert "does not reproduce it" in text and "Status: table: all 6 cells done." in text


def test_the_runs_read_carry_their_scores(tmp_path):
  r = fake_result("datm", 30.0)
  r["scores"] = {"convnet": {"lrs": {"mean": 41.5, "std": 0.5, "runs": [41.0, 42.0]}}}
  write(tmp_path / "runs", "a", r)
  report.write_report([str(tmp_path / "runs")], str(tmp_path / "rep"))
  assert "LRS 41.50 +- 0.50" in (tmp_path / "rep" / "report.md").read_text()


def test_report_keeps_momentum_expert_kind_and_methods_apart(tmp_path):
  write(tmp_path, "datm", fake_result("datm", 30.0))
  momentum = fake_result("datm", 34.0)
  momentum["protocol"]["student_momentum"] = 0.5
  write(tmp_path, "datm_m", momentum)
  gsam = fake_result("datm", 32.0)
  gsam["protocol"]["experts_optimizer"] = "gsam"
  write(tmp_path, "datm_gsam", gsam)
  write(tmp_path, "mtt", fake_result("mtt", 29.0))
  text = report.build_report(report.load_results([tmp_path]))
  rows = [l for l in text.splitlines() if l.startswith("| CIFAR-10 IPC 1 | DATM |")]
  assert len(rows) == 3, rows  # one pool per protocol, none averaged with another
  assert sorted(r.split(" | ")[2].split(" ")[0] for r in rows) == ["30.00", "32.00", "34.00"]
  assert any("N=20, student momentum 0.5 |" in r for r in rows)
  assert any("N=20, GSAM experts |" in r for r in rows)
  mtt = next(l for l in text.splitlines() if l.startswith("| CIFAR-10 IPC 1 | MTT |"))
  assert mtt.startswith("| CIFAR-10 IPC 1 | MTT | 29.00 (3 evals) |") and mtt.endswith("| 46.2 +- 0.8 |")
  assert "| CIFAR-100 IPC 1 | MTT |" not in text  # no MTT run there
