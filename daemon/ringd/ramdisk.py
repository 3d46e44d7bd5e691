"""RAM-disk flusher: complete lines from a tmpfs tree to persistent storage, fsynced.

Each source file `SOURCE/rel.jsonl` is copied to `TARGET/rel.jsonl`. A target
is always a byte prefix of its source that ends in a newline, so its length is
the resume offset and no separate state is needed:

- only complete lines are appended; a trailing partial line waits in the source;
- a target is created only with its first complete line (no empty files);
- append, then fsync the file (and its directory when new) before a copy counts;
- a failed append is cut back to where it started; a target found ending in a
  partial line (a crash mid-append) is cut back to its last newline;
- a source replaced or rewritten (shorter than its target, or its bytes no
  longer match the target's) goes to a new target beside the old one,
  `rel.r1.jsonl`, `rel.r2.jsonl`, ...; old targets are never touched again;
- nothing in a target tree is ever deleted. Sources are deleted only with
  `delete_source_after_s`, and only when fully copied and unchanged that long.

The Flusher is synchronous; the daemon runs it on its own thread.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from ringd.fsutil import fsync_dir
from ringd.scan import SUFFIX, discover
from ringd.settings import RamdiskMapping

COPY_CHUNK = 8 * 1024 * 1024
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 60.0
MATCH_SPAN = 4096
_GENERATION = re.compile(r"\.r(\d+)\.jsonl$")


class FlushError(Exception):
    """A target could not be written; the source is intact and the target has no partial line."""


@dataclass(slots=True)
class _Target:
    path: str
    length: int  # verified: a prefix of the source, ending in a newline
    source_ino: int
    source_size: int  # the source's size at the last flush (to skip unchanged files)
    source_mtime_ns: int


@dataclass(slots=True)
class MappingStatus:
    source: str
    target: str
    source_present: bool = False
    files: int = 0
    pending_bytes: int = 0  # complete lines in sources not yet in targets
    pending_games: int = 0
    partial_bytes: int = 0  # unfinished lines waiting in sources
    flushed_games: int = 0
    flushed_bytes: int = 0
    last_flush_at: float | None = None
    deleted_sources: int = 0
    errors: int = 0
    last_error: str | None = None
    failing: dict[str, str] = field(default_factory=dict)  # source path -> error


class Flusher:
    def __init__(self, mapping: RamdiskMapping) -> None:
        self.mapping = mapping
        self.source = os.path.normpath(mapping.source)
        self.target = os.path.normpath(mapping.target)
        self._targets: dict[str, _Target] = {}  # by source path
        self._pending_since: dict[str, float] = {}
        self._retry: dict[str, tuple[float, float]] = {}  # failing source -> (next try, delay)
        self._transitions: list[tuple[str, str | None]] = []
        self._flushed: list[tuple[str, str, int, float]] = []  # source, target, end, when
        # Per source: (complete-line bytes not yet copied, their games, partial-line bytes).
        self._pending: dict[str, tuple[int, int, int]] = {}
        self.status = MappingStatus(self.source, self.target)

    # -- entry points -----------------------------------------------------------------

    def sweep(self, force: bool = False) -> None:
        """Flush every source file (stat-only for those unchanged since their last flush).

        Failing files are retried with backoff, unless `force` (the final flush).
        """
        self.status.source_present = os.path.isdir(self.source)
        if not self.status.source_present:
            # A wiped tmpfs (reboot): the targets stay exactly as they are.
            self._forget(list(self._pending) + list(self._targets))
            self.status.files = 0
            return
        found = discover([self.source])
        self.status.files = len(found.files)
        self._forget(set(self._targets) - set(found.files))
        self._forget(set(self._pending) - set(found.files))
        self.flush(found.files, force=force)
        self._delete_old_sources()

    def flush(self, paths: Iterable[str], force: bool = False) -> None:
        """Flush these source files now (watch events name them)."""
        now = time.monotonic()
        for path in paths:
            if not path.endswith(SUFFIX):
                continue
            if not force and path in self._retry and self._retry[path][0] > now:
                continue
            try:
                copied = self._flush_file(path)
            except FileNotFoundError:
                self._forget([path])  # vanished mid-copy: nothing to do
                continue
            except (FlushError, OSError) as e:
                self._failed(path, str(e), now)
                continue
            self._recovered(path)
            if copied:
                games, nbytes = copied
                self.status.flushed_games += games
                self.status.flushed_bytes += nbytes
                self.status.last_flush_at = time.time()
        self._total_pending()

    def drain_flushed(self) -> list[tuple[str, str, int, float]]:
        """Durable copies since the last call: (source, target, bytes now in target, when)."""
        out, self._flushed = self._flushed, []
        return out

    def drain_transitions(self) -> list[tuple[str, str | None]]:
        """Files that started failing (with the error) or recovered (None) since the last call."""
        out, self._transitions = self._transitions, []
        return out

    def _failed(self, path: str, message: str, now: float) -> None:
        self._pending[path] = _pending_in(path, self._targets.get(path))
        self.status.errors += 1
        self.status.last_error = message
        if self.status.failing.get(path) != message:
            self._transitions.append((path, message))
        self.status.failing[path] = message
        self._pending_since.setdefault(path, time.time())
        delay = min(RETRY_MAX_S, self._retry[path][1] * 2) if path in self._retry else RETRY_FIRST_S
        self._retry[path] = (now + delay, delay)

    def _recovered(self, path: str) -> None:
        if self.status.failing.pop(path, None) is not None:
            self._transitions.append((path, None))
        self._pending_since.pop(path, None)
        self._retry.pop(path, None)
        target = self._targets.get(path)
        if target is not None:
            self._pending[path] = (0, 0, target.source_size - target.length)

    def _forget(self, paths: Iterable[str]) -> None:
        for path in paths:
            self._targets.pop(path, None)
            self._pending.pop(path, None)
            self._pending_since.pop(path, None)
            self._retry.pop(path, None)
            if self.status.failing.pop(path, None) is not None:
                self._transitions.append((path, None))
        self._total_pending()

    def _total_pending(self) -> None:
        self.status.pending_bytes = sum(p[0] for p in self._pending.values())
        self.status.pending_games = sum(p[1] for p in self._pending.values())
        self.status.partial_bytes = sum(p[2] for p in self._pending.values())

    @property
    def oldest_pending_age_s(self) -> float | None:
        if not self._pending_since:
            return None
        return time.time() - min(self._pending_since.values())

    # -- one file ---------------------------------------------------------------------

    def _flush_file(self, source: str) -> tuple[int, int] | None:
        fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            known = self._targets.get(source)
            if (
                known is not None
                and known.source_ino == st.st_ino
                and (known.source_size, known.source_mtime_ns) == (st.st_size, st.st_mtime_ns)
            ):
                return None
            target = self._resolve_target(source, fd, st, known)
            end = _last_newline_end(fd, target.length, st.st_size)
            copied = None
            if end > target.length:
                copied = _append(fd, target.path, target.length, end)
                target.length = end
                self._flushed.append((source, target.path, end, time.time()))
            target.source_ino, target.source_size = st.st_ino, st.st_size
            target.source_mtime_ns = st.st_mtime_ns
            self._targets[source] = target
            return copied
        finally:
            os.close(fd)

    def _resolve_target(
        self, source: str, fd: int, st: os.stat_result, known: _Target | None
    ) -> _Target:
        """The target this source appends to, checked to be a prefix of it."""
        if (
            known is not None
            and known.source_ino == st.st_ino
            and st.st_size >= known.length
            and _prefix_matches(fd, known.path, known.length)
        ):
            return known
        base = os.path.join(self.target, os.path.relpath(source, self.source))
        generations = _generations(base)
        number, current = generations[-1] if generations else (0, base)
        length = _repair(current)
        if length == 0 or (st.st_size >= length and _prefix_matches(fd, current, length)):
            return _Target(current, length, st.st_ino, -1, -1)
        # Replaced or rewritten: a new target beside the old one, which stays as it is.
        return _Target(_generation_path(base, number + 1), 0, st.st_ino, -1, -1)

    # -- housekeeping -----------------------------------------------------------------

    def _delete_old_sources(self) -> None:
        keep_s = self.mapping.delete_source_after_s
        if keep_s is None:
            return
        now = time.time()
        for source, target in list(self._targets.items()):
            try:
                st = os.stat(source)
            except FileNotFoundError:
                continue
            fully_copied = st.st_ino == target.source_ino and st.st_size == target.length > 0
            if (
                fully_copied
                and now - st.st_mtime >= keep_s
                and os.path.getsize(target.path) == target.length
            ):
                os.unlink(source)
                del self._targets[source]
                self.status.deleted_sources += 1


def _pending_in(source: str, target: _Target | None) -> tuple[int, int, int]:
    """What a failing source holds beyond its target: complete bytes, games, partial bytes."""
    done = target.length if target else 0
    try:
        with open(source, "rb") as f:
            f.seek(done)
            rest = f.read()
    except OSError:
        return (0, 0, 0)
    complete = rest[: rest.rfind(b"\n") + 1]
    return len(complete), complete.count(b"\n"), len(rest) - len(complete)


def _last_newline_end(fd: int, start: int, size: int) -> int:
    """The offset just after the last newline in [start, size), or `start` if none."""
    pos = size
    block = 64 * 1024
    while pos > start:
        lo = max(start, pos - block)
        data = os.pread(fd, pos - lo, lo)
        nl = data.rfind(b"\n")
        if nl >= 0:
            return lo + nl + 1
        pos = lo
    return start


def _prefix_matches(fd: int, target: str, length: int) -> bool:
    """Do the target's first and last bytes equal the source's at the same offsets?"""
    try:
        tfd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        spans = [(0, min(MATCH_SPAN, length)), (max(0, length - MATCH_SPAN), length)]
        return all(os.pread(fd, hi - lo, lo) == os.pread(tfd, hi - lo, lo) for lo, hi in spans)
    finally:
        os.close(tfd)


def _append(fd: int, target: str, start: int, end: int) -> tuple[int, int]:
    """Copy source bytes [start, end) to the end of the target, durably; all or nothing."""
    created = not os.path.exists(target)
    if created:
        _make_dirs(os.path.dirname(target))
    try:
        tfd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise FlushError(f"{target}: cannot open for writing: {_describe(e)}") from e
    games = 0
    try:
        try:
            pos = start
            while pos < end:
                data = os.pread(fd, min(COPY_CHUNK, end - pos), pos)
                if not data:
                    raise FlushError(f"source shrank while copying to {target}")
                games += data.count(b"\n")
                written = 0
                while written < len(data):
                    written += os.pwrite(tfd, data[written:], pos + written)
                pos += len(data)
            os.fsync(tfd)
        except OSError as e:
            # Cut back what this attempt wrote: the target keeps whole lines only.
            # If this fails too, _repair cuts the partial line on the next start.
            with contextlib.suppress(OSError):
                os.ftruncate(tfd, start)
                os.fsync(tfd)
            if created and start == 0:
                _unlink_quietly(target)
            raise FlushError(f"{target}: {_describe(e)}") from e
    finally:
        os.close(tfd)
    if created:
        fsync_dir(os.path.dirname(target))
    return games, end - start


def _repair(target: str) -> int:
    """A target's length after cutting back a partial last line (a crash mid-append)."""
    try:
        fd = os.open(target, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return 0
    try:
        size = os.fstat(fd).st_size
        end = _last_newline_end(fd, 0, size)
        if end != size:
            os.ftruncate(fd, end)
            os.fsync(fd)
    finally:
        os.close(fd)
    if end == 0:
        _unlink_quietly(target)  # held only a partial line: no empty files
    return end


def _generations(base: str) -> list[tuple[int, str]]:
    """Existing targets of one source, oldest first: (0, base), (1, base.r1.jsonl), ..."""
    folder, name = os.path.split(base)
    stem = name[: -len(SUFFIX)]
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    found = [(0, base)] if name in names else []
    for entry in names:
        m = _GENERATION.search(entry)
        if m and entry == f"{stem}.r{m[1]}{SUFFIX}":
            found.append((int(m[1]), os.path.join(folder, entry)))
    return sorted(found)


def _generation_path(base: str, n: int) -> str:
    return f"{base[: -len(SUFFIX)]}.r{n}{SUFFIX}"


def _make_dirs(path: str) -> None:
    """mkdir -p, fsyncing each new directory's parent so the entry survives a crash."""
    missing = []
    while path and not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    for directory in reversed(missing):
        try:
            os.mkdir(directory)
        except FileExistsError:
            continue
        except OSError as e:
            raise FlushError(f"{directory}: cannot create directory: {_describe(e)}") from e
        fsync_dir(os.path.dirname(directory))


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _describe(e: OSError) -> str:
    names = {
        errno.ENOSPC: "disk full",
        errno.EFBIG: "file size limit",
        errno.EROFS: "read-only filesystem",
        errno.EACCES: "permission denied",
        errno.EDQUOT: "quota exceeded",
    }
    return names.get(e.errno or 0, e.strerror or str(e))
