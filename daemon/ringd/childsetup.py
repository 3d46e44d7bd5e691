"""Set up a child process in the child itself, then exec its program (same pid).

    python -m ringd.childsetup [--die-with-parent PID] [--nice N] [--idle-io] -- ARGV...

The daemon starts trainers, validators and other helpers through this instead of
`preexec_fn`: code run between fork and exec in a process with threads (the
daemon's executor threads, uvloop's) can deadlock on a lock another thread held
at the fork, and CPython warns about it. Here the setup runs in a fresh
interpreter, and what it sets survives `execvp`:

- `--die-with-parent PID`: the parent-death signal (SIGTERM) via prctl(2)'s
  PR_SET_PDEATHSIG, whose value (1) is the same on every Linux architecture; if
  the parent is already gone (it died before the prctl), exit at once;
- `--nice N`: the CPU niceness (os.setpriority);
- `--idle-io`: the idle I/O scheduling class, through psutil's ionice (which
  knows the ioprio_set syscall of each architecture: no numbers hard-coded here).

Keep this module free of imports beyond the standard library and psutil: it
runs before every child.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # asyncio is not imported at run time: this runs before every child
    import asyncio

PR_SET_PDEATHSIG = 1  # linux/prctl.h, the same on every architecture
EXIT_PARENT_GONE = 75
EXIT_CANNOT_EXEC = 127


def wrap(
    argv: Sequence[str],
    *,
    die_with_parent: bool = True,
    nice: int | None = None,
    idle_io: bool = False,
) -> list[str]:
    """The argv that runs `argv` set up as asked (call it in the parent)."""
    out = [sys.executable, "-m", "ringd.childsetup"]
    if die_with_parent:
        out += ["--die-with-parent", str(os.getpid())]
    if nice is not None:
        out += ["--nice", str(nice)]
    if idle_io:
        out.append("--idle-io")
    return [*out, "--", *argv]


async def reap(
    process: asyncio.subprocess.Process, sig: int = signal.SIGKILL, *, group: bool = False
) -> None:
    """Signal a child the daemon stops waiting for (its group with `group`) and await its exit.

    Awaiting the exit lets asyncio close the child's pipes while the event loop
    still runs; a child only signalled outlives the loop's transport, which then
    fails to close itself when it is collected.
    """
    try:
        if group:
            os.killpg(process.pid, sig)
        else:
            process.send_signal(sig)
    except (ProcessLookupError, PermissionError):
        pass
    await process.wait()


def set_parent_death_signal(sig: int = signal.SIGTERM) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_PDEATHSIG): {os.strerror(errno)}")


def set_idle_io() -> bool:
    """The idle I/O class for this process; False where psutil or the kernel cannot."""
    try:
        import psutil

        psutil.Process().ionice(psutil.IOPRIO_CLASS_IDLE)
    except (ImportError, AttributeError, OSError, ValueError):
        return False
    return True


def main(args: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ringd.childsetup")
    parser.add_argument("--die-with-parent", type=int, metavar="PID")
    parser.add_argument("--nice", type=int)
    parser.add_argument("--idle-io", action="store_true")
    parser.add_argument("argv", nargs=argparse.REMAINDER)
    opts = parser.parse_args(args)
    argv = opts.argv[1:] if opts.argv[:1] == ["--"] else opts.argv
    if not argv:
        parser.error("no program to run after --")
    if opts.die_with_parent is not None:
        set_parent_death_signal()
        # The parent died between our fork and the prctl: no signal will ever come.
        if os.getppid() != opts.die_with_parent:
            print("ringd.childsetup: the parent is gone; not starting", file=sys.stderr)
            return EXIT_PARENT_GONE
    if opts.nice is not None:
        os.setpriority(os.PRIO_PROCESS, 0, max(os.getpriority(os.PRIO_PROCESS, 0), opts.nice))
    if opts.idle_io:
        set_idle_io()
    sys.stdout.flush()
    try:
        os.execvp(argv[0], argv)
    except OSError as e:
        print(f"ringd.childsetup: cannot run {argv[0]}: {e.strerror or e}", file=sys.stderr)
        return EXIT_CANNOT_EXEC


if __name__ == "__main__":
    sys.exit(main())
