"""The command line's parsing with one-line errors (the flags themselves are in __main__).

A bad flag, an override of a field the config lacks or a config file that does not load is
reported as one line on stderr, `error: ...`, with exit status 2, never as a traceback.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from absl import flags
from ml_collections import config_flags

from datm_clr_jax.errors import ConfigError

BAD_INPUT = 2  # exit status of refused input
IO_ERROR = 74  # EX_IOERR: the system refused a read or write (a full disk, say)
INTERRUPTED = 130


def fail(message) -> int:
  """Prints the one line and returns the exit status of refused input."""
  print(f"error: {message}", file=sys.stderr)
  return BAD_INPUT


def unknown_field(error: Exception, argv: list[str]) -> str:
  """The one line for a --config.<field> override that names no field of the config."""
  key = str(error).split("'")[1] if "'" in str(error) else str(error)
  given = [a.split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]
  culprit = next((g for g in given if key in g.split(".")), ", ".join(given) or "--config")
  return (f"{culprit}: the config has no field {key!r}; see configs/default.py for the fields")


def define(define_flags, flag_values: flags.FlagValues, argv: list[str]) -> None:
  """define_flags(flag_values, argv), turning an override of a missing field (which
  ml_collections applies while the config flag is defined) into a ConfigError."""
  try:
    define_flags(flag_values, argv)
  except (AttributeError, KeyError) as e:
    raise ConfigError(unknown_field(e, argv)) from None


def parse(flag_values: flags.FlagValues, argv: list[str]) -> list[str]:
  """flag_values(argv) with its errors as ConfigError; returns the arguments left over."""
  try:
    return flag_values(argv)
  except flags.Error as e:
    first = str(e).strip().splitlines()[0]
    if "Error whilst parsing config file" in first:  # the rest is the config's traceback
      path = first.split("--config=", 1)[-1].split(":", 1)[0]
      first = f"--config={path}: it does not load: `python {path}` shows why"
    raise ConfigError(first) from None
  except (AttributeError, KeyError) as e:
    raise ConfigError(unknown_field(e, argv)) from None


def loaded_config(flag_values: flags.FlagValues):
  """The parsed config; ml_collections loads the file lazily and its error says little."""
  try:
    config = flag_values.config
    config.name  # pylint: disable=pointless-statement  (a failed load raises only on use)
    return config
  except OSError:
    path = config_flags.get_config_filename(flag_values["config"])
    why = ("no such file" if not Path(path.split(":")[0]).is_file() else
           f"it does not load: `python {path}` shows why")
    raise ConfigError(f"--config={path}: {why}; the configs are in configs/") from None


def parse_or_exit(define_flags, flag_values: flags.FlagValues, argv: list[str]) -> list[str]:
  """define and parse for absl's app.run: a refused flag exits with its one line."""
  try:
    define(define_flags, flag_values, argv)
    return parse(flag_values, argv)
  except ConfigError as e:
    sys.exit(fail(e))


def os_error(error: BaseException, default_path: str | None = None) -> str | None:
  """One line for an operating-system error anywhere in `error`'s chain (orbax and
  tensorstore wrap theirs), naming the path (`default_path` where the error names none) and
  the cause; None if there is none."""
  seen = set()
  where = lambda path: f"{path}: " if path else (f"{default_path}: " if default_path else "")
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.strerror:
      return f"{where(error.filename)}{error.strerror} (errno {error.errno})"
    text = str(error)
    for cause in ("No space left on device", "Disk quota exceeded", "Read-only file system"):
      if cause in text:
        paths = re.findall(r'"(/[^"]+)"', text) or re.findall(r"(/[\w./-]+)", text)
        return f"{where(paths[0] if paths else None)}{cause}"
    error = error.__cause__ or error.__context__
  return None
