"""One writer per workdir: an OS-level lock on <workdir>/.lock.

`fcntl.flock` is released by the OS when its holder exits, however it exits (a kill -9
included), so a lock is never left held. The file says who holds it; a second process is
refused in one line naming that pid and host.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

from datm_clr_jax.errors import BusyError

LOCK_FILE = ".lock"


class WorkdirLock:
  """Held from acquire() to release() (or the context's end, or the process's)."""

  def __init__(self, directory):
    self.directory = Path(directory)
    self._fd = None

  def acquire(self) -> WorkdirLock:
    self.directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
      os.close(fd)
      raise BusyError(f"{self.directory} is in use by {holder}; wait for it to end, or use "
                      "another --workdir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                  f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}\n".encode(), 0)
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()
