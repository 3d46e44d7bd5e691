"""Game identity at scale: the key index ordered by epoch and its filters (schema 7).

A game is counted once however far apart its copies arrive: in another epoch of the
index, after a restart, through another connection, after its key changed in place.
The epochs are a million sequence numbers each; these tests reach them by moving the
ledger's next sequence number on, as a ledger of millions of games would have it.
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringd.keyfilter import EpochFilters
from ringd.ledger import EPOCH_BITS, Cursor, GameRow, Ledger
from ringd.records import line_key
from ringd.train.spans import iter_spans
from ringd.windows import build_window


def key(n: int) -> bytes:
    return line_key(f"game {n}".encode())


def commit(ledger: Ledger, path: str, games: list[int], config: str = "square8_2p") -> int:
    """Commit games (by number) as the lines of a file at `path`; the new games counted."""
    file_id = ledger.track_file(path, 1, abs(hash(path)) % 10**9)
    rows = [GameRow(config, key(n), i * 100, 99, None) for i, n in enumerate(games)]
    end = len(games) * 100
    added = ledger.commit(file_id, Cursor(1, 1, end, b"", end, 0), rows)
    return sum(a.count for a in added.values())


def skip_to_epoch(db: Path, epoch: int) -> None:
    """The next game goes to `epoch` (as if the games between had been counted)."""
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("UPDATE meta SET value = ? WHERE name = 'games_seq'", ((epoch << EPOCH_BITS) - 1,))
    con.close()


def total(ledger: Ledger) -> int:
    return sum(c.total for c in ledger.config_counts())


def stored_epochs(db: Path) -> list[int]:
    con = sqlite3.connect(db)
    try:
        return [e for (e,) in con.execute("SELECT epoch FROM key_filters ORDER BY epoch")]
    finally:
        con.close()


def span_of(ledger: Ledger, n: int) -> tuple[str, int]:
    [(path, offset)] = ledger._db.execute(
        "SELECT f.path, g.offset FROM games g JOIN files f ON f.id = g.file_id WHERE g.key = ?",
        (key(n),),
    ).fetchall()
    return path, offset


def test_a_copy_of_a_game_counted_epochs_ago_is_not_counted_again_and_its_span_moves(
    tmp_path: Path,
) -> None:
    db = tmp_path / "ledger.sqlite"
    with Ledger(db) as ledger:
        assert commit(ledger, "/sp/a.jsonl", [1, 2, 3]) == 3
    skip_to_epoch(db, 3)
    with Ledger(db) as ledger:
        assert commit(ledger, "/sp/b.jsonl", [4, 5]) == 2
        assert commit(ledger, "/sp/copy.jsonl", [9, 2, 5]) == 1  # only 9 is new
        assert total(ledger) == 6
        assert span_of(ledger, 2) == ("/sp/copy.jsonl", 100)
        assert ledger.spans_version("square8_2p") == 1
        [new] = ledger._db.execute("SELECT seq FROM games WHERE key = ?", (key(9),)).fetchall()
        assert new[0] >> EPOCH_BITS == 3


def test_a_commit_across_an_epoch_boundary_stores_the_full_epochs_filter(tmp_path: Path) -> None:
    db = tmp_path / "ledger.sqlite"
    Ledger(db).close()
    skip_to_epoch(db, 1)  # the next game is the first of epoch 1
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("UPDATE meta SET value = value - 3 WHERE name = 'games_seq'")  # 3 before it
    con.close()
    with Ledger(db) as ledger:
        assert commit(ledger, "/sp/a.jsonl", list(range(10))) == 10
        seqs = [s for (s,) in ledger._db.execute("SELECT seq FROM games ORDER BY seq")]
        assert [s >> EPOCH_BITS for s in seqs] == [0] * 3 + [1] * 7
        assert seqs == list(range(seqs[0], seqs[0] + 10))
    assert stored_epochs(db) == [0]


def test_a_window_spread_over_epochs_lists_each_of_its_games_once_oldest_first(
    tmp_path: Path,
) -> None:
    db = tmp_path / "ledger.sqlite"
    with Ledger(db) as ledger:
        commit(ledger, "/sp/a.jsonl", [1, 2, 3])
        commit(ledger, "/sp/other.jsonl", [50, 51], config="hex8_2p")
    skip_to_epoch(db, 3)  # epochs 1 and 2 hold none of them
    with Ledger(db) as ledger:
        commit(ledger, "/sp/b.jsonl", [4, 5, 6])
        commit(ledger, "/sp/other.jsonl", [52], config="hex8_2p")
        commit(ledger, "/sp/b.jsonl", [4, 5, 6, 7])
        last = ledger.max_seq("square8_2p")
        for size in (7, 5):
            built = build_window(ledger, "square8_2p", last, size, 0.0, tmp_path / "w.spans")
            listed = [(s.seq, s.key, s.path, s.offset) for s in iter_spans(built.spans.path)]
            assert listed == [
                (s.seq, s.key, s.path, s.offset) for s in ledger.window("square8_2p", last, size)
            ]
        assert [k for _, k, _, _ in listed] == [key(n) for n in (3, 4, 5, 6, 7)]


def test_after_a_restart_stored_missing_and_foreign_filters_all_still_find_every_game(
    tmp_path: Path,
) -> None:
    db = tmp_path / "ledger.sqlite"
    for epoch in range(3):
        skip_to_epoch(db, epoch) if epoch else Ledger(db).close()
        with Ledger(db) as ledger:
            commit(ledger, f"/sp/{epoch}.jsonl", list(range(epoch * 10, epoch * 10 + 10)))
    assert stored_epochs(db) == [0, 1]

    def copies_add_nothing() -> None:
        with Ledger(db) as ledger:
            assert commit(ledger, "/sp/all-again.jsonl", list(range(30))) == 0
            assert total(ledger) == 30

    copies_add_nothing()  # the stored filters of epochs 0 and 1, epoch 2 from the index
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("DELETE FROM key_filters WHERE epoch = 1")
    con.close()
    copies_add_nothing()  # epoch 1's filter made again from the index
    assert stored_epochs(db) == [0, 1]
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("UPDATE meta SET value = 'blocked64:8:1' WHERE name = 'key_filter_format'")
    con.execute("UPDATE key_filters SET bits = zeroblob(64)")  # another layout's bits
    con.close()
    copies_add_nothing()


def test_two_connections_counting_the_same_games_count_each_once(tmp_path: Path) -> None:
    """`ringd scan` beside a running daemon: each sees what the other counted."""
    db = tmp_path / "ledger.sqlite"
    with Ledger(db) as daemon, Ledger(db) as scan:
        assert commit(daemon, "/sp/a.jsonl", [1, 2]) == 2
        assert commit(scan, "/sp/a-copy.jsonl", [1, 2, 3]) == 1
        assert commit(daemon, "/sp/b.jsonl", [3, 4]) == 1
        assert commit(scan, "/sp/c.jsonl", [4, 5, 1]) == 1
        assert total(daemon) == total(scan) == 5


def test_a_key_changed_by_one_connection_is_found_by_the_other(tmp_path: Path) -> None:
    """Re-keying (ledgers of schema < 4, aliases added later) changes keys in place."""
    db = tmp_path / "ledger.sqlite"
    with Ledger(db) as daemon, Ledger(db) as scan:
        assert commit(daemon, "/sp/a.jsonl", [1, 2]) == 2  # the daemon's filters are made
        file_id = scan.track_file("/sp/a.jsonl", 1, 0)
        [(config_id, seq, _, _, _), _] = scan.spans_in(file_id)
        assert scan.rekey(file_id, [(config_id, seq, key(100))]) == 1
        assert commit(daemon, "/sp/b.jsonl", [100]) == 0
        assert commit(scan, "/sp/c.jsonl", [100, 1]) == 1  # 1's key is 100 now: 1 is new
        assert total(daemon) == 3


def test_a_new_key_that_a_copy_already_holds_is_not_given_to_a_second_game(
    tmp_path: Path,
) -> None:
    db = tmp_path / "ledger.sqlite"
    with Ledger(db) as ledger:
        commit(ledger, "/sp/a.jsonl", [1, 2])
        file_id = ledger.track_file("/sp/a.jsonl", 1, 0)
        [(config_id, seq, _, _, _), _] = ledger.spans_in(file_id)
        assert ledger.rekey(file_id, [(config_id, seq, key(2))]) == 0
        assert total(ledger) == 2 and ledger.game_keys() == {key(1), key(2)}


def test_a_rolled_back_commit_leaves_no_trace_in_the_filters(tmp_path: Path) -> None:
    """A commit that fails at its end (a full disk) counted nothing; another connection
    may then count other games under the same sequence numbers, and those are found."""
    db = tmp_path / "ledger.sqlite"
    with Ledger(db) as daemon, Ledger(db) as scan:
        commit(daemon, "/sp/a.jsonl", [1])
        con = sqlite3.connect(db, isolation_level=None)
        con.execute(
            "CREATE TRIGGER full BEFORE UPDATE OF offset ON files WHEN NEW.offset = 200 "
            "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
        )
        con.close()
        with pytest.raises(sqlite3.IntegrityError, match="disk is full"):
            commit(daemon, "/sp/b.jsonl", [2, 3])  # its cursor would move to 200
        assert commit(scan, "/sp/c.jsonl", [5, 6, 7]) == 3
        assert commit(daemon, "/sp/d.jsonl", [5, 6, 7, 2]) == 1
        assert total(daemon) == 5


@contextmanager
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as d:
        yield Path(d) / "ledger.sqlite"


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("commit"), st.integers(0, 1), st.lists(st.integers(0, 40), max_size=12)),
        st.tuples(st.just("epoch"), st.integers(1, 2), st.just([])),
        st.tuples(st.just("reopen"), st.integers(0, 1), st.just([])),
    ),
    max_size=25,
)


@settings(max_examples=40, deadline=None)
@given(OPS)
def test_any_mix_of_copies_epochs_restarts_and_connections_counts_each_game_once(
    ops: list[tuple[str, int, list[int]]],
) -> None:
    """Against a plain set: the distinct games committed so far, each where last seen."""
    with scratch() as db:
        Ledger(db).close()
        connections = [Ledger(db), Ledger(db)]
        seen: set[int] = set()
        where: dict[int, tuple[str, int]] = {}
        epoch = 0
        try:
            for n, (op, arg, games) in enumerate(ops):
                if op == "commit":
                    path = f"/sp/{n}.jsonl"
                    assert commit(connections[arg], path, games) == len(set(games) - seen)
                    seen |= set(games)
                    for i, g in enumerate(games):
                        where[g] = (path, i * 100)
                elif op == "epoch":
                    epoch += arg
                    skip_to_epoch(db, epoch)
                else:
                    connections[arg].close()
                    connections[arg] = Ledger(db)
            assert total(connections[0]) == len(seen)
            assert {g: span_of(connections[1], g) for g in seen} == where
        finally:
            for c in connections:
                c.close()


def test_a_filter_says_maybe_for_every_key_it_holds_and_rarely_for_others() -> None:
    filters = EpochFilters(1 << EPOCH_BITS)
    held = [key(n) for n in range(50_000)]
    filters.add(held[:25_000], 0)
    filters.add(held[25_000:], 2)
    found = filters.candidates(held)
    assert {(i, 0) for i in range(25_000)} | {(i, 2) for i in range(25_000, 50_000)} <= set(found)
    others = [key(n) for n in range(50_000, 150_000)]
    false = len(filters.candidates(others)) / (len(others) * filters.epochs)
    assert false < 0.001  # at 50,000 of the million keys an epoch is sized for
