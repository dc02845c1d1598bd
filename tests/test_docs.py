"""The README stays short and its two commands come first; the README, docs/ and the configs
name only files that exist; no Python file edits the import path."""

import re

import pytest

from conftest import ROOT

# launch/results/README.md is left out: it maps the paths older results pages name to today's.
DOCS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")),
        "launch/gpu/README.md"]


def _named_files(text: str) -> set[str]:
  """Paths a page names, but placeholders (configs/X.py) and `git show REV:path` objects."""
  named = set(re.findall(r"`((?:launch|docs|configs|datm_clr_jax|tests)/[\w./-]+?)`", text))
  bare = r"(?<![:\w/])((?:launch|docs|configs|tests)/[\w/-]+\.(?:sh|md|json|py))\b"
  named |= set(re.findall(bare, text))
  return {n.split(":")[0] for n in named} - {"configs/X.py"}


def test_readme_is_short_and_its_two_commands_come_first():
  text = (ROOT / "README.md").read_text()
  assert len(text.splitlines()) <= 150
  block = text.split("## Two commands", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
  commands = [l.split("#")[0].strip() for l in block.strip().splitlines()]
  assert commands == ["bash launch/quickstart.sh", "bash launch/test.sh"]
  assert "launch/test.sh" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("page", DOCS + [f"configs/{p.name}" for p in
                                         sorted((ROOT / "configs").glob("*.py"))])
def test_pages_name_only_files_that_exist(page):
  named = _named_files((ROOT / page).read_text())
  if page in ("README.md", "docs/usage.md"):
    assert named, "the page should point at its files"
  for path in named:
    if "<" not in path and "*" not in path:
      assert (ROOT / path).exists(), f"{page} names {path}"


def test_no_python_file_edits_the_import_path():
  needle = "sys." + "path"  # spelled apart, so this file does not find itself
  offenders = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py")
               if ".venv" not in p.parts and needle in p.read_text()]
  assert not offenders, offenders
