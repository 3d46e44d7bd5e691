"""The daemon's event stream: what was ingested, discovered, rejected, flushed or trained.

Each event is a typed dataclass. Stages publish them; `GET /v1/events` clients
and the stages downstream (scheduler, model registry) follow them. A slow
follower never slows ingest: its queue is bounded, and when it overflows the
follower is told how many events it missed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

QUEUE_LIMIT = 10_000


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of every event; `kind` is its name on the wire (`{"event": kind, ...}`)."""

    kind: ClassVar[str]
    at: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        """The JSON object sent to `/v1/events` followers."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {"event": self.kind, **data}


# -- ingest ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GamesAdded(Event):
    kind: ClassVar[str] = "games"
    config: str
    count: int
    first_seq: int
    last_seq: int
    file: str | None = None  # None: found by a scan of many files


@dataclass(frozen=True, slots=True)
class FileFound(Event):
    kind: ClassVar[str] = "file"
    path: str


@dataclass(frozen=True, slots=True)
class Rejected(Event):
    kind: ClassVar[str] = "rejects"
    reasons: dict[str, int]
    file: str | None = None


@dataclass(frozen=True, slots=True)
class ScanFinished(Event):
    kind: ClassVar[str] = "scan"
    reason: str
    files: int
    new_games: int
    seconds: float
    errors: list[str]


@dataclass(frozen=True, slots=True)
class IngestFailed(Event):
    kind: ClassVar[str] = "ingest_error"
    error: str


@dataclass(frozen=True, slots=True)
class ObserverFailed(Event):
    kind: ClassVar[str] = "observer_error"
    error: str


# -- configuration --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConfigReloaded(Event):
    kind: ClassVar[str] = "config_reloaded"
    reason: str


@dataclass(frozen=True, slots=True)
class ConfigRefused(Event):
    kind: ClassVar[str] = "config_refused"
    errors: list[str]


# -- RAM-disk flusher -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RamdiskFlushed(Event):
    kind: ClassVar[str] = "ramdisk_flushed"
    source: str
    target: str
    end: int
    fsynced_at: float


@dataclass(frozen=True, slots=True)
class RamdiskRecovered(Event):
    kind: ClassVar[str] = "ramdisk_recovered"
    source: str


@dataclass(frozen=True, slots=True)
class RamdiskFailed(Event):
    kind: ClassVar[str] = "ramdisk_error"
    source: str
    error: str


# -- training jobs --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobStarted(Event):
    kind: ClassVar[str] = "job_started"
    job: str
    config: str
    slot: str
    first_seq: int
    last_seq: int
    # New games of the range older than the window (a backlog over max_games): not
    # trained on; the job's success moves the watermark past them.
    skipped_games: int = 0


@dataclass(frozen=True, slots=True)
class JobProgressed(Event):
    kind: ClassVar[str] = "job_progress"
    job: str
    config: str
    progress: dict[str, Any]


@dataclass(frozen=True, slots=True)
class JobFinished(Event):
    kind: ClassVar[str] = "job_finished"
    job: str
    config: str
    state: str
    exit_code: int | None
    error: str | None
    seconds: float
    checkpoint: str | None


# -- checkpoint registry --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckpointValidated(Event):
    kind: ClassVar[str] = "checkpoint_validated"
    path: str
    config: str | None


@dataclass(frozen=True, slots=True)
class CheckpointPromoted(Event):
    """The promotion gate's decision on a validated checkpoint (models.promote)."""

    kind: ClassVar[str] = "checkpoint_promoted"
    path: str
    config: str | None
    promoted: bool  # False: valid, kept and listed, but not made latest
    reason: str


@dataclass(frozen=True, slots=True)
class CheckpointBad(Event):
    kind: ClassVar[str] = "checkpoint_bad"
    path: str
    reason: str


@dataclass(frozen=True, slots=True)
class LatestChanged(Event):
    kind: ClassVar[str] = "latest_changed"
    config: str
    path: str  # the checkpoint `state_dir/models/CONFIG/latest.pt` now points to


# -- remotes and publishing (rsync) ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class RemotePulled(Event):
    kind: ClassVar[str] = "remote_pulled"
    remote: str
    appended: int  # files that grew
    fetched: int  # files fetched whole (new or rewritten)
    bytes: int
    seconds: float


@dataclass(frozen=True, slots=True)
class RemoteFailed(Event):
    kind: ClassVar[str] = "remote_error"
    remote: str
    error: str
    unreachable: bool


@dataclass(frozen=True, slots=True)
class ModelPublished(Event):
    kind: ClassVar[str] = "model_published"
    dest: str
    config: str
    name: str  # DEST/CONFIG/NAME; DEST/CONFIG/latest.pt points to it


@dataclass(frozen=True, slots=True)
class PublishFailed(Event):
    kind: ClassVar[str] = "publish_error"
    dest: str
    config: str
    error: str


# -- the stream itself ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Lagged(Event):
    kind: ClassVar[str] = "lagged"
    missed: int


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

    def publish(self, event: Event) -> None:
        for follower in self._followers:
            follower.put(event)

    async def follow(self) -> AsyncIterator[Event]:
        """Events from now on, until the caller stops iterating or the bus closes."""
        if self._closed:
            return
        follower = _Follower()
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
            return Lagged(missed=missed)
        return await self._queue.get()
