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

    def publish(self, kind: str, **data: Any) -> None:
        event = Event(kind, data)
        for follower in self._followers:
            follower.put(event)

    async def follow(self) -> AsyncIterator[Event]:
        """Events from now on, until the caller stops iterating."""
        follower = _Follower()
        self._followers.add(follower)
        try:
            while True:
                yield await follower.get()
        finally:
            self._followers.discard(follower)


class _Follower:
    def __init__(self) -> None:
        self._queue: asyncio.Queue[Event] = asyncio.Queue(QUEUE_LIMIT)
        self._missed = 0

    def put(self, event: Event) -> None:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._missed += 1

    async def get(self) -> Event:
        if self._missed and self._queue.empty():
            missed, self._missed = self._missed, 0
            return Event("lagged", {"missed": missed})
        return await self._queue.get()
