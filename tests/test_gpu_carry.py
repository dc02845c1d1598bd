"""launch/gpu/carry.py: what travels to a lent device comes back byte for byte, within the limit."""

import importlib.util
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from conftest import ROOT

spec = importlib.util.spec_from_file_location("gpu_carry", ROOT / "launch" / "gpu" / "carry.py")
gpu_carry = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_carry)


def _data_zip(path):
  rng = np.random.default_rng(0)
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
    for i in range(20):  # same-shaped members, as the image folder's JPEGs are
      z.writestr(f"train/c{i % 2}/{i:04d}.bin", b"HEADER" * 50 + rng.bytes(300))
  return path


def _repo(path):
  """A git repo with a tracked, an untracked and an ignored file: only the first two travel."""
  path.mkdir()
  subprocess.run(["git", "init", "-q", str(path)], check=True)
  (path / ".gitignore").write_text("ignored.bin\n")
  (path / "tracked.txt").write_bytes(b"t" * 100)
  subprocess.run(["git", "-C", str(path), "add", ".gitignore", "tracked.txt"], check=True)
  (path / "untracked.txt").write_bytes(b"u" * 50)
  (path / "ignored.bin").write_bytes(b"i" * 10_000)
  return path, len("ignored.bin\n") + 100 + 50


def test_pack_then_unpack_restores_the_file_and_counts_what_travels(tmp_path):
  data = _data_zip(tmp_path / "d.zip")
  carry = tmp_path / "carry"
  repo, tree_bytes = _repo(tmp_path / "repo")
  total = gpu_carry.pack(data, carry, wheels=(), repo=repo)
  xz = carry / "d.zip.xz"
  assert xz.stat().st_size < data.stat().st_size  # the shared headers compress
  assert total == tree_bytes + xz.stat().st_size + (carry / "d.zip.sha256").stat().st_size
  moved = tmp_path / "device"
  moved.mkdir()
  for f in carry.iterdir():
    (moved / f.name).write_bytes(f.read_bytes())
  (restored,) = gpu_carry.unpack(moved)
  assert restored.read_bytes() == data.read_bytes()
  # sha256sum checks the same record where the device's Python lacks lzma.
  subprocess.run(["sha256sum", "-c", "--quiet", "d.zip.sha256"], cwd=moved, check=True)


def test_unpack_refuses_a_corrupt_copy(tmp_path):
  carry = tmp_path / "carry"
  gpu_carry.pack(_data_zip(tmp_path / "d.zip"), carry, wheels=(), repo=_repo(tmp_path / "r")[0])
  (carry / "d.zip.sha256").write_text("0" * 64 + "  d.zip\n")
  with pytest.raises(SystemExit, match="wrong SHA-256"):
    gpu_carry.unpack(carry)
  assert not (carry / "d.zip").exists()


def test_pack_refuses_over_the_limit_and_without_data(tmp_path):
  with pytest.raises(SystemExit, match="no data file"):
    gpu_carry.pack(tmp_path / "missing.zip", tmp_path / "carry", wheels=())
  with pytest.raises(SystemExit, match="would travel"):
    gpu_carry.pack(_data_zip(tmp_path / "d.zip"), tmp_path / "carry", wheels=(),
                   repo=_repo(tmp_path / "r")[0], limit=1000)


def _unpack_carry(cwd, py):
  """launch/gpu/lib.sh's unpack_carry in cwd with PY=py; returns (rc, phases.txt)."""
  out = cwd / "out"
  out.mkdir(exist_ok=True)
  script = f'PY={py} OUT={out} LOG={out}/log; source {ROOT}/launch/gpu/lib.sh; unpack_carry'
  rc = subprocess.run(["bash", "-c", script], cwd=cwd).returncode
  phases = out / "phases.txt"
  return rc, phases.read_text() if phases.exists() else ""


@pytest.mark.parametrize("py", [sys.executable, "false"], ids=["python", "xz_fallback"])
def test_the_device_scripts_unpack_the_carry(tmp_path, py):
  # PY=false stands for a device Python without lzma: xz and sha256sum take over.
  data = _data_zip(tmp_path / "d.zip")
  gpu_carry.pack(data, tmp_path / ".gpu_carry", wheels=(), repo=_repo(tmp_path / "r")[0])
  assert _unpack_carry(tmp_path, py) == (0, "")
  assert (tmp_path / ".gpu_carry" / "d.zip").read_bytes() == data.read_bytes()
  (tmp_path / ".gpu_carry" / "d.zip").unlink()
  (tmp_path / ".gpu_carry" / "d.zip.sha256").write_text("0" * 64 + "  d.zip\n")
  rc, phases = _unpack_carry(tmp_path, py)
  assert rc == 1 and "does not unpack" in phases
