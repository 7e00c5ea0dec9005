"""Worker processes die with the controller: a SIGKILLed controller must not leave a generator process or reward
workers running (they hold memory and cores a resumed run needs)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this process when `parent` (the pid that started it) dies; call first thing in a worker
    process. Elsewhere a no-op: the generator process also polls its parent (executors/generator.py)."""
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the request: nobody will send the signal
        os.kill(os.getpid(), signal.SIGKILL)
