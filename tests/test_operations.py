"""Reload, trigger, pause, status and events against the daemon in this process.

`running_daemon` runs the real stages on the test's event loop (as uvicorn's
tests run the server): real files, real watches, a real control socket, the
real trainer processes, and no process boundary to wait on.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from harness import REPO, append, game_line, ringd, running_daemon, until, write_config
from ringd.service.errors import OperatorError
from ringd.service.events import Event, FileFound, GamesAdded, Rejected

FAKE = REPO / "tests" / "fake_trainer.py"


def total(status: dict[str, Any]) -> int:
    value = status["total_games"]
    assert isinstance(value, int)
    return value


def row(status: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in status["configs"] if c["name"] == name)


@pytest.fixture
def project(short_tmp: Path) -> Path:
    (short_tmp / "data" / "selfplay").mkdir(parents=True)
    write_config(short_tmp)
    return short_tmp


async def test_a_threshold_edit_applies_within_two_seconds(project: Path) -> None:
    async with running_daemon(project / "ringd.yaml") as daemon:
        append(
            project / "data" / "selfplay" / "a.jsonl",
            b"".join(game_line("square8", 2, i) for i in range(6)),
        )
        status = await until(daemon, lambda s: total(s) == 6)
        assert row(status, "square8_2p")["state"] == "idle"
        write_config(project, configs="  square8_2p: {threshold: 4}\n")
        await until(
            daemon,
            lambda s: (
                (row(s, "square8_2p")["threshold"], row(s, "square8_2p")["state"]) == (4, "ready")
            ),
            timeout=2.0,
        )


async def test_an_invalid_edit_changes_nothing_until_a_valid_one_arrives(project: Path) -> None:
    config = project / "ringd.yaml"
    async with running_daemon(config) as daemon:
        config.write_text(config.read_text().replace("threshold: 10", "threshold: 0"))
        status = await until(daemon, lambda s: s["config_error"] is not None)
        assert "ringd.yaml:" in status["config_error"]
        assert "configs.square8_2p.threshold: must be >= 1" in status["config_error"]
        assert row(status, "square8_2p")["threshold"] == 10  # the last good configuration
        # Ingest goes on, and `ringd status` shows the error at the top.
        append(project / "data" / "selfplay" / "a.jsonl", game_line("square8", 2, 1))
        await until(daemon, lambda s: total(s) == 1)
        shown = await asyncio.to_thread(
            ringd, "status", "--socket", str(daemon.settings.socket_path)
        )
        assert shown.returncode == 0 and shown.stdout.startswith("config error")
        config.write_text("{{{ not yaml")
        await until(daemon, lambda s: "invalid YAML" in (s["config_error"] or ""))
        write_config(project, configs="  square8_2p: {threshold: 3}\n")
        status = await until(daemon, lambda s: s["config_error"] is None)
        assert row(status, "square8_2p")["threshold"] == 3


async def test_an_editor_saving_by_rename_is_seen(project: Path) -> None:
    config = project / "ringd.yaml"
    async with running_daemon(config) as daemon:
        swap = project / ".ringd.yaml.swp"
        swap.write_text(config.read_text().replace("threshold: 10", "threshold: 77"))
        os.replace(swap, config)
        await until(daemon, lambda s: row(s, "square8_2p")["threshold"] == 77, timeout=3)


async def test_a_new_watched_root_applies_on_reload_and_a_missing_one_is_waited_for(
    project: Path,
) -> None:
    later = project / "later"
    config = project / "ringd.yaml"
    async with running_daemon(config) as daemon:
        config.write_text(
            config.read_text().replace("roots: [data/selfplay]", "roots: [data/selfplay, later]")
        )
        await until(daemon, lambda s: str(later) in s["daemon"]["roots"])
        append(later / "x" / "a.jsonl", game_line("hexagonal", 2, 1))  # the root appears
        await until(daemon, lambda s: total(s) == 1)
        append(later / "x" / "a.jsonl", game_line("hexagonal", 2, 2))  # and is watched
        await until(daemon, lambda s: total(s) == 2, timeout=5)


async def test_the_event_stream_reports_games_with_sequence_ranges(project: Path) -> None:
    async with running_daemon(project / "ringd.yaml") as daemon:
        events: list[Event] = []

        async def read() -> None:
            async for event in daemon.bus.follow():
                events.append(event)
                if isinstance(event, Rejected):
                    return

        reader = asyncio.create_task(read())
        await asyncio.sleep(0)  # the reader follows from here on
        append(
            project / "data" / "selfplay" / "n" / "a.jsonl",
            b"".join(game_line("hex8", 2, i) for i in range(3)) + b"junk\n",
        )
        await asyncio.wait_for(reader, 10)
        assert any(isinstance(e, FileFound) for e in events)
        games = next(e for e in events if isinstance(e, GamesAdded))
        assert (games.config, games.count, games.first_seq, games.last_seq) == ("hex8_2p", 3, 1, 3)
        wire = json.loads(json.dumps(games.as_dict()))
        assert wire["event"] == "games" and wire["config"] == "hex8_2p"


async def test_pause_survives_a_restart_and_trigger_trains_below_the_threshold(
    project: Path,
) -> None:
    command = json.dumps([sys.executable, str(FAKE), "ok", "0.2"])
    write_config(
        project,
        extra=f"  command: {command}\n",
        configs="  hex8_2p: {threshold: 4}\n  hexagonal_2p: {threshold: 50}\n",
    )
    config = project / "ringd.yaml"
    config.write_text(config.read_text().replace("enabled: false", "enabled: true"))
    root = project / "data" / "selfplay"
    async with running_daemon(config) as daemon:
        assert await daemon.pause("hex8_2p", True) == "hex8_2p paused"
        append(root / "h.jsonl", b"".join(game_line("hex8", 2, i) for i in range(10)))
        await until(
            daemon,
            lambda s: (
                (row(s, "hex8_2p")["new_games"], row(s, "hex8_2p")["state"]) == (10, "paused")
            ),
        )
        with pytest.raises(OperatorError, match="paused"):
            await daemon.trigger("hex8_2p")
    async with running_daemon(config) as daemon:
        assert row(daemon.status().model_dump(), "hex8_2p")["state"] == "paused"
        await daemon.pause("hex8_2p", False)
        await until(daemon, lambda s: row(s, "hex8_2p")["new_games"] == 0, timeout=30)

        append(root / "x.jsonl", b"".join(game_line("hexagonal", 2, i) for i in range(2)))
        status = await until(daemon, lambda s: row(s, "hexagonal_2p")["new_games"] == 2)
        assert row(status, "hexagonal_2p")["state"] == "idle"
        assert "hexagonal_2p" in await daemon.trigger("hexagonal_2p")
        await until(daemon, lambda s: row(s, "hexagonal_2p")["trained_through"] > 0, timeout=30)
        with pytest.raises(OperatorError, match="no new games"):
            await daemon.trigger("hexagonal_2p")
        with pytest.raises(OperatorError, match="not a configured"):
            await daemon.trigger("square19_4p")


async def scrape(daemon: Any) -> str:
    from ringd.cli.client import get

    return (await asyncio.to_thread(get, daemon.settings.socket_path, "/metrics")).decode()


async def test_the_rejects_counter_never_goes_down_when_a_rewrite_drops_the_bad_lines(
    project: Path,
) -> None:
    async with running_daemon(project / "ringd.yaml") as daemon:
        path = project / "data" / "selfplay" / "r.jsonl"
        append(path, game_line("square8", 2, 1) + b"junk\njunk 2\n")
        await until(daemon, lambda s: s["rejected_total"] == 2)
        assert 'ringd_rejects_total{reason="not_json"} 2.0' in await scrape(daemon)
        # A cleanup script writes the file again without its bad lines (a new inode).
        fresh = path.with_suffix(".tmp")
        fresh.write_bytes(game_line("square8", 2, 1))
        os.replace(fresh, path)
        await until(daemon, lambda s: s["rejected_total"] == 0 and total(s) == 1)
        # The ledger holds no reject now; the counter keeps what it counted.
        assert 'ringd_rejects_total{reason="not_json"} 2.0' in await scrape(daemon)
        append(path, b"junk 3\n")
        await until(daemon, lambda s: s["rejected_total"] == 1)
        assert 'ringd_rejects_total{reason="not_json"} 3.0' in await scrape(daemon)
