"""How ringd talks to rsync: endpoints, argv, output and exit codes. Pure; no I/O.

ringd moves games and models between hosts with rsync, the tool the selfplay
clusters already run, instead of a protocol of its own. An endpoint is an
rsync source or destination: `[user@]host:/path/` (over ssh),
`rsync://[user@]host[:port]/module/path/` or `host::module/path/` (an rsync
daemon), or a local path (NFS, tests). Every argv here is a list: nothing
passes through a shell. Credentials never appear in an argv or in a message:
daemon passwords come from a password file (or RSYNC_PASSWORD in the
environment), ssh keys from a key file, and `redact` masks a password someone
wrote into a URL anyway.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

RSYNC = "rsync"
SSH = "ssh"
# Exit codes of a connection that could not be made or broke off: the host,
# the daemon or the network is down (rsync(1) "EXIT VALUES"; 255 is ssh's own).
UNREACHABLE_CODES = frozenset({10, 12, 30, 35, 255})
# 24: some source files vanished while rsync looked (a writer's temp file,
# a remote rotation). What was there arrived; the next pull sees the rest.
VANISHED = 24
EXIT_MEANINGS = {
    1: "syntax or usage error",
    2: "protocol incompatibility",
    3: "errors selecting input/output files, dirs",
    5: "error starting client-server protocol",
    10: "error in socket I/O",
    11: "error in file I/O",
    12: "error in rsync protocol data stream",
    20: "stopped by a signal",
    23: "partial transfer due to error",
    24: "some source files vanished",
    30: "timeout in data send/receive",
    35: "timeout waiting for daemon connection",
    255: "ssh failed (connection, authentication or host key)",
}

_DAEMON_URL = re.compile(r"^rsync://(?:[^@/:]+(?::[^@/]*)?@)?[^/:]+(?::\d+)?/[^/]+")
_DAEMON_PAIR = re.compile(r"^(?:[^@/:\s]+@)?[^/:\s\[\]]+::[^/]+")
_SSH = re.compile(r"^(?:[^@/:\s]+@)?(?:\[[^\]/]+\]|[^/:\s\[\]]+):(?!:)")
_URL_PASSWORD = re.compile(r"(rsync://[^@/:\s]+):[^@/\s]*@")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An rsync source or destination, as rsync is given it (a folder: ends in "/")."""

    kind: Literal["ssh", "daemon", "local"]
    spec: str

    def child(self, name: str) -> str:
        """The spec of a folder below this one (`name` is a relative path)."""
        return f"{self.spec}{name.strip('/')}/"


def parse_endpoint(text: str) -> Endpoint:
    """Classify an endpoint the way rsync does; raise ValueError with the reason if unusable.

    As in rsync, a colon before the first slash means a host: write a local
    folder named `a:b` as `./a:b`.
    """
    text = text.strip()
    if not text:
        raise ValueError("an rsync endpoint must not be empty")
    if text.startswith("rsync://"):
        if _DAEMON_URL.match(text) is None:
            raise ValueError(
                f"{text!r}: expected rsync://[user@]host[:port]/module/path/ (a module is required)"
            )
        if _URL_PASSWORD.search(text):
            raise ValueError(
                "a password in the URL would be logged by anyone who reads the config: "
                "put it in a password_file (mode 0600) or RSYNC_PASSWORD"
            )
        return Endpoint("daemon", _folder(text))
    if _DAEMON_PAIR.match(text):
        return Endpoint("daemon", _folder(text))
    if _SSH.match(text):
        return Endpoint("ssh", _folder(text))
    return Endpoint("local", _folder(text))


def _folder(spec: str) -> str:
    # A trailing slash makes rsync copy a folder's contents, not the folder itself.
    return spec if spec.endswith("/") else spec + "/"


def redact(text: str) -> str:
    """Mask a password in an rsync:// URL (`rsync://user:***@host`) wherever it appears."""
    return _URL_PASSWORD.sub(r"\1:***@", text)


# -- transport options ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ssh:
    """ssh options for `host:/path/` endpoints; the ssh client's own config applies too."""

    user: str | None = None
    port: int | None = None
    key: str | None = None  # IdentityFile
    known_hosts: str | None = None  # UserKnownHostsFile
    options: tuple[str, ...] = ()  # more `-o Key=Value`


@dataclass(frozen=True, slots=True)
class Transport:
    """How one remote or publish destination is reached."""

    endpoint: Endpoint
    ssh: Ssh = Ssh()
    password_file: str | None = None
    bwlimit: str | None = None  # rsync's RATE: KiB/s, or with a suffix (`10M`)
    timeout_s: float = 300.0


def ssh_command(ssh: Ssh, connect_timeout_s: int) -> str:
    """The `-e` command rsync runs to reach an ssh endpoint.

    BatchMode: a daemon can answer no password or host-key prompt; ssh fails
    at once instead (exit 255, "unreachable" with ssh's message). rsync splits
    this string at spaces and honours single quotes, so a value holding a
    space is quoted (settings refuse quotes in values).
    """
    argv = [SSH, "-o", "BatchMode=yes", "-o", f"ConnectTimeout={connect_timeout_s}"]
    argv += ["-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=3"]
    if ssh.user:
        argv += ["-l", ssh.user]
    if ssh.port:
        argv += ["-p", str(ssh.port)]
    if ssh.key:
        argv += ["-i", ssh.key, "-o", "IdentitiesOnly=yes"]
    if ssh.known_hosts:
        argv += ["-o", f"UserKnownHostsFile={ssh.known_hosts}"]
    for option in ssh.options:
        argv += ["-o", option]
    return " ".join(f"'{a}'" if " " in a else a for a in argv)


def _common(t: Transport) -> list[str]:
    # --timeout: rsync gives up on a connection silent this long (the whole
    # pull has a wall-clock limit besides, enforced by the caller).
    io_timeout = max(1, int(t.timeout_s))
    argv = [RSYNC, f"--timeout={io_timeout}"]
    if t.endpoint.kind == "ssh":
        argv += ["-e", ssh_command(t.ssh, min(30, io_timeout))]
    elif t.endpoint.kind == "daemon":
        argv += [f"--contimeout={min(30, io_timeout)}", "--no-motd"]
        if t.password_file:
            argv.append(f"--password-file={t.password_file}")
    if t.bwlimit:
        argv.append(f"--bwlimit={t.bwlimit}")
    return argv


# -- pulling games ------------------------------------------------------------------------

GAME_FILTER = ("--include=*/", "--include=*.jsonl", "--exclude=*")
ITEM_FORMAT = "%i %l %n"


def changes_argv(t: Transport, target: str) -> list[str]:
    """A dry run listing the source's `*.jsonl` files that differ from `target` (size or mtime).

    rsync's quick check walks both trees in C; an unchanged tree prints nothing.
    It compares mtimes to the nanosecond (--modify-window=-1), not to the
    second, or a file rewritten at its old size within the second of our copy
    would look unchanged.
    """
    return [
        *_common(t),
        "--recursive",
        "--times",
        "--modify-window=-1",
        "--dry-run",
        "--prune-empty-dirs",
        f"--out-format={ITEM_FORMAT}",
        *GAME_FILTER,
        t.endpoint.spec,
        _folder(target),
    ]


def append_argv(t: Transport, files_from: str, scratch: str) -> list[str]:
    """Append the listed files' new bytes to the (sparse) probe copies in `scratch`.

    `--append` sends only the bytes past each probe copy's size, and never reads
    what the copy holds, so a copy can be a hole up to the overlap the caller
    compares (see ringd.pull). `--times` carries the source's mtime over.
    """
    return [
        *_common(t),
        "--times",
        "--append",
        f"--files-from={files_from}",
        "--from0",
        t.endpoint.spec,
        _folder(scratch),
    ]


def whole_argv(t: Transport, files_from: str, target: str) -> list[str]:
    """Fetch the listed files whole into `target`, each into a temporary file renamed into place.

    No --inplace, --partial or --append here: rsync writes `.NAME.XXXXXX` beside
    each file (a name that never ends in `.jsonl`, so ingest never reads it) and
    renames it over NAME only once complete. A transfer killed midway leaves the
    old file (or none) and at worst such a hidden leftover. --ignore-times: the
    dry run already chose these files; rsync's own quick check must not skip one.
    """
    return [
        *_common(t),
        "--times",
        "--ignore-times",
        f"--files-from={files_from}",
        "--from0",
        t.endpoint.spec,
        _folder(target),
    ]


# -- publishing models ------------------------------------------------------------------


def upload_argv(t: Transport, stage: str) -> list[str]:
    """Copy the staged files (symlinks to checkpoints, followed) below the destination.

    rsync writes each file under a temporary name in its destination folder and
    renames it when complete: a reader sees the whole file or none.
    """
    return [
        *_common(t),
        "--recursive",
        "--times",
        "--copy-links",
        "--omit-dir-times",
        _folder(stage),
        t.endpoint.spec,
    ]


def pointer_argv(t: Transport, stage: str) -> list[str]:
    """Copy the staged `CONFIG/latest.pt` symlinks as symlinks.

    An existing symlink is replaced by a new one made under a temporary name and
    renamed over it, so `latest.pt` always resolves to a whole file.
    """
    return [
        *_common(t),
        "--recursive",
        "--links",
        "--omit-dir-times",
        _folder(stage),
        t.endpoint.spec,
    ]


def prune_argv(t: Transport, empty: str, config: str, names: Sequence[str]) -> list[str]:
    """Delete exactly `names` from the destination's `config/` folder.

    An empty source with --delete removes what the filters include, and the
    final exclude protects everything else there (files ringd did not publish).
    """
    return [
        *_common(t),
        "--recursive",
        "--delete",
        *(f"--include=/{name}" for name in names),
        "--exclude=*",
        _folder(empty),
        t.endpoint.child(config),
    ]


# -- output ---------------------------------------------------------------------------------

_ITEM = re.compile(r"^>f(?P<flags>\S{9}) (?P<size>\d+) (?P<name>.+)$")
_ESCAPE = re.compile(rb"\\#([0-7]{3})")


@dataclass(frozen=True, slots=True)
class Change:
    """A source file the dry run would transfer."""

    name: str  # relative to the source folder
    size: int  # its size at the source
    new: bool  # absent at the destination


def parse_changes(output: str) -> list[Change]:
    """The files in a `changes_argv` run's output (directories and messages skipped)."""
    changes = []
    for line in output.splitlines():
        m = _ITEM.match(line)
        if m is not None:
            changes.append(Change(_unescape(m["name"]), int(m["size"]), m["flags"][0] == "+"))
    return changes


def _unescape(name: str) -> str:
    # rsync writes unprintable bytes of a name as \#ooo (octal).
    raw = _ESCAPE.sub(lambda m: bytes([int(m[1], 8)]), name.encode("utf-8", "surrogateescape"))
    return raw.decode("utf-8", "surrogateescape")


def describe_failure(code: int, stderr: str) -> str:
    """One line for status and logs: rsync's last messages and what its exit code means."""
    if code < 0:
        return f"rsync was killed by {signal.Signals(-code).name}"
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    # rsync ends with a generic "rsync error: ... (code N) at main.c" line; the
    # cause is on the lines before it.
    cause = [line for line in lines if not line.startswith("rsync error:")][-2:]
    meaning = EXIT_MEANINGS.get(code, "failed")
    text = "; ".join(cause) if cause else meaning
    return redact(f"{text} (rsync exit {code}: {meaning})")[:500]


def unreachable(code: int) -> bool:
    """Did the failure happen because the other side could not be reached?"""
    return code in UNREACHABLE_CODES
