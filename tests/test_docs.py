"""The README stays short, its two commands come first, and every file it names exists."""

import re

from conftest import ROOT


def test_readme_is_short_and_names_only_files_that_exist():
  text = (ROOT / "README.md").read_text()
  assert len(text.splitlines()) <= 200
  block = text.split("## Two commands", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
  commands = [l.split("#")[0].strip() for l in block.strip().splitlines()]
  assert commands == ["bash launch/quickstart.sh", "bash launch/test.sh"]
  assert "launch/test.sh" in (ROOT / ".ci" / "run").read_text()
  named = set(re.findall(r"`((?:launch|docs|configs|datm_clr_jax)/[\w./-]+?)`", text))
  named |= set(re.findall(r"\b((?:launch|docs)/[\w/-]+\.(?:sh|md|json|py))\b", text))
  assert named, "the README should point at its files"
  for path in named:
    assert (ROOT / path).exists(), path
