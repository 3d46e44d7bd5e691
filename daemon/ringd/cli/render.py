"""What the CLI shows: the status table, jobs, models, and a progress bar for long scans."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from ringd.scan import Plan
from ringd.status import (
    ConfigStatus,
    HeldOutStatus,
    PublishStatus,
    RamdiskStatus,
    RemoteStatus,
    Status,
    progress_label,
)

# A first scan smaller than this finishes before a bar would be worth drawing.
PROGRESS_MIN_BYTES = 32 * 1024 * 1024


def count(n: int, word: str, plural: str | None = None) -> str:
    """`1 file`, `2 files`, `1,204 games`."""
    return f"{n:,} {word if n == 1 else plural or word + 's'}"


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
    if status.trainer_unavailable:
        parts.append(
            Text("trainer unavailable: ", style="bold red")
            + Text(
                f"{status.trainer_unavailable} (no training job starts until it is)", style="red"
            )
        )
    if status.unreadable.count:
        parts.append(_unreadable_lines(status))
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("config", no_wrap=True)
    table.add_column("new", justify="right", no_wrap=True)
    table.add_column("progress")
    table.add_column("total", justify="right")
    table.add_column("state")
    table.add_column("last game", justify="right")
    held_out = any(row.held_out for row in status.configs)
    if held_out:
        table.add_column("held-out loss (vs latest)", justify="right")
    now = status.generated_at
    for row in status.configs:
        table.add_row(
            row.name,
            progress_label(row),
            _bar(row.new_games, row.threshold),
            f"{row.total_games:,}",
            _state_text(row, now),
            _age(row.last_game_at, now),
            *([_held_out_text(row.held_out)] if held_out else []),
        )
    parts.append(table)
    for m in status.ramdisk:
        parts.append(_ramdisk_line(m, now))
    for r in status.remotes:
        parts.append(_remote_line(r, now))
    for d in status.publish:
        parts.append(_publish_line(d, now))
    rejects = ", ".join(f"{reason} {n:,}" for reason, n in status.rejects.items())
    parts.append(
        Text(
            f"{count(status.total_games, 'game')}, {status.new_games:,} new, "
            f"{status.rejected_total:,} rejected" + (f" ({rejects})" if rejects else "")
        )
    )
    cached = [(r.name, r.samples_bytes) for r in status.configs if r.samples_bytes]
    if cached:
        sizes = ", ".join(f"{name} {n / 1e6:,.1f} MB" for name, n in cached)
        parts.append(Text(f"sample cache: {sizes}"))
    return Group(*parts)


def _unreadable_lines(status: Status) -> Text:
    u = status.unreadable
    text = Text(
        f"unreadable: {count(u.count, 'path')} below the watched roots cannot be read; "
        "games in them are not counted:",
        style="bold yellow",
    )
    for p in u.first:
        text += Text(f"\n  {p.path}: {p.reason}", style="yellow")
    if u.count > len(u.first):
        text += Text(f"\n  ... and {u.count - len(u.first):,} more (see the log)", style="yellow")
    return text


def _held_out_text(held_out: HeldOutStatus | None) -> Text:
    """The last job's held-out loss, its change from latest, and whether it was promoted."""
    if held_out is None or held_out.loss is None:
        return Text("-", style="dim")
    text = Text(f"{held_out.loss:.4f}")
    if held_out.change is not None:
        style = "green" if held_out.change <= 0 else "yellow"
        text += Text(f" {held_out.change:+.1%}", style=style)
    if held_out.promoted is False:
        text += Text(" not promoted", style="red")
    elif held_out.promoted is None:
        text += Text(" deciding", style="dim")
    return text


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
        f"{count(m.files, 'file')}, {count(m.flushed_games, 'game')} flushed, "
        f"last flush {_age(m.last_flush_at, now)}, "
        f"pending {count(m.pending_games, 'game')} ({m.pending_bytes:,} B)"
    )
    line = head + Text(text)
    if m.oldest_pending_age_s is not None:
        line += Text(f", oldest unflushed {m.oldest_pending_age_s:.0f}s", style="red")
    if m.failing:
        line += Text(f"; failing: {m.last_error}", style="red")
    return line


_LINK_STYLE = {"ok": "green", "pulling": "cyan", "publishing": "cyan", "backoff": "yellow"}


def _failing(failures: int, error: str | None, next_try_at: float | None, now: float) -> Text:
    retry = f"; retry in {_duration(next_try_at - now)}" if next_try_at is not None else ""
    return Text(f"; {count(failures, 'failure')} in a row: {error}{retry}", style="red")


def _remote_line(r: RemoteStatus, now: float) -> Text:
    """`remote node7 ok: last pull 4s ago (0.3s, 1.2 MB, 310 games), lag 6s`."""
    line = Text(f"remote {r.name} ", style="bold") + Text(
        r.state, style=_LINK_STYLE.get(r.state, "bold red")
    )
    line += Text(f": last pull {_age(r.last_success_at, now)}")
    if r.last_pull_s is not None:
        line += Text(
            f" ({r.last_pull_s:.1f}s, {r.last_pull_bytes / 1e6:,.1f} MB, "
            f"{count(r.last_pull_games, 'game')})"
        )
    line += Text(f", lag {_duration(r.lag_s) if r.lag_s is not None else '-'}")
    if r.failures:
        line += _failing(r.failures, r.error, r.next_try_at, now)
    return line


def _publish_line(d: PublishStatus, now: float) -> Text:
    """`publish node7:/srv/models/ ok: square8_2p -> sq-1-9.pt; last copy 2m ago`."""
    line = Text(f"publish {d.dest} ", style="bold") + Text(
        d.state, style=_LINK_STYLE.get(d.state, "bold red")
    )
    published = ", ".join(f"{config} -> {name}" for config, name in d.published.items())
    line += Text(f": {published or 'nothing yet'}; last copy {_age(d.last_success_at, now)}")
    if d.pending:
        line += Text(f"; pending {', '.join(d.pending)}", style="yellow")
    if d.failures:
        line += _failing(d.failures, d.error, d.next_try_at, now)
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
        skipped = job.get("skipped") or 0
        table.add_row(
            job["id"],
            Text(job["state"], style=_JOB_STYLE.get(job["state"], "")),
            f"{job['games']:,}" + (f" ({skipped:,} older skipped)" if skipped else ""),
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
    """`ringd models`: per config the latest checkpoint, counts, sizes and held-out metrics;
    then the newest checkpoints of each, promoted or not and why."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("config", "ok", "bad", "pending", "size", "held-out loss", "acc", "latest"):
        table.add_column(column, no_wrap=column != "latest")
    for name, c in models["configs"].items():
        metrics = c.get("latest_held_out") or {}
        table.add_row(
            name,
            str(c["ok"]),
            Text(str(c["bad"]), style="red" if c["bad"] else ""),
            str(c["pending"]),
            f"{c['bytes'] / 1e6:,.1f} MB",
            _number(metrics.get("loss"), "{:.4f}"),
            _number(metrics.get("policy_acc"), "{:.1%}"),
            c["latest"] or "-",
        )
    parts: list[RenderableType] = [table if models["configs"] else Text("no checkpoints yet")]
    recent = _recent_table(models["configs"])
    if recent is not None:
        parts += [
            Text(
                "newest checkpoints (held-out loss and accuracy; change from the "
                "network their job started from):",
                style="bold",
            ),
            recent,
        ]
    for c in models["checkpoints"]:
        if c["verdict"] == "bad":
            where = c["quarantined_to"] or c["path"]
            parts.append(Text(f"bad: {c['path']}: {c['reason']} (now {where})", style="red"))
    stats = models.get("stats") or {}
    if stats.get("last_error"):
        parts.append(Text(f"validation failing: {stats['last_error']}", style="red"))
    return Group(*parts)


class ScanProgress:
    """A byte-progress bar for long scans, shown only on a terminal."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._progress: Progress | None = None

    def start(self, plan: Plan) -> Callable[[int], None] | None:
        if not self._console.is_terminal or plan.pending_bytes < PROGRESS_MIN_BYTES:
            return None
        self._progress = Progress(
            TextColumn("indexing {task.fields[files]} files"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self._console,
            transient=True,
        )
        task = self._progress.add_task("scan", total=plan.pending_bytes, files=len(plan.paths))
        self._progress.start()
        progress = self._progress
        return lambda n: progress.advance(task, n)

    def __enter__(self) -> ScanProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


def _number(value: object, form: str) -> str:
    return form.format(value) if isinstance(value, int | float) else "-"


def _recent_table(configs: Mapping[str, Any]) -> Table | None:
    """Per config its newest checkpoints: held-out metrics, promoted or not, and why."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("config", "checkpoint", "loss", "acc", "change", "promoted", "why"):
        table.add_column(column, no_wrap=column not in ("checkpoint", "why"))
    rows = 0
    for name, c in configs.items():
        for r in c.get("recent") or []:
            promoted = r.get("promoted")
            mark = (
                Text("latest", style="bold green")
                if r.get("latest")
                else Text("yes", style="green")
                if promoted
                else Text("no", style="red")
                if promoted is False
                else Text(r.get("verdict") or "pending", style="dim")
            )
            change = r.get("change")
            table.add_row(
                name,
                r.get("job_id") or r["path"],
                _number(r.get("loss"), "{:.4f}"),
                _number(r.get("policy_acc"), "{:.1%}"),
                Text(
                    _number(change, "{:+.1%}"),
                    style="green" if change is not None and change <= 0 else "yellow",
                ),
                mark,
                r.get("promote_reason") or "",
            )
            rows += 1
    return table if rows else None
