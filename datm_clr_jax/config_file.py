"""Config files as code: `path` or `path:variant` (get_config's argument), and overrides.

An override is what follows --config. on a command line, "section.field=value", its value
parsed to the field's type; the study runner and the library use the same rules as the flags.
"""

from __future__ import annotations

import ast
import runpy
from pathlib import Path

import ml_collections

from datm_clr_jax.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def load(path: str, overrides=()) -> ml_collections.ConfigDict:
  """The config that `path` ("configs/x.py" or "configs/x.py:variant", relative to the
  repository when not absolute) builds, with `overrides` applied."""
  file, _, variant = str(path).partition(":")
  file = Path(file) if Path(file).is_absolute() else REPO / file
  if not file.is_file():
    raise ConfigError(f"config file {file} does not exist")
  get_config = runpy.run_path(str(file))["get_config"]
  config = get_config(variant) if variant else get_config()
  return apply_overrides(config, overrides)


def _parse_value(text: str, old):
  if isinstance(old, bool):
    if text.lower() in ("true", "false"):
      return text.lower() == "true"
    raise ValueError(f"expected True or False, got {text!r}")
  if isinstance(old, str):
    return text
  if isinstance(old, float):  # as the command line reads it: nan and inf included
    return float(text)
  value = ast.literal_eval(text)
  if isinstance(old, tuple) and isinstance(value, (str, list)):
    value = tuple(value) if isinstance(value, list) else (value,)
  if type(value) is not type(old):
    raise ValueError(f"expected a {type(old).__name__}, got {text!r}")
  return value


def apply_overrides(config: ml_collections.ConfigDict, overrides) -> ml_collections.ConfigDict:
  """A copy of `config` with each 'a.b=value' (what follows --config. on a command line)."""
  config = ml_collections.ConfigDict(config.to_dict())
  for o in overrides:
    field, sep, text = o.partition("=")
    if not sep:
      raise ConfigError(f"override {o!r} is not of the form field=value")
    *parents, leaf = field.split(".")
    node = config
    for p in parents:
      if p not in node or not isinstance(node[p], ml_collections.ConfigDict):
        raise ConfigError(f"override {o!r}: the config has no section {p!r}")
      node = node[p]
    if leaf not in node:
      raise ConfigError(f"override {o!r}: the config has no field {field!r}")
    try:
      node[leaf] = _parse_value(text, node[leaf])
    except (ValueError, SyntaxError) as e:
      raise ConfigError(f"override {o!r}: {e}") from None
  return config
