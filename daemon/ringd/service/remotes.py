"""The remotes stage: each remote's selfplay games pulled with rsync into a watched root.

One task per remote, each pulling one at a time: every `interval_s` (from the
start of the last pull), at once when an operator asks (`ringd pull NAME`,
also cutting a backoff short), and after a failure when its backoff is over
(interval_s doubling up to `backoff_cap_s`). A pull is a few rsync child
processes and short file work on a thread, so a slow or dead remote holds
up nothing but itself; `timeout_s` bounds a whole pull. The pull's rules
(what is appended, what is fetched whole, why no game is ever cut or doubled)
live in `ringd.pull`; ingest counts what lands in the target like any other
file under a watched root.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from ringd import pull, rsync
from ringd.retry import Health
from ringd.service.errors import OperatorError
from ringd.service.events import EventBus, GamesAdded, RemoteFailed, RemotePulled
from ringd.service.metrics import Metrics
from ringd.service.rsync_process import TransferFailed, check, run_rsync, transport
from ringd.settings import RemoteSettings, Settings
from ringd.status import RemoteStatus

log = structlog.get_logger("ringd.remotes")


@dataclass(frozen=True, slots=True)
class Pulled:
    """What one successful pull did."""

    appended: int  # files that grew
    fetched: int  # files fetched whole (new or rewritten)
    nbytes: int  # bytes added to the target tree
    newest_at: float | None  # the newest mtime among the files it touched


class Puller:
    """One remote: its pulls, its health, its counters."""

    def __init__(
        self,
        remote: RemoteSettings,
        target: Path,
        work: Path,
        bus: EventBus,
        metrics: Metrics,
        phase: float = 0.0,
    ) -> None:
        self.remote = remote
        self._phase = phase  # in [0, 1): where in the interval its pulls fall
        self.target = target
        self._work = work  # private: probe copies and file lists, outside every watched root
        self._bus = bus
        self._metrics = metrics
        self._transport = transport(
            remote.source, remote.ssh, remote.password_file, remote.bwlimit, remote.timeout_s
        )
        self.health = Health()
        self.busy = False
        self._asked = asyncio.Event()
        # rsync's temporary files of a killed transfer may lie in the target (a
        # daemon that was SIGKILLed, a pull past its timeout): removed before the next.
        self._leftovers = True
        self.newest_at: float | None = None
        self.last_pull_s: float | None = None
        self.last_pull_bytes = 0
        self.games_since_pull = 0
        self.games_total = 0
        self.bytes_total = 0
        self.pulls = 0

    def ask(self) -> None:
        """Pull now (or right after the pull in progress)."""
        self._asked.set()

    def counted(self, games: int) -> None:
        self.games_since_pull += games
        self.games_total += games

    async def run(self) -> None:
        self.newest_at = await asyncio.to_thread(pull.newest_mtime, self.target)
        due = time.time()  # the first pull at once: a (re)started daemon catches up
        # Then each remote at its own phase of the interval (the second pull comes
        # sooner, never later): N remotes do not all load the network, the disk and
        # ingest at the same moment.
        offset = self._phase * self.remote.interval_s
        while True:
            wait = (self.health.next_try_at or due) - time.time()
            if wait > 0 and not self._asked.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._asked.wait()
            self._asked.clear()
            due = time.time() + (offset or self.remote.interval_s)
            offset = 0.0
            await self.pull_once()

    async def pull_once(self) -> None:
        started = time.time()
        self.busy = True
        self.health = self.health.started(started)
        self.games_since_pull = 0
        name = self.remote.name
        try:
            async with asyncio.timeout(self.remote.timeout_s):
                done = await self._pull()
        except (TransferFailed, TimeoutError, OSError) as e:
            self._failed(started, e)
        except Exception as e:  # a bug must not stop the other stages: reported, retried
            log.exception("pull crashed", remote=name)
            self._failed(started, e)
        else:
            self._succeeded(started, done)
        finally:
            self.busy = False

    def _failed(self, started: float, e: Exception) -> None:
        name = self.remote.name
        unreachable = isinstance(e, TransferFailed) and e.unreachable
        if isinstance(e, TimeoutError):
            message = f"pull took longer than timeout_s ({self.remote.timeout_s:g} s)"
        else:
            message = rsync.redact(str(e) or repr(e))
        self.health = self.health.failed(
            time.time(),
            message,
            unreachable=unreachable,
            base_s=self.remote.interval_s,
            cap_s=self.remote.backoff_cap_s,
        )
        self._metrics.remote_pulls.labels(name, "failed").inc()
        self._bus.publish(RemoteFailed(name, message, unreachable))
        log.warning(
            "pull failed; retrying with backoff",
            remote=name,
            error=message,
            unreachable=unreachable,
            retry_in_s=round((self.health.next_try_at or started) - time.time(), 1),
        )

    def _succeeded(self, started: float, done: Pulled) -> None:
        name = self.remote.name
        was_failing = self.health.failures > 0
        now = time.time()
        self.health = self.health.succeeded(now)
        self.pulls += 1
        self.last_pull_s = now - started
        self.last_pull_bytes = done.nbytes
        self.bytes_total += done.nbytes
        if done.newest_at is not None:
            self.newest_at = max(self.newest_at or 0.0, done.newest_at)
        self._metrics.remote_pulls.labels(name, "ok").inc()
        self._metrics.remote_bytes.labels(name).inc(done.nbytes)
        self._metrics.remote_pull_duration.labels(name).observe(self.last_pull_s)
        if was_failing:
            log.info("pull recovered", remote=name)
        if done.nbytes:
            self._bus.publish(
                RemotePulled(name, done.appended, done.fetched, done.nbytes, self.last_pull_s)
            )
            log.debug("pulled", remote=name, **dataclasses.asdict(done))

    async def _pull(self) -> Pulled:
        t = self._transport
        target, work = self.target, self._work
        await asyncio.to_thread(self._prepare)
        changes = rsync.parse_changes(
            check(await run_rsync(rsync.changes_argv(t, str(target)), self.remote.timeout_s)).stdout
        )
        if not changes:
            return Pulled(0, 0, 0, await self._newest([]))
        ours = await asyncio.to_thread(pull.our_sizes, target, [c.name for c in changes])
        plan = pull.plan(changes, ours)
        whole = list(plan.whole)
        appended: list[pull.Appended] = []
        if plan.grown:
            listing = work / "grown.list"
            await asyncio.to_thread(self._prepare_probes, plan.grown, listing)
            check(
                await run_rsync(
                    rsync.append_argv(t, str(listing), str(work / "probe")), self.remote.timeout_s
                )
            )
            appended, rewritten = await asyncio.to_thread(
                pull.append_probed, target, work / "probe", plan.grown
            )
            if rewritten:
                log.info(
                    "remote files rewritten; fetching them whole",
                    remote=self.remote.name,
                    files=rewritten[:10],
                    count=len(rewritten),
                )
            whole += rewritten
        fetched = 0
        if whole:
            listing = work / "whole.list"
            await asyncio.to_thread(pull.files_from, listing, whole)
            self._leftovers = True
            check(
                await run_rsync(
                    rsync.whole_argv(t, str(listing), str(target)), self.remote.timeout_s
                )
            )
            self._leftovers = False
            fetched = sum(
                s or 0 for s in (await asyncio.to_thread(pull.our_sizes, target, whole)).values()
            )
        touched = [a.name for a in appended] + whole
        nbytes = fetched + sum(a.nbytes for a in appended)
        return Pulled(len(appended), len(whole), nbytes, await self._newest(touched))

    async def _newest(self, touched: list[str]) -> float | None:
        """The newest mtime among the files a pull touched. The whole tree's while none is
        known yet: files may arrive without a pull of ours (the transfer of a killed
        daemon finishing after the start-up walk)."""
        if self.newest_at is None:
            return await asyncio.to_thread(pull.newest_mtime, self.target)
        if not touched:
            return None
        return await asyncio.to_thread(pull.newest_mtime, self.target, touched)

    def _prepare(self) -> None:
        self.target.mkdir(parents=True, exist_ok=True)
        self._work.mkdir(parents=True, exist_ok=True)
        if self._leftovers:
            if removed := pull.remove_leftovers(self.target):
                log.info(
                    "removed temporary files of an interrupted pull",
                    remote=self.remote.name,
                    files=removed,
                )
            self._leftovers = False

    def _prepare_probes(self, grown: list[tuple[str, int]], listing: Path) -> None:
        pull.prepare_probes(self._work / "probe", grown)
        pull.files_from(listing, [name for name, _ in grown])

    def status(self, now: float) -> RemoteStatus:
        h = self.health
        state = h.state(self.busy)
        return RemoteStatus(
            name=self.remote.name,
            source=rsync.redact(self.remote.source),
            target=str(self.target),
            state="pulling" if state == "busy" else state,
            last_success_at=h.last_success_at,
            last_attempt_at=h.last_attempt_at,
            lag_s=None if self.newest_at is None else max(0.0, now - self.newest_at),
            last_pull_s=self.last_pull_s,
            last_pull_bytes=self.last_pull_bytes,
            last_pull_games=self.games_since_pull,
            bytes_total=self.bytes_total,
            games_total=self.games_total,
            pulls=self.pulls,
            failures=h.failures,
            error=h.error,
            next_try_at=h.next_try_at,
        )


class Remotes:
    """Every remote's puller, restarted one by one when a reload changes it."""

    def __init__(self, settings: Settings, bus: EventBus, metrics: Metrics) -> None:
        self._bus = bus
        self._metrics = metrics
        self._work = settings.state_dir / "remotes"
        self.pullers: dict[str, Puller] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._settings = settings
        self._changed = asyncio.Event()

    def reconfigure(self, settings: Settings) -> None:
        if [(r, settings.remote_target(r)) for r in settings.remotes] != [
            (r, self._settings.remote_target(r)) for r in self._settings.remotes
        ]:
            self._settings = settings
            self._changed.set()

    async def run(self) -> None:
        follower = asyncio.create_task(self._follow())
        try:
            while True:
                await self._apply(self._settings)
                await self._changed.wait()
                self._changed.clear()
        finally:
            follower.cancel()
            for task in self._tasks.values():
                task.cancel()
            await asyncio.gather(follower, *self._tasks.values(), return_exceptions=True)

    async def _apply(self, settings: Settings) -> None:
        """Stop pullers of removed or changed remotes (their rsync with them), then start
        those of new or changed ones: never two pulls into one target."""
        wanted = {r.name: (r, settings.remote_target(r)) for r in settings.remotes}
        stopped = []
        for name in list(self.pullers):
            p = self.pullers[name]
            if wanted.get(name) != (p.remote, p.target):
                task = self._tasks.pop(name)
                task.cancel()
                stopped.append(task)
                del self.pullers[name]
        await asyncio.gather(*stopped, return_exceptions=True)
        for i, (name, (remote, target)) in enumerate(wanted.items()):
            if name not in self.pullers:
                phase = i / len(wanted)
                puller = Puller(remote, target, self._work / name, self._bus, self._metrics, phase)
                self.pullers[name] = puller
                self._tasks[name] = asyncio.create_task(puller.run(), name=f"remote {name}")

    async def _follow(self) -> None:
        """Credit games counted from a remote's target to that remote."""
        async for event in self._bus.follow():
            if isinstance(event, GamesAdded) and event.file is not None:
                for puller in self.pullers.values():
                    if event.file.startswith(f"{puller.target}{os.sep}"):
                        puller.counted(event.count)
                        break

    def status(self) -> list[RemoteStatus]:
        now = time.time()
        return [p.status(now) for p in self.pullers.values()]

    async def pull(self, name: str) -> str:
        """`ringd pull NAME`: pull now, backoff or not."""
        puller = self.pullers.get(name)
        if puller is None:
            known = ", ".join(self.pullers) or "none configured"
            raise OperatorError(404, f"no remote named {name!r} (remotes: {known})")
        busy = puller.busy
        puller.ask()
        if busy:
            return f"a pull of {name} is running; another follows it at once"
        return f"pulling {name} now"
