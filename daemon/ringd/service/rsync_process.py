"""rsync as a child process: its own process group, a wall-clock limit, gone with the daemon.

A transfer never outlives what started it: on a timeout or a cancellation
(shutdown, a reload that dropped the remote) its whole group (rsync, its
forked receiver, ssh) gets SIGTERM, then SIGKILL; and if the daemon itself is
SIGKILLed, rsync gets SIGTERM from the kernel (parent-death signal), so a
restarted daemon never pulls beside a leftover transfer into the same files.
On SIGTERM rsync removes the temporary file it was writing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ringd import childsetup, rsync
from ringd.rsync import VANISHED, describe_failure, unreachable
from ringd.settings import SshSettings

KILL_GRACE_S = 2.0
STRAGGLER_GRACE_S = 1.0
TIMED_OUT = -1


@dataclass(frozen=True, slots=True)
class Result:
    code: int  # rsync's exit status; TIMED_OUT when the wall-clock limit killed it
    stdout: str
    stderr: str


class TransferFailed(Exception):
    """An rsync run failed; the message is safe to show (passwords masked)."""

    def __init__(self, message: str, *, unreachable: bool) -> None:
        super().__init__(message)
        self.unreachable = unreachable


def transport(
    endpoint: str,
    ssh: SshSettings,
    password_file: Path | None,
    bwlimit: str | None,
    timeout_s: float,
) -> rsync.Transport:
    """The rsync transport of a remote or publish destination from its settings."""
    return rsync.Transport(
        endpoint=rsync.parse_endpoint(endpoint),
        ssh=rsync.Ssh(
            user=ssh.user,
            port=ssh.port,
            key=str(ssh.key) if ssh.key else None,
            known_hosts=str(ssh.known_hosts) if ssh.known_hosts else None,
            options=tuple(ssh.options),
        ),
        password_file=str(password_file) if password_file else None,
        bwlimit=bwlimit,
        # rsync's own --timeout catches a stalled connection long before the
        # wall-clock limit of the whole pull.
        timeout_s=min(timeout_s, 120.0),
    )


async def run_rsync(argv: Sequence[str], timeout_s: float) -> Result:
    """Run rsync to completion or until `timeout_s`; never leaves it running."""
    process = await asyncio.create_subprocess_exec(
        # SIGTERM when the daemon dies, however it dies: set in the child itself
        # (ringd.childsetup), not by a preexec_fn in this threaded process.
        *childsetup.wrap(argv),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
        # Messages and escaped names in one stable form, whatever the host's locale.
        env={**os.environ, "LC_ALL": "C"},
    )
    assert process.stdout is not None and process.stderr is not None
    out = asyncio.ensure_future(process.stdout.read())
    err = asyncio.ensure_future(process.stderr.read())
    try:
        async with asyncio.timeout(timeout_s):
            code = await process.wait()
            # rsync's forked helper exits with it; one whose parent was SIGKILLed
            # would hold our pipes open until its own I/O timeout.
            _, open_pipes = await asyncio.wait({out, err}, timeout=STRAGGLER_GRACE_S)
            if open_pipes:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
            return Result(
                code, (await out).decode(errors="replace"), (await err).decode(errors="replace")
            )
    except TimeoutError:
        await _stop(process)
        return Result(TIMED_OUT, "", f"killed after {timeout_s:g} s (timeout_s)")
    except BaseException:
        await _stop(process)
        raise
    finally:
        out.cancel()
        err.cancel()


def check(result: Result) -> Result:
    """The result of a run that did its work; TransferFailed otherwise."""
    if result.code in (0, VANISHED):
        return result
    if result.code == TIMED_OUT:
        raise TransferFailed(result.stderr, unreachable=False)
    raise TransferFailed(
        describe_failure(result.code, result.stderr), unreachable=unreachable(result.code)
    )


async def _stop(process: asyncio.subprocess.Process) -> None:
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, None)):
        if process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await process.wait()
