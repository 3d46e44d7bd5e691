"""Remote games: a newline written on a selfplay host -> the game counted on the training
host, pulled with rsync every --interval s from --hosts remotes at --rate games/s in all,
beside `cp -r` of the same trees every interval (the old way) in a phase of its own of the
same run; then the
cost of one pull of an unchanged tree of --files files.

    .venv/bin/python bench/remote.py [--hosts 4] [--rate 1000] [--duration 60] [--interval 5]
                                     [--small] [--no-cp] [--files 10000]

The remote hosts are modules of a real `rsync --daemon` on loopback. Each writer
records the time right after each game's write; ringd's ledger records when each
game was committed (what /v1/status counts). The baseline copies every host's
tree with `cp -r` each interval and indexes the copy with `ringd scan` on a
ledger of its own. Target: ringd's p99 within the interval + 1 s.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import logging
import multiprocessing
import os
import random
import re
import resource
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.synchronize import Event
from pathlib import Path

import uvloop

from _common import machine, table
from _daemon import BenchDaemon
from latency import percentiles
from ringd import log
from ringd.boards import CONFIGS
from ringd.cli import client
from ringd.ledger import Ledger
from ringd.records import Rules
from ringd.scan import scan
from ringd.service.events import EventBus
from ringd.service.metrics import Metrics
from ringd.service.remotes import Puller
from ringd.settings import RemoteSettings
from ringd.sim.lines import LINE_FORMAT, Splicer


class RsyncDaemon:
    """`rsync --daemon` on a free loopback port serving each folder below `root` as a module."""

    def __init__(self, root: Path, modules: list[str]) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        config = root / "rsyncd.conf"
        config.write_text(
            f"use chroot = no\nuid = {os.getuid()}\ngid = {os.getgid()}\n"
            + "".join(f"[{m}]\n  path = {root / m}\n  read only = yes\n" for m in modules)
        )
        self.proc = subprocess.Popen(
            [
                "rsync",
                "--daemon",
                "--no-detach",
                f"--config={config}",
                f"--port={self.port}",
                "--address=127.0.0.1",
            ]
        )
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port)).close()
                return
            except OSError:
                time.sleep(0.02)

    def url(self, module: str) -> str:
        return f"rsync://127.0.0.1:{self.port}/{module}/"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def writer(index: int, root: str, rate: float, duration: float, small: bool, out: str) -> None:
    """Append RingRift-sized (or small) games, each its own (the id is in its moves), at
    `rate`; record the time right after each write."""
    rng = random.Random(index)
    splicer = Splicer(rng, small=small, size=8)
    prefix = f"w{index:02d}-".encode()
    path = Path(root) / "selfplay" / f"w{index:02d}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    stamps: list[tuple[str, float]] = []
    period = 1.0 / rate
    start = time.time() + rng.random() * period
    with open(path, "ab", buffering=0) as f:
        n = 0
        while (due := start + n * period) < start + duration:
            if (wait := due - time.time()) > 0:
                time.sleep(wait)
            head, middle, tail = splicer.parts(rng.choice(CONFIGS), "camel")
            f.write(LINE_FORMAT % (head, prefix, n, middle, prefix, n, tail))
            stamps.append((f"w{index:02d}-{n:012x}", time.time()))
            n += 1
    Path(out).write_text(json.dumps(stamps))


def copier(
    sources: list[str], base: str, every: float, stop: Event, ledger: str, marks: str
) -> None:
    """The old way: `cp -r` every host's tree every `every` s, then index the copies;
    one more round once `stop` is set (the writers are done). Writes the (last sequence
    number, time) of each scan to `marks`."""
    done: list[tuple[int, float]] = []
    with Ledger(Path(ledger)) as db:
        while True:
            last = stop.wait(every)
            for i, source in enumerate(sources):
                target = Path(base) / f"h{i}"
                target.mkdir(parents=True, exist_ok=True)
                subprocess.run(["cp", "-r", f"{source}/.", str(target)], check=True)
            report = scan(db, [base], Rules(max_line=1 << 26))
            done += [(a.last, time.time()) for a in report.new_games.values()]
            if last:
                break
    Path(marks).write_text(json.dumps(done))


def follow_games(socket_path: Path, marks: list[tuple[int, float]]) -> None:
    """Collect (last sequence number, time) of every `games` event until the daemon stops."""
    with contextlib.suppress(client.DaemonUnavailable, OSError, ValueError):
        for event in client.follow(socket_path):
            if event.get("event") == "games":
                marks.append((event["last_seq"], event["at"]))


_GAME_ID = re.compile(rb'"id":"(w[0-9]{2}-[0-9a-f]{12})"')


def commit_times(ledger: Path, marks: list[tuple[int, float]]) -> dict[str, float]:
    """Game id -> when it was counted: the first mark at or after its sequence number."""
    marks = sorted(marks)
    seqs = [seq for seq, _ in marks]
    best = [at for _, at in marks]
    for i in range(len(best) - 2, -1, -1):  # a later commit of a lower number cannot be it
        best[i] = min(best[i], best[i + 1])
    db = sqlite3.connect(ledger)
    try:
        rows = db.execute(
            "SELECT g.seq, f.path, g.offset, g.length FROM games g JOIN files f ON f.id = g.file_id"
        ).fetchall()
    finally:
        db.close()
    out: dict[str, float] = {}
    handles: dict[str, int] = {}
    try:
        for seq, path, offset, length in rows:
            fd = handles.get(path)
            if fd is None:
                fd = handles[path] = os.open(path, os.O_RDONLY)
            m = _GAME_ID.search(os.pread(fd, length, offset))
            i = bisect.bisect_left(seqs, seq)
            if m is not None and i < len(best):
                out[m[1].decode()] = best[i]
    finally:
        for fd in handles.values():
            os.close(fd)
    return out


def run_writers(args: argparse.Namespace, hosts_dir: Path, hosts: list[str]) -> dict[str, float]:
    """The selfplay hosts: args.writers_per_host writers each, args.rate games/s in all for
    args.duration s. Returns game id -> when it was written."""
    ctx = multiprocessing.get_context("fork")
    n = args.hosts * args.writers_per_host
    procs = [
        ctx.Process(
            target=writer,
            args=(
                i,
                str(hosts_dir / hosts[i % args.hosts]),
                args.rate / n,
                args.duration,
                args.small,
                str(hosts_dir / f"w{i}.json"),
            ),
        )
        for i in range(n)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return {
        gid: t for i in range(n) for gid, t in json.loads((hosts_dir / f"w{i}.json").read_text())
    }


@dataclass
class Measured:
    name: str
    written: dict[str, float]
    committed: dict[str, float]
    note: str = ""

    def row(self) -> list[str]:
        lat = [self.committed[g] - t for g, t in self.written.items() if g in self.committed]
        p50, p99, worst = percentiles(lat)
        missed = len(self.written) - len(lat)
        return [self.name, f"{len(lat):,}", str(missed), f"{p50:.2f}", f"{p99:.2f}", f"{worst:.2f}"]


def ringd_latency(args: argparse.Namespace, folder: Path) -> Measured:
    """The writers on rsync-daemon hosts, ringd pulling every args.interval s."""
    hosts = [f"h{i}" for i in range(args.hosts)]
    for host in hosts:
        (folder / "hosts" / host).mkdir(parents=True)
    rsyncd = RsyncDaemon(folder / "hosts", hosts)
    data = folder / "data"
    data.mkdir()
    remotes = "".join(
        f"  - {{name: {h}, source: '{rsyncd.url(h)}', interval_s: {args.interval}}}\n"
        for h in hosts
    )
    daemon = BenchDaemon(folder / "ringd", [data], extra=f"remotes:\n{remotes}")
    daemon.start()
    marks: list[tuple[int, float]] = []
    follower = threading.Thread(target=follow_games, args=(daemon.socket, marks), daemon=True)
    follower.start()
    try:
        written = run_writers(args, folder / "hosts", hosts)
        deadline = time.monotonic() + args.interval * 4 + 30
        while daemon.status()["total_games"] < len(written) and time.monotonic() < deadline:
            time.sleep(0.05)
        status = daemon.status()
    finally:
        daemon.stop()
        follower.join(10)
        rsyncd.stop()
    pulls = [r["last_pull_s"] or 0.0 for r in status["remotes"]]
    size = sum(p.stat().st_size for p in (folder / "hosts").rglob("*.jsonl")) / len(written)
    note = (
        f"{len(written):,} games of {size / 1000:.1f} kB, {status['total_games']:,} counted; "
        f"last pull {statistics.median(pulls):.2f} s (median over remotes)"
    )
    committed = commit_times(folder / "ringd" / "var" / "ledger.sqlite", marks)
    return Measured(f"ringd rsync pull, interval_s {args.interval:g}", written, committed, note)


def cp_latency(args: argparse.Namespace, folder: Path) -> Measured:
    """The same writers, with `cp -r` of every host's tree every args.interval s + a scan."""
    hosts = [f"h{i}" for i in range(args.hosts)]
    for host in hosts:
        (folder / "hosts" / host).mkdir(parents=True)
    ctx = multiprocessing.get_context("fork")
    stop = ctx.Event()
    copy = ctx.Process(
        target=copier,
        args=(
            [str(folder / "hosts" / h) for h in hosts],
            str(folder / "cp"),
            args.interval,
            stop,
            str(folder / "cp.sqlite"),
            str(folder / "cp-marks.json"),
        ),
    )
    copy.start()
    try:
        written = run_writers(args, folder / "hosts", hosts)
        # The copier's round in progress (or its next) is the one that brings the last games.
        time.sleep(args.interval)
    finally:
        stop.set()
        copy.join()
    marks = [(s, t) for s, t in json.loads((folder / "cp-marks.json").read_text())]
    committed = commit_times(folder / "cp.sqlite", marks)
    return Measured(f"`cp -r` every {args.interval:g} s + scan", written, committed)


def latency_phase(args: argparse.Namespace, folder: Path) -> None:
    # One after the other, not at once: each on a machine that the other's copying does
    # not load (cp -r of 40 kB games re-copies gigabytes a round on the same two cores).
    runs = [ringd_latency(args, folder / "ringd-run")]
    if args.cp:
        runs.append(cp_latency(args, folder / "cp-run"))
    print(
        f"remote latency: {args.hosts} remotes x {args.writers_per_host} writers, "
        f"{args.rate:g} games/s for {args.duration:g} s, interval_s {args.interval:g}, "
        f"each way in its own phase of this run; ringd: {runs[0].note}; {machine()}"
    )
    rows = [run.row() for run in runs]
    print(table(["newline written -> counted", "games", "missed", "p50 s", "p99 s", "max s"], rows))
    ringd_p99 = float(rows[0][4])
    target = args.interval + 1
    print(
        f"target p99 <= {target:g} s: {'MET' if ringd_p99 <= target else 'MISSED'} ({ringd_p99:.2f} s)"
    )


def unchanged_phase(args: argparse.Namespace, folder: Path) -> None:
    host = folder / "tree" / "h"
    for i in range(args.files):
        path = host / f"d{i // 100:03d}" / f"w{i:05d}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b'{"boardType":"square8","numPlayers":2,"moves":[%d]}\n' % i * 10)
    rsyncd = RsyncDaemon(folder / "tree", ["h"])
    target = folder / "tree-pulled"
    remote = RemoteSettings(name="h", source=rsyncd.url("h"))
    puller = Puller(remote, target, folder / "work", EventBus(), Metrics())
    uvloop.run(puller.pull_once())  # the first pull fetches everything
    assert puller.health.failures == 0 and puller.last_pull_bytes > 0, puller.health

    def timed(fn: Callable[[], None]) -> tuple[float, float]:
        walls, cpus = [], []
        for _ in range(args.runs):
            c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            s0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            fn()
            walls.append(time.perf_counter() - t0)
            c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            s1 = resource.getrusage(resource.RUSAGE_SELF)
            cpus.append(
                c1.ru_utime
                + c1.ru_stime
                - c0.ru_utime
                - c0.ru_stime
                + s1.ru_utime
                + s1.ru_stime
                - s0.ru_utime
                - s0.ru_stime
            )
        return statistics.median(walls), statistics.median(cpus)

    def ringd_pull() -> None:
        uvloop.run(puller.pull_once())
        assert puller.health.failures == 0 and puller.last_pull_bytes == 0

    def plain_rsync() -> None:
        subprocess.run(["rsync", "-rt", rsyncd.url("h"), f"{folder / 'plain'}/"], check=True)

    def cp_r() -> None:
        shutil.rmtree(folder / "cp", ignore_errors=True)
        subprocess.run(["cp", "-r", str(host), str(folder / "cp")], check=True)

    plain_rsync()
    rows = []
    for name, fn in (
        ("ringd pull (rsync dry run: nothing to fetch)", ringd_pull),
        ("plain `rsync -rt` of the same tree (no-op)", plain_rsync),
        ("`cp -r` of the tree", cp_r),
    ):
        wall, cpu = timed(fn)
        rows.append([name, f"{wall * 1000:,.0f}", f"{cpu * 1000:,.0f}"])
    rsyncd.stop()
    size = sum(p.stat().st_size for p in host.rglob("*.jsonl"))
    print(
        f"unchanged tree: {args.files:,} files ({size / 1e6:.1f} MB) on an rsync daemon on "
        f"loopback; median of {args.runs}; CPU = this process + its children"
    )
    print(table(["one pull of an unchanged tree", "wall ms", "CPU ms"], rows))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--writers-per-host", type=int, default=4)
    parser.add_argument("--rate", type=float, default=1000.0, help="games/s in all")
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument(
        "--small", action="store_true", help="small games (~0.5 KB) instead of RingRift-sized"
    )
    parser.add_argument(
        "--cp",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the `cp -r` baseline after ringd in the same run (default: yes)",
    )
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    log.configure(level=logging.WARNING)  # the in-process pulls of the second part
    if shutil.which("rsync") is None:
        sys.exit("rsync is not installed (apt-get install rsync)")
    folder = Path(tempfile.mkdtemp(prefix="rd-remote-", dir="/tmp"))
    try:
        latency_phase(args, folder / "latency")
        if args.files:
            unchanged_phase(args, folder / "unchanged")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
