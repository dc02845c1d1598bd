"""Multiple devices: sharded runs give the single-device results (4 forced CPU devices)."""

import subprocess
import sys

from conftest import ROOT


def test_sharded_runs_match_single_device():
  out = subprocess.run([sys.executable, str(ROOT / "tests" / "scripts" / "sharded_vs_single.py")],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert out.returncode == 0, out.stderr[-4000:]
  assert "sharded == single-device" in out.stdout
