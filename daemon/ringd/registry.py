"""The checkpoint registry: validate each checkpoint once, remember the verdict.

It knows every checkpoint ringd wrote (from the jobs table) and those below
`models.dirs`. Each file's verdict is cached in the ledger under its (device,
inode, size, mtime), so start-up touches only `stat` and an unchanged file is
never opened again. New or changed files are validated by
`python -m ringd.train.validate` in child processes (the daemon never imports
torch), with bounded concurrency and the lowest CPU and I/O priority. A bad
file is moved to a `quarantine/` folder beside it, never deleted. Per config,
`state_dir/models/<config>/latest.pt` is a symlink, replaced atomically, to
the last promoted validated checkpoint (`ringd.promote`); jobs warm-start from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ringd import childsetup
from ringd.ledger import CheckpointRow, Ledger

SUFFIXES = (".pt", ".pth")
BATCH = 500  # files per validating child: one torch import (seconds) serves many
QUARANTINE = "quarantine"


@dataclass(frozen=True, slots=True)
class Candidate:
    path: str
    origin: str
    config: str | None
    job_id: str | None
    last_seq: int | None


def candidates(db: Ledger, dirs: Sequence[Path]) -> dict[str, Candidate]:
    """Every checkpoint the registry should know: ringd's own, then those under `dirs`."""
    found: dict[str, Candidate] = {}
    for path, config, job_id, last_seq in db.checkpoint_jobs():
        found[path] = Candidate(path, "job", config, job_id, last_seq)
    for root in dirs:
        for path in _walk(root):
            found.setdefault(path, Candidate(path, "dir", _sidecar_config(path), None, None))
    return found


def refresh(db: Ledger, dirs: Sequence[Path], force: Collection[str] = ()) -> list[str]:
    """Register new and changed files (stat only); return the paths awaiting validation.

    Paths in `force` (or every one, with "*") are validated again even if unchanged.
    """
    known = db.checkpoints()
    pending = []
    for path, c in candidates(db, dirs).items():
        row = known.get(path)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            if row is not None and not row.removed and not row.quarantined_to:
                db.set_checkpoint_flags(path, removed=True)
            continue
        stat = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        unchanged = row is not None and (row.dev, row.ino, row.size, row.mtime_ns) == stat
        forced = "*" in force or path in force
        if (
            unchanged
            and not forced
            and row is not None
            and row.verdict != "pending"
            and not row.removed
        ):
            continue
        if not unchanged or forced:
            db.register_checkpoint(
                path,
                config=c.config,
                origin=c.origin,
                job_id=c.job_id,
                last_seq=c.last_seq,
                stat=stat,
            )
        pending.append(path)
    return pending


def record(db: Ledger, verdicts: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """Store verdicts; quarantine the bad files. Returns (path, reason) of each bad one."""
    bad = []
    for v in verdicts:
        path = v["path"]
        moved = None
        if not v["ok"]:
            moved = quarantine(Path(path))
            bad.append((path, str(v.get("reason"))))
        db.record_verdict(
            path,
            ok=bool(v["ok"]),
            reason=v.get("reason"),
            sha256=v.get("sha256"),
            config=v.get("config"),
            quarantined_to=moved,
        )
    return bad


def quarantine(path: Path) -> str | None:
    """Move a bad checkpoint (and its sidecar) into `quarantine/` beside it; never delete."""
    folder = path.parent / QUARANTINE
    folder.mkdir(exist_ok=True)
    target = folder / path.name
    n = 1
    while target.exists():
        target = folder / f"{path.stem}.{n}{path.suffix}"
        n += 1
    try:
        os.replace(path, target)
    except FileNotFoundError:
        return None
    sidecar = path.with_suffix(".json")
    if sidecar.exists():
        os.replace(sidecar, target.with_suffix(".json"))
    return str(target)


def latest(rows: dict[str, CheckpointRow]) -> dict[str, CheckpointRow]:
    """Per config, the last promoted validated checkpoint still in place.

    The last promoted: a job's checkpoint promoted later (or one promoted by hand)
    wins; among those eligible without a promotion (found under models.dirs, or
    validated before promotion gates) the newest, by last game and mtime.
    """
    best: dict[str, CheckpointRow] = {}
    for row in rows.values():
        if (
            row.verdict != "ok"
            or not row.promoted
            or row.removed
            or row.quarantined_to
            or row.config is None
        ):
            continue
        current = best.get(row.config)
        if current is None or _rank(row) > _rank(current):
            best[row.config] = row
    return best


def _rank(row: CheckpointRow) -> tuple[float, int, int]:
    return (row.promoted_at or 0.0, row.last_seq or 0, row.mtime_ns)


def point_latest(models_dir: Path, best: dict[str, CheckpointRow]) -> None:
    """Replace each `<config>/latest.pt` symlink atomically (never a dangling moment)."""
    for config, row in best.items():
        link = models_dir / config / "latest.pt"
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() and os.readlink(link) == row.path:
            continue
        tmp = link.with_name(f".latest.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(row.path, tmp)
        os.replace(tmp, link)


def prune(db: Ledger, keep: int) -> list[str]:
    """Delete ringd's own validated checkpoints beyond the newest `keep` per config (unpinned)."""
    rows = db.checkpoints()
    best = latest(rows)
    removed = []
    by_config: dict[str, list[CheckpointRow]] = {}
    for row in rows.values():
        if row.origin == "job" and row.verdict == "ok" and not row.removed and row.config:
            by_config.setdefault(row.config, []).append(row)
    for config, own in by_config.items():
        own.sort(key=lambda r: (r.last_seq or 0, r.mtime_ns), reverse=True)
        for row in own[keep:]:
            if row.pinned or best.get(config) == row:
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(row.path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(Path(row.path).with_suffix(".json"))
            db.set_checkpoint_flags(row.path, removed=True)
            removed.append(row.path)
    return removed


async def validate(paths: Sequence[str], concurrency: int) -> list[dict[str, Any]]:
    """Verdicts for `paths` from child processes, `concurrency` at a time."""
    batches = [list(paths[i : i + BATCH]) for i in range(0, len(paths), BATCH)]
    gate = asyncio.Semaphore(concurrency)
    results: list[dict[str, Any]] = []

    async def one(batch: list[str]) -> None:
        async with gate:
            results.extend(await _validate_batch(batch))

    await asyncio.gather(*(one(b) for b in batches))
    return results


async def _validate_batch(batch: list[str]) -> list[dict[str, Any]]:
    verdicts: list[dict[str, Any]] = []
    while batch:
        process = await asyncio.create_subprocess_exec(
            # Nice 19 and the idle I/O class, so validation never slows training,
            # ingest or selfplay on the same disks; set in the child (ringd.childsetup).
            *childsetup.wrap(
                [sys.executable, "-m", "ringd.train.validate", *batch], nice=19, idle_io=True
            ),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await process.communicate()
        except BaseException:  # the daemon stops, or stopped waiting
            await childsetup.reap(process)
            raise
        done = []
        for line in out.splitlines():
            with contextlib.suppress(ValueError):
                done.append(json.loads(line))
        verdicts += done
        if process.returncode == 0:
            return verdicts
        if not done and _import_failed(err):
            raise ValidatorFailed(_last_line(err))  # no torch here: the files stay pending
        # The child died on a file (it never raises for a bad one, but a file can
        # still crash or exhaust it): that file is bad, the rest go to a new child.
        seen = {v.get("path") for v in done}
        rest = [p for p in batch if p not in seen]
        verdicts.append(
            {
                "path": rest[0],
                "ok": False,
                "sha256": None,
                "reason": f"crashed the checker (exit {process.returncode}): {_last_line(err)}",
            }
        )
        batch = rest[1:]
    return verdicts


def _import_failed(err: bytes) -> bool:
    return b"ModuleNotFoundError" in err or b"ImportError" in err


def _last_line(err: bytes) -> str:
    lines = err.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else "no output"


class ValidatorFailed(Exception):
    """The validating child process failed (its files stay pending and are retried)."""


def _walk(root: Path) -> Iterator[str]:
    for folder, subdirs, files in os.walk(root):
        subdirs[:] = [d for d in subdirs if d != QUARANTINE]
        for name in files:
            if name.endswith(SUFFIXES):
                yield os.path.join(folder, name)


def _sidecar_config(path: str) -> str | None:
    try:
        data = json.loads(Path(path).with_suffix(".json").read_bytes())
        config = data["meta"]["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return config if isinstance(config, str) else None


def summary(rows: dict[str, CheckpointRow]) -> dict[str, Any]:
    """`ringd models`: per config, the latest, counts and sizes; and every checkpoint."""
    best = latest(rows)
    configs: dict[str, dict[str, Any]] = {}
    for row in rows.values():
        c = configs.setdefault(
            row.config or "(unknown)",
            {
                "latest": None,
                "ok": 0,
                "bad": 0,
                "pending": 0,
                "removed": 0,
                "bytes": 0,
            },
        )
        if row.removed:
            c["removed"] += 1
            continue
        c[row.verdict] += 1
        c["bytes"] += row.size
    for config, row in best.items():
        configs[config]["latest"] = row.path
    for config, c in configs.items():
        held_out(c, [r for r in rows.values() if (r.config or "(unknown)") == config], best)
    return {
        "configs": dict(sorted(configs.items())),
        "checkpoints": [dataclasses.asdict(r) for r in sorted(rows.values(), key=lambda r: r.path)],
    }


RECENT = 5  # checkpoints of a config listed with their held-out metrics and promotion


def held_out(
    into: dict[str, Any], rows: Sequence[CheckpointRow], best: dict[str, CheckpointRow]
) -> None:
    """Add a config's held-out view: latest's metrics, the newest checkpoints' and why
    each was promoted or not."""
    row = best.get(rows[0].config or "") if rows else None
    into["latest_held_out"] = _metrics(row) if row is not None else None
    newest = sorted(
        (r for r in rows if not r.removed and r.verdict != "bad"),
        key=lambda r: (r.last_seq or 0, r.mtime_ns),
        reverse=True,
    )
    into["recent"] = [
        {
            "path": r.path,
            "job_id": r.job_id,
            "last_seq": r.last_seq,
            "verdict": r.verdict,
            "latest": row is not None and r.path == row.path,
            "promoted": r.promoted,
            "promote_reason": r.promote_reason,
            **(_metrics(r) or {}),
        }
        for r in newest[:RECENT]
    ]


def _metrics(row: CheckpointRow) -> dict[str, Any] | None:
    """A checkpoint's held-out metrics and those of the network its job started from."""
    ev = row.held_out or {}
    model = ev.get("model")
    if not model:
        return None
    start = ev.get("start") or {}
    loss, base = model.get("loss"), start.get("loss")
    return {
        "loss": loss,
        "policy_acc": model.get("policy_acc"),
        "value_mse": model.get("value_mse"),
        "policy_loss": model.get("policy_loss"),
        "samples": ev.get("samples"),
        "start_loss": base,
        "start_checkpoint": ev.get("start_checkpoint"),
        "change": (loss - base) / base if loss is not None and base else None,
    }
