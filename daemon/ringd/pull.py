"""The rules of a pull: how a remote's `*.jsonl` files become growing files under a watched root.

A pulled file is always a byte prefix of the remote file as it was at some
moment, so ingest (which reads only complete lines) can never count a game
that is not on the remote: a line cut at the end of a transfer is the start of
the remote's next line and waits for the rest. A pull:

1. asks rsync which remote files differ from ours in size or mtime (a dry run:
   an unchanged tree costs one file-list exchange and one stat per file);
2. *grown* files (remote larger than ours) are probed: rsync `--append`s the
   remote's bytes from OVERLAP before our end into a sparse probe copy outside
   the watched trees. If those overlap bytes equal our last bytes, the remote
   file still starts with ours and its new bytes are appended to our file.
   Otherwise the remote was rewritten in place (a writer reopened it with "w",
   a maintenance script upgraded or normalised it) and it is fetched whole;
3. *new* files, files the remote *shrank*, and files whose size is the same
   but whose mtime is not (a same-size rewrite, or a pull killed between our
   append and setting the mtime) are fetched whole: rsync writes a temporary
   `.NAME.XXXXXX` (never `*.jsonl`) and renames it over NAME. Ingest sees a
   new inode at a known path, reads it from 0, and the ledger's identity rules
   count each game once.

Why not `--append-verify` into the watched tree: when its checksum over the
whole file fails, the bytes of the rewritten file are already appended to
ours (a fragment of a line joined to our last one), and rsync then rewrites
the file in place, so ingest could read a mix of old and new lines at any
moment. It also reads both whole files at every pull. The probe reads and
sends OVERLAP bytes more than the new ones, and ours never holds a byte the
remote did not have right after the bytes before it. OVERLAP is the span of
the ledger's own fingerprint of a file's last bytes (cursor.FINGERPRINT_SPAN):
the same evidence ingest uses to decide that a file grew rather than changed.

Nothing here deletes a pulled file: files removed on the remote stay.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ringd.cursor import FINGERPRINT_SPAN
from ringd.rsync import Change
from ringd.scan import SUFFIX

OVERLAP = FINGERPRINT_SPAN
COPY_CHUNK = 8 * 1024 * 1024
# rsync's temporary name for NAME: ".NAME." + six random characters.
_RSYNC_TEMP = re.compile(r"^\..+\.jsonl\.[A-Za-z0-9]{6}$")


@dataclass(frozen=True, slots=True)
class Plan:
    """What one pull transfers, decided from the dry run and our files' sizes."""

    grown: list[tuple[str, int]] = field(default_factory=list)  # (name, our size): probed
    whole: list[str] = field(default_factory=list)  # new, shrunk or same-size changed


def plan(changes: Sequence[Change], ours: Mapping[str, int | None]) -> Plan:
    """Sort the dry run's changes by our file's size (None: we have no such file)."""
    out = Plan()
    for change in changes:
        if not change.name.endswith(SUFFIX):
            continue
        size = ours.get(change.name)
        if change.new or size is None or change.size < size:
            out.whole.append(change.name)
        elif change.size > size:
            out.grown.append((change.name, size))
        else:
            out.whole.append(change.name)  # same size, another mtime
    return out


def our_sizes(target: Path, names: Sequence[str]) -> dict[str, int | None]:
    sizes: dict[str, int | None] = {}
    for name in names:
        try:
            sizes[name] = (target / name).stat().st_size
        except FileNotFoundError:
            sizes[name] = None
    return sizes


def files_from(path: Path, names: Sequence[str]) -> None:
    """The list rsync reads with --files-from --from0 (NUL-separated: any name is safe)."""
    path.write_bytes(b"".join(os.fsencode(name) + b"\0" for name in names))


def prepare_probes(scratch: Path, grown: Sequence[tuple[str, int]]) -> None:
    """Fresh sparse probe copies: a hole of (our size - OVERLAP) bytes each."""
    shutil.rmtree(scratch, ignore_errors=True)
    for name, size in grown:
        probe = scratch / name
        probe.parent.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.truncate(max(0, size - OVERLAP))


@dataclass(frozen=True, slots=True)
class Appended:
    name: str
    nbytes: int
    mtime_ns: int


def append_probed(
    target: Path, scratch: Path, grown: Sequence[tuple[str, int]]
) -> tuple[list[Appended], list[str]]:
    """Append each verified probe's new bytes to our file; return those appended and
    the names to fetch whole (rewritten, or changed under us)."""
    appended, whole = [], []
    for name, size in grown:
        done = _append_one(target / name, scratch / name, size)
        if done is None:
            whole.append(name)
        else:
            appended.append(Appended(name, *done))
    shutil.rmtree(scratch, ignore_errors=True)
    return appended, whole


def _append_one(ours: Path, probe: Path, size: int) -> tuple[int, int] | None:
    try:
        pfd = os.open(probe, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None  # vanished on the remote since the dry run
    try:
        pst = os.fstat(pfd)
        if pst.st_size < size:
            return None  # the remote is now shorter than ours: rewritten
        try:
            ofd = os.open(ours, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            if os.fstat(ofd).st_size != size:
                return None  # not what the dry run saw: start over from the remote
            start = max(0, size - OVERLAP)
            if os.pread(pfd, size - start, start) != os.pread(ofd, size - start, start):
                return None
            pos = _copy(pfd, ofd, size, pst.st_size)
            # No fsync (rsync's whole fetches have none either): the remote holds the
            # primary copy. After a crash our file is at worst shorter than ingest's
            # cursor (read again from 0, the identity rules keep the count) and the next
            # pull appends again; an fsync per growing file would put the disk's flush
            # latency, seconds under heavy writes, into every pull.
            # The remote's mtime marks the file as in step with it (dry-run quick check).
            os.utime(ofd, ns=(pst.st_atime_ns, pst.st_mtime_ns))
            return pos - size, pst.st_mtime_ns
        finally:
            os.close(ofd)
    finally:
        os.close(pfd)


def _copy(src: int, dst: int, start: int, end: int) -> int:
    """Copy bytes [start, end) at the same offsets; return where copying stopped."""
    pos = start
    with contextlib.suppress(OSError):  # another filesystem (older kernels), no support
        while pos < end and (n := os.copy_file_range(src, dst, end - pos, pos, pos)):
            pos += n  # in the kernel: the new bytes never pass through this process
    while pos < end and (data := os.pread(src, min(COPY_CHUNK, end - pos), pos)):
        written = 0
        while written < len(data):
            written += os.pwrite(dst, data[written:], pos + written)
        pos += len(data)
    return pos


def remove_leftovers(target: Path) -> int:
    """Delete rsync's temporary files that a killed transfer left in the target tree."""
    removed = 0
    for folder, _dirs, names in os.walk(target):
        for name in names:
            if _RSYNC_TEMP.match(name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(folder, name))
                    removed += 1
    return removed


def newest_mtime(target: Path, names: Sequence[str] | None = None) -> float | None:
    """The newest mtime (the remote's, carried over) among `names`, or the whole tree."""
    newest: float | None = None
    if names is None:
        paths: list[str] = []
        for folder, _dirs, files in os.walk(target):
            paths += [os.path.join(folder, n) for n in files if n.endswith(SUFFIX)]
    else:
        paths = [str(target / name) for name in names]
    for path in paths:
        try:
            mtime = os.stat(path).st_mtime
        except FileNotFoundError:
            continue
        newest = mtime if newest is None else max(newest, mtime)
    return newest
