"""The status document (`ringd status --json`, `ringd scan --json`) and its table."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

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


class Status(BaseModel):
    configs: list[ConfigStatus]
    total_games: int
    new_games: int
    rejected_total: int
    rejects: dict[str, int]
    config_error: str | None
    config_file: str | None
    generated_at: float
    daemon: dict[str, object] | None = None  # pid, version, started_at, ready (daemon only)
    ramdisk: list[RamdiskStatus] = []  # the RAM-disk flusher's mappings (daemon only)


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
    if status.config_error:
        text = f"config error: {status.config_error.splitlines()[0]}; " + text
    return text or f"{status.total_games} games"


def progress_label(row: ConfigStatus) -> str:
    """The literal `+N/threshold` (`+N/-` when the config has no threshold)."""
    return f"+{row.new_games}/{row.threshold if row.threshold is not None else '-'}"


def _bar(new: int, threshold: int | None, width: int = 20) -> Text:
    if threshold is None:
        return Text("·" * width, style="dim")
    filled = min(width, new * width // threshold)
    return Text("█" * filled, style="green" if new >= threshold else "cyan") + Text(
        "·" * (width - filled), style="dim"
    )


def _age(then: float | None, now: float) -> str:
    if then is None:
        return "-"
    seconds = max(0.0, now - then)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


_STATE_STYLE = {
    "ready": "bold green",
    "training": "bold magenta",
    "backoff": "red",
    "paused": "yellow",
    "unconfigured": "dim",
    "idle": "",
}


def view(status: Status) -> RenderableType:
    """The status table: one row per config with its `+N/threshold`, then totals."""
    parts: list[RenderableType] = []
    if status.config_error:
        parts.append(
            Text("config error (last good configuration in force):\n", style="bold red")
            + Text(status.config_error, style="red")
        )
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("config", no_wrap=True)
    table.add_column("new", justify="right", no_wrap=True)
    table.add_column("progress")
    table.add_column("total", justify="right")
    table.add_column("state")
    table.add_column("last game", justify="right")
    now = status.generated_at
    for row in status.configs:
        table.add_row(
            row.name,
            progress_label(row),
            _bar(row.new_games, row.threshold),
            f"{row.total_games:,}",
            _state_text(row, now),
            _age(row.last_game_at, now),
        )
    parts.append(table)
    for m in status.ramdisk:
        parts.append(_ramdisk_line(m, now))
    rejects = ", ".join(f"{reason} {n:,}" for reason, n in status.rejects.items())
    parts.append(
        Text(
            f"{status.total_games:,} games, {status.new_games:,} new, "
            f"{status.rejected_total:,} rejected" + (f" ({rejects})" if rejects else "")
        )
    )
    return Group(*parts)


def _state_text(row: ConfigStatus, now: float) -> Text:
    text = Text(row.state, style=_STATE_STYLE.get(row.state, ""))
    if row.state == "training" and row.job is not None:
        job = row.job
        if job.step is not None and job.total_steps:
            text += Text(f" {100 * job.step / job.total_steps:.0f}%")
        if job.eta_s is not None:
            text += Text(f" ETA {_duration(job.eta_s)}", style="dim")
    elif row.state == "backoff" and row.backoff_until is not None:
        text += Text(f" {_duration(row.backoff_until - now)}", style="dim")
        if row.last_error:
            text += Text(f": {row.last_error[:60]}", style="red")
    return text


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h"
    if seconds >= 60:
        return f"{seconds / 60:.0f}m"
    return f"{seconds:.0f}s"


def _ramdisk_line(m: RamdiskStatus, now: float) -> Text:
    head = Text(f"ramdisk {m.source} -> {m.target}: ", style="bold")
    if not m.source_present:
        return head + Text("source missing (targets kept as they are)", style="yellow")
    text = (
        f"{m.files} files, {m.flushed_games:,} games flushed, last flush {_age(m.last_flush_at, now)}"
        f", pending {m.pending_games:,} games ({m.pending_bytes:,} B)"
    )
    line = head + Text(text)
    if m.oldest_pending_age_s is not None:
        line += Text(f", oldest unflushed {m.oldest_pending_age_s:.0f}s", style="red")
    if m.failing:
        line += Text(f"; failing: {m.last_error}", style="red")
    return line


def jobs_view(jobs: Sequence[Mapping[str, Any]], now: float | None = None) -> RenderableType:
    """`ringd jobs`: one row per job, newest first."""
    now = time.time() if now is None else now
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in (
        "job",
        "state",
        "games",
        "progress",
        "duration",
        "attempts",
        "checkpoint / error",
    ):
        table.add_column(column)
    for job in jobs:
        progress = job.get("progress") or {}
        step, total = progress.get("step"), progress.get("total_steps")
        done = f"{step}/{total}" if step is not None and total else "-"
        started, finished = job.get("started"), job.get("finished")
        duration = _duration((finished or now) - started) if started else "-"
        note = job.get("checkpoint") if job["state"] == "succeeded" else job.get("error")
        table.add_row(
            job["id"],
            Text(job["state"], style=_JOB_STYLE.get(job["state"], "")),
            f"{job['games']:,}",
            done,
            duration,
            str(job["attempts"]),
            note or "",
        )
    if not jobs:
        return Text("no training jobs yet")
    return table


_JOB_STYLE = {"succeeded": "green", "failed": "red", "running": "magenta", "interrupted": "yellow"}


def models_view(models: Mapping[str, Any]) -> RenderableType:
    """`ringd models`: per config the latest validated checkpoint, counts and sizes."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("config", "ok", "bad", "pending", "size", "latest"):
        table.add_column(column, no_wrap=column != "latest")
    for name, c in models["configs"].items():
        table.add_row(
            name,
            str(c["ok"]),
            Text(str(c["bad"]), style="red" if c["bad"] else ""),
            str(c["pending"]),
            f"{c['bytes'] / 1e6:,.1f} MB",
            c["latest"] or "-",
        )
    parts: list[RenderableType] = [table if models["configs"] else Text("no checkpoints yet")]
    for c in models["checkpoints"]:
        if c["verdict"] == "bad":
            where = c["quarantined_to"] or c["path"]
            parts.append(Text(f"bad: {c['path']}: {c['reason']} (now {where})", style="red"))
    stats = models.get("stats") or {}
    if stats.get("last_error"):
        parts.append(Text(f"validation failing: {stats['last_error']}", style="red"))
    return Group(*parts)
