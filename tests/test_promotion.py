"""Is training working? Held-out metrics of every job, and `latest` only for promoted checkpoints.

The daemon runs in this process (`running_daemon`) with the real trainer on the CPU and
tiny networks; a quarter of the games are held out so that a few dozen games give each
job a held-out set to measure on.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from harness import append, ringd, running_daemon, until
from ringd.ledger import MIGRATIONS, CheckpointRow, Ledger
from ringd.promote import Decision, decide, judge, run_gate
from ringd.registry import latest
from ringd.service.supervisor import Supervisor
from ringd.settings import ModelsSettings
from ringd.sim import game_line, make_record
from ringd.train.holdout import is_held_out
from ringd.train.spans import iter_spans

pytest.importorskip("torch", reason="the real trainer needs torch (the train extra)")

CONFIG = "square8_2p"
FRACTION = 0.25
HYPER = "{channels: 8, blocks: 1, batch_size: 32, steps: 40, warmup_steps: 2, log_every: 10"


def write_yaml(folder: Path, *, lr: float | None = None, models: str = "") -> Path:
    hyper = HYPER + (f", lr: {lr}" if lr is not None else "") + "}"
    path = folder / "ringd.yaml"
    path.write_text(
        "state_dir: var\nwatch:\n  roots: [data/selfplay]\n"
        f"training:\n  devices: cpu\n  hyper: {hyper}\n"
        "  window: {min_games: 1000, max_games: 2000}\n"
        f"  holdout: {{fraction: {FRACTION}, games: 40, min_samples: 100}}\n"
        "  backoff_base_s: 1\n  backoff_cap_s: 2\n"
        f"models:\n  promote_tolerance: 0.05\n{models}"
        f"configs:\n  {CONFIG}: {{threshold: 24}}\n"
    )
    return path


class Games:
    """Simulated square8_2p games, appended to the watched tree a batch at a time."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder / "data" / "selfplay" / "gpu"
        self.rng = random.Random(11)
        self.n = 0

    def add(self, count: int) -> None:
        lines = [
            game_line(make_record(self.rng, CONFIG, "camel", f"g{self.n + i}", moves=40))
            for i in range(count)
        ]
        self.n += count
        append(self.folder / f"batch{self.n}.jsonl", b"".join(lines))


@pytest.fixture
def project(short_tmp: Path) -> Path:
    (short_tmp / "data" / "selfplay").mkdir(parents=True)
    return short_tmp


def latest_link(project: Path) -> Path:
    return project / "var" / "models" / CONFIG / "latest.pt"


async def decided(daemon: Supervisor, jobs: int, timeout: float = 180.0) -> dict[str, Any]:
    """The `ringd models` document once `jobs` checkpoints of jobs have their promotion decided
    (and latest.pt follows the last promoted one)."""
    deadline = time.monotonic() + timeout
    models: dict[str, Any] = {}
    while time.monotonic() < deadline:
        models = await daemon.models()
        own = [c for c in models["checkpoints"] if c["origin"] == "job"]
        done = [c for c in own if c["promoted"] is not None]
        best = models["configs"].get(CONFIG, {}).get("latest")
        link = latest_link(daemon.settings.state_dir.parent)
        if (
            len(done) >= jobs
            and best is not None
            and link.is_symlink()
            and os.readlink(link) == best
        ):
            return models
        await asyncio.sleep(0.1)
    raise AssertionError(f"{jobs} promotions not decided within {timeout}s: {models}")


def job_checkpoint(models: dict[str, Any], n: int) -> dict[str, Any]:
    """The checkpoint of the n-th job (1-based, by the games it trained through)."""
    own = sorted(
        (c for c in models["checkpoints"] if c["origin"] == "job"), key=lambda c: c["last_seq"]
    )
    return own[n - 1]


def specs(project: Path) -> list[dict[str, Any]]:
    return [
        json.loads(p.read_text()) for p in sorted((project / "var" / "jobs").glob("*/spec.json"))
    ]


async def test_two_jobs_both_measured_the_second_promoted_and_no_window_holds_a_held_out_game(
    project: Path,
) -> None:
    games = Games(project)
    async with running_daemon(write_yaml(project)) as daemon:
        games.add(30)
        models = await decided(daemon, 1)
        first = job_checkpoint(models, 1)
        assert first["promoted"] is True and "first checkpoint" in first["promote_reason"]
        ev = first["held_out"]
        assert ev["samples"] >= 100 and ev["start_checkpoint"] is None
        assert ev["model"]["loss"] < ev["start"]["loss"]  # learned something from scratch

        games.add(30)
        models = await decided(daemon, 2)
        second = job_checkpoint(models, 2)
        ev = second["held_out"]
        # Both networks measured by the second job, on the same held-out samples.
        assert ev["start_checkpoint"] == first["path"]
        assert ev["model"]["loss"] is not None and ev["start"]["loss"] is not None
        assert ev["model"]["loss"] <= ev["start"]["loss"] * 1.05, ev
        assert second["promoted"] is True and "held-out loss" in second["promote_reason"]
        assert os.readlink(latest_link(project)) == second["path"]
        summary = models["configs"][CONFIG]
        assert summary["latest"] == second["path"]
        assert summary["latest_held_out"]["loss"] == ev["model"]["loss"]
        assert [r["path"] for r in summary["recent"]] == [second["path"], first["path"]]

        status = await until(
            daemon, lambda s: (s["configs"][0].get("held_out") or {}).get("promoted") is True
        )
        shown = status["configs"][0]["held_out"]
        assert shown["checkpoint"] == second["path"] and shown["loss"] == ev["model"]["loss"]
        assert shown["start_loss"] == ev["start"]["loss"]
        assert shown["change"] == pytest.approx(
            (ev["model"]["loss"] - ev["start"]["loss"]) / ev["start"]["loss"]
        )
        metrics = (await asyncio.to_thread(_metrics, daemon)).splitlines()
        assert f'ringd_holdout_loss{{config="{CONFIG}",model="candidate"}}' in "\n".join(metrics)
        assert any(
            line.startswith("ringd_holdout_loss") and 'model="latest"' in line for line in metrics
        )
        assert f'ringd_holdout_promoted{{config="{CONFIG}"}} 1.0' in metrics

    # No job ever had a held-out game in its window: by the slice's rule and by key.
    with Ledger(project / "var" / "ledger.sqlite") as db:
        keys = db.game_keys()
    slice_keys = {k.hex() for k in keys if is_held_out(k, FRACTION)}
    assert 0 < len(slice_keys) < len(keys)
    jobs = specs(project)
    assert len(jobs) == 2
    for spec in jobs:
        window = {span.key.hex() for span in iter_spans(spec["spans"]["path"])}
        held_out = {g["key"] for g in spec["holdout"]["games"]}
        assert window and not window & slice_keys
        assert held_out <= slice_keys and spec["holdout"]["fraction"] == FRACTION
    # The slice stays the same as the ledger grows: the first job's held-out games are
    # still held out (and measured) in the second.
    first_held, second_held = ({g["key"] for g in s["holdout"]["games"]} for s in jobs)
    assert first_held < second_held


async def test_a_diverging_job_is_not_promoted_and_the_next_starts_from_latest(
    project: Path,
) -> None:
    games = Games(project)
    config = write_yaml(project)
    async with running_daemon(config) as daemon:
        games.add(30)
        first = job_checkpoint(await decided(daemon, 1), 1)
        write_yaml(project, lr=50.0)  # a learning rate that blows the network up
        await daemon.reload("test: diverge")
        games.add(30)
        models = await decided(daemon, 2)
        second = job_checkpoint(models, 2)
        assert second["verdict"] == "ok"  # a valid checkpoint, kept and listed...
        assert second["promoted"] is False  # ...but not latest
        reason = second["promote_reason"]
        assert "worse" in reason or "not finite" in reason, reason
        assert os.readlink(latest_link(project)) == first["path"]
        status = daemon.status()
        assert status.configs[0].new_games == 0  # the job succeeded: the counter reset
        assert status.configs[0].held_out is not None
        assert status.configs[0].held_out.promoted is False

        shown = await asyncio.to_thread(
            ringd, "models", "--socket", str(daemon.settings.socket_path)
        )
        assert shown.returncode == 0, shown.stderr
        assert second["job_id"] in shown.stdout and "worse" in shown.stdout.replace("\n", " ")
        shown = await asyncio.to_thread(
            ringd, "status", "--socket", str(daemon.settings.socket_path)
        )
        assert "not promoted" in shown.stdout

        # The next job warm-starts from latest, never from the rejected checkpoint.
        write_yaml(project)
        await daemon.reload("test: sane again")
        games.add(30)
        models = await decided(daemon, 3)
        third = job_checkpoint(models, 3)
        assert third["held_out"]["start_checkpoint"] == first["path"]
        assert specs(project)[-1]["init_checkpoint"] == first["path"]
        assert third["promoted"] is True, third["promote_reason"]


async def test_a_gate_command_decides_and_an_operator_overrides_it(project: Path) -> None:
    games = Games(project)
    verdict = project / "gate-exit"
    gate = project / "gate.py"
    gate.write_text(
        "import pathlib, sys\n"
        "candidate, current = sys.argv[1:]\n"
        "print(f'match {pathlib.Path(candidate).parent.name} vs {pathlib.Path(current).parent.name}')\n"
        f"sys.exit(int(pathlib.Path({str(verdict)!r}).read_text()))\n"
    )
    command = json.dumps([sys.executable, str(gate)])
    models_yaml = f"  promote: command\n  promote_command: {command}\n  promote_timeout_s: 60\n"
    async with running_daemon(write_yaml(project, models=models_yaml)) as daemon:
        verdict.write_text("1")
        games.add(30)
        first = job_checkpoint(await decided(daemon, 1), 1)
        assert first["promoted"] is True and "first checkpoint" in first["promote_reason"]

        games.add(30)  # the gate says no
        models = await decided(daemon, 2)
        second = job_checkpoint(models, 2)
        assert second["promoted"] is False
        assert "exit 1" in second["promote_reason"]
        assert f"match {second['job_id']} vs {first['job_id']}" in second["promote_reason"]
        assert os.readlink(latest_link(project)) == first["path"]

        verdict.write_text("0")
        games.add(30)  # the gate says yes
        models = await decided(daemon, 3)
        third = job_checkpoint(models, 3)
        assert third["promoted"] is True and "exit 0" in third["promote_reason"]
        assert f"match {third['job_id']} vs {first['job_id']}" in third["promote_reason"]
        assert os.readlink(latest_link(project)) == third["path"]

        # By hand, over the gate: the rejected second becomes latest.
        answer = await asyncio.to_thread(
            ringd,
            "models",
            "promote",
            second["path"],
            "--socket",
            str(daemon.settings.socket_path),
        )
        assert answer.returncode == 0 and "promoted" in answer.stdout, answer.stderr
        deadline = time.monotonic() + 20
        while os.readlink(latest_link(project)) != second["path"]:
            assert time.monotonic() < deadline, "latest did not move to the promoted checkpoint"
            await asyncio.sleep(0.05)
        row = job_checkpoint(await daemon.models(), 2)
        assert row["promoted"] is True and "by hand" in row["promote_reason"]
        assert "exit 1" in row["promote_reason"]  # what the gate had said stays visible
        refused = await asyncio.to_thread(
            ringd,
            "models",
            "promote",
            str(project / "nope.pt"),
            "--socket",
            str(daemon.settings.socket_path),
        )
        assert refused.returncode == 1 and "not a registered checkpoint" in refused.stderr


def _metrics(daemon: Supervisor) -> str:
    from ringd.cli.client import get

    return get(daemon.settings.socket_path, "/metrics").decode()


# -- the rules, without a daemon ------------------------------------------------------


def row(path: str, last_seq: int | None = 10, origin: str = "job", **fields: Any) -> CheckpointRow:
    values: dict[str, Any] = {
        "path": path,
        "config": CONFIG,
        "origin": origin,
        "job_id": Path(path).parent.name,
        "last_seq": last_seq,
        "dev": 1,
        "ino": 1,
        "size": 1,
        "mtime_ns": 1,
        "verdict": "ok",
        "reason": None,
        "sha256": "0" * 64,
        "validated_at": None,
        "pinned": False,
        "quarantined_to": None,
        "removed": False,
        **fields,
    }
    return CheckpointRow(**values)


def held_out(loss: float | None, start: float | None, started_from: str | None) -> dict[str, Any]:
    return {
        "step": 10,
        "games": 20,
        "samples": 800,
        "model": {"loss": loss, "policy_loss": loss, "policy_acc": 0.2, "value_mse": 0.0},
        "start": {"loss": start, "policy_loss": start, "policy_acc": 0.1, "value_mse": 0.0},
        "start_checkpoint": started_from,
        "seconds": 0.1,
    }


def test_the_rules_of_if_not_worse() -> None:
    models = ModelsSettings()
    assert models.promote == "if_not_worse" and models.promote_tolerance == 0.02
    current = row("/m/a/final.pt", last_seq=10)
    candidate = row("/m/b/final.pt", last_seq=20)

    def verdict(ev: dict[str, Any] | None, **kw: Any) -> Decision | None:
        return decide(candidate, ev, kw.get("current", current), models, 200)

    assert verdict(held_out(1.0, 1.0, "/m/a/final.pt")) == Decision(
        True, "held-out loss 1.0000 vs latest's 1.0000 (+0.0%, tolerance 2.0%)"
    )
    assert verdict(held_out(1.019, 1.0, "/m/a/final.pt")) == Decision(
        True, "held-out loss 1.0190 vs latest's 1.0000 (+1.9%, tolerance 2.0%)"
    )
    worse = verdict(held_out(1.03, 1.0, "/m/a/final.pt"))
    assert worse is not None and not worse.promoted and "+3.0%" in worse.reason
    diverged = verdict(held_out(None, 1.0, "/m/a/final.pt"))
    assert diverged is not None and not diverged.promoted and "not finite" in diverged.reason
    first = verdict(held_out(None, 1.0, None), current=None)
    assert first is not None and not first.promoted  # a diverged first job is not latest either
    assert verdict(held_out(2.0, 3.0, None), current=None) == Decision(
        True, f"the first checkpoint of {CONFIG}: nothing to compare with"
    )
    moved = verdict(held_out(1.0, 1.0, "/m/old/final.pt"))
    assert moved is not None and not moved.promoted and "latest is now" in moved.reason
    older = decide(row("/m/c/final.pt", last_seq=5), None, current, models, 200)
    assert older is not None and not older.promoted and "older than latest" in older.reason
    assert verdict(None) == Decision(
        True, "no held-out metrics (its trainer wrote none): not gated"
    )
    few = judge({**held_out(9.0, 1.0, "/m/a/final.pt"), "samples": 50}, current.path, 0.02, 200)
    assert few.promoted and "only 50 samples" in few.reason
    foreign = decide(row("/m/x.pt", origin="dir"), None, current, models, 200)
    assert foreign is not None and foreign.promoted
    always = ModelsSettings(promote="always")
    assert decide(candidate, held_out(9.0, 1.0, "/m/a/final.pt"), current, always, 200) == (
        Decision(True, "models.promote: always")
    )
    gated = ModelsSettings(promote="command", promote_command=["gate"])
    assert decide(candidate, None, current, gated, 200) is None  # the command decides


def test_latest_is_the_last_promoted_checkpoint() -> None:
    a = row("/m/a/final.pt", last_seq=10, promoted=True, promoted_at=100.0)
    b = row("/m/b/final.pt", last_seq=20, promoted=False)
    c = row("/m/c/final.pt", last_seq=30, promoted=None)  # undecided
    d = row("/m/d.pt", last_seq=None, origin="dir", promoted=True)  # eligible, not ranked
    rows = {r.path: r for r in (a, b, c, d)}
    assert latest(rows)[CONFIG] == a
    by_hand = row("/m/b/final.pt", last_seq=20, promoted=True, promoted_at=200.0)
    assert latest({**rows, b.path: by_hand})[CONFIG] == by_hand
    assert latest({d.path: d})[CONFIG] == d


async def test_a_gate_that_fails_to_answer_in_time_or_to_start_does_not_promote(
    tmp_path: Path,
) -> None:
    slow = [sys.executable, "-c", "import time; print('thinking', flush=True); time.sleep(30)"]
    began = time.monotonic()
    decision = await run_gate(slow, "/c.pt", "/l.pt", 0.5)
    assert time.monotonic() - began < 10
    assert not decision.promoted and "timed out after 0.5 s" in decision.reason
    assert "thinking" in decision.reason
    missing = await run_gate([str(tmp_path / "no-gate")], "/c.pt", "/l.pt", 5)
    assert not missing.promoted and "cannot start" in missing.reason
    said = await run_gate([sys.executable, "-c", "import sys; print(sys.argv[1:])"], "/c", "/l", 5)
    assert said == Decision(True, "the gate passed (exit 0): ['/c', '/l']")


def test_checkpoints_validated_before_promotion_gates_stay_eligible(tmp_path: Path) -> None:
    db_path = tmp_path / "ledger.sqlite"
    con = sqlite3.connect(db_path, isolation_level=None)
    before = next(i for i, m in enumerate(MIGRATIONS) if "ADD COLUMN promoted" in m)
    for i, script in enumerate(MIGRATIONS[:before], start=1):
        con.executescript(f"BEGIN; {script}; PRAGMA user_version = {i}; COMMIT;")
    for name, verdict in (("good", "ok"), ("bad", "bad"), ("new", "pending")):
        con.execute(
            "INSERT INTO checkpoints (path, config, origin, job_id, last_seq, dev, ino, size, "
            "mtime_ns, verdict) VALUES (?, ?, 'job', ?, 1, 1, 1, 1, 1, ?)",
            (f"/m/{name}.pt", CONFIG, name, verdict),
        )
    con.close()
    with Ledger(db_path) as db:
        rows = db.checkpoints()
    assert rows["/m/good.pt"].promoted is True
    assert "before promotion gates" in (rows["/m/good.pt"].promote_reason or "")
    assert rows["/m/bad.pt"].promoted is None and rows["/m/new.pt"].promoted is None
    assert latest(rows)[CONFIG].path == "/m/good.pt"
