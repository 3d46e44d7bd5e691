"""Remotes and publishing over real rsync: the decisions alone, then real daemons and processes.

The "remote host" is a real `rsync --daemon` on a loopback port (or a local
folder, as over NFS); writers append on its side while ringd pulls, and
transfers and the daemon itself are SIGKILLed midway.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop

from harness import DaemonProcess, game_line, ringd, write_config
from ringd import publish, pull, rsync
from ringd.cli.client import Refused, get, post_json
from ringd.ledger import CheckpointRow
from ringd.retry import Health
from ringd.service.events import EventBus
from ringd.service.metrics import Metrics
from ringd.service.publisher import Destination
from ringd.service.remotes import Puller
from ringd.settings import ConfigError, ModelsSettings, PublishDestination, parse_settings
from ringd.sim import run_writers

pytestmark = pytest.mark.skipif(
    shutil.which("rsync") is None, reason="rsync is not installed (apt-get install rsync)"
)


# -- the decisions, without I/O ---------------------------------------------------------


def test_endpoints_are_classified_as_rsync_does_and_passwords_never_pass() -> None:
    assert rsync.parse_endpoint("node7:/srv/selfplay") == rsync.Endpoint(
        "ssh", "node7:/srv/selfplay/"
    )
    assert rsync.parse_endpoint("ringd@node7:data/").kind == "ssh"
    assert rsync.parse_endpoint("[fe80::1]:/srv/").kind == "ssh"
    assert rsync.parse_endpoint("rsync://node7:8873/selfplay/gpu") == rsync.Endpoint(
        "daemon", "rsync://node7:8873/selfplay/gpu/"
    )
    assert rsync.parse_endpoint("node7::selfplay/x").kind == "daemon"
    assert rsync.parse_endpoint("/mnt/nfs/node7/").kind == "local"
    assert rsync.parse_endpoint("./a:b").kind == "local"
    for bad in ("", "rsync://node7/", "rsync://u:secret@node7/m/"):
        with pytest.raises(ValueError):
            rsync.parse_endpoint(bad)
    assert rsync.redact("failed: rsync://u:secret@h/m/") == "failed: rsync://u:***@h/m/"
    assert rsync.describe_failure(
        10, "rsync: failed to connect to h: Connection refused (111)\nrsync error: x (code 10)\n"
    ) == (
        "rsync: failed to connect to h: Connection refused (111) "
        "(rsync exit 10: error in socket I/O)"
    )
    assert rsync.unreachable(10) and rsync.unreachable(255) and not rsync.unreachable(23)


def test_argv_carry_ssh_options_bandwidth_and_timeouts_and_never_append_verify() -> None:
    ssh = rsync.Ssh(
        user="ringd",
        port=2222,
        key="/var/lib/ringd/.ssh/id ed25519",
        options=("StrictHostKeyChecking=accept-new",),
    )
    t = rsync.Transport(rsync.parse_endpoint("node7:/srv/sp/"), ssh, None, "10M", 60)
    argv = rsync.changes_argv(t, "/data/remote/node7")
    assert argv[0] == "rsync" and "--timeout=60" in argv and "--bwlimit=10M" in argv
    command = argv[argv.index("-e") + 1]
    assert command.startswith("ssh -o BatchMode=yes -o ConnectTimeout=30")
    assert "-l ringd -p 2222 -i '/var/lib/ringd/.ssh/id ed25519'" in command
    assert command.endswith("-o StrictHostKeyChecking=accept-new")
    assert argv[-2:] == ["node7:/srv/sp/", "/data/remote/node7/"] and "--dry-run" in argv
    grow = rsync.append_argv(t, "/w/list", "/w/probe")
    assert "--append" in grow and "--append-verify" not in grow and "--from0" in grow
    whole = rsync.whole_argv(t, "/w/list", "/data/remote/node7")
    assert not {"--append", "--append-verify", "--inplace", "--partial"} & set(whole)
    d = rsync.Transport(rsync.parse_endpoint("rsync://h/m/"), password_file="/etc/ringd/pw")
    argv = rsync.upload_argv(d, "/w/stage")
    assert "--password-file=/etc/ringd/pw" in argv and "--contimeout=30" in argv
    assert "-e" not in argv and "--copy-links" in argv
    assert "--links" in rsync.pointer_argv(d, "/w/pointer")
    prune = rsync.prune_argv(d, "/w/empty", "square8_2p", ["a.pt", "a.json"])
    assert prune[-4:] == [
        "--include=/a.json",
        "--exclude=*",
        "/w/empty/",
        "rsync://h/m/square8_2p/",
    ]


def test_the_dry_run_output_becomes_a_plan_by_our_sizes() -> None:
    out = (
        ">f+++++++++ 10 new.jsonl\n"
        "cd+++++++++ 4096 sub/\n"
        ">f.st...... 300 sub/grown.jsonl\n"
        ">f.st...... 50 shrunk.jsonl\n"
        ">f..t...... 80 touched.jsonl\n"
        ">f+++++++++ 7 odd\\#012name.jsonl\n"
        'skipping non-regular file "link.jsonl"\n'
    )
    changes = rsync.parse_changes(out)
    assert [c.name for c in changes] == [
        "new.jsonl",
        "sub/grown.jsonl",
        "shrunk.jsonl",
        "touched.jsonl",
        "odd\nname.jsonl",
    ]
    ours = {"sub/grown.jsonl": 200, "shrunk.jsonl": 60, "touched.jsonl": 80}
    plan = pull.plan(changes, ours)
    assert plan.grown == [("sub/grown.jsonl", 200)]
    assert plan.whole == ["new.jsonl", "shrunk.jsonl", "touched.jsonl", "odd\nname.jsonl"]
    assert pull.plan([], {}) == pull.Plan()


def test_health_backs_off_doubling_to_the_cap_and_says_why() -> None:
    h = Health().started(100.0)
    assert h.state(busy=True) == "busy" and h.state(busy=False) == "ok"
    h = h.failed(100.0, "refused", unreachable=True, base_s=5, cap_s=30)
    assert (h.state(False), h.next_try_at, h.error) == ("unreachable", 105.0, "refused")
    for _ in range(10):
        h = h.failed(200.0, "no such dir", unreachable=False, base_s=5, cap_s=30)
    assert (h.state(False), h.next_try_at, h.failures) == ("backoff", 230.0, 11)
    h = h.failed(300.0, "x", unreachable=False, base_s=5, cap_s=30 * 10**6)
    assert h.next_try_at is not None  # no float overflow after many failures
    h = h.succeeded(400.0)
    assert (h.state(False), h.failures, h.error, h.next_try_at, h.last_success_at) == (
        "ok",
        0,
        None,
        None,
        400.0,
    )


def test_published_names_history_and_retention() -> None:
    assert publish.published_name("/v/jobs/sq-1-9/final.pt", "sq-1-9", "ab" * 32) == "sq-1-9.pt"
    assert publish.published_name("/m/net [v2].pt", None, "0123456789abcdef") == (
        "net__v2_-0123456789ab.pt"
    )
    history: dict[str, list[str]] = {}
    for name in ("a.pt", "b.pt", "a.pt", "c.pt"):
        publish.record(history, "sq", name)
    assert history == {"sq": ["b.pt", "a.pt", "c.pt"]}
    assert publish.to_prune(history["sq"], 2) == ["b.pt"]
    assert publish.to_prune(history["sq"], 0) == ["b.pt", "a.pt"]  # the latest always stays


def test_remote_settings_name_file_line_and_need_rsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def errors(text: str) -> list[str]:
        with pytest.raises(ConfigError) as e:
            parse_settings(text, tmp_path / "ringd.yaml")
        return e.value.errors

    base = "watch:\n  roots: [data]\n"
    problems = errors(
        base
        + "remotes:\n"
        + "  - {name: a, source: /x}\n"
        + "  - {name: a, source: /y}\n"
        + "  - {name: b, source: /z, target: /elsewhere}\n"
        + "  - {name: c, source: /z, target: data/remote}\n"
    )
    assert problems == [
        f"{tmp_path}/ringd.yaml:5: remotes[1].name: 'a': two remotes of this name",
        f"{tmp_path}/ringd.yaml:5: remotes[1].target: {tmp_path}/data/remote/a overlaps "
        f"remote 'a''s {tmp_path}/data/remote/a",
        f"{tmp_path}/ringd.yaml:6: remotes[2].target: /elsewhere is not under a watched root "
        f"({tmp_path}/data): its games would never be counted",
        f"{tmp_path}/ringd.yaml:7: remotes[3].target: {tmp_path}/data/remote overlaps "
        f"remote 'a''s {tmp_path}/data/remote/a",
    ]
    ok = parse_settings(
        base + "remotes:\n  - {name: n7, source: 'n7:/sp', ssh: {key: k}}\n"
        "models:\n  publish: ['rsync://n7/models/']\n",
        tmp_path / "ringd.yaml",
    )
    assert ok.remote_target(ok.remotes[0]) == tmp_path / "data" / "remote" / "n7"
    assert ok.remotes[0].ssh.key == tmp_path / "k" and ok.remotes[0].interval_s == 30
    assert ok.models.publish[0].dest == "rsync://n7/models/"
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert errors(base + "models:\n  publish: [/dest]\n") == [
        f"{tmp_path}/ringd.yaml:4: models.publish: rsync is not on PATH ({tmp_path}/empty): "
        "install it (apt-get install rsync)"
    ]


# -- real rsync: a daemon on loopback as the remote host ----------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RsyncDaemon:
    """`rsync --daemon --no-detach` serving `games` (read-only) and `models` (writable)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.games = folder / "games"
        self.models = folder / "models"
        self.games.mkdir(parents=True, exist_ok=True)
        self.models.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config = folder / "rsyncd.conf"
        # use chroot = no needs munge symlinks = no, or published latest.pt links
        # would arrive as /rsyncd-munged/...; README says so for sites too.
        self.config.write_text(
            f"use chroot = no\nuid = {os.getuid()}\ngid = {os.getgid()}\n"
            f"[games]\n  path = {self.games}\n  read only = yes\n"
            f"[models]\n  path = {self.models}\n  read only = no\n  munge symlinks = no\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, module: str) -> str:
        return f"rsync://127.0.0.1:{self.port}/{module}/"

    def start(self) -> RsyncDaemon:
        self.proc = subprocess.Popen(
            [
                "rsync",
                "--daemon",
                "--no-detach",
                f"--config={self.config}",
                f"--port={self.port}",
                "--address=127.0.0.1",
                f"--log-file={self.folder / 'rsyncd.log'}",
            ]
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return self
            time.sleep(0.02)
        raise AssertionError("rsync daemon did not listen")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def rsyncd(short_tmp: Path) -> Iterator[RsyncDaemon]:
    daemon = RsyncDaemon(short_tmp / "host-a").start()
    yield daemon
    daemon.stop()


def rsync_children(pid: int) -> list[int]:
    """rsync clients started by `pid` (transfers in flight; rsync daemons are left alone)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            daemon = b"--daemon" in Path(f"/proc/{entry}/cmdline").read_bytes()
            if comm == "rsync" and ppid == pid and not daemon:
                found.append(int(entry))
    return found


def same_trees(remote: Path, local: Path) -> None:
    """Every remote *.jsonl is here, byte for byte."""
    for path in remote.rglob("*.jsonl"):
        assert (local / path.relative_to(remote)).read_bytes() == path.read_bytes(), path


def until(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.02)
    raise AssertionError(f"not within {timeout}s: {what}")


def remotes_yaml(*entries: str) -> str:
    return "remotes:\n" + "".join(f"  - {e}\n" for e in entries)


def after_more_pulls(daemon: DaemonProcess, n: int = 2) -> dict[str, Any]:
    """The status once every remote has finished `n` more pulls (each reads what it brought)."""
    before = {r["name"]: r["pulls"] for r in daemon.status()["remotes"]}
    return daemon.wait_until(
        lambda s: all(r["pulls"] >= before[r["name"]] + n for r in s["remotes"])
    )


def is_transfer(pid: int) -> bool:
    """An rsync moving data (not the dry run that lists changes)."""
    with contextlib.suppress(OSError):
        return b"--files-from" in Path(f"/proc/{pid}/cmdline").read_bytes()
    return False


def test_writers_at_full_speed_while_transfers_and_ringd_are_killed_count_exactly(
    short_tmp: Path, rsyncd: RsyncDaemon
) -> None:
    host_b = short_tmp / "host-b"
    host_b.mkdir()
    write_config(
        short_tmp,
        extra=remotes_yaml(
            f"{{name: a, source: '{rsyncd.url('games')}', interval_s: 0.05}}",
            f"{{name: b, source: '{host_b}', interval_s: 0.05}}",
        ),
    )
    daemon = DaemonProcess(short_tmp)
    written: dict[str, int] = {}

    def write(name: str, root: Path, seed: int) -> None:
        result = run_writers(
            root, writers=3, rate=0, games=4000, seed=seed, partial_every=3, small=True
        )
        written[name] = result.games

    writers = [
        threading.Thread(target=write, args=("a", rsyncd.games, 1)),
        threading.Thread(target=write, args=("b", host_b, 2)),
    ]
    try:
        daemon.start()
        for t in writers:
            t.start()
        kills = 0
        restarted = False
        while any(t.is_alive() for t in writers) or not restarted:
            for pid in rsync_children(daemon.pid):
                if is_transfer(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                        kills += 1
            if kills >= 3 and not restarted:
                daemon.stop(signal.SIGKILL)  # mid-pull, most likely
                daemon.start()
                restarted = True
            time.sleep(0.01)
        for t in writers:
            t.join()
        expected = sum(written.values())
        daemon.wait_until(lambda s: s["total_games"] >= expected, timeout=60)
        status = after_more_pulls(daemon)  # nothing may be counted twice
        assert status["total_games"] == expected == 8000
        assert status["rejected_total"] == 0
        assert kills >= 3
        same_trees(rsyncd.games, short_tmp / "data" / "selfplay" / "remote" / "a")
        same_trees(host_b, short_tmp / "data" / "selfplay" / "remote" / "b")
        remotes = {r["name"]: r for r in status["remotes"]}
        assert remotes["a"]["state"] in ("ok", "pulling") and remotes["a"]["lag_s"] is not None, (
            remotes
        )
        assert remotes["b"]["pulls"] > 0
        leftovers = [p for p in (short_tmp / "data").rglob(".*") if p.is_file()]
        assert not [p for p in leftovers if p.name.endswith(".jsonl")]
    finally:
        daemon.close()


def test_a_remote_rewritten_in_place_doubles_nothing(short_tmp: Path) -> None:
    host = short_tmp / "host"
    (short_tmp / "data" / "selfplay").mkdir(parents=True)
    source = host / "gpu" / "games.jsonl"
    source.parent.mkdir(parents=True)
    lines = [game_line("square8", 2, i) for i in range(60)]
    source.write_bytes(b"".join(lines) + lines[0][:7])  # ends mid-line, as a writer would
    write_config(short_tmp, extra=remotes_yaml(f"{{name: h, source: '{host}', interval_s: 0.05}}"))
    daemon = DaemonProcess(short_tmp)
    target = short_tmp / "data" / "selfplay" / "remote" / "h" / "gpu" / "games.jsonl"

    def settled(total: int) -> dict[str, Any]:
        until(lambda: target.exists() and target.read_bytes() == source.read_bytes(), what="copy")
        daemon.wait_until(lambda s: s["total_games"] >= total)
        status = after_more_pulls(daemon)  # more pulls, more reads: still the same count
        assert target.read_bytes() == source.read_bytes()
        assert (status["total_games"], status["rejected_total"]) == (total, 0), status
        return status

    try:
        daemon.start()
        settled(60)
        # Shorter: a maintenance script dropped the unfinished tail and two games.
        source.write_bytes(b"".join(lines[:58]))
        settled(60)
        # Same size, bytes changed: a status normalised outside the moves.
        source.write_bytes(b"".join(line.replace(b'"id":"g', b'"id":"G') for line in lines[:58]))
        settled(60)
        # Larger: every line upgraded with a new field, and two new games at the end.
        upgraded = [line.replace(b'{"id"', b'{"schema":2,"id"') for line in lines[:58]]
        source.write_bytes(b"".join(upgraded) + game_line("square8", 2, 900))
        settled(61)
        # A writer reopening it with "w" and writing past the old size.
        source.write_bytes(b"".join(game_line("square8", 2, 1000 + i) for i in range(80)))
        settled(141)
        # Removed on the remote: kept here.
        source.unlink()
        assert after_more_pulls(daemon)["total_games"] == 141 and target.exists()
    finally:
        daemon.close()


def test_a_remote_that_disappears_backs_off_without_slowing_the_others_and_comes_back(
    short_tmp: Path, rsyncd: RsyncDaemon
) -> None:
    host_b = short_tmp / "host-b"
    (host_b / "x").mkdir(parents=True)
    write_config(
        short_tmp,
        extra=remotes_yaml(
            f"{{name: a, source: '{rsyncd.url('games')}', interval_s: 0.1, backoff_cap_s: 0.4}}",
            f"{{name: b, source: '{host_b}', interval_s: 0.1, backoff_cap_s: 0.4}}",
        ),
    )
    daemon = DaemonProcess(short_tmp)

    def remote(status: dict[str, Any], name: str) -> dict[str, Any]:
        return next(r for r in status["remotes"] if r["name"] == name)

    try:
        daemon.start()
        (rsyncd.games / "g.jsonl").write_bytes(game_line("square8", 2, 1))
        daemon.wait_until(lambda s: s["total_games"] == 1)
        rsyncd.stop()
        (rsyncd.games / "g.jsonl").write_bytes(game_line("square8", 2, 1) + game_line("hex8", 2, 2))
        status = daemon.wait_until(lambda s: remote(s, "a")["failures"] >= 2)
        a = remote(status, "a")
        assert a["state"] in ("unreachable", "pulling"), a
        assert "Connection refused" in a["error"] and "rsync exit 10" in a["error"]
        table = ringd("status", "--socket", str(daemon.socket)).stdout
        assert "remote a " in table and "in a row: rsync: [Receiver] failed to connect" in table
        assert "remote b ok" in table or "remote b pulling" in table
        # b keeps pulling meanwhile, every interval.
        before = remote(status, "b")["pulls"]
        (host_b / "x" / "g.jsonl").write_bytes(game_line("square8", 2, 3))
        status = daemon.wait_until(
            lambda s: s["total_games"] == 2 and remote(s, "b")["pulls"] >= before + 3
        )
        assert remote(status, "a")["next_try_at"] is not None
        rsyncd.start()  # back, on the same port
        status = daemon.wait_until(
            lambda s: s["total_games"] == 3 and remote(s, "a")["failures"] == 0
        )
        assert remote(status, "a")["error"] is None and remote(status, "a")["last_success_at"]
        # A local source that vanishes (an NFS mount gone) backs off too, and returns.
        host_b.rename(short_tmp / "host-b-away")
        status = daemon.wait_until(lambda s: remote(s, "b")["failures"] >= 1)
        assert remote(status, "b")["state"] in ("backoff", "pulling")
        assert "No such file or directory" in remote(status, "b")["error"]
        (short_tmp / "host-b-away").rename(host_b)
        daemon.wait_until(lambda s: remote(s, "b")["failures"] == 0)
        pulled = ringd("pull", "a", "--socket", str(daemon.socket))
        assert pulled.returncode == 0 and pulled.stdout.startswith(("pulling a", "a pull of a"))
        with pytest.raises(Refused, match="no remote named 'zz'"):
            post_json(daemon.socket, "/v1/remotes/zz/pull")
        text = get(daemon.socket, "/metrics").decode()
        assert 'ringd_remote_up{remote="a"} 1.0' in text
        assert 'ringd_remote_pulls_total{outcome="failed",remote="a"}' in text
    finally:
        daemon.close()


def test_rsync_missing_from_path_is_a_configuration_error_at_start(short_tmp: Path) -> None:
    (short_tmp / "data" / "selfplay").mkdir(parents=True)
    write_config(short_tmp, extra=remotes_yaml("{name: a, source: /srv/x}"))
    daemon = DaemonProcess(short_tmp, env={"PATH": str(short_tmp / "no-tools")})
    try:
        daemon.start(wait_ready=False)
        assert daemon.proc is not None
        assert daemon.proc.wait(30) != 0
        log = daemon.log.read_text()
        assert f"{daemon.config}:7: remotes: rsync is not on PATH" in log, log
    finally:
        daemon.close()
    checked = ringd("check-config", str(daemon.config), env={"PATH": str(short_tmp / "no-tools")})
    assert checked.returncode != 0 and "rsync is not on PATH" in checked.stdout + checked.stderr


# -- pulls driven directly: the file rules --------------------------------------------------


def test_a_pull_killed_midway_never_cuts_a_game(tmp_path: Path) -> None:
    """A transfer killed mid-file leaves only a hidden temp file; our copies stay byte prefixes."""
    from ringd.settings import RemoteSettings

    host = tmp_path / "host"
    host.mkdir()
    big = host / "big.jsonl"
    big.write_bytes(b"".join(game_line("square8", 2, i, pad=2000) for i in range(400)))
    target = tmp_path / "data" / "remote" / "h"
    remote = RemoteSettings(name="h", source=f"{host}/", bwlimit="400", timeout_s=0.5)
    puller = Puller(remote, target, tmp_path / "work", EventBus(), Metrics())
    uvloop.run(puller.pull_once())  # 800 kB at 400 kB/s: killed at 0.5 s
    assert puller.health.failures == 1 and "timeout_s" in (puller.health.error or "")
    assert not (target / "big.jsonl").exists()
    assert not [p for p in target.rglob("*") if p.is_file()]  # rsync removed its temp file
    fast = RemoteSettings(name="h", source=f"{host}/")
    puller = Puller(fast, target, tmp_path / "work", EventBus(), Metrics())
    uvloop.run(puller.pull_once())
    assert (target / "big.jsonl").read_bytes() == big.read_bytes()
    assert puller.last_pull_bytes == big.stat().st_size


# -- publishing ---------------------------------------------------------------------------


def checkpoint_row(path: Path, job_id: str) -> CheckpointRow:
    st = path.stat()
    return CheckpointRow(
        path=str(path),
        config="square8_2p",
        origin="job",
        job_id=job_id,
        last_seq=1,
        dev=st.st_dev,
        ino=st.st_ino,
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
        verdict="ok",
        reason=None,
        sha256="0" * 64,
        validated_at=None,
        pinned=False,
        quarantined_to=None,
        removed=False,
    )


def make_checkpoint(folder: Path, job_id: str, size: int) -> CheckpointRow:
    path = folder / job_id / "final.pt"
    path.parent.mkdir(parents=True)
    path.write_bytes(os.urandom(size))
    path.with_suffix(".json").write_text('{"meta": {"config": "square8_2p"}}')
    return checkpoint_row(path, job_id)


async def run_destination(
    dest: Destination, done: Callable[[], bool], kill_when: Callable[[], bool] | None = None
) -> int:
    """Run a destination until `done()`; SIGKILL its rsync transfers once `kill_when()`."""
    task = asyncio.create_task(dest.run())
    killed = 0
    try:
        deadline = time.monotonic() + 30
        while not done():
            assert time.monotonic() < deadline, dest.status()
            if kill_when is not None and not killed and kill_when():
                for pid in rsync_children(os.getpid()):
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
            await asyncio.sleep(0.005)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return killed


def test_a_publish_killed_midway_leaves_the_old_model_and_retention_follows(
    short_tmp: Path, rsyncd: RsyncDaemon
) -> None:
    jobs = short_tmp / "jobs"
    old = make_checkpoint(jobs, "square8_2p-000000001-000000100", 4096)
    new = make_checkpoint(jobs, "square8_2p-000000101-000000200", 1_500_000)
    latest = {"square8_2p": old}
    models = ModelsSettings(keep=1, retention="delete_old")
    slow = PublishDestination(dest=rsyncd.url("models"), bwlimit="1000")
    dest = Destination(slow, models, short_tmp / "var", lambda: latest, EventBus(), Metrics())
    there = rsyncd.models / "square8_2p"
    (there).mkdir()
    (there / "notes.txt").write_text("not ringd's: never removed\n")

    async def scenario() -> None:
        await run_destination(dest, lambda: dest.published("square8_2p") == f"{old.job_id}.pt")
        assert os.readlink(there / "latest.pt") == f"{old.job_id}.pt"
        latest["square8_2p"] = new
        dest.ask()
        killed = await run_destination(
            dest,
            lambda: dest.health.failures > 0,
            kill_when=lambda: any(p.name.startswith(f".{new.job_id}.pt.") for p in there.iterdir()),
        )
        assert killed
        # The old model stays in place; nothing half-copied is visible under its name.
        assert os.readlink(there / "latest.pt") == f"{old.job_id}.pt"
        assert (there / f"{old.job_id}.pt").read_bytes() == Path(old.path).read_bytes()
        assert not (there / f"{new.job_id}.pt").exists()
        assert dest.status().pending == ["square8_2p"] and dest.status().error
        dest.ask("square8_2p")  # `ringd publish`: now, backoff or not
        await run_destination(dest, lambda: dest.history.get("square8_2p") == [f"{new.job_id}.pt"])
        assert os.readlink(there / "latest.pt") == f"{new.job_id}.pt"
        assert (there / "latest.pt").read_bytes() == Path(new.path).read_bytes()
        assert (there / f"{new.job_id}.json").exists()
        # keep: 1 with delete_old: the old one goes, a file ringd did not publish stays.
        assert sorted(p.name for p in there.iterdir() if not p.name.startswith(".")) == sorted(
            [f"{new.job_id}.json", f"{new.job_id}.pt", "latest.pt", "notes.txt"]
        )

    uvloop.run(scenario())


def test_a_new_latest_is_published_and_ringd_publish_copies_it_again(short_tmp: Path) -> None:
    pytest.importorskip("torch", reason="checkpoints are validated with torch (the train extra)")
    from test_registry import write_valid

    (short_tmp / "data" / "selfplay").mkdir(parents=True)
    dest = short_tmp / "selfplay-host" / "models"
    dest.parent.mkdir()  # rsync makes DEST (and DEST/CONFIG), not DEST's parents
    write_config(short_tmp, extra=f"models:\n  dirs: [models]\n  publish: ['{dest}']\n")
    write_valid(short_tmp / "models" / "sq" / "net.pt")
    daemon = DaemonProcess(short_tmp)
    try:
        daemon.start()
        status = daemon.wait_until(lambda s: s["publish"][0]["published"], timeout=120)
        (name,) = status["publish"][0]["published"].values()
        link = dest / "square8_2p" / "latest.pt"
        assert (
            os.readlink(link) == name
            and link.read_bytes() == (short_tmp / "models" / "sq" / "net.pt").read_bytes()
        )
        link.unlink()
        table = ringd("status", "--socket", str(daemon.socket)).stdout
        assert f"publish {dest}/ ok: square8_2p -> {name}" in table
        result = ringd("publish", "square8_2p", "--socket", str(daemon.socket))
        assert result.returncode == 0 and "publishing square8_2p" in result.stdout, result
        until(link.exists, what="latest.pt published again")
        missing = ringd("publish", "hex8_2p", "--socket", str(daemon.socket))
        assert missing.returncode != 0 and "no validated latest" in missing.stderr
    finally:
        daemon.close()
