"""What a lent device lacks, packed here into .gpu_carry/ and unpacked there.

  python launch/gpu/carry.py pack      # here: the CIFAR-10 copy (xz) and the missing wheels
  python launch/gpu/carry.py unpack    # on the device (launch/gpu/lib.sh's unpack_carry)

The device has no registry and no ml_collections, and the working tree that travels to it
(tracked files, untracked ones git does not ignore, carried paths) may be 64 MiB at most
(/work/.library/device/README.md). The image-folder zip of CIFAR-10 stores each JPEG with its
own headers, so it alone is near that limit; xz over the whole zip shares those headers across
files and the unpacked zip is byte-identical (checked by its SHA-256). `pack` refuses in one line
when the tree and the carry together would not travel.
"""

from __future__ import annotations

import argparse
import hashlib
import lzma
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CARRY = ROOT / ".gpu_carry"
DATA = ROOT.parent / "shared" / "data" / "cifar10-jpeg.zip"
WHEELS = ("ml_collections",)  # packages the device's image lacks
TRAVEL_LIMIT = 64 * 2**20  # bytes, the device tool's limit on what travels
CHUNK = 2**20


def sha256(path: Path) -> str:
  h = hashlib.sha256()
  with path.open("rb") as f:
    for block in iter(lambda: f.read(CHUNK), b""):
      h.update(block)
  return h.hexdigest()


def compress(src: Path, dest: Path) -> Path:
  """Writes src as dest/<src name>.xz with a <name>.sha256 beside it; returns the .xz path."""
  out = dest / f"{src.name}.xz"
  with src.open("rb") as fin, lzma.open(out, "wb", preset=6) as fout:
    shutil.copyfileobj(fin, fout, CHUNK)
  # sha256sum's own format, so that `sha256sum -c` checks it where Python lacks lzma.
  (dest / f"{src.name}.sha256").write_text(f"{sha256(src)}  {src.name}\n")
  return out


def decompress(xz: Path) -> Path:
  """Writes xz's content beside it without the suffix, unless a copy with the recorded
  SHA-256 is already there; raises SystemExit when the result does not match that hash."""
  out = xz.with_suffix("")
  want = xz.with_name(f"{out.name}.sha256").read_text().split()[0]
  if out.exists() and sha256(out) == want:
    return out
  with lzma.open(xz, "rb") as fin, out.open("wb") as fout:
    shutil.copyfileobj(fin, fout, CHUNK)
  if sha256(out) != want:
    out.unlink()
    raise SystemExit(f"gpu_carry: {xz.name} unpacked to the wrong SHA-256 (expected {want})")
  return out


def download_wheels(names, dest: Path) -> list[Path]:
  """The installed version of each package as a wheel in dest, fetched without dependencies."""
  specs = [f"{n}=={metadata.version(n)}" for n in names]
  subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                  "-d", str(dest), *specs], check=True)
  return sorted(dest.glob("*.whl"))


def travel_bytes(repo: Path) -> int:
  """Bytes of what the device tool sends: tracked files and untracked ones git does not
  ignore, as they are in the working tree (carried paths are counted by the caller)."""
  names = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others",
                          "--exclude-standard"], check=True, capture_output=True).stdout
  files = (repo / n for n in names.decode().split("\0") if n)
  return sum(f.stat().st_size for f in files if f.is_file())


def pack(data: Path, carry: Path, wheels=WHEELS, repo: Path = ROOT,
         limit: int = TRAVEL_LIMIT) -> int:
  """Fills carry with data as .xz (and its hash) and the wheels; returns the bytes that travel.
  Raises SystemExit before any work when data is missing, after it when over the limit."""
  if not data.is_file():
    raise SystemExit(f"gpu_carry: no data file {data}")
  if carry.exists():
    shutil.rmtree(carry)
  carry.mkdir(parents=True)
  compress(data, carry)
  if wheels:
    download_wheels(wheels, carry)
  carried = sum(f.stat().st_size for f in carry.iterdir())
  total = travel_bytes(repo) + carried
  if total > limit:
    raise SystemExit(f"gpu_carry: {total / 2**20:.1f} MiB would travel (tree and {carry.name}), "
                     f"over the device's {limit / 2**20:.0f} MiB")
  return total


def unpack(carry: Path) -> list[Path]:
  """Restores every .xz in carry beside itself; returns the restored files."""
  return [decompress(xz) for xz in sorted(carry.glob("*.xz"))]


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("action", choices=["pack", "unpack"])
  p.add_argument("--data", type=Path, default=DATA, help="pack: the file to carry compressed")
  p.add_argument("--carry", type=Path, default=CARRY)
  a = p.parse_args(argv)
  if a.action == "pack":
    total = pack(a.data, a.carry)
    print(f"{a.carry}: {', '.join(sorted(f.name for f in a.carry.iterdir()))}; "
          f"{total / 2**20:.1f} MiB travel with the tree (limit {TRAVEL_LIMIT / 2**20:.0f} MiB)")
  else:
    for f in unpack(a.carry):
      print(f"{f}: {f.stat().st_size} bytes, SHA-256 as packed")


if __name__ == "__main__":
  main()
