"""The package's errors: one base class, so the command line catches them in one place.

Each names what went wrong and what to do, in one line; the command line prints that line
and exits with status 2 instead of a traceback.
"""


class Error(Exception):
  """An expected failure: bad input, a missing or unusable file, a state that cannot go on."""


class ConfigError(Error, ValueError):
  """A config value that cannot work; the message names the field."""


class DataError(Error, ValueError):
  """A data source that does not exist, cannot be read or does not fit."""


class CheckpointError(Error, RuntimeError):
  """A checkpoint is missing, corrupt or does not fit what is being restored."""


class DistillError(Error, ValueError):
  """Bad distillation input or state."""


class StudyError(Error, ValueError):
  """A study plan that cannot run."""


class TorchIOError(Error, ValueError):
  """PyTorch files (the reference's buffers and sets) that cannot be read or written."""


class BusyError(Error, RuntimeError):
  """Another process holds the workdir."""


class Preempted(KeyboardInterrupt):
  """SIGTERM or SIGINT arrived; the state was saved first (datm_clr_jax/preemption.py)."""

  def __init__(self, signum: int):
    super().__init__(signum)
    self.signum = signum
