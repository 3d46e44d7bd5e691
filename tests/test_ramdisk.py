"""The RAM-disk flusher: complete lines only, fsynced, never lost, never invented."""

from __future__ import annotations

import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import DaemonProcess, append, game_line, write_config
from ringd.ramdisk import Flusher
from ringd.settings import RamdiskMapping
from ringd.sim import WritersResult, run_writers

RAMDISK = "ramdisk:\n  - source: shm/selfplay\n    target: data/selfplay/ramdisk\n    flush_interval_ms: 100\n"


def mapping(tmp: Path, **extra: object) -> RamdiskMapping:
    return RamdiskMapping(source=tmp / "shm", target=tmp / "disk", **extra)  # type: ignore[arg-type]


def complete_prefix(data: bytes) -> bytes:
    return data[: data.rfind(b"\n") + 1]


def assert_targets_mirror_sources(source_root: Path, target_root: Path) -> int:
    """Every target equals the complete-line prefix of its source; returns the games."""
    games = 0
    for source in source_root.rglob("*.jsonl"):
        target = target_root / source.relative_to(source_root)
        expected = complete_prefix(source.read_bytes())
        if not expected:
            assert not target.exists(), f"{target}: no complete line, yet a target exists"
            continue
        assert target.read_bytes() == expected, target
        games += expected.count(b"\n")
    return games


# -- the flusher on its own ---------------------------------------------------------------


def test_only_complete_lines_are_copied_and_a_partial_line_waits(tmp_path: Path) -> None:
    flusher = Flusher(mapping(tmp_path))
    source = tmp_path / "shm" / "gpu" / "a.jsonl"
    line = game_line("square8", 2, 2)
    append(source, game_line("square8", 2, 1) + line[:15])
    flusher.sweep()
    target = tmp_path / "disk" / "gpu" / "a.jsonl"
    assert target.read_bytes() == game_line("square8", 2, 1)
    assert flusher.status.partial_bytes == 15 and flusher.status.flushed_games == 1
    append(source, line[15:])
    flusher.sweep()
    assert target.read_bytes() == source.read_bytes()
    assert flusher.status.flushed_games == 2 and flusher.status.partial_bytes == 0


def test_no_target_file_exists_before_its_first_complete_line(tmp_path: Path) -> None:
    flusher = Flusher(mapping(tmp_path))
    source = tmp_path / "shm" / "x" / "a.jsonl"
    append(source, b'{"boardType":"hex8"')
    (tmp_path / "shm" / "x" / "empty.jsonl").touch()
    flusher.sweep()
    assert not (tmp_path / "disk").exists() or list((tmp_path / "disk").rglob("*.jsonl")) == []


def test_a_replaced_source_goes_to_a_new_target_and_the_old_one_is_kept(tmp_path: Path) -> None:
    flusher = Flusher(mapping(tmp_path))
    source = tmp_path / "shm" / "a.jsonl"
    append(source, b"".join(game_line("hex8", 2, i) for i in range(3)))
    flusher.sweep()
    old = (tmp_path / "disk" / "a.jsonl").read_bytes()
    source.unlink()  # a new writer process, a new file with other games
    append(source, b"".join(game_line("hex8", 2, i) for i in range(100, 104)))
    flusher.sweep()
    assert (tmp_path / "disk" / "a.jsonl").read_bytes() == old
    assert (tmp_path / "disk" / "a.r1.jsonl").read_bytes() == source.read_bytes()
    # Rewritten in place ("w"), longer than before: a third target.
    source.write_bytes(b"".join(game_line("hex8", 2, i, pad=50) for i in range(200, 205)))
    flusher.sweep()
    assert (tmp_path / "disk" / "a.r2.jsonl").read_bytes() == source.read_bytes()
    assert (tmp_path / "disk" / "a.r1.jsonl").read_bytes().count(b"\n") == 4


def test_a_restarted_flusher_resumes_from_the_targets_length(tmp_path: Path) -> None:
    source = tmp_path / "shm" / "a.jsonl"
    append(source, b"".join(game_line("hex8", 2, i) for i in range(3)))
    Flusher(mapping(tmp_path)).sweep()
    append(source, game_line("hex8", 2, 3))
    fresh = Flusher(mapping(tmp_path))  # no memory: the target is the cursor
    fresh.sweep()
    assert (tmp_path / "disk" / "a.jsonl").read_bytes() == source.read_bytes()
    assert fresh.status.flushed_games == 1
    assert not (tmp_path / "disk" / "a.r1.jsonl").exists()


def test_a_target_ending_in_a_partial_line_is_cut_back_then_completed(tmp_path: Path) -> None:
    source = tmp_path / "shm" / "a.jsonl"
    data = b"".join(game_line("hex8", 2, i) for i in range(3))
    append(source, data)
    append(tmp_path / "disk" / "a.jsonl", data[:-20])  # a crash mid-append
    Flusher(mapping(tmp_path)).sweep()
    assert (tmp_path / "disk" / "a.jsonl").read_bytes() == data


def test_sources_are_deleted_only_when_fully_copied_and_unchanged_long_enough(
    tmp_path: Path,
) -> None:
    flusher = Flusher(mapping(tmp_path, delete_source_after_s=60))
    done = tmp_path / "shm" / "done.jsonl"
    partial = tmp_path / "shm" / "partial.jsonl"
    fresh = tmp_path / "shm" / "fresh.jsonl"
    append(done, game_line("square8", 2, 1))
    append(partial, game_line("square8", 2, 2) + b'{"half')
    append(fresh, game_line("square8", 2, 3))
    old = time.time() - 120
    os.utime(done, (old, old))
    os.utime(partial, (old, old))
    flusher.sweep()  # copies; deletes only what was already fully copied before
    flusher.sweep()
    assert not done.exists() and partial.exists() and fresh.exists()
    assert (tmp_path / "disk" / "done.jsonl").read_bytes() == game_line("square8", 2, 1)
    assert flusher.status.deleted_sources == 1


def test_a_file_size_limit_fails_cleanly_and_the_copy_completes_once_lifted(tmp_path: Path) -> None:
    """EFBIG in a real process under RLIMIT_FSIZE: no partial line, retried, nothing lost."""
    source = tmp_path / "shm" / "a.jsonl"
    append(source, b"".join(game_line("hex8", 2, i, pad=300) for i in range(40)))
    script = (
        "import signal, sys, resource\n"
        "from pathlib import Path\n"
        "from ringd.ramdisk import Flusher\n"
        "from ringd.settings import RamdiskMapping\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), resource.RLIM_INFINITY))\n"
        "t = Path(sys.argv[1])\n"
        "f = Flusher(RamdiskMapping(source=t / 'shm', target=t / 'disk'))\n"
        "f.sweep()\n"
        "print(f.status.errors, f.status.pending_games, repr(f.status.last_error))\n"
    )
    limited = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path), "4096"],
        capture_output=True,
        text=True,
        check=True,
    )
    errors, pending, message = limited.stdout.split(" ", 2)
    assert int(errors) == 1 and int(pending) == 40 and "file size limit" in message
    target = tmp_path / "disk" / "a.jsonl"
    assert not target.exists() or target.read_bytes() == complete_prefix(target.read_bytes())
    ok = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path), str(resource.RLIM_INFINITY)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert ok.stdout.startswith("0 0 ")
    assert target.read_bytes() == source.read_bytes()


# -- the flusher in the daemon ------------------------------------------------------------


@pytest.fixture
def ramdisk_daemon(short_tmp: Path) -> Iterator[DaemonProcess]:
    (short_tmp / "data" / "selfplay").mkdir(parents=True)
    (short_tmp / "shm" / "selfplay").mkdir(parents=True)
    write_config(short_tmp, extra=RAMDISK)
    daemon = DaemonProcess(short_tmp)
    yield daemon
    daemon.close()


def test_sigterm_mid_stream_flushes_every_line_complete_at_that_moment(
    ramdisk_daemon: DaemonProcess,
) -> None:
    daemon = ramdisk_daemon
    src = daemon.folder / "shm" / "selfplay"
    daemon.start()
    result: list[WritersResult] = []
    writers = threading.Thread(
        target=lambda: result.append(run_writers(src, writers=16, rate=0, duration=2.5, small=True))
    )
    writers.start()
    daemon.wait_until(
        lambda s: s["ramdisk"][0]["flushed_games"] > 500 and len(list(src.rglob("*.jsonl"))) >= 16
    )
    snapshot = {p: p.read_bytes() for p in src.rglob("*.jsonl")}
    assert daemon.stop(signal.SIGTERM) == 0
    writers.join(30)
    assert result and len(snapshot) >= 16
    target_root = daemon.folder / "data" / "selfplay" / "ramdisk"
    for source, before in snapshot.items():
        target = (target_root / source.relative_to(src)).read_bytes()
        assert target.startswith(complete_prefix(before)), source  # complete at SIGTERM: flushed
        assert source.read_bytes().startswith(target)  # exactly once, nothing invented
        assert target.endswith(b"\n")  # no partial line
    assert "final ramdisk flush" in daemon.log.read_text()
    assert any(
        line.startswith("EXTEND_TIMEOUT_USEC=") for m in daemon.messages for line in m.split("\n")
    ) or (daemon.wait_message("EXTEND_TIMEOUT_USEC=", prefix=True, timeout=1))


def test_a_writer_killed_mid_line_its_games_are_flushed_and_the_tail_waits(
    ramdisk_daemon: DaemonProcess,
) -> None:
    daemon = ramdisk_daemon
    src = daemon.folder / "shm" / "selfplay"
    daemon.start()
    result = run_writers(src, writers=2, rate=100, games=60, kill_mid_line=True, small=True)
    assert len(result.partial_files) == 2
    target_root = daemon.folder / "data" / "selfplay" / "ramdisk"
    # Flushed, and counted by the daemon (the target lies under a watched root).
    daemon.wait_until(lambda s: s["total_games"] == 60 and s["ramdisk"][0]["flushed_games"] == 60)
    assert assert_targets_mirror_sources(src, target_root) == 60
    for source in result.partial_files:
        target = target_root / source.relative_to(src)
        assert not source.read_bytes().endswith(b"\n") and target.read_bytes().endswith(b"\n")
        append(source, b'"}\n')  # another writer completes the line
    daemon.wait_until(lambda s: s["ramdisk"][0]["flushed_games"] == 62)
    assert assert_targets_mirror_sources(src, target_root) == 62
    assert daemon.status()["ramdisk"][0]["partial_bytes"] == 0


def test_sigkill_at_random_moments_while_flushing_targets_end_byte_identical(
    ramdisk_daemon: DaemonProcess,
) -> None:
    daemon = ramdisk_daemon
    src = daemon.folder / "shm" / "selfplay"
    rng = random.Random(3)
    # Writers in a `ringd sim` process, stopped cleanly (SIGTERM) after the kills.
    sim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ringd.sim",
            str(src),
            "--writers",
            "4",
            "--rate",
            "400",
            "--duration",
            "120",
            "--small",
            "--partial-every",
            "5",
            "--rotate-every",
            "40",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(30):
            daemon.start()
            time.sleep(rng.uniform(0.05, 0.3))
            daemon.stop(signal.SIGKILL)
    finally:
        sim.send_signal(signal.SIGTERM)
        summary, _ = sim.communicate(timeout=60)
    assert sim.returncode == 0, summary
    daemon.start()
    daemon.stop(signal.SIGTERM)  # the last one flushes everything
    games = assert_targets_mirror_sources(src, daemon.folder / "data" / "selfplay" / "ramdisk")
    assert f"ringd sim writers: {games} games" in summary
    assert not [p for p in (daemon.folder / "data").rglob("*.jsonl") if p.stat().st_size == 0]


def test_a_deleted_source_tree_leaves_the_targets_untouched_and_is_reported(
    ramdisk_daemon: DaemonProcess,
) -> None:
    daemon = ramdisk_daemon
    src = daemon.folder / "shm" / "selfplay"
    daemon.start()
    append(src / "gpu" / "a.jsonl", b"".join(game_line("hex8", 2, i) for i in range(5)))
    daemon.wait_until(lambda s: s["ramdisk"][0]["flushed_games"] == 5 and s["total_games"] == 5)
    target = daemon.folder / "data" / "selfplay" / "ramdisk" / "gpu" / "a.jsonl"
    before = target.read_bytes()
    shutil.rmtree(daemon.folder / "shm")  # a reboot wipes the tmpfs
    status = daemon.wait_until(lambda s: not s["ramdisk"][0]["source_present"])
    assert target.read_bytes() == before and status["total_games"] == 5
    shown = subprocess.run(
        [sys.executable, "-m", "ringd.cli", "status", "--socket", str(daemon.socket)],
        capture_output=True,
        text=True,
    )
    assert "source missing" in shown.stdout
    append(src / "gpu" / "a.jsonl", game_line("hex8", 2, 99))  # selfplay starts again
    daemon.wait_until(
        lambda s: s["ramdisk"][0]["source_present"] and s["total_games"] == 6, timeout=30
    )
    assert target.read_bytes() == before  # the new source has other bytes: a new target
    assert (target.parent / "a.r1.jsonl").read_bytes() == game_line("hex8", 2, 99)


def test_a_read_only_target_is_reported_retried_and_caught_up_once_writable(
    short_tmp: Path,
) -> None:
    (short_tmp / "data" / "selfplay" / "ramdisk").mkdir(parents=True)
    (short_tmp / "shm" / "selfplay").mkdir(parents=True)
    write_config(short_tmp, extra=RAMDISK)
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv to drop CAP_DAC_OVERRIDE")
    daemon = DaemonProcess(short_tmp)
    if os.geteuid() == 0:  # root writes anywhere: drop the capability that lets it
        daemon.prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    target_dir = short_tmp / "data" / "selfplay" / "ramdisk"
    try:
        daemon.start()
        target_dir.chmod(0o555)
        append(
            short_tmp / "shm" / "selfplay" / "a.jsonl",
            b"".join(game_line("square8", 2, i) for i in range(3)),
        )
        status = daemon.wait_until(lambda s: bool(s["ramdisk"][0]["failing"]))
        m = status["ramdisk"][0]
        assert "permission denied" in m["last_error"] and m["pending_games"] == 3
        assert m["oldest_pending_age_s"] is not None
        assert list(target_dir.iterdir()) == []
        target_dir.chmod(0o755)
        status = daemon.wait_until(
            lambda s: s["ramdisk"][0]["flushed_games"] == 3 and not s["ramdisk"][0]["failing"]
        )
        assert (target_dir / "a.jsonl").read_bytes().count(b"\n") == 3
        assert status["ramdisk"][0]["errors"] >= 1
        daemon.wait_until(lambda s: s["total_games"] == 3)
    finally:
        target_dir.chmod(0o755)
        daemon.close()


def test_games_under_both_the_source_and_the_target_root_count_once(short_tmp: Path) -> None:
    (short_tmp / "data" / "selfplay").mkdir(parents=True)
    write_config(
        short_tmp, extra="ramdisk:\n  - {source: data/selfplay/shm, target: data/selfplay/disk}\n"
    )
    daemon = DaemonProcess(short_tmp)
    try:
        daemon.start()
        append(
            short_tmp / "data" / "selfplay" / "shm" / "a.jsonl",
            b"".join(game_line("hex8", 3, i) for i in range(7)),
        )
        daemon.wait_until(lambda s: s["ramdisk"][0]["flushed_games"] == 7)
        daemon.wait_until(lambda s: len(s["configs"]) and s["total_games"] == 7)
        assert (short_tmp / "data" / "selfplay" / "disk" / "a.jsonl").exists()
        time.sleep(0.3)
        assert daemon.status()["total_games"] == 7
    finally:
        daemon.close()
