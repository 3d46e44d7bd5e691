"""The daemon's event stream: what was ingested, discovered, rejected or reloaded.

Published by the pipeline's stages, followed by `GET /v1/events` clients and,
inside the daemon, by the scheduler. A slow follower never slows ingest: its
queue is bounded, and when it overflows the follower is told how many events
it missed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

QUEUE_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class Event:
    kind: str  # games | file | rejects | scan | config_reloaded | config_refused | lagged | ...
    data: dict[str, Any]
    at: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return {"event": self.kind, "at": self.at, **self.data}


class EventBus:
    """Fan-out of events to any number of followers; publishing never blocks."""

    def __init__(self) -> None:
        self._followers: set[_Follower] = set()
        self._closed = False

    def close(self) -> None:
        """End every follower's stream (shutdown): their `follow()` loops return."""
        self._closed = True
        for follower in self._followers:
            follower.close()

    def publish(self, kind: str, **data: Any) -> None:
        event = Event(kind, data)
        for follower in self._followers:
            follower.put(event)

    async def follow(self) -> AsyncIterator[Event]:
        """Events from now on, until the caller stops iterating."""
        follower = _Follower()
        if self._closed:
            return
        self._followers.add(follower)
        try:
            while (event := await follower.get()) is not None:
                yield event
        finally:
            self._followers.discard(follower)


class _Follower:
    def __init__(self) -> None:
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(QUEUE_LIMIT)
        self._missed = 0

    def put(self, event: Event) -> None:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._missed += 1

    def close(self) -> None:
        if self._queue.full():
            self._queue.get_nowait()  # room for the end marker; the follower is ending anyway
        self._queue.put_nowait(None)

    async def get(self) -> Event | None:
        if self._missed and self._queue.empty():
            missed, self._missed = self._missed, 0
            return Event("lagged", {"missed": missed})
        return await self._queue.get()
