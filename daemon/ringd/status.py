"""The status document (`ringd status --json`, `ringd scan --json`): models and their assembly.

The daemon and `ringd scan` build it; the CLI renders it (`ringd.cli.render`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from ringd.boards import split_config_name
from ringd.ledger import ConfigCount
from ringd.settings import Settings

State = Literal["unconfigured", "idle", "ready", "training", "backoff", "paused"]


class JobProgress(BaseModel):
    id: str
    slot: str | None
    started_at: float | None
    first_seq: int
    last_seq: int
    games: int
    step: int | None = None
    total_steps: int | None = None
    loss: float | None = None
    samples_per_s: float | None = None
    eta_s: float | None = None
    gpu_util: float | None = None  # percent (CUDA with NVML only)


class HeldOutStatus(BaseModel):
    """A config's newest job checkpoint on the held-out games: is training working?"""

    checkpoint: str
    loss: float | None  # held-out loss (policy + value) of the new network
    policy_acc: float | None
    value_mse: float | None
    samples: int | None
    # The latest it started from, measured by the same job on the same samples (None:
    # the job started from scratch); `change` is (loss - start_loss) / start_loss.
    start_loss: float | None
    start_policy_acc: float | None
    start_value_mse: float | None
    change: float | None
    promoted: bool | None  # None: not decided yet
    reason: str | None  # why it was promoted or not


@dataclass(frozen=True, slots=True)
class Scheduling:
    """The scheduler's view of one config, overlaid on its counts."""

    state: State
    job: JobProgress | None = None
    backoff_until: float | None = None
    last_error: str | None = None


class ConfigStatus(BaseModel):
    name: str
    board: str
    players: int
    new_games: int
    threshold: int | None
    total_games: int
    trained_through: int
    state: State
    last_game_at: float | None
    games_per_s: float | None = None  # over the last minute (daemon only)
    job: JobProgress | None = None  # the running job (daemon only)
    backoff_until: float | None = None
    last_error: str | None = None
    held_out: HeldOutStatus | None = None  # the last job's held-out metrics (daemon only)
    # Disk taken by the config's sample cache (state_dir/samples/<config>; daemon only).
    samples_bytes: int | None = None


class RamdiskStatus(BaseModel):
    source: str
    target: str
    source_present: bool
    files: int
    pending_bytes: int
    pending_games: int
    partial_bytes: int
    flushed_games: int
    flushed_bytes: int
    last_flush_at: float | None
    oldest_pending_age_s: float | None
    deleted_sources: int
    errors: int
    last_error: str | None
    failing: dict[str, str]


RemoteState = Literal["ok", "pulling", "backoff", "unreachable"]
PublishState = Literal["ok", "publishing", "backoff", "unreachable"]


class RemoteStatus(BaseModel):
    """A remote pulled with rsync (`remotes:`)."""

    name: str
    source: str  # passwords masked
    target: str
    state: RemoteState
    last_success_at: float | None
    last_attempt_at: float | None
    lag_s: float | None  # age of the newest game pulled from it (by the remote's mtimes)
    last_pull_s: float | None  # how long the last successful pull took
    last_pull_bytes: int  # bytes the last successful pull added to the target
    last_pull_games: int  # games counted from the target since the last pull began
    bytes_total: int  # since the daemon started
    games_total: int
    pulls: int
    failures: int  # in a row
    error: str | None
    next_try_at: float | None  # after a failure


class PublishStatus(BaseModel):
    """A destination of new validated checkpoints (`models.publish:`)."""

    dest: str  # passwords masked
    state: PublishState
    last_success_at: float | None
    last_attempt_at: float | None
    published: dict[str, str]  # config -> the checkpoint its latest.pt points to there
    pending: list[str]  # configs whose latest is not there yet
    failures: int
    error: str | None
    next_try_at: float | None


UNREADABLE_SHOWN = 10
# The scan's problems that hide games (scan.py's messages: "PATH: cannot ...").
_UNREADABLE = re.compile(r"^(?P<path>.*?): (?P<reason>cannot (?:list|stat|read|re-key)\b.*)$", re.S)


class UnreadablePath(BaseModel):
    path: str
    reason: str


class Unreadable(BaseModel):
    """Files and directories below the watched roots that cannot be read (permissions,
    I/O errors): the games in them are not counted until they can be."""

    count: int = 0
    first: list[UnreadablePath] = []  # the first UNREADABLE_SHOWN, by path

    @classmethod
    def of(cls, problems: Mapping[str, str]) -> Unreadable:
        """From {path: reason}."""
        shown = [UnreadablePath(path=p, reason=problems[p]) for p in sorted(problems)]
        return cls(count=len(problems), first=shown[:UNREADABLE_SHOWN])


def unreadable_problem(error: str) -> tuple[str, str] | None:
    """(path, reason) of a scan error that hides games; None for other problems (a root
    that does not exist yet, a symlink loop)."""
    match = _UNREADABLE.match(error)
    return (match["path"], match["reason"]) if match else None


class Status(BaseModel):
    configs: list[ConfigStatus]
    total_games: int
    new_games: int
    rejected_total: int
    rejects: dict[str, int]
    config_error: str | None
    config_file: str | None
    generated_at: float
    # Why no training job can start (the daemon's trainer preflight), with what to install.
    trainer_unavailable: str | None = None
    unreadable: Unreadable = Unreadable()  # paths below the roots that cannot be read
    daemon: dict[str, object] | None = None  # pid, version, started_at, ready (daemon only)
    ramdisk: list[RamdiskStatus] = []  # the RAM-disk flusher's mappings (daemon only)
    remotes: list[RemoteStatus] = []  # rsync pulls (daemon only)
    publish: list[PublishStatus] = []  # model publishing (daemon only)


def config_state(new_games: int, threshold: int | None) -> State:
    """A config's state from its counts alone (before any scheduling)."""
    if threshold is None:
        return "unconfigured"
    return "ready" if new_games >= threshold else "idle"


def build_status(
    counts: Sequence[ConfigCount],
    settings: Settings,
    rejects: Mapping[str, int],
    *,
    config_error: str | None = None,
    config_file: str | None = None,
    now: float | None = None,
    rates: Mapping[str, float] | None = None,
    daemon: dict[str, object] | None = None,
    ramdisk: Sequence[RamdiskStatus] = (),
    scheduling: Mapping[str, Scheduling] | None = None,
    held_out: Mapping[str, HeldOutStatus] | None = None,
    samples_bytes: Mapping[str, int] | None = None,
    remotes: Sequence[RemoteStatus] = (),
    publish: Sequence[PublishStatus] = (),
) -> Status:
    """One row per configured config (games or not) and per unconfigured one with games."""
    by_name = {c.name: c for c in counts}
    names = sorted(set(settings.configs) | set(by_name), key=_order)
    rows = []
    for name in names:
        count = by_name.get(name)
        board, players = split_config_name(name) or (name, 0)
        threshold = settings.threshold(name)
        new = count.new if count else 0
        sched = (scheduling or {}).get(name)
        rows.append(
            ConfigStatus(
                name=name,
                board=board,
                players=players,
                new_games=new,
                threshold=threshold,
                total_games=count.total if count else 0,
                trained_through=count.trained_through if count else 0,
                state=sched.state if sched else config_state(new, threshold),
                last_game_at=count.last_game_at if count else None,
                games_per_s=None if rates is None else round(rates.get(name, 0.0), 3),
                job=sched.job if sched else None,
                backoff_until=sched.backoff_until if sched else None,
                last_error=sched.last_error if sched else None,
                held_out=(held_out or {}).get(name),
                samples_bytes=(samples_bytes or {}).get(name),
            )
        )
    return Status(
        configs=rows,
        total_games=sum(r.total_games for r in rows),
        new_games=sum(r.new_games for r in rows),
        rejected_total=sum(rejects.values()),
        rejects=dict(rejects),
        config_error=config_error,
        config_file=config_file,
        generated_at=time.time() if now is None else now,
        daemon=daemon,
        ramdisk=list(ramdisk),
        remotes=list(remotes),
        publish=list(publish),
    )


def _order(name: str) -> tuple[str, int]:
    board, players = split_config_name(name) or (name, 0)
    return board, players


def status_line(status: Status, limit: int = 8) -> str:
    """systemd's STATUS: the configs closest to their thresholds, `square8_2p +37/100, ...`."""
    rows = sorted(
        (r for r in status.configs if r.threshold is not None),
        key=lambda r: (-r.new_games / (r.threshold or 1), r.name),
    )
    text = ", ".join(f"{r.name} {progress_label(r)}" for r in rows[:limit])
    if status.trainer_unavailable:
        text = "trainer unavailable; " + text
    if status.config_error:
        text = f"config error: {status.config_error.splitlines()[0]}; " + text
    return text or f"{status.total_games} games"


def progress_label(row: ConfigStatus) -> str:
    """The literal `+N/threshold` (`+N/-` when the config has no threshold)."""
    return f"+{row.new_games}/{row.threshold if row.threshold is not None else '-'}"
