"""Discovery and reconciliation scans: every `*.jsonl` below the roots, in any directory.

Watch events are only hints; these scans are the truth. A scan walks every
root, compares each file's stat with its cursor, and reads only files that
changed, so a scan of an unchanged tree costs one stat per file.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ringd.cursor import FileChange, FileResult, FileStat, compare, index_file, rekey_file
from ringd.ledger import Added, FileRow, Ledger, merge_added
from ringd.records import Rules

SUFFIX = ".jsonl"


@dataclass(slots=True)
class Discovery:
    """The `*.jsonl` files found below some roots, and what could not be walked."""

    files: dict[str, FileStat] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    # Directories that could not be listed: files known below them are not "gone".
    unreadable: list[str] = field(default_factory=list)


def discover(roots: Iterable[Path | str]) -> Discovery:
    """Walk the roots recursively, following directory symlinks but never in a loop.

    A file is its device and inode, not its path: one reached under several paths
    (hard links, file symlinks) is listed once, under its shortest path, and a
    directory symlink into the roots is not followed: its files are found under
    their own paths, whichever comes first in the walk."""
    found = Discovery()
    visited: set[tuple[int, int]] = set()
    roots = list(roots)
    real_roots = [os.path.join(os.path.realpath(r), "") for r in roots]
    for root in roots:
        root = os.path.normpath(root)
        try:
            st = os.stat(root)
        except FileNotFoundError:
            found.errors.append(f"{root}: watched root does not exist (yet)")
            found.unreadable.append(root)
            continue
        except OSError as e:
            found.errors.append(f"{root}: cannot stat watched root: {e.strerror}")
            found.unreadable.append(root)
            continue
        if not stat.S_ISDIR(st.st_mode):
            found.errors.append(f"{root}: watched root is not a directory")
            continue
        _walk(root, (st.st_dev, st.st_ino), visited, found, real_roots)
    one_path_per_file(found)
    return found


def one_path_per_file(found: Discovery, known: Mapping[str, FileRow] | None = None) -> int:
    """Keep one path per file (device, inode) in `found`; returns how many were dropped.

    Symlinked directories and hard links lead to the same file under several paths;
    read under each, its rejects would count once per path (its games, keyed by
    content, once). The path the ledger knows the file by wins while it still names
    that file (a directory that just appeared through a symlink, `ln -s .. sp/x/up`,
    is scanned alone: the known path is not in this discovery); otherwise the
    shortest path, then the first in sort order.
    """
    live: dict[tuple[int, int], str] = {}
    for path, row in (known or {}).items():
        if not row.gone:
            live[(row.cursor.dev, row.cursor.ino)] = path
    keep: dict[tuple[int, int], str] = {}
    dropped = 0
    for path in sorted(found.files, key=lambda p: (p.count(os.sep), len(p), p)):
        st = found.files[path]
        ident = (st.dev, st.ino)
        chosen = keep.get(ident)
        if chosen is None:
            owner = live.get(ident)
            # Outside this discovery, the known path wins only over a path through a
            # symlink (a known file under a root since removed keeps being read here).
            known_wins = owner is not None and (
                owner in found.files or os.path.realpath(path) != path
            )
            chosen = (
                owner if owner is not None and known_wins and _names(owner, ident, found) else path
            )
            keep[ident] = chosen
        if chosen != path:
            del found.files[path]
            dropped += 1
    return dropped


def _names(path: str, ident: tuple[int, int], found: Discovery) -> bool:
    """Does `path` (still) name the file `ident`?"""
    st = found.files.get(path)
    if st is not None:
        return (st.dev, st.ino) == ident
    try:
        fresh = os.stat(path)
    except OSError:
        return False
    return (fresh.st_dev, fresh.st_ino) == ident and stat.S_ISREG(fresh.st_mode)


def _walk(
    top: str,
    top_id: tuple[int, int],
    visited: set[tuple[int, int]],
    found: Discovery,
    real_roots: list[str],
) -> None:
    if top_id in visited:
        return
    visited.add(top_id)
    stack = [top]
    while stack:
        directory = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError as e:
            found.errors.append(f"{directory}: cannot list directory: {e.strerror}")
            found.unreadable.append(directory)
            continue
        for entry in entries:
            try:
                if entry.is_dir():
                    st = entry.stat()
                    ident = (st.st_dev, st.st_ino)
                    into_roots = entry.is_symlink() and (
                        os.path.join(os.path.realpath(entry.path), "").startswith(tuple(real_roots))
                    )
                    if ident in visited or into_roots:
                        if entry.is_symlink():
                            found.errors.append(
                                f"{entry.path}: symlink loop or second path to a directory "
                                "already watched; skipped"
                            )
                        continue
                    visited.add(ident)
                    stack.append(entry.path)
                elif entry.name.endswith(SUFFIX) and entry.is_file():
                    found.files[entry.path] = FileStat.of(entry.stat())
            except FileNotFoundError:
                continue  # removed while we looked (or a dangling symlink)
            except OSError as e:
                found.errors.append(f"{entry.path}: cannot stat: {e.strerror}")


@dataclass(slots=True)
class ScanReport:
    """What one reconciliation scan saw and did."""

    files: int = 0
    files_read: int = 0
    bytes_read: int = 0
    games_read: int = 0
    new_games: dict[str, Added] = field(default_factory=dict)
    rejects: dict[str, int] = field(default_factory=dict)
    gone: int = 0
    rekeyed: int = 0  # games given content keys (schema 4 migration, new aliases)
    new_files: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def new_total(self) -> int:
        return sum(a.count for a in self.new_games.values())

    def add(self, path: str, result: FileResult) -> None:
        if result.change is FileChange.NEW:
            self.new_files.append(path)
        self.files_read += 1
        self.bytes_read += result.bytes_read
        self.games_read += result.games
        merge_added(self.new_games, result.new_games)
        for reason, n in result.rejects.items():
            self.rejects[reason] = self.rejects.get(reason, 0) + n


@dataclass(frozen=True, slots=True)
class Plan:
    """Files to read in this scan and the bytes they hold beyond their cursors."""

    paths: list[str]
    pending_bytes: int


def plan_scan(known: Mapping[str, FileRow], found: Discovery) -> Plan:
    """Which files changed since their cursors (stat only, nothing is opened)."""
    paths: list[str] = []
    pending = 0
    for path, st in found.files.items():
        row = known.get(path)
        cursor = row.cursor if row else None
        if compare(cursor, st) in (FileChange.UNCHANGED, FileChange.EMPTY):
            continue
        paths.append(path)
        same_file = cursor is not None and (cursor.dev, cursor.ino) == (st.dev, st.ino)
        pending += max(0, st.size - (cursor.offset if same_file and cursor else 0))
    return Plan(paths, pending)


def scan(
    ledger: Ledger,
    roots: Sequence[Path | str],
    rules: Rules,
    *,
    on_plan: Callable[[Plan], Callable[[int], None] | None] | None = None,
    stop: threading.Event | None = None,
) -> ScanReport:
    """Reconcile the ledger with the files below `roots`: read everything new.

    `rules` say how lines become games. Configs named by a board alias are
    folded into their board's, and files marked for re-keying (a ledger from
    before schema 4, a new alias) are re-keyed before anything is read, so a
    rewritten file read again from 0 finds its games under their new keys.
    `on_plan` sees the plan before reading and may return a progress callback
    that receives byte counts as they are consumed. `stop` ends the scan early
    (shutdown); what was read so far is committed.
    """
    started = time.monotonic()
    found = discover(roots)
    report = ScanReport(files=len(found.files), errors=list(found.errors))
    ledger.fold_aliases(rules.aliases)
    report.rekeyed = rekey(ledger, found, rules, report.errors, stop)
    known = ledger.files()
    # Second paths to files the ledger knows (a directory symlink that just appeared).
    report.files -= one_path_per_file(found, known)
    plan = plan_scan(known, found)
    progress = on_plan(plan) if on_plan else None
    for path in plan.paths:
        if stop is not None and stop.is_set():
            break
        try:
            report.add(path, index_file(ledger, path, rules, on_bytes=progress, stop=stop))
        except FileNotFoundError:
            continue  # removed since it was listed; the next scan marks it gone
        except OSError as e:
            report.errors.append(f"{path}: cannot read: {e.strerror or e}")
    report.gone = mark_gone(ledger, roots, found, known)
    report.seconds = time.monotonic() - started
    return report


def rekey(
    ledger: Ledger,
    found: Discovery,
    rules: Rules,
    errors: list[str],
    stop: threading.Event | None = None,
) -> int:
    """Re-key the games of marked files found on disk; files not found keep their keys
    (and their mark, for when they come back). Returns the games re-keyed."""
    done = 0
    for row in ledger.files_to_rekey():
        if stop is not None and stop.is_set():
            break
        if row.path not in found.files:
            continue
        try:
            done += rekey_file(ledger, row, rules)
        except FileNotFoundError:
            continue
        except OSError as e:
            errors.append(f"{row.path}: cannot re-key: {e.strerror or e}")
    return done


def mark_gone(
    ledger: Ledger, roots: Sequence[Path | str], found: Discovery, known: Mapping[str, FileRow]
) -> int:
    """Flag known files below the roots that no longer exist; their games stay counted."""
    prefixes = [os.path.join(os.path.normpath(r), "") for r in roots]
    blind = [os.path.join(d, "") for d in found.unreadable]
    gone = [
        row.id
        for path, row in known.items()
        if not row.gone
        and path not in found.files
        and any(path.startswith(p) for p in prefixes)
        and not any(path.startswith(b) for b in blind)
    ]
    if gone:
        ledger.mark_gone(gone)
    return len(gone)
