"""What the job tells its parent: exit codes and JSON-lines events on stdout (torch-free).

Stdout carries only events, one JSON object per line, each flushed as soon as it is
written; human-readable logs go to stderr. Every event has ``event`` (its type) and
``time`` (Unix seconds). The types and their fields are documented in
docs/training-job.md; the daemon's job runner imports :class:`ExitCode` and
:data:`EVENT_TYPES` from here.
"""

from __future__ import annotations

import enum
import json
import math
import os
import sys
import time
from typing import IO, Any, Final


class ExitCode(enum.IntEnum):
    """The job's exit status; each failure has its own so the daemon can react to it."""

    OK = 0
    INTERNAL = 1  # a bug or an unexpected failure; the traceback is on stderr
    BAD_SPEC = 2  # the spec file is unreadable or invalid (or names an unknown encoder/board)
    NO_GAMES = 3  # no game of the window could be used (all missing or unencodable)
    GPU_OOM = 4  # out of GPU memory: retry with a smaller batch, model or loader budget
    INTERRUPTED = 5  # SIGTERM/SIGINT; a resumable checkpoint was saved when training had begun
    BAD_CHECKPOINT = 6  # init_checkpoint is corrupt, unreadable or does not fit the model


ERROR_KINDS: Final[dict[ExitCode, str]] = {
    ExitCode.INTERNAL: "internal",
    ExitCode.BAD_SPEC: "bad_spec",
    ExitCode.NO_GAMES: "no_games",
    ExitCode.GPU_OOM: "out_of_memory",
    ExitCode.INTERRUPTED: "interrupted",
    ExitCode.BAD_CHECKPOINT: "bad_checkpoint",
}

EVENT_TYPES: Final = ("start", "progress", "checkpoint", "done", "error")


class JobFailed(Exception):
    """A failure with its exit code; the job reports it as one ``error`` event."""

    def __init__(self, code: ExitCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class StopFlag:
    """Set by the SIGTERM/SIGINT handler; the job polls it between tasks and steps."""

    def __init__(self) -> None:
        self.signal: str | None = None

    def set(self, name: str) -> None:
        self.signal = self.signal or name

    def __call__(self) -> bool:
        return self.signal is not None


def _finite(value: Any) -> Any:
    # JSON has no NaN/Infinity; a diverged loss is reported as null, not as invalid JSON.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


class Events:
    """Writes events as JSON lines to ``stream`` (stdout by default), one flush each.

    If the reader goes away (the daemon died), events are dropped and the job carries
    on: finishing and checkpointing is more useful than dying of a broken pipe.
    """

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdout
        self._closed = False

    def emit(self, event: str, **fields: Any) -> None:
        if event not in EVENT_TYPES:
            raise ValueError(f"unknown event type {event!r}")
        if self._closed:
            return
        record = {"event": event, "time": round(time.time(), 3), **_finite(fields)}
        try:
            self._stream.write(json.dumps(record, separators=(",", ":")) + "\n")
            self._stream.flush()
        except BrokenPipeError:
            self._closed = True
            if self._stream is sys.stdout:
                # Point fd 1 at /dev/null so the interpreter's final flush cannot fail.
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                os.close(devnull)

    def error(self, failure: JobFailed) -> None:
        self.emit(
            "error",
            kind=ERROR_KINDS[failure.code],
            message=failure.message,
            exit_code=int(failure.code),
        )
