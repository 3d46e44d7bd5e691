"""Soak: ringd under everything at once for a long while, then the books are checked.

    .venv/bin/python bench/soak.py [--minutes 30] [--dir /tmp/ringd-bench/soak]

For `--minutes` (default 30): 16 selfplay writers at a steady rate in both record
dialects, half of them on a RAM disk (/dev/shm) mapped to a target under the
watched root; the real CPU trainer on tiny settings, one run in three failing
(a wrapper as `training.command`); a config edit every minute, one in five
invalid; a kill -9 of the daemon every 2-4 minutes and a restart; one disk-full
episode (the daemon restarted once under a file size limit, RLIMIT_FSIZE, just
above its largest RAM-disk target, so writes past it fail with EFBIG).

At the end the writers stop and the daemon catches up; then it checks that
every game written was counted exactly once, every RAM-disk game is on disk,
no job is stuck (after a clean stop nothing runs and no job row is left
running), `trained_through` of each config is the end of its newest succeeded
job (moved by successes only), and the daemon's RSS and open file descriptors
at the end are within 1.2x of their values after 5 minutes. It prints a table
and writes `DIR/soak.json`; the exit code is 0 when every check passed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import machine
from ringd.cli import client

CONFIGS = ("square8_2p", "hex8_2p")
WRITERS = 16
HYPER = (
    "{channels: 8, blocks: 1, batch_size: 32, steps: 30, warmup_steps: 2, log_every: 5,"
    " checkpoint_every_s: 5}"
)
FAIL_EVERY = 3
FSIZE_MARGIN = 64 * 1024
SAMPLE_EVERY_S = 5.0

# The trainer: every FAIL_EVERY-th run fails at once, the others are ringd's own.
TRAINER = '''"""Soak trainer: one run in {every} fails, the others exec `python -m ringd.train`."""
import fcntl, json, os, sys
spec = sys.argv[-1]
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "trainer-runs"), "a+") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    f.seek(0)
    run = len(f.read())
    f.write("x")
if run % {every} == {every} - 1:
    print(json.dumps({{"event": "error", "kind": "soak", "message": "planned failure"}}), flush=True)
    sys.exit(1)
os.execv(sys.executable, [sys.executable, "-m", "ringd.train", spec])
'''


class Soak:
    def __init__(self, folder: Path, minutes: float, rate: float, seed: int) -> None:
        self.folder = folder
        self.minutes = minutes
        self.rate = rate
        self.rng = random.Random(seed)
        self.root = folder / "data" / "selfplay"
        self.shm = Path("/dev/shm") / f"ringd-soak-{os.getpid()}"
        self.source = self.shm / "selfplay"
        self.target = self.root / "ramdisk"
        self.config = folder / "ringd.yaml"
        self.socket = folder / "var" / "ringd.sock"
        self.log = folder / "daemon.log"
        self.daemon: subprocess.Popen[bytes] | None = None
        self.writers: list[subprocess.Popen[str]] = []
        self.events: list[tuple[float, str]] = []
        self.samples: list[dict[str, float]] = []
        self.edits = 0
        self.config_valid = True
        self.kills = 0
        self.unexpected_exits = 0
        self.refused_starts = 0
        self.fsize: int | None = None  # the disk-full episode's limit, while it lasts
        self.episode_done = False
        self.t0 = time.monotonic()

    # -- setup ----------------------------------------------------------------------------

    def prepare(self) -> None:
        if self.folder.exists():
            shutil.rmtree(self.folder)
        (self.root / "direct").mkdir(parents=True)
        self.target.mkdir(parents=True)
        self.source.mkdir(parents=True)
        trainer = self.folder / "trainer.py"
        trainer.write_text(TRAINER.format(every=FAIL_EVERY))
        self.write_config(valid=True)

    def write_config(self, valid: bool) -> None:
        thresholds = {c: self.rng.randrange(120, 260, 10) for c in CONFIGS}
        if not valid:
            thresholds[self.rng.choice(CONFIGS)] = 0  # refused: thresholds are >= 1
        configs = "".join(f"  {c}: {{threshold: {t}}}\n" for c, t in thresholds.items())
        text = (
            f"state_dir: var\nwatch:\n  roots: [{self.root}]\n  rescan_interval_s: 20\n"
            f"ramdisk:\n  - {{source: {self.source}, target: {self.target}}}\n"
            "training:\n  devices: cpu\n"
            f"  command: {json.dumps([sys.executable, str(self.folder / 'trainer.py')])}\n"
            "  timeout_s: 600\n  grace_s: 10\n  backoff_base_s: 5\n  backoff_cap_s: 30\n"
            f"  hyper: {HYPER}\n  window: {{min_games: 50, max_games: 400}}\n"
            f"configs:\n{configs}"
        )
        # Editors save by rename, or in place: both, alternately.
        if self.edits % 2:
            self.config.write_text(text)
        else:
            tmp = self.config.with_name(".ringd.yaml.swp")
            tmp.write_text(text)
            tmp.rename(self.config)
        self.config_valid = valid

    # -- processes ------------------------------------------------------------------------

    def now(self) -> float:
        return time.monotonic() - self.t0

    def note(self, what: str) -> None:
        self.events.append((round(self.now(), 1), what))
        print(f"[{self.now():7.1f}s] {what}", flush=True)

    def start_daemon(self, fsize: int | None = None) -> None:
        argv = [sys.executable, "-m", "ringd.cli", "run", "--config", str(self.config)]
        if fsize is not None:
            argv = ["prlimit", f"--fsize={fsize}", "--", *argv]
        with open(self.log, "ab") as log:
            self.daemon = subprocess.Popen(argv, stdout=log, stderr=log)
        self.fsize = fsize
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.daemon.poll() is not None:
                if not self.config_valid:
                    self.refused_starts += 1
                    self.note("daemon refused to start: the config is invalid (as designed)")
                    self.daemon = None
                    return
                self.unexpected_exits += 1
                self.note(f"daemon exited at start with {self.daemon.returncode}")
                self.daemon = None
                return
            try:
                if client.get_json(self.socket, "/v1/status")["daemon"]["ready"]:
                    limit = f" under a file size limit of {fsize:,} bytes" if fsize else ""
                    self.note(f"daemon {self.daemon.pid} ready{limit}")
                    return
            except (client.DaemonUnavailable, client.Refused, ValueError):
                pass
            time.sleep(0.1)
        self.note("daemon not ready within 60 s")

    def kill_daemon(self) -> None:
        if self.daemon is None:
            return
        self.daemon.send_signal(signal.SIGKILL)
        self.daemon.wait()
        self.kills += 1
        self.note(f"kill -9 daemon {self.daemon.pid}")
        self.daemon = None

    def start_writers(self) -> None:
        for i, out in enumerate((self.root / "direct", self.source)):
            argv = [sys.executable, "-m", "ringd.sim", str(out), "--writers", str(WRITERS // 2)]
            argv += ["--rate", str(self.rate / 2), "--dialect", "mixed", "--seed", str(11 + i)]
            argv += ["--configs", ",".join(CONFIGS)]
            self.writers.append(
                subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            )
        self.note(f"{WRITERS} writers at {self.rate:g} games/s (half on the RAM disk)")

    def stop_writers(self) -> int:
        written = 0
        for sim in self.writers:
            sim.send_signal(signal.SIGTERM)
        for sim in self.writers:
            out, _ = sim.communicate(timeout=60)
            match = re.search(r"ringd sim writers: ([\d,]+) games", out)
            if match is None:
                raise RuntimeError(f"no summary from the simulator: {out!r}")
            written += int(match.group(1).replace(",", ""))
        self.note(f"writers stopped: {written:,} games written")
        return written

    # -- the run --------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        self.prepare()
        self.start_daemon()
        self.start_writers()
        end = self.minutes * 60
        next_edit = 60.0
        next_kill = self.rng.uniform(120, 240)
        next_sample = 0.0
        episode_at = end * 0.4
        while self.now() < end:
            t = self.now()
            if t >= next_sample:
                self.sample()
                next_sample = t + SAMPLE_EVERY_S
            if t >= next_edit:
                self.edits += 1
                valid = self.edits % 5 != 3
                self.write_config(valid)
                self.note(f"config edit {self.edits} ({'valid' if valid else 'INVALID'})")
                next_edit += 60.0
                if self.daemon is None:
                    self.start_daemon()
            if t >= next_kill and t < end - 45:
                self.kill_daemon()
                fsize = None
                if not self.episode_done and t >= episode_at:
                    fsize = self.episode_limit()
                    self.episode_done = True
                    self.note("disk-full episode: the next daemon runs under a file size limit")
                self.start_daemon(fsize)
                next_kill = self.now() + self.rng.uniform(120, 240)
            if self.daemon is not None and self.daemon.poll() is not None:
                self.unexpected_exits += 1
                self.note(f"daemon exited unexpectedly ({self.daemon.returncode}); restarting")
                self.daemon = None
                self.start_daemon()
            time.sleep(0.2)
        return self.finish()

    def episode_limit(self) -> int:
        """Just above the largest RAM-disk target (RLIMIT_FSIZE is per file): its
        appends fail within seconds, the others' soon after; the ledger's files
        (smaller) fail only if one outgrows it."""
        targets = [p.stat().st_size for p in self.target.rglob("*.jsonl")] or [0]
        return max(targets) + FSIZE_MARGIN

    def sample(self) -> None:
        if self.daemon is None or self.daemon.poll() is not None:
            return
        pid = self.daemon.pid  # under prlimit too: it execs the daemon
        try:
            rss = _rss_mb(pid)
            fds = len(os.listdir(f"/proc/{pid}/fd"))
            status = client.get_json(self.socket, "/v1/status", timeout=10)
        except (FileNotFoundError, ProcessLookupError, client.DaemonUnavailable, ValueError):
            return
        self.samples.append(
            {
                "t": round(self.now(), 1),
                "pid": pid,
                "rss_mb": rss,
                "fds": fds,
                "fsize_limit": self.fsize or 0,
                "flush_errors": sum(m["errors"] for m in status["ramdisk"]),
                "flush_failing": sum(len(m["failing"]) for m in status["ramdisk"]),
                "pending_games": sum(m["pending_games"] for m in status["ramdisk"]),
                "ingest_errors": int((status.get("daemon") or {}).get("ingest_errors") or 0),
            }
        )

    # -- the books ------------------------------------------------------------------------

    def finish(self) -> dict[str, Any]:
        if self.daemon is None:
            if not self.config_valid:
                self.write_config(valid=True)
            self.start_daemon()
        if self.fsize is not None:  # never end inside the episode
            self.kill_daemon()
            self.start_daemon()
        written = self.stop_writers()
        status = self.settle(written)
        on_disk = _complete_lines(self.root)  # once the RAM disk is flushed, not before
        self.sample()
        checks: dict[str, tuple[bool, str]] = {}
        counted = status["total_games"] + status["rejected_total"]
        checks["every game counted exactly once"] = (
            status["total_games"] == written == on_disk and status["rejected_total"] == 0,
            f"written {written:,}, lines on disk {on_disk:,}, counted {status['total_games']:,},"
            f" rejected {status['rejected_total']:,} (sum {counted:,})",
        )
        missing, files = _ramdisk_missing(self.source, self.target)
        checks["every RAM-disk game on disk"] = (
            missing == 0,
            f"{files} source files; {missing} whose complete lines are not all in the target",
        )
        rss_fds = self.growth()
        running = [c["name"] for c in status["configs"] if c["state"] == "training"]
        self.stop_daemon()
        jobs, watermarks = _ledger_jobs(self.folder / "var" / "ledger.sqlite")
        left = [j for j in jobs if j["state"] in ("running", "queued")]
        orphans = _trainer_processes(self.folder)
        checks["no job stuck"] = (
            not left and not orphans,
            f"{len(jobs)} jobs ({_by_state(jobs)}); after the stop: {len(left)} left running, "
            f"{len(orphans)} trainer processes alive (training at the end: {running or 'none'})",
        )
        expected = {
            config: max(
                (
                    j["last_seq"]
                    for j in jobs
                    if j["config"] == config and j["state"] == "succeeded"
                ),
                default=0,
            )
            for config in watermarks
        }
        wrong = {c: (t, expected[c]) for c, t in watermarks.items() if t != expected[c]}
        checks["trained_through moved only by successes"] = (
            not wrong,
            "; ".join(f"{c} {t:,}" for c, t in watermarks.items())
            + (f"; WRONG {wrong}" if wrong else " = the end of each newest succeeded job"),
        )
        checks["RSS and fds at the end within 1.2x of 5 minutes"] = rss_fds
        episode = [s for s in self.samples if s["fsize_limit"]]
        checks["the disk-full episode failed writes, and they were caught up"] = (
            bool(episode) and max(s["flush_errors"] for s in episode) > 0 and missing == 0,
            (
                f"{len(episode) * SAMPLE_EVERY_S:.0f} s under RLIMIT_FSIZE "
                f"{episode[0]['fsize_limit']:,} B: up to {max(s['flush_errors'] for s in episode)} "
                f"failed RAM-disk writes ({max(s['flush_failing'] for s in episode)} files "
                f"failing at once, {max(s['pending_games'] for s in episode)} games pending), "
                f"{max(s['ingest_errors'] for s in episode)} failed ledger writes; all on disk "
                "at the end"
            )
            if episode
            else "no episode (the run was too short for a kill after 40% of it)",
        )
        errors = _log_levels(self.log)
        return {
            "minutes": self.minutes,
            "machine": machine(),
            "written": written,
            "kills": self.kills,
            "config_edits": self.edits,
            "refused_starts": self.refused_starts,
            "unexpected_exits": self.unexpected_exits,
            "jobs": _by_state(jobs),
            "log_levels": errors,
            "checks": {k: {"ok": ok, "detail": detail} for k, (ok, detail) in checks.items()},
            "events": self.events,
            "samples": self.samples,
        }

    def settle(self, written: int, timeout: float = 300) -> dict[str, Any]:
        """The daemon's status once it counted what was written and flushed the RAM disk."""
        deadline = time.monotonic() + timeout
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                status = client.get_json(self.socket, "/v1/status")
            except client.DaemonUnavailable:
                time.sleep(0.5)
                continue
            pending = sum(m["pending_games"] for m in status["ramdisk"])
            if status["total_games"] + status["rejected_total"] >= written and pending == 0:
                break
            time.sleep(0.5)
        self.note(f"settled: {status.get('total_games', 0):,} games counted")
        return status

    def growth(self) -> tuple[bool, str]:
        if not self.samples:
            return False, "no samples"
        mark = min(300.0, self.minutes * 60 / 2)
        early = next((s for s in self.samples if s["t"] >= mark), self.samples[0])
        late = self.samples[-1]
        rss, fds = late["rss_mb"] / early["rss_mb"], late["fds"] / early["fds"]
        return (
            rss <= 1.2 and fds <= 1.2,
            f"RSS {early['rss_mb']:.1f} MB at {early['t']:.0f}s (pid {early['pid']}) -> "
            f"{late['rss_mb']:.1f} MB at the end (pid {late['pid']}): {rss:.2f}x; fds "
            f"{early['fds']:.0f} -> {late['fds']:.0f}: {fds:.2f}x; max RSS "
            f"{max(s['rss_mb'] for s in self.samples):.1f} MB",
        )

    def stop_daemon(self) -> None:
        if self.daemon is not None:
            self.daemon.send_signal(signal.SIGTERM)
            self.daemon.wait(120)
            self.note(f"daemon stopped (SIGTERM): exit {self.daemon.returncode}")
            self.daemon = None

    def cleanup(self) -> None:
        for sim in self.writers:
            if sim.poll() is None:
                sim.kill()
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.kill()
        shutil.rmtree(self.shm, ignore_errors=True)


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _complete_lines(root: Path) -> int:
    total = 0
    for path in root.rglob("*.jsonl"):
        total += path.read_bytes().count(b"\n")
    return total


def _ramdisk_missing(source: Path, target: Path) -> tuple[int, int]:
    missing = files = 0
    for src in source.rglob("*.jsonl"):
        files += 1
        data = src.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        dst = target / src.relative_to(source)
        if not dst.exists() or dst.read_bytes() != complete:
            missing += 1
    return missing, files


def _ledger_jobs(path: Path) -> tuple[list[dict[str, Any]], dict[str, int]]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        db.row_factory = sqlite3.Row
        jobs = [dict(r) for r in db.execute("SELECT id, config, state, last_seq FROM jobs")]
        watermarks = {
            r["name"]: r["trained_through"]
            for r in db.execute("SELECT name, trained_through FROM configs")
            if r["name"] in CONFIGS
        }
    finally:
        db.close()
    return jobs, watermarks


def _trainer_processes(folder: Path) -> list[int]:
    needle = os.fsencode(folder / "var" / "jobs")
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if needle in f.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


def _by_state(jobs: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for job in jobs:
        out[job["state"]] = out.get(job["state"], 0) + 1
    return out


def _log_levels(path: Path) -> dict[str, int]:
    levels: dict[str, int] = {}
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                level = json.loads(line).get("level", "?")
            except ValueError:
                continue
            levels[level] = levels.get(level, 0) + 1
    return levels


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="default: %(default)s")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/ringd-bench/soak"))
    parser.add_argument(
        "--rate", type=float, default=8.0, help="games/s of all writers (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args()
    if shutil.which("prlimit") is None:
        parser.error("prlimit (util-linux) is needed for the disk-full episode")
    soak = Soak(args.dir, args.minutes, args.rate, args.seed)
    try:
        result = soak.run()
    finally:
        soak.cleanup()
    (args.dir / "soak.json").write_text(json.dumps(result, indent=1) + "\n")
    print()
    print(
        f"soak: {result['minutes']:g} min, {result['machine']}; {result['written']:,} games; "
        f"{result['kills']} kill -9, {result['config_edits']} config edits "
        f"({result['refused_starts']} refused starts), jobs {result['jobs']}, "
        f"unexpected daemon exits {result['unexpected_exits']}, log levels {result['log_levels']}"
    )
    for name, check in result["checks"].items():
        print(f"{'PASS' if check['ok'] else 'FAIL'}  {name}: {check['detail']}")
    return 0 if all(c["ok"] for c in result["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
