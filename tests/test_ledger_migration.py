"""Schema 4: game keys by content, from a ledger whose keys were hashes of whole lines.

The schema 3 ledger is built here the way ringd before schema 4 built it (its
three migrations, a cursor per file, one row per distinct line keyed by the
line's xxh3-128), then opened and scanned by this ringd.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import xxhash

from harness import DaemonProcess, write_config
from ringd.cursor import fingerprint
from ringd.ledger import MIGRATIONS, SCHEMA_VERSION, Ledger
from ringd.records import Game, Rules, content_key, parse_line
from ringd.scan import ScanReport, scan
from ringd.train.games import read_games
from ringd.train.spec import GameSpan


def record(i: int, *, board: str = "square8", gid: str | None = None, reason: str = "") -> bytes:
    rec: dict[str, Any] = {
        "game_id": gid or f"g{i}",
        "board_type": board,
        "num_players": 2,
        "status": "completed",
        "termination_reason": reason or "status:completed:territory",
        "moves": [{"type": "place_ring", "player": 1, "to": {"x": i % 8, "y": i // 8}}],
        "initial_state": {"rings": 18},
    }
    return json.dumps(rec).encode() + b"\n"


def schema_at(db: Path, version: int) -> sqlite3.Connection:
    """A new ledger at an old schema `version` (its migrations applied, none after)."""
    con = sqlite3.connect(db, isolation_level=None)
    for i, script in enumerate(MIGRATIONS[:version], start=1):
        con.executescript(f"BEGIN; {script}; PRAGMA user_version = {i}; COMMIT;")
    return con


def old_file_row(con: sqlite3.Connection, path: Path, data: bytes, now: float) -> int:
    """Write `data` to `path` and record it as read to its end; its file id."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    st = os.stat(path)
    fd = os.open(path, os.O_RDONLY)
    fp = fingerprint(fd, len(data))
    os.close(fd)
    file_id = con.execute(
        "INSERT INTO files (path, dev, ino, offset, fingerprint, size, mtime_ns, first_seen, "
        "updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (str(path), st.st_dev, st.st_ino, len(data), fp, st.st_size, st.st_mtime_ns, now, now),
    ).lastrowid
    assert file_id is not None
    return file_id


def old_ledger(db: Path, files: dict[Path, bytes]) -> dict[str, int]:
    """A schema 3 ledger as ringd before schema 4 left it after indexing `files`."""
    con = schema_at(db, 3)
    now = time.time()
    totals: dict[str, int] = {}
    for path, data in files.items():
        file_id = old_file_row(con, path, data, now)
        offset = 0
        for line in data.split(b"\n")[:-1]:
            rec = json.loads(line)
            config = f"{rec['board_type']}_{rec['num_players']}p"  # no aliases then
            con.execute("INSERT OR IGNORE INTO configs (name) VALUES (?)", (config,))
            cur = con.execute(
                "INSERT OR IGNORE INTO games (key, config_id, file_id, offset, length, game_id, "
                "added) VALUES (?, (SELECT id FROM configs WHERE name = ?), ?, ?, ?, ?, ?)",
                (
                    xxhash.xxh3_128_digest(line),
                    config,
                    file_id,
                    offset,
                    len(line),
                    rec["game_id"],
                    now,
                ),
            )
            if cur.rowcount:
                con.execute("UPDATE configs SET total = total + 1 WHERE name = ?", (config,))
                totals[config] = totals.get(config, 0) + 1
            offset += len(line) + 1
    con.close()
    return totals


def counts(ledger: Ledger) -> dict[str, int]:
    return {c.name: c.total for c in ledger.config_counts() if c.total}


def readable(ledger: Ledger) -> set[bytes]:
    """Keys of the counted games the trainer's reader reads back from their spans."""
    out: set[bytes] = set()
    for c in ledger.config_counts():
        spans = [
            GameSpan(path=s.path, offset=s.offset, length=s.length, key=s.key.hex(), seq=s.seq)
            for s in ledger.window(c.name, ledger.max_seq(c.name), c.total)
        ]
        out |= {spans[i].key_bytes for i in read_games(spans, range(len(spans))).lines}
    return out


def keys_in(*paths: Path) -> set[bytes]:
    out = set()
    for path in paths:
        for line in path.read_bytes().splitlines():
            parsed = parse_line(line)
            assert isinstance(parsed, Game)
            out.add(parsed.key)
    return out


def run(ledger: Ledger, root: Path) -> ScanReport:
    report = scan(ledger, [root], Rules())
    assert not report.errors, report.errors
    return report


def test_a_schema_3_ledger_keeps_its_counts_and_re_keys_what_it_can_read(
    tmp_path: Path,
) -> None:
    root = tmp_path / "sp"
    files = {
        root / "gpu" / "a.jsonl": b"".join(record(i) for i in range(5)),
        # RingRift's quality-tier writer: the same game under three ids.
        root / "hybrid_1" / "games.jsonl": b"".join(record(10, gid=f"q{n}") for n in range(3)),
        root / "gone.jsonl": b"".join(record(i) for i in (20, 21)),
        root / "moved.jsonl": b"".join(record(i) for i in (30, 31, 32)),
        root / "gumbel" / "hex.jsonl": b"".join(record(i, board="hex") for i in (40, 41)),
    }
    db = tmp_path / "ledger.sqlite"
    old = old_ledger(db, files)
    assert old == {"square8_2p": 13, "hex_2p": 2}
    old_keys = {xxhash.xxh3_128_digest(line) for d in files.values() for line in d.splitlines()}
    gone_keys = {xxhash.xxh3_128_digest(line) for line in files[root / "gone.jsonl"].splitlines()}
    # While the daemon was stopped for the upgrade: one file deleted, one moved.
    (root / "gone.jsonl").unlink()
    (root / "archive").mkdir()
    os.rename(root / "moved.jsonl", root / "archive" / "moved.jsonl")

    with Ledger(db) as ledger:
        assert ledger.schema_version == SCHEMA_VERSION
        assert counts(ledger) == old and ledger.game_keys() == old_keys  # nothing read yet
        report = run(ledger, root)
        assert report.new_total == 0
        # a.jsonl's 5, the first of the hybrid copies, hex.jsonl's 2 (under hexagonal_2p).
        assert report.rekeyed == 8
        # hex_2p was RingRift's hexagonal all along: folded in, the sum unchanged.
        assert counts(ledger) == {"square8_2p": 13, "hexagonal_2p": 2}
        # The moved file's games were found under their line keys, not counted again.
        assert report.files_read == 1 and report.games_read == 3
        keys = ledger.game_keys()
        assert gone_keys <= keys  # what cannot be read keeps its key
        present = keys_in(
            root / "gpu" / "a.jsonl",
            root / "hybrid_1" / "games.jsonl",
            root / "archive" / "moved.jsonl",
            root / "gumbel" / "hex.jsonl",
        )
        assert present <= keys and readable(ledger) == present
        assert len(keys) == 15  # every row kept: 2 hybrid copies and 2 gone keep line keys

        # Now RingRift's cleanup rewrites every file in place.
        for path in root.rglob("*.jsonl"):
            recs = [json.loads(line) for line in path.read_bytes().splitlines()]
            for rec in recs:
                rec["termination_reason"] = rec["termination_reason"].rsplit(":", 1)[1]
                rec["game_id"] = "renamed-" + rec["game_id"]
            path.write_text("".join(json.dumps(rec) + "\n" for rec in recs))
        report = run(ledger, root)
        assert report.new_total == 0 and report.games_read == 15 - 2
        assert counts(ledger) == {"square8_2p": 13, "hexagonal_2p": 2}
        assert readable(ledger) == present


def test_a_file_unreachable_at_the_upgrade_is_re_keyed_when_it_comes_back(
    tmp_path: Path,
) -> None:
    root = tmp_path / "sp"
    path = root / "nfs" / "a.jsonl"
    db = tmp_path / "ledger.sqlite"
    old_ledger(db, {path: b"".join(record(i) for i in range(4))})
    os.rename(root / "nfs", tmp_path / "unmounted")
    with Ledger(db) as ledger:
        assert run(ledger, root).rekeyed == 0
        os.rename(tmp_path / "unmounted", root / "nfs")
        report = run(ledger, root)
        assert report.rekeyed == 4 and report.new_total == 0
        assert readable(ledger) == keys_in(path)
        assert run(ledger, root).rekeyed == 0  # once only


def test_a_new_ledger_has_no_line_keys(tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        assert ledger.schema_version == SCHEMA_VERSION and not ledger.line_keys


def test_an_alias_added_later_folds_its_games_and_keys_into_the_board(tmp_path: Path) -> None:
    root = tmp_path / "sp"
    path = root / "gumbel" / "a.jsonl"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"".join(record(i, board="tiny") for i in range(3)))
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        scan(ledger, [root], Rules(aliases={}))
        assert counts(ledger) == {"tiny_2p": 3}
        rules = Rules(aliases={"tiny": "square8"})
        report = scan(ledger, [root], rules)
        assert report.rekeyed == 3 and report.new_total == 0
        assert counts(ledger) == {"square8_2p": 3}
        assert [c.name for c in ledger.config_counts()] == ["square8_2p"]
        # The canonical spelling of the same games is no new game.
        (root / "b.jsonl").write_bytes(b"".join(record(i) for i in range(3)))
        assert scan(ledger, [root], rules).new_total == 0
        assert ledger.game_keys() == {
            content_key(
                "square8_2p",
                json.dumps(json.loads(record(i))["moves"]).encode(),
                b'{"rings": 18}',
            )
            for i in range(3)
        }


def test_a_read_from_zero_replaces_the_files_rejects(tmp_path: Path) -> None:
    root = tmp_path / "sp"
    path = root / "a.jsonl"
    path.parent.mkdir(parents=True)
    unfinished = record(9, reason="status:completed:in_progress")
    path.write_bytes(record(1) + unfinished + record(2))
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        run(ledger, root)
        assert ledger.reject_counts() == {"unfinished": 1}
        path.write_bytes(b"\n" + record(1) + unfinished + record(2))  # rewritten, shifted
        run(ledger, root)
        assert ledger.reject_counts() == {"unfinished": 1, "blank_line": 1}
        path.write_bytes(record(1) + record(2))  # the cleanup dropped it
        run(ledger, root)
        assert ledger.reject_counts() == {}
        assert counts(ledger) == {"square8_2p": 2}


def test_a_reload_that_adds_an_alias_folds_the_counted_games(daemon: DaemonProcess) -> None:
    root = daemon.folder / "data" / "selfplay"
    (root / "gumbel" / "tiny.jsonl").parent.mkdir(parents=True)
    (root / "gumbel" / "tiny.jsonl").write_bytes(
        b"".join(record(i, board="tiny") for i in range(3))
    )
    daemon.start()
    daemon.wait_until(lambda s: "tiny_2p" in {c["name"] for c in s["configs"]})
    write_config(
        daemon.folder,
        extra="records:\n  board_aliases: {tiny: square8}\n",
        configs="  square8_2p: {threshold: 10}\n",
    )
    status = daemon.wait_until(
        lambda s: {c["name"]: c["total_games"] for c in s["configs"]} == {"square8_2p": 3},
        timeout=10,
    )
    assert status["config_error"] is None
    # The same games written under the board's own name are no new games.
    (root / "b.jsonl").write_bytes(b"".join(record(i) for i in range(3)))
    (root / "c.jsonl").write_bytes(record(99))
    daemon.wait_until(lambda s: sum(c["total_games"] for c in s["configs"]) == 4)
    assert daemon.configs()["square8_2p"]["total_games"] == 4


def ledger_at_5(db: Path, files: dict[Path, bytes]) -> int:
    """A schema 5 ledger as ringd 5 left it after indexing `files` (content keys, game
    ids, `added`); the number of games."""
    con = schema_at(db, 5)
    con.execute("INSERT INTO configs (name) VALUES ('square8_2p')")
    now = time.time()
    n = 0
    for path, data in files.items():
        file_id = old_file_row(con, path, data, now)
        offset = 0
        for line in data.split(b"\n")[:-1]:
            game = parse_line(line)
            assert isinstance(game, Game)
            con.execute(
                "INSERT INTO games (key, config_id, file_id, offset, length, game_id, added) "
                "VALUES (?, 1, ?, ?, ?, ?, ?)",
                (game.key, file_id, offset, len(line), game.game_id, now),
            )
            offset += len(line) + 1
            n += 1
    con.execute("UPDATE configs SET total = ?", (n,))
    con.close()
    return n


def test_a_schema_5_ledger_is_rebuilt_smaller_with_its_counts_and_sequence(
    tmp_path: Path,
) -> None:
    """Schema 6 (issue 15): the games table without game_id, `added` and foreign keys.
    Counts, watermarks, sequence numbers, keys and spans stay; the sequence goes on
    where it was (a row deleted at the top is never reused); the file shrinks."""
    root = tmp_path / "sp"
    files = {
        root / "gpu" / f"{n}.jsonl": b"".join(
            record(i, gid=f"{i:036d}") for i in range(n * 50, n * 50 + 50)
        )
        for n in range(4)
    }
    db = tmp_path / "ledger.sqlite"
    total = ledger_at_5(db, files)
    con = sqlite3.connect(db, isolation_level=None)
    top = con.execute("SELECT MAX(seq) FROM games").fetchone()[0]
    con.execute("DELETE FROM games WHERE seq = ?", (top,))  # as _adopt_line_keys may
    con.execute(
        "UPDATE configs SET total = ?, trained_through = 120, trained_count = 120", (total - 1,)
    )
    rows_before = con.execute(
        "SELECT seq, key, config_id, file_id, offset, length FROM games ORDER BY seq"
    ).fetchall()
    con.close()
    size_before = db.stat().st_size

    with Ledger(db) as ledger:
        assert ledger.schema_version == SCHEMA_VERSION >= 6
        assert counts(ledger) == {"square8_2p": total - 1}
        [row] = ledger.config_counts()
        assert (row.trained_through, row.new) == (120, total - 1 - 120)
        rows = ledger._db.execute(
            "SELECT seq, key, config_id, file_id, offset, length FROM games ORDER BY seq"
        ).fetchall()
        assert rows == rows_before
        columns = {r[1] for r in ledger._db.execute("PRAGMA table_info(games)")}
        assert columns == {"seq", "key", "config_id", "file_id", "offset", "length"}
        assert readable(ledger) == {r[1] for r in rows}
        # The next game gets the next sequence number, never the deleted one's.
        (root / "new.jsonl").write_bytes(record(999))
        report = run(ledger, root)
        assert report.new_games["square8_2p"].first == top + 1
        assert counts(ledger) == {"square8_2p": total}
        assert ledger.spans_version("square8_2p") == 0 and ledger.jobs() == []
    assert db.stat().st_size < size_before
