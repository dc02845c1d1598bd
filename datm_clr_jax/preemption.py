"""SIGTERM and SIGINT: finish the unit of work in hand and its checkpoint, then stop.

A cluster preempts a job with SIGTERM (SLURM's `--signal`, a cloud VM's shutdown) and a user
with Ctrl-C or `timeout -s INT`. After `install()`, either signal raises errors.Preempted, a
KeyboardInterrupt, at once outside `deferred()` blocks and at the end of the block inside
one. The long loops wrap each unit (a distillation iteration and its checkpoint, an expert
epoch and its save, one network's evaluation and its results.json) in `deferred()`, so a
signal costs at most the unit that was running, and the command line exits with
EXIT_PREEMPTED: run the same command again to resume.
"""

from __future__ import annotations

import contextlib
import signal

from datm_clr_jax.errors import Preempted

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again"; the state is saved
SIGNALS = (signal.SIGTERM, signal.SIGINT)

_received: int | None = None
_depth = 0


def install() -> None:
  """Handles SIGTERM and SIGINT in this (main) thread. SIGINT too is set explicitly: a
  process started in the background of a non-interactive shell inherits it ignored."""
  for sig in SIGNALS:
    signal.signal(sig, _handler)


def reset() -> None:
  """Forgets a received signal (for a process that runs on after one, such as a test)."""
  global _received  # pylint: disable=global-statement
  _received = None


def _handler(signum, frame):
  del frame
  global _received  # pylint: disable=global-statement
  _received = signum
  if _depth == 0:
    raise Preempted(signum)


@contextlib.contextmanager
def deferred():
  """A signal that arrives inside the block is acted on when the block ends."""
  global _depth  # pylint: disable=global-statement
  _depth += 1
  try:
    yield
  finally:
    _depth -= 1
  if _depth == 0 and _received is not None:
    raise Preempted(_received)
