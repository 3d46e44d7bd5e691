"""`ringd scan` as a user runs it: real processes, real files, kill -9 at any moment."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import append, game_line, ringd, write_config
from ringd.ledger import SCHEMA_VERSION, Ledger, LedgerError


def test_scan_prints_plus_n_over_threshold_per_config(tree: Path) -> None:
    append(
        tree / "data" / "selfplay" / "gpu" / "a.jsonl",
        b"".join(game_line("square8", 2, i) for i in range(7)),
    )
    append(
        tree / "data" / "selfplay" / "mcts_1" / "b.jsonl",
        b"".join(game_line("hex8", 2, i) for i in range(6)),
    )
    append(tree / "data" / "selfplay" / "mcts_1" / "b.jsonl", b"{oops\n")
    result = ringd("scan", "--config", str(tree / "ringd.yaml"))
    assert result.returncode == 0, result.stderr
    rows = {
        line.split()[0]: line.split() for line in result.stdout.splitlines() if line[:1].islower()
    }
    assert rows["square8_2p"][1] == "+7/10" and "idle" in rows["square8_2p"]
    assert rows["hex8_2p"][1] == "+6/5" and "ready" in rows["hex8_2p"]
    assert rows["hexagonal_2p"][1] == "+0/5"
    assert "13 games, 13 new, 1 rejected (not_json 1)" in result.stdout


def test_scan_json_follows_the_status_contract(tree: Path) -> None:
    append(
        tree / "data" / "selfplay" / "x" / "a.jsonl",
        b"".join(game_line("square8", 2, i) for i in range(3)),
    )
    append(
        tree / "data" / "selfplay" / "x" / "b.jsonl", game_line("square19", 3, 1)
    )  # not in the YAML
    result = ringd("scan", "--config", str(tree / "ringd.yaml"), "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["config_error"] is None and status["rejected_total"] == 0
    by_name = {c["name"]: c for c in status["configs"]}
    assert set(by_name) == {"square8_2p", "hex8_2p", "hexagonal_2p", "square19_3p"}
    assert {
        k: by_name["square8_2p"][k] for k in ("new_games", "threshold", "total_games", "state")
    } == {"new_games": 3, "threshold": 10, "total_games": 3, "state": "idle"}
    assert {k: by_name["square19_3p"][k] for k in ("new_games", "threshold", "state")} == {
        "new_games": 1,
        "threshold": None,
        "state": "unconfigured",
    }
    # A second scan finds nothing new and changes nothing.
    again = json.loads(ringd("scan", "--config", str(tree / "ringd.yaml"), "--json").stdout)
    assert [c["total_games"] for c in again["configs"]] == [
        c["total_games"] for c in status["configs"]
    ]


def test_scan_with_an_invalid_config_exits_1_with_the_error(tmp_path: Path) -> None:
    path = write_config(tmp_path, configs="  square8_2p: {threshold: -1}\n")
    result = ringd("scan", "--config", str(path))
    assert result.returncode == 1
    assert "configs.square8_2p.threshold: must be >= 1" in result.stderr


def test_an_unreadable_directory_is_reported_and_the_rest_is_counted(tree: Path) -> None:
    append(tree / "data" / "selfplay" / "ok" / "a.jsonl", game_line("square8", 2, 1))
    append(tree / "data" / "selfplay" / "locked" / "b.jsonl", game_line("square8", 2, 2))
    (tree / "data" / "selfplay" / "locked").chmod(0o000)
    command = [
        sys.executable,
        "-m",
        "ringd.cli",
        "scan",
        "--config",
        str(tree / "ringd.yaml"),
        "--json",
    ]
    if os.geteuid() == 0:
        # root reads any directory: drop the capabilities that let it, to see
        # what an operator's service user sees.
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv (util-linux) to drop CAP_DAC_OVERRIDE")
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *command]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    finally:
        (tree / "data" / "selfplay" / "locked").chmod(0o755)
    assert result.returncode == 0, result.stderr
    assert "locked: cannot list directory: Permission denied" in result.stderr
    assert json.loads(result.stdout)["total_games"] == 1


def test_kill_9_at_random_moments_never_loses_or_doubles_a_game(tmp_path: Path) -> None:
    """50 scans SIGKILLed at random moments over a growing tree, then one that finishes."""
    config = write_config(tmp_path)
    root = tmp_path / "data" / "selfplay"
    rng = random.Random(7)
    written: set[bytes] = set()
    boards = [("square8", 2), ("hex8", 2), ("hexagonal", 2), ("square19", 3)]
    n = midway = 0

    def wal_state() -> tuple[int, int] | None:
        try:
            st = os.stat(tmp_path / "var" / "ledger.sqlite-wal")
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_size

    for round_ in range(50):
        # The tree grows: new files, new directories, appends, duplicates.
        for _ in range(rng.randint(1, 4)):
            folder = root / rng.choice(
                ["gpu", f"mcts_{round_ % 5}", f"cluster_{round_ % 3}/h{round_}"]
            )
            lines = []
            for _ in range(rng.randint(200, 1000)):
                board, players = rng.choice(boards)
                lines.append(game_line(board, players, n, pad=rng.randint(0, 3000)))
                n += 1
            if written and rng.random() < 0.2:
                lines.append(rng.choice(sorted(written)))
            append(folder / f"w{rng.randint(0, 3)}.jsonl", b"".join(lines))
            written.update(lines)
        before = wal_state()
        proc = subprocess.Popen(
            [sys.executable, "-m", "ringd.cli", "scan", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # Most kills should land while games are being indexed: wait for the
        # scan's first write to the ledger, then kill within the next moments.
        deadline = time.monotonic() + 30
        while wal_state() == before and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(rng.uniform(0, 0.04))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if (tmp_path / "var" / "ledger.sqlite").exists():
            with Ledger(tmp_path / "var" / "ledger.sqlite") as ledger:
                midway += 0 < ledger.game_count() < len(written) and proc.returncode == -9
    # The test means something only if many kills landed while games were indexed.
    assert midway >= 10
    final = ringd("scan", "--config", str(config), "--json")
    assert final.returncode == 0, final.stderr
    assert json.loads(final.stdout)["total_games"] == len(written)
    with Ledger(tmp_path / "var" / "ledger.sqlite") as ledger:
        assert ledger.game_count() == len(written)
        assert sum(c.total for c in ledger.config_counts()) == len(written)


def test_the_ledger_migrates_old_schemas_and_refuses_newer_ones(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "ledger.sqlite"
    with Ledger(path) as ledger:
        assert ledger.schema_version == SCHEMA_VERSION
    # Reopening an up-to-date ledger keeps it as it is.
    with Ledger(path) as ledger:
        assert ledger.schema_version == SCHEMA_VERSION
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(LedgerError, match="newer ringd"):
        Ledger(path)


def test_a_long_first_scan_shows_a_progress_bar_on_a_terminal(tree: Path) -> None:
    import pty

    from ringd.sim import write_corpus

    write_corpus(tree / "data" / "selfplay", 20, 120, seed=1)  # > 32 MB: worth a bar
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ringd.cli", "scan", "--config", str(tree / "ringd.yaml")],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env={**os.environ, "COLUMNS": "120"},
    )
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(leader)
    assert proc.wait(60) == 0
    assert b"indexing 20 files" in out and b"MB" in out
