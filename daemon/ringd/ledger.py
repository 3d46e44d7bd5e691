"""The SQLite ledger: files and cursors, games, rejects, per-config watermarks.

Every state change is one transaction, so a kill -9 at any instant leaves the
ledger either before or after a change, never between: a cursor never moves
without the games it covers, and a game is never counted twice.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ringd.boards import config_name, split_config_name
from ringd.train.holdout import bucket_of, held_out_buckets
from ringd.train.spans import Span

if TYPE_CHECKING:
    from ringd.keyfilter import EpochFilters

# Each entry migrates the schema from version i to i + 1; append, never edit.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE files (
        id INTEGER PRIMARY KEY,
        path TEXT NOT NULL UNIQUE,
        dev INTEGER NOT NULL,
        ino INTEGER NOT NULL,
        offset INTEGER NOT NULL DEFAULT 0,
        fingerprint BLOB NOT NULL DEFAULT x'',
        size INTEGER NOT NULL DEFAULT 0,
        mtime_ns INTEGER NOT NULL DEFAULT 0,
        gone INTEGER NOT NULL DEFAULT 0,
        first_seen REAL NOT NULL,
        updated REAL NOT NULL
    );
    CREATE TABLE configs (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        total INTEGER NOT NULL DEFAULT 0,
        trained_through INTEGER NOT NULL DEFAULT 0,
        -- games at or below trained_through; sequence numbers only grow, so
        -- this never changes until the watermark moves again.
        trained_count INTEGER NOT NULL DEFAULT 0,
        last_game_at REAL
    );
    CREATE TABLE games (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        key BLOB NOT NULL UNIQUE,
        config_id INTEGER NOT NULL REFERENCES configs(id),
        file_id INTEGER NOT NULL REFERENCES files(id),
        offset INTEGER NOT NULL,
        length INTEGER NOT NULL,
        game_id TEXT,
        added REAL NOT NULL
    );
    CREATE INDEX games_by_config ON games(config_id, seq);
    CREATE TABLE rejects (
        id INTEGER PRIMARY KEY,
        file_id INTEGER NOT NULL REFERENCES files(id),
        offset INTEGER NOT NULL,
        length INTEGER NOT NULL,
        reason TEXT NOT NULL,
        detail TEXT NOT NULL,
        added REAL NOT NULL,
        UNIQUE (file_id, offset, length, reason)
    );
    CREATE INDEX rejects_by_reason ON rejects(reason);
    """,
    # 2: training jobs, and operators' pauses (they survive restarts).
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        config TEXT NOT NULL,
        first_seq INTEGER NOT NULL,
        last_seq INTEGER NOT NULL,
        games INTEGER NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        slot TEXT,
        triggered INTEGER NOT NULL DEFAULT 0,
        created REAL NOT NULL,
        started REAL,
        finished REAL,
        exit_code INTEGER,
        error TEXT,
        checkpoint TEXT,
        checkpoint_sha256 TEXT,
        progress TEXT,
        UNIQUE (config, first_seq, last_seq)
    );
    CREATE INDEX jobs_by_config ON jobs(config, created);
    ALTER TABLE configs ADD COLUMN paused INTEGER NOT NULL DEFAULT 0;
    """,
    # 3: the checkpoint registry: each file's validation, cached under its stat.
    """
    CREATE TABLE checkpoints (
        path TEXT PRIMARY KEY,
        config TEXT,
        origin TEXT NOT NULL,
        job_id TEXT,
        last_seq INTEGER,
        dev INTEGER NOT NULL,
        ino INTEGER NOT NULL,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        verdict TEXT NOT NULL,
        reason TEXT,
        sha256 TEXT,
        validated_at REAL,
        pinned INTEGER NOT NULL DEFAULT 0,
        quarantined_to TEXT,
        removed INTEGER NOT NULL DEFAULT 0
    );
    """,
    # 4: game keys by content (records.game_key): the config and the raw bytes
    # of `moves` and `initial_state`, so a rewrite that changes other fields
    # adds no game. Every key so far is the hash of a whole line.
    #
    # Keys cannot be recomputed in SQL (the moves are in the files), and reading
    # every file inside a schema migration would stall the start on a large tree
    # and fail on files that are gone or unreachable. So this step only marks
    # every file `rekey = 1`; each reconciliation scan then re-keys the games of
    # the marked files it finds (Ledger.rekey: read the span, check that its
    # bytes are the game the old key names, store the content key; the old key
    # stays where the bytes are gone, a copy already holds the content key, or
    # the file cannot be read). Counts never change: rows are re-keyed, never
    # added or removed. Games that keep a line key (their file gone, a moved
    # file) are still found when their line turns up in a read from offset 0:
    # while `meta.line_keys` is set, such reads also look each new game up by
    # its line key and re-key that row instead of counting the game again.
    """
    ALTER TABLE files ADD COLUMN rekey INTEGER NOT NULL DEFAULT 0;
    UPDATE files SET rekey = 1;
    CREATE TABLE meta (name TEXT PRIMARY KEY, value);
    INSERT INTO meta (name, value) SELECT 'line_keys', 1 WHERE EXISTS (SELECT 1 FROM games);
    """,
    # 5: promotion (models.promote): a validated checkpoint becomes `latest` only
    # once promoted. `promoted` is NULL until the gate decides, then 0 or 1 with its
    # reason; `promoted_at` orders promotions (latest is the last one); `held_out` is
    # the checkpoint's held-out evaluation (its sidecar's meta.eval, JSON). Checkpoints
    # validated before this version were eligible for latest: they count as promoted.
    """
    ALTER TABLE checkpoints ADD COLUMN promoted INTEGER;
    ALTER TABLE checkpoints ADD COLUMN promote_reason TEXT;
    ALTER TABLE checkpoints ADD COLUMN promoted_at REAL;
    ALTER TABLE checkpoints ADD COLUMN held_out TEXT;
    UPDATE checkpoints SET promoted = 1,
        promote_reason = 'validated before promotion gates (ledger schema 5)'
        WHERE verdict = 'ok';
    """,
    # 6: a ledger of tens of millions of games (issue 15). The games table is rebuilt
    # without `game_id` (display only, never shown: a third of the bytes of a game),
    # `added` and its foreign keys (the ledger is their only writer; the checks cost a
    # lookup per insert), 127 -> about 80 bytes a game; the copy builds its key index
    # in key order (full pages). `configs.spans_version` counts changes to the spans or
    # keys of a config's counted games (span moves, re-keying, aliases folded in): a
    # job's spans file is extended from the previous job's while it has not changed.
    # `jobs.skipped`: new games of a job older than its window (a backlog over
    # training.window.max_games). Sequence numbers and counts are kept as they are.
    """
    INSERT OR REPLACE INTO meta (name, value)
        SELECT 'games_seq', seq FROM sqlite_sequence WHERE name = 'games';
    CREATE TABLE games_v6 (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        key BLOB NOT NULL,
        config_id INTEGER NOT NULL,
        file_id INTEGER NOT NULL,
        offset INTEGER NOT NULL,
        length INTEGER NOT NULL
    );
    INSERT INTO games_v6 (seq, key, config_id, file_id, offset, length)
        SELECT seq, key, config_id, file_id, offset, length FROM games ORDER BY seq;
    DROP TABLE games;
    ALTER TABLE games_v6 RENAME TO games;
    CREATE UNIQUE INDEX games_by_key ON games(key);
    CREATE INDEX games_by_config ON games(config_id, seq);
    DELETE FROM sqlite_sequence WHERE name = 'games';
    INSERT INTO sqlite_sequence (name, seq)
        SELECT 'games', MAX(COALESCE((SELECT value FROM meta WHERE name = 'games_seq'), 0),
                            COALESCE((SELECT MAX(seq) FROM games), 0));
    DELETE FROM meta WHERE name = 'games_seq';
    ALTER TABLE configs ADD COLUMN spans_version INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN skipped INTEGER NOT NULL DEFAULT 0;
    """,
    # 7: ingest that stays flat as the ledger grows (issue 15). One index ordered by the
    # random keys had every new game dirty a page of its own once it outgrew a commit;
    # the key index is now ordered by epoch first (seq >> 20: ringd.keyfilter), so new
    # keys land in the current epoch's few thousand pages, and a Bloom filter per epoch
    # (`key_filters`, stored once an epoch is full; the ledger rebuilds missing ones from
    # the index) says where a key may be. Uniqueness across epochs is the ledger's own
    # check (Ledger.commit), within an epoch the index's too. The games are stored in
    # (config, seq) order: a config's window is one range of the table, read without a
    # lookup per game, and the (config_id, seq) index is gone. With no rowid the next
    # sequence number is kept in `meta.games_seq`; `meta.key_rewrites` counts keys
    # changed in place (re-keying), so that other connections reload their filters.
    """
    INSERT OR REPLACE INTO meta (name, value) SELECT 'games_seq',
        MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'games'), 0),
            COALESCE((SELECT MAX(seq) FROM games), 0));
    INSERT OR REPLACE INTO meta (name, value) VALUES ('key_rewrites', 0);
    CREATE TABLE games_v7 (
        config_id INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        key BLOB NOT NULL,
        file_id INTEGER NOT NULL,
        offset INTEGER NOT NULL,
        length INTEGER NOT NULL,
        PRIMARY KEY (config_id, seq)
    ) WITHOUT ROWID;
    INSERT INTO games_v7 (config_id, seq, key, file_id, offset, length)
        SELECT config_id, seq, key, file_id, offset, length FROM games ORDER BY config_id, seq;
    DROP TABLE games;
    ALTER TABLE games_v7 RENAME TO games;
    CREATE UNIQUE INDEX games_by_epoch_key ON games(seq >> 20, key);
    DELETE FROM sqlite_sequence WHERE name = 'games';
    CREATE TABLE key_filters (epoch INTEGER PRIMARY KEY, bits BLOB NOT NULL);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
# The key index's order: epoch (a range of 2**EPOCH_BITS sequence numbers), then key.
# The same expression as in migration 7's index, so that queries of an epoch use it.
EPOCH_BITS = 20
_EPOCH = f"(seq >> {EPOCH_BITS})"
# Migrations to these versions rewrite most of the file: VACUUM gives back the old pages.
REBUILDS = (6, 7)


# The ingest writer of a large ledger (measured in bench/README.md, "Ledger at scale").
# Game keys are random, so each new game lands on its own leaf page of the key index
# once the index is much larger than a commit (a commit of ~30,000 small games into a
# 20 M-game ledger dirties ~25,000 pages of 4 KiB). With SQLite's default 2 MiB page
# cache those pages were spilled to the WAL mid-transaction and read back from the OS,
# and each commit's pages were checkpointed (written again, fsynced) at once: the
# writer's cache holds what a commit dirties, and the WAL is checkpointed every 256 MiB
# instead of every 4 MiB, so a page rewritten by several commits is written once. A
# memory map of the file measured no better than the cache and is not used.
WRITER_CACHE_MB = 256
WRITER_CHECKPOINT_PAGES = 65_536
WAL_SIZE_LIMIT = 64 << 20  # the WAL file is truncated back to this after a checkpoint


class LedgerError(Exception):
    """The ledger cannot be opened or used (newer schema, corrupt file, ...)."""


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, where the C library has it."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return None


_MALLOC_TRIM = _malloc_trim()

# Games a span_columns query aggregates at most: 16 MiB of keys, under SQLite's
# string limit whatever the window's size.
SPAN_STRETCH = 1 << 20


@dataclass(frozen=True, slots=True)
class SpanColumns:
    """Games a column at a time: the keys' 16 bytes run together, the numbers as
    comma-separated decimals, all in the same order."""

    count: int
    seqs: str
    keys: bytes
    offsets: str
    lengths: str
    file_ids: str


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where reading of a file stands: its identity, read offset and last seen stat."""

    dev: int
    ino: int
    offset: int
    fingerprint: bytes
    size: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class FileRow:
    id: int
    path: str
    cursor: Cursor
    gone: bool


@dataclass(frozen=True, slots=True)
class GameRow:
    config: str
    key: bytes
    offset: int
    length: int
    game_id: str | None
    # The hash of the whole line, given only while games counted under line keys
    # (before schema 4) may turn up again: see Ledger.commit.
    line_key: bytes | None = None


@dataclass(frozen=True, slots=True)
class RejectRow:
    offset: int
    length: int
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class Added:
    """Games newly counted for one config: how many, and their sequence range."""

    count: int
    first: int
    last: int

    def merge(self, other: Added) -> Added:
        return Added(
            self.count + other.count, min(self.first, other.first), max(self.last, other.last)
        )


def merge_added(into: dict[str, Added], new: dict[str, Added]) -> None:
    """Fold per-config additions into a running total."""
    for config, added in new.items():
        into[config] = into[config].merge(added) if config in into else added


@dataclass(frozen=True, slots=True)
class ConfigCount:
    name: str
    total: int
    new: int
    trained_through: int
    last_game_at: float | None


JobState = str  # queued | running | succeeded | failed | interrupted
FINISHED_STATES = ("succeeded", "failed", "interrupted")
# Failures older than this many jobs no longer lengthen a backoff (it is capped anyway).
HISTORY_ROWS = 50


@dataclass(frozen=True, slots=True)
class JobRow:
    id: str
    config: str
    first_seq: int
    last_seq: int
    games: int
    state: JobState
    attempts: int
    slot: str | None
    triggered: bool
    created: float
    started: float | None
    finished: float | None
    exit_code: int | None
    error: str | None
    checkpoint: str | None
    checkpoint_sha256: str | None
    progress: dict[str, Any] | None
    # New games of the range older than the job's window (a backlog over max_games):
    # not trained on, though the range's success moves the watermark past them.
    skipped: int = 0


@dataclass(frozen=True, slots=True)
class JobHistory:
    """What the scheduler needs of a config's past jobs."""

    last_start: float | None
    last_success: float | None
    failures: int  # consecutive, since the last success
    last_failure: float | None
    last_error: str | None


_JOB_COLUMNS = (
    "id, config, first_seq, last_seq, games, state, attempts, slot, triggered, created, started, "
    "finished, exit_code, error, checkpoint, checkpoint_sha256, progress, skipped"
)


def _job(row: tuple[Any, ...]) -> JobRow:
    values = list(row)
    values[8] = bool(values[8])
    values[16] = json.loads(values[16]) if values[16] else None
    return JobRow(*values)


@dataclass(frozen=True, slots=True)
class CheckpointRow:
    path: str
    config: str | None
    origin: str  # "job" (ringd wrote it) or "dir" (found under models.dirs)
    job_id: str | None
    last_seq: int | None
    dev: int
    ino: int
    size: int
    mtime_ns: int
    verdict: str  # pending | ok | bad
    reason: str | None
    sha256: str | None
    validated_at: float | None
    pinned: bool
    quarantined_to: str | None
    removed: bool
    # Promotion (models.promote): None until decided; the decision's reason; when it
    # was promoted (None: eligible without a promotion, e.g. found under models.dirs).
    promoted: bool | None = None
    promote_reason: str | None = None
    promoted_at: float | None = None
    held_out: dict[str, Any] | None = None  # the sidecar's meta.eval


_CHECKPOINT_COLUMNS = (
    "path, config, origin, job_id, last_seq, dev, ino, size, mtime_ns, verdict, reason, sha256, "
    "validated_at, pinned, quarantined_to, removed, promoted, promote_reason, promoted_at, "
    "held_out"
)


class Ledger:
    """One connection to the ledger file; use it from one thread at a time."""

    def __init__(self, path: Path, *, writer: bool = False) -> None:
        """Open (creating or migrating) the ledger at `path`.

        `writer`: the connection that indexes games (the ingest stage, `ringd scan`),
        with the page cache and checkpoint interval of WRITER_CACHE_MB; the others
        (job and model bookkeeping, status) keep SQLite's defaults.
        """
        if writer:
            # It will count games: numpy (the key filters) is imported before the file is
            # touched, not between its first write and its first commit.
            import ringd.keyfilter  # noqa: F401
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a process crash (kill -9); only a
            # power cut may drop the last commits, and never half of one.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
            if writer:
                self._db.execute(f"PRAGMA cache_size = {-1024 * WRITER_CACHE_MB}")
                self._db.execute(f"PRAGMA wal_autocheckpoint = {WRITER_CHECKPOINT_PAGES}")
            self._migrate()
        except sqlite3.DatabaseError as e:
            raise LedgerError(f"{path}: {e}") from e
        self.path = path
        self._config_ids: dict[str, int] = dict(
            self._db.execute("SELECT name, id FROM configs").fetchall()
        )
        self._line_keys = bool(
            self._db.execute("SELECT 1 FROM meta WHERE name = 'line_keys'").fetchone()
        )
        # Where each counted key may be (made on the first write: Ledger._filters), and
        # the ledger's state they reflect: games up to this seq, this many key rewrites.
        self._keys: EpochFilters | None = None
        self._keys_seq = 0
        self._keys_rewrites = 0

    def close(self) -> None:
        self._db.close()

    def release_memory(self) -> None:
        """Give back the page cache a large scan filled (it refills as needed)."""
        self._db.execute("PRAGMA shrink_memory")
        # SQLite frees the pages to malloc, and glibc keeps freed memory in the
        # thread's arena: after a million-game scan, 85 MB that an idle daemon held on.
        if _MALLOC_TRIM is not None:
            _MALLOC_TRIM(0)

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _migrate(self) -> None:
        version: int = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise LedgerError(
                f"schema version {version} was written by a newer ringd "
                f"(this one knows up to {SCHEMA_VERSION}); upgrade ringd"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            try:
                self._db.executescript(
                    f"BEGIN IMMEDIATE; {MIGRATIONS[target - 1]}; "
                    f"PRAGMA user_version = {target}; COMMIT;"
                )
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        if version and any(version < v <= SCHEMA_VERSION for v in REBUILDS):
            # The rebuilt games table left the old one's pages free: give them back
            # (schema 6, a ledger of 5.5 M games: 911 MB -> 422 MB, 12 s).
            self._db.execute("VACUUM")

    @property
    def schema_version(self) -> int:
        version: int = self._db.execute("PRAGMA user_version").fetchone()[0]
        return version

    # -- files ----------------------------------------------------------------------------

    def files(self) -> dict[str, FileRow]:
        """Every known file by path (the reconciliation scan compares against this)."""
        rows = self._db.execute(
            "SELECT id, path, dev, ino, offset, fingerprint, size, mtime_ns, gone FROM files"
        ).fetchall()
        return {
            r[1]: FileRow(r[0], r[1], Cursor(r[2], r[3], r[4], r[5], r[6], r[7]), bool(r[8]))
            for r in rows
        }

    def file(self, path: str) -> FileRow | None:
        r = self._db.execute(
            "SELECT id, path, dev, ino, offset, fingerprint, size, mtime_ns, gone "
            "FROM files WHERE path = ?",
            (path,),
        ).fetchone()
        if r is None:
            return None
        return FileRow(r[0], r[1], Cursor(r[2], r[3], r[4], r[5], r[6], r[7]), bool(r[8]))

    def track_file(self, path: str, dev: int, ino: int) -> int:
        """The id of the file at `path`; a new inode there starts over at offset 0."""
        now = time.time()
        with self._transaction():
            row = self._db.execute(
                "SELECT id, dev, ino FROM files WHERE path = ?", (path,)
            ).fetchone()
            if row is None:
                cur = self._db.execute(
                    "INSERT INTO files (path, dev, ino, first_seen, updated) VALUES (?, ?, ?, ?, ?)",
                    (path, dev, ino, now, now),
                )
                assert cur.lastrowid is not None
                return cur.lastrowid
            file_id: int = row[0]
            if (row[1], row[2]) != (dev, ino):
                self._db.execute(
                    "UPDATE files SET dev = ?, ino = ?, offset = 0, fingerprint = x'', size = 0, "
                    "mtime_ns = 0, gone = 0, updated = ? WHERE id = ?",
                    (dev, ino, now, file_id),
                )
            return file_id

    def mark_gone(self, file_ids: Iterable[int]) -> None:
        """Files that vanished; their games stay counted."""
        with self._transaction():
            self._db.executemany(
                "UPDATE files SET gone = 1, updated = ? WHERE id = ?",
                [(time.time(), i) for i in file_ids],
            )

    # -- ingest ---------------------------------------------------------------------------

    def commit(
        self,
        file_id: int,
        cursor: Cursor,
        games: Sequence[GameRow],
        rejects: Sequence[RejectRow] = (),
        *,
        restart: bool = False,
    ) -> dict[str, Added]:
        """Record games and rejects and move the file's cursor, in one transaction.

        Returns, per config, the games that were new. A known key is a copy or a
        rewrite of a counted game: it is not counted again, and the game's span
        moves here (where it was read last), so that it can still be read back
        after its old place was rewritten, moved or deleted. `restart` (the first
        commit of a read from offset 0 of a known file) drops the file's earlier
        rejects: they described bytes that are read again now.
        """
        now = time.time()
        added: dict[str, Added] = {}
        with self._transaction():
            filters = self._filters()
            seq = seq_before = self._keys_seq
            if restart:
                self._db.execute("DELETE FROM rejects WHERE file_id = ?", (file_id,))
            # A game twice in one batch is one game, standing at its last place.
            latest: dict[bytes, GameRow] = {}
            for g in games:
                latest[g.key] = g
            found = self._find(filters, list(latest))
            adopted: dict[bytes, tuple[int, int, int, int, int]] = {}
            if self._line_keys:
                old = [g.line_key for k, g in latest.items() if k not in found and g.line_key]
                adopted = self._find(filters, old)
            inserts: list[tuple[int, int, bytes, int, int, int]] = []
            moves: list[tuple[int, int, int, int, int]] = []
            rekeyed: list[tuple[bytes, int, int]] = []  # (key, config id, seq)
            moved: set[int] = set()  # configs whose counted games' spans changed
            for key, g in latest.items():
                hit = found.get(key)
                if hit is None and self._line_keys and g.line_key is not None:
                    # Counted before schema 4 under its line's hash: the old row keeps
                    # its sequence number and count, and takes the new key and this span.
                    hit = adopted.get(g.line_key)
                    if hit is not None:
                        rekeyed.append((key, hit[0], hit[1]))
                        moves.append((file_id, g.offset, g.length, hit[0], hit[1]))
                        moved.add(hit[0])
                        continue
                if hit is None:
                    seq += 1
                    config_id = self._config_id(g.config)
                    inserts.append((config_id, seq, key, file_id, g.offset, g.length))
                    a = added.get(g.config)
                    added[g.config] = (
                        Added(1, seq, seq) if a is None else Added(a.count + 1, a.first, seq)
                    )
                elif hit[2:] != (file_id, g.offset, g.length):
                    moves.append((file_id, g.offset, g.length, hit[0], hit[1]))
                    moved.add(hit[0])
            self._db.executemany(
                "INSERT INTO games (config_id, seq, key, file_id, offset, length) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                inserts,
            )
            self._db.executemany(
                "UPDATE games SET file_id = ?, offset = ?, length = ? "
                "WHERE config_id = ? AND seq = ?",
                moves,
            )
            if rekeyed:
                self._db.executemany(
                    "UPDATE games SET key = ? WHERE config_id = ? AND seq = ?", rekeyed
                )
                self._keys_changed(filters, [(k, s) for k, _, s in rekeyed])
            filters.add([r[2] for r in inserts], [r[1] >> EPOCH_BITS for r in inserts])
            self._counted_through(filters, seq_before, seq)
            for config, a in added.items():
                self._db.execute(
                    "UPDATE configs SET total = total + ?, last_game_at = ? WHERE id = ?",
                    (a.count, now, self._config_ids[config]),
                )
            for config_id in moved:
                # Spans files made before list counted games where they no longer are.
                self._bump_spans_version(config_id)
            if rejects:
                self._db.executemany(
                    "INSERT OR IGNORE INTO rejects (file_id, offset, length, reason, detail, added)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    [(file_id, r.offset, r.length, r.reason, r.detail, now) for r in rejects],
                )
            self._db.execute(
                "UPDATE files SET dev = ?, ino = ?, offset = ?, fingerprint = ?, size = ?, "
                "mtime_ns = ?, gone = 0, updated = ? WHERE id = ?",
                (
                    cursor.dev,
                    cursor.ino,
                    cursor.offset,
                    cursor.fingerprint,
                    cursor.size,
                    cursor.mtime_ns,
                    now,
                    file_id,
                ),
            )
        return added

    # -- game identity: the key index and its filters (migration 7, ringd.keyfilter) ------

    def _find(
        self, filters: EpochFilters, keys: Sequence[bytes]
    ) -> dict[bytes, tuple[int, int, int, int, int]]:
        """The counted games among `keys`: key -> (config id, seq, file id, offset, length).
        Probes the key index only in the epochs whose filter may hold a key."""
        found: dict[bytes, tuple[int, int, int, int, int]] = {}
        probe = self._db.execute
        for i, epoch in filters.candidates(keys):
            key = keys[i]
            if key in found:
                continue  # a key is in one epoch; the newest are probed first
            row = probe(
                "SELECT config_id, seq, file_id, offset, length FROM games "
                f"WHERE {_EPOCH} = ? AND key = ?",
                (epoch, key),
            ).fetchone()
            if row is not None:
                found[key] = row
        return found

    def _filters(self) -> EpochFilters:
        """This connection's key filters, brought up to date with the ledger: call inside
        a write transaction (so that nobody else changes the games meanwhile)."""
        seq = self._meta_int("games_seq")
        rewrites = self._meta_int("key_rewrites")
        filters = self._keys
        if filters is None or rewrites != self._keys_rewrites or seq < self._keys_seq:
            filters = self._load_filters(seq)
        elif seq > self._keys_seq:
            # Another connection (`ringd scan` beside the daemon) counted games since.
            rows = self._db.execute(
                f"SELECT seq, key FROM games WHERE {_EPOCH} >= ? AND seq > ?",
                (self._keys_seq >> EPOCH_BITS, self._keys_seq),
            ).fetchall()
            filters.add([k for _, k in rows], [s >> EPOCH_BITS for s, _ in rows])
        self._keys, self._keys_seq, self._keys_rewrites = filters, seq, rewrites
        return filters

    def _load_filters(self, seq: int) -> EpochFilters:
        """Every epoch's filter: stored ones for full epochs, the others (the current
        epoch, and full ones not stored yet) made from the index, and stored once full."""
        # Imported here: only a connection that counts games needs numpy.
        from ringd.keyfilter import EpochFilters

        filters = EpochFilters(1 << EPOCH_BITS)
        if self._meta("key_filter_format") != filters.format:
            self._db.execute("DELETE FROM key_filters")
            self._set_meta("key_filter_format", filters.format)
        stored = dict(self._db.execute("SELECT epoch, bits FROM key_filters").fetchall())
        current = (seq + 1) >> EPOCH_BITS  # where the next game goes
        for epoch in range(current + 1):
            bits = stored.get(epoch) if epoch < current else None
            if bits is not None:
                filters.load_epoch(epoch, bits)
                continue
            keys = self._db.execute(
                f"SELECT key FROM games WHERE {_EPOCH} = ?", (epoch,)
            ).fetchall()
            filters.add([k for (k,) in keys], epoch)
            if epoch < current:
                self._store_filter(filters, epoch)
        return filters

    def _store_filter(self, filters: EpochFilters, epoch: int) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO key_filters (epoch, bits) VALUES (?, ?)",
            (epoch, filters.epoch_bytes(epoch)),
        )

    def _counted_through(self, filters: EpochFilters, before: int, seq: int) -> None:
        """The games up to `seq` are counted: store the filters of epochs that filled."""
        if seq == before:
            return
        for epoch in range((before + 1) >> EPOCH_BITS, (seq + 1) >> EPOCH_BITS):
            self._store_filter(filters, epoch)
        self._set_meta("games_seq", seq)
        self._keys_seq = seq

    def _keys_changed(self, filters: EpochFilters, keys: Sequence[tuple[bytes, int]]) -> None:
        """Counted games took new keys (key, seq): add them to the filters, drop the stored
        filters of their epochs (rebuilt when next loaded), and tell other connections."""
        filters.add([k for k, _ in keys], [s >> EPOCH_BITS for _, s in keys])
        epochs = sorted({s >> EPOCH_BITS for _, s in keys})
        self._db.executemany("DELETE FROM key_filters WHERE epoch = ?", [(e,) for e in epochs])
        self._keys_rewrites += 1
        self._set_meta("key_rewrites", self._keys_rewrites)

    def _meta(self, name: str) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def _meta_int(self, name: str) -> int:
        return int(self._meta(name) or 0)

    def _set_meta(self, name: str, value: object) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, value))

    def _bump_spans_version(self, config_id: int) -> None:
        self._db.execute(
            "UPDATE configs SET spans_version = spans_version + 1 WHERE id = ?", (config_id,)
        )

    @property
    def line_keys(self) -> bool:
        """Whether games counted under line keys (before schema 4) may still exist."""
        return self._line_keys

    # -- re-keying (schema 4, and aliases added later) ---------------------------------------

    def files_to_rekey(self) -> list[FileRow]:
        """Files whose games may carry keys of an older rule (see migration 4)."""
        rows = self._db.execute(
            "SELECT id, path, dev, ino, offset, fingerprint, size, mtime_ns, gone "
            "FROM files WHERE rekey = 1"
        ).fetchall()
        return [
            FileRow(r[0], r[1], Cursor(r[2], r[3], r[4], r[5], r[6], r[7]), bool(r[8]))
            for r in rows
        ]

    def spans_in(self, file_id: int) -> list[tuple[int, int, bytes, int, int]]:
        """(config id, seq, key, offset, length) of the games whose span is in a file,
        by offset."""
        return self._db.execute(
            "SELECT config_id, seq, key, offset, length FROM games WHERE file_id = ? "
            "ORDER BY offset",
            (file_id,),
        ).fetchall()

    def rekey(self, file_id: int, keys: Sequence[tuple[int, int, bytes]]) -> int:
        """Give games (config id, seq, new key) their new keys and clear the file's mark,
        at once.

        A key already held by another game (a copy counted under the new key) is
        left alone: counts never change here. Returns the games re-keyed.
        """
        with self._transaction():
            filters = self._filters()
            held = self._find(filters, [k for _, _, k in keys])
            changed: dict[bytes, tuple[int, int]] = {}
            for config_id, seq, key in keys:
                if key not in held and key not in changed:
                    changed[key] = (config_id, seq)
            if changed:
                self._db.executemany(
                    "UPDATE games SET key = ? WHERE config_id = ? AND seq = ?",
                    [(k, c, s) for k, (c, s) in changed.items()],
                )
                self._keys_changed(filters, [(k, s) for k, (_, s) in changed.items()])
                for config_id in {c for c, _ in changed.values()}:
                    self._bump_spans_version(config_id)
            self._db.execute("UPDATE files SET rekey = 0 WHERE id = ?", (file_id,))
        return len(changed)

    def fold_aliases(self, aliases: Mapping[str, str]) -> dict[str, str]:
        """Move the games of configs named by a board alias (`hex_2p`) to the board's
        config (`hexagonal_2p`), so that status shows canonical names only.

        Totals move with the games; the target's trained count is recomputed
        under its watermark. Files holding moved games are marked for re-keying
        (their keys were made under the alias). Returns {alias config: config}.
        """
        moves: dict[str, str] = {}
        for name in self._config_ids:
            parts = split_config_name(name)
            if parts is not None and parts[0] in aliases:
                moves[name] = config_name(aliases[parts[0]], parts[1])
        if not moves:
            return moves
        with self._transaction():
            for source, target in moves.items():
                source_id, target_id = self._config_ids[source], self._config_id(target)
                self._db.execute(
                    "UPDATE files SET rekey = 1 WHERE id IN "
                    "(SELECT DISTINCT file_id FROM games WHERE config_id = ?)",
                    (source_id,),
                )
                self._db.execute(
                    "UPDATE games SET config_id = ? WHERE config_id = ?", (target_id, source_id)
                )
                self._bump_spans_version(target_id)
                self._db.execute(
                    "UPDATE configs SET total = (SELECT COUNT(*) FROM games WHERE config_id = ?), "
                    "trained_count = (SELECT COUNT(*) FROM games WHERE config_id = ? "
                    "AND seq <= trained_through), last_game_at = NULLIF(MAX(COALESCE(last_game_at, 0), "
                    "COALESCE((SELECT last_game_at FROM configs WHERE id = ?), 0)), 0) WHERE id = ?",
                    (target_id, target_id, source_id, target_id),
                )
                self._db.execute("DELETE FROM configs WHERE id = ?", (source_id,))
        self._config_ids = dict(self._db.execute("SELECT name, id FROM configs").fetchall())
        return moves

    def _config_id(self, name: str) -> int:
        config_id = self._config_ids.get(name)
        if config_id is None:
            self._db.execute("INSERT OR IGNORE INTO configs (name) VALUES (?)", (name,))
            config_id = self._db.execute(
                "SELECT id FROM configs WHERE name = ?", (name,)
            ).fetchone()[0]
            self._config_ids[name] = config_id
        return config_id

    # -- queries --------------------------------------------------------------------------

    def config_counts(self) -> list[ConfigCount]:
        """Per config seen in any game: totals, new games, watermark, last game time."""
        rows = self._db.execute(
            "SELECT name, total, total - trained_count, trained_through, last_game_at "
            "FROM configs ORDER BY name"
        ).fetchall()
        return [ConfigCount(*r) for r in rows]

    def reject_counts(self) -> dict[str, int]:
        return dict(
            self._db.execute(
                "SELECT reason, COUNT(*) FROM rejects GROUP BY reason ORDER BY reason"
            ).fetchall()
        )

    def rejected_total(self) -> int:
        count: int = self._db.execute("SELECT COUNT(*) FROM rejects").fetchone()[0]
        return count

    def game_count(self) -> int:
        count: int = self._db.execute("SELECT COUNT(*) FROM games").fetchone()[0]
        return count

    def game_keys(self) -> set[bytes]:
        return {r[0] for r in self._db.execute("SELECT key FROM games")}

    def max_seq(self, config: str) -> int:
        """The highest sequence number of a config's games (0 with none)."""
        row = self._db.execute(
            "SELECT MAX(g.seq) FROM games g JOIN configs c ON c.id = g.config_id WHERE c.name = ?",
            (config,),
        ).fetchone()
        return int(row[0] or 0)

    def total(self, config: str) -> int:
        """Games counted for a config."""
        row = self._db.execute("SELECT total FROM configs WHERE name = ?", (config,)).fetchone()
        return int(row[0]) if row else 0

    def trained_through(self, config: str) -> int:
        row = self._db.execute(
            "SELECT trained_through FROM configs WHERE name = ?", (config,)
        ).fetchone()
        return int(row[0]) if row else 0

    def window(self, config: str, last_seq: int, count: int) -> list[Span]:
        """The `count` most recent games of a config up to `last_seq`, oldest first."""
        rows = self._db.execute(
            "SELECT g.seq, g.key, f.path, g.offset, g.length FROM games g "
            "JOIN files f ON f.id = g.file_id JOIN configs c ON c.id = g.config_id "
            "WHERE c.name = ? AND g.seq <= ? ORDER BY g.seq DESC LIMIT ?",
            (config, last_seq, count),
        ).fetchall()
        return [Span(*r) for r in reversed(rows)]

    def held_out_games(self, config: str, last_seq: int, count: int, fraction: float) -> list[Span]:
        """The `count` most recent games of a config's held-out slice up to `last_seq`,
        oldest first (ringd.train.holdout: by key, `fraction` of them)."""
        buckets = held_out_buckets(fraction)
        if buckets == 0 or count <= 0:
            return []
        rows = self._db.execute(
            "SELECT g.seq, g.key, f.path, g.offset, g.length FROM games g "
            "JOIN files f ON f.id = g.file_id JOIN configs c ON c.id = g.config_id "
            "WHERE c.name = ? AND g.seq <= ? ORDER BY g.seq DESC",
            (config, last_seq),
        )
        found: list[Span] = []
        for row in rows:  # newest first, stepping only as far back as needed
            if bucket_of(row[1]) < buckets:
                found.append(Span(*row))
                if len(found) == count:
                    break
        rows.close()
        return found[::-1]

    def spans_version(self, config: str) -> int:
        """Changes so far to the spans or keys of a config's counted games (see migration 6)."""
        row = self._db.execute(
            "SELECT spans_version FROM configs WHERE name = ?", (config,)
        ).fetchone()
        return int(row[0]) if row else 0

    def window_start(self, config: str, last_seq: int, size: int) -> int:
        """The sequence number of the oldest of a config's `size` most recent games up
        to `last_seq` (0: it has no more than `size` of them). An index scan, in SQLite."""
        if size <= 0:
            return last_seq + 1
        row = self._db.execute(
            "SELECT seq FROM games WHERE config_id = (SELECT id FROM configs WHERE name = ?) "
            "AND seq <= ? ORDER BY seq DESC LIMIT 1 OFFSET ?",
            (config, last_seq, size - 1),
        ).fetchone()
        return int(row[0]) if row else 0

    def span_columns(self, config: str, after_seq: int, last_seq: int) -> Iterator[SpanColumns]:
        """A config's games with `after_seq` < seq <= `last_seq`, a column at a time, in
        stretches of SPAN_STRETCH sequence numbers, oldest first.

        Aggregated in SQLite because Python's sqlite3 spends about a microsecond making
        each row's tuple: most of the time a 500,000-game window took to read row by row.
        group_concat takes the rows in table order (by seq) here, but SQLite does not
        promise it: callers sort by seq where it matters.
        """
        row = self._db.execute(
            "SELECT config_id, MIN(seq) FROM games "
            "WHERE config_id = (SELECT id FROM configs WHERE name = ?) AND seq > ? AND seq <= ?",
            (config, after_seq, last_seq),
        ).fetchone()
        if row[1] is None:
            return
        config_id, low = int(row[0]), int(row[1]) - 1
        for lo in range(low, last_seq, SPAN_STRETCH):
            n, seqs, keys, offsets, lengths, file_ids = self._db.execute(
                "SELECT COUNT(*), group_concat(seq), CAST(group_concat(key, '') AS BLOB), "
                "group_concat(offset), group_concat(length), group_concat(file_id) FROM games "
                "WHERE config_id = ? AND seq > ? AND seq <= ?",
                (config_id, lo, min(lo + SPAN_STRETCH, last_seq)),
            ).fetchone()
            if n:
                yield SpanColumns(n, seqs, keys, offsets, lengths, file_ids)

    def paths(self, file_ids: Iterable[int]) -> dict[int, str]:
        """The path of each file id."""
        ids = sorted(set(file_ids))
        out: dict[int, str] = {}
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            marks = ",".join("?" * len(part))
            out.update(self._db.execute(f"SELECT id, path FROM files WHERE id IN ({marks})", part))
        return out

    def count_between(self, config: str, first_seq: int, last_seq: int) -> int:
        row = self._db.execute(
            "SELECT COUNT(*) FROM games g JOIN configs c ON c.id = g.config_id "
            "WHERE c.name = ? AND g.seq BETWEEN ? AND ?",
            (config, first_seq, last_seq),
        ).fetchone()
        return int(row[0])

    # -- pauses ---------------------------------------------------------------------------

    def set_paused(self, config: str, paused: bool) -> None:
        with self._transaction():
            self._config_id(config)
            self._db.execute("UPDATE configs SET paused = ? WHERE name = ?", (int(paused), config))

    def paused(self) -> set[str]:
        return {r[0] for r in self._db.execute("SELECT name FROM configs WHERE paused = 1")}

    # -- jobs -----------------------------------------------------------------------------

    def create_job(
        self,
        job_id: str,
        config: str,
        first_seq: int,
        last_seq: int,
        games: int,
        triggered: bool,
        skipped: int = 0,
    ) -> JobRow:
        """A queued job for a config's sequence range; the same range reuses its row.

        `skipped`: new games of the range older than the job's window (max_games).
        """
        with self._transaction():
            self._db.execute(
                "INSERT INTO jobs (id, config, first_seq, last_seq, games, state, triggered, "
                "created, skipped) VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, ?) "
                "ON CONFLICT (config, first_seq, last_seq) "
                "DO UPDATE SET state = CASE WHEN state = 'succeeded' THEN state ELSE 'queued' END, "
                "triggered = excluded.triggered",
                (job_id, config, first_seq, last_seq, games, int(triggered), time.time(), skipped),
            )
        job = self.job_for_range(config, first_seq, last_seq)
        assert job is not None
        return job

    def job_for_range(self, config: str, first_seq: int, last_seq: int) -> JobRow | None:
        row = self._db.execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE config = ? AND first_seq = ? AND last_seq = ?",
            (config, first_seq, last_seq),
        ).fetchone()
        return _job(row) if row else None

    def job(self, job_id: str) -> JobRow | None:
        row = self._db.execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        return _job(row) if row else None

    def jobs(self, limit: int = 50, config: str | None = None) -> list[JobRow]:
        """Recent jobs, newest first."""
        where, args = ("WHERE config = ?", (config,)) if config else ("", ())
        rows = self._db.execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs {where} ORDER BY created DESC, id DESC LIMIT ?",
            (*args, limit),
        ).fetchall()
        return [_job(r) for r in rows]

    def job_started(self, job_id: str, slot: str) -> None:
        with self._transaction():
            self._db.execute(
                "UPDATE jobs SET state = 'running', slot = ?, started = ?, attempts = attempts + 1, "
                "exit_code = NULL, error = NULL, finished = NULL WHERE id = ?",
                (slot, time.time(), job_id),
            )

    def job_progress(self, job_id: str, progress: dict[str, Any]) -> None:
        with self._transaction():
            self._db.execute(
                "UPDATE jobs SET progress = ? WHERE id = ?", (json.dumps(progress), job_id)
            )

    def finish_job(
        self,
        job_id: str,
        state: JobState,
        *,
        exit_code: int | None = None,
        error: str | None = None,
        checkpoint: str | None = None,
        checkpoint_sha256: str | None = None,
    ) -> None:
        """Record a job's end; success also moves the config's watermark, in the same transaction."""
        assert state in FINISHED_STATES
        with self._transaction():
            self._db.execute(
                "UPDATE jobs SET state = ?, finished = ?, exit_code = ?, error = ?, "
                "checkpoint = COALESCE(?, checkpoint), checkpoint_sha256 = COALESCE(?, checkpoint_sha256) "
                "WHERE id = ?",
                (state, time.time(), exit_code, error, checkpoint, checkpoint_sha256, job_id),
            )
            if state == "succeeded":
                config, last_seq = self._db.execute(
                    "SELECT config, last_seq FROM jobs WHERE id = ?", (job_id,)
                ).fetchone()
                config_id = self._config_id(config)
                # Only forward: a late success of an older range never moves it back.
                self._db.execute(
                    "UPDATE configs SET trained_through = ?, trained_count = "
                    "(SELECT COUNT(*) FROM games WHERE config_id = ? AND seq <= ?) "
                    "WHERE id = ? AND trained_through < ?",
                    (last_seq, config_id, last_seq, config_id, last_seq),
                )

    def interrupt_unfinished_jobs(self) -> list[JobRow]:
        """Jobs left queued or running by a daemon that died: mark them interrupted."""
        with self._transaction():
            rows = self._db.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state IN ('queued', 'running')"
            ).fetchall()
            self._db.execute(
                "UPDATE jobs SET state = 'interrupted', finished = ?, "
                "error = COALESCE(error, 'the daemon stopped while the job ran') "
                "WHERE state IN ('queued', 'running')",
                (time.time(),),
            )
        return [_job(r) for r in rows]

    def job_history(self) -> dict[str, JobHistory]:
        """Per config: last start, last success, consecutive failures, last failure and error.

        Every failed attempt counts, also the retries of one range (one row), so
        the backoff grows with each of them.
        """
        out: dict[str, JobHistory] = {}
        summary = self._db.execute(
            "SELECT config, MAX(started), MAX(CASE WHEN state = 'succeeded' THEN finished END) "
            "FROM jobs GROUP BY config"
        ).fetchall()
        for config, last_start, last_success in summary:
            rows = self._db.execute(
                "SELECT state, finished, error, attempts FROM jobs WHERE config = ? "
                "ORDER BY COALESCE(finished, started, created) DESC LIMIT ?",
                (config, HISTORY_ROWS),
            ).fetchall()
            failures = 0
            last_failure = last_error = None
            for state, finished, error, attempts in rows:
                if state == "succeeded":
                    break
                if state == "failed":
                    failures += max(1, attempts)
                    if last_failure is None:
                        last_failure, last_error = finished, error
            out[config] = JobHistory(last_start, last_success, failures, last_failure, last_error)
        return out

    # -- checkpoints ----------------------------------------------------------------------

    def checkpoints(self) -> dict[str, CheckpointRow]:
        rows = self._db.execute(f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints").fetchall()
        out = {}
        for r in rows:
            values = list(r)
            values[13], values[15] = bool(values[13]), bool(values[15])
            values[16] = None if values[16] is None else bool(values[16])
            values[19] = json.loads(values[19]) if values[19] else None
            out[r[0]] = CheckpointRow(*values)
        return out

    def register_checkpoint(
        self,
        path: str,
        *,
        config: str | None,
        origin: str,
        job_id: str | None,
        last_seq: int | None,
        stat: tuple[int, int, int, int],
    ) -> None:
        """A new or changed file: its verdict is pending until a child validates it.

        A changed file (another stat) is another checkpoint: its promotion is decided again.
        """
        changed = (
            "NOT (dev = excluded.dev AND ino = excluded.ino AND size = excluded.size "
            "AND mtime_ns = excluded.mtime_ns)"
        )
        with self._transaction():
            self._db.execute(
                "INSERT INTO checkpoints (path, config, origin, job_id, last_seq, dev, ino, size, "
                "mtime_ns, verdict) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending') "
                "ON CONFLICT (path) DO UPDATE SET config = COALESCE(excluded.config, config), "
                "origin = excluded.origin, job_id = excluded.job_id, last_seq = excluded.last_seq, "
                "dev = excluded.dev, ino = excluded.ino, size = excluded.size, "
                "mtime_ns = excluded.mtime_ns, verdict = 'pending', reason = NULL, "
                "quarantined_to = NULL, removed = 0, "
                f"promoted = CASE WHEN {changed} THEN NULL ELSE promoted END, "
                f"promote_reason = CASE WHEN {changed} THEN NULL ELSE promote_reason END, "
                f"promoted_at = CASE WHEN {changed} THEN NULL ELSE promoted_at END, "
                f"held_out = CASE WHEN {changed} THEN NULL ELSE held_out END",
                (path, config, origin, job_id, last_seq, *stat),
            )

    def record_verdict(
        self,
        path: str,
        *,
        ok: bool,
        reason: str | None,
        sha256: str | None,
        config: str | None,
        quarantined_to: str | None = None,
    ) -> None:
        with self._transaction():
            self._db.execute(
                "UPDATE checkpoints SET verdict = ?, reason = ?, sha256 = ?, validated_at = ?, "
                "config = COALESCE(config, ?), quarantined_to = ? WHERE path = ?",
                ("ok" if ok else "bad", reason, sha256, time.time(), config, quarantined_to, path),
            )

    def set_checkpoint_flags(
        self, path: str, *, pinned: bool | None = None, removed: bool | None = None
    ) -> bool:
        """Pin or unpin, or mark removed; False when the path is not registered."""
        with self._transaction():
            cur = self._db.execute(
                "UPDATE checkpoints SET pinned = COALESCE(?, pinned), removed = COALESCE(?, removed) "
                "WHERE path = ?",
                (
                    None if pinned is None else int(pinned),
                    None if removed is None else int(removed),
                    path,
                ),
            )
        return cur.rowcount > 0

    def set_promotion(
        self,
        path: str,
        *,
        promoted: bool,
        reason: str,
        at: float | None,
        held_out: Mapping[str, Any] | None = None,
    ) -> bool:
        """Record the promotion gate's decision (``held_out``: keep the one recorded if None)."""
        with self._transaction():
            cur = self._db.execute(
                "UPDATE checkpoints SET promoted = ?, promote_reason = ?, promoted_at = ?, "
                "held_out = COALESCE(?, held_out) WHERE path = ?",
                (
                    int(promoted),
                    reason,
                    at,
                    json.dumps(held_out) if held_out is not None else None,
                    path,
                ),
            )
        return cur.rowcount > 0

    def checkpoint_jobs(self) -> list[tuple[str, str, str, int]]:
        """(checkpoint path, config, job id, last seq) of every successful job."""
        return [
            (r[0], r[1], r[2], r[3])
            for r in self._db.execute(
                "SELECT checkpoint, config, id, last_seq FROM jobs "
                "WHERE state = 'succeeded' AND checkpoint IS NOT NULL"
            )
        ]

    # -- plumbing -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            # Inside the try: with a large page cache the pages reach the WAL only now,
            # so a full disk fails the COMMIT, and the transaction must still be undone.
            self._db.execute("COMMIT")
        except BaseException:
            # SQLite may have rolled back already (disk full): then there is none.
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            # The key filters may hold what was rolled back: made again when next needed.
            self._keys = None
            # Config ids cached inside the rolled-back transaction are void.
            self._config_ids = dict(self._db.execute("SELECT name, id FROM configs").fetchall())
            raise
