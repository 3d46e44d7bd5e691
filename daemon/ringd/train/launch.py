"""torchrun's environment, read without torch (the job reads it before importing torch).

A job of several processes is started as ``torchrun ... -m ringd.train SPEC``: each
copy finds its rank in ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal


def launched_by_torchrun() -> bool:
    """Whether this process is a rank started by torchrun (or anything setting its env)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def env_rank() -> int:
    """This process's global rank (0 when not launched by torchrun)."""
    return int(os.environ.get("RANK", "0")) if launched_by_torchrun() else 0


def die_with_launcher() -> None:
    """Exit when torchrun goes away (SIGKILLed after its grace): no orphaned ranks.

    torchrun starts each rank in a session of its own, so signals to the daemon's
    process group reach torchrun only; torchrun forwards SIGTERM, but a SIGKILL of it
    would leave the ranks training on. Linux only; elsewhere a no-op.
    """
    if not launched_by_torchrun():
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the launcher died before prctl took effect
        os._exit(1)


def local_rank() -> int:
    """This process's rank on its host (0 when not launched by torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0")) if launched_by_torchrun() else 0
