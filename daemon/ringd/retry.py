"""The health of something ringd reaches over the network (a remote, a publish destination).

Pure: each transition returns a new `Health` from the old one and the clock.
After a failure the next attempt waits base * 2^(failures - 1), capped
(`schedule.backoff_delay`); a success clears it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from ringd.schedule import backoff_delay

State = Literal["ok", "busy", "backoff", "unreachable"]


@dataclass(frozen=True, slots=True)
class Health:
    failures: int = 0  # in a row, since the last success
    error: str | None = None  # the last failure's message, until a success
    unreachable: bool = False  # the last failure was a connection that could not be made
    last_success_at: float | None = None
    last_attempt_at: float | None = None
    next_try_at: float | None = None  # after a failure: no attempt before this (unless asked)

    def started(self, now: float) -> Health:
        return dataclasses.replace(self, last_attempt_at=now)

    def succeeded(self, now: float) -> Health:
        return dataclasses.replace(
            self, failures=0, error=None, unreachable=False, last_success_at=now, next_try_at=None
        )

    def failed(
        self, now: float, error: str, *, unreachable: bool, base_s: float, cap_s: float
    ) -> Health:
        failures = self.failures + 1
        return dataclasses.replace(
            self,
            failures=failures,
            error=error,
            unreachable=unreachable,
            next_try_at=now + backoff_delay(failures, base_s, cap_s),
        )

    def state(self, busy: bool) -> State:
        """`busy` while an attempt runs; after a failure `unreachable` (the other side
        could not be reached) or `backoff` (it answered, the transfer failed)."""
        if busy:
            return "busy"
        if self.failures:
            return "unreachable" if self.unreachable else "backoff"
        return "ok"
