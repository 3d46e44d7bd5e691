"""The daemon as systemd runs it: a real `ringd run` process, real files, real sockets."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness import DaemonProcess, append, game_line, ringd, write_config
from ringd.cli.client import follow
from ringd.sim import WritersResult, run_writers


def total(status: dict[str, object]) -> int:
    value = status["total_games"]
    assert isinstance(value, int)
    return value


def test_games_written_while_running_appear_in_status_even_in_a_new_nested_directory(
    daemon: DaemonProcess,
) -> None:
    daemon.start()
    root = daemon.folder / "data" / "selfplay"
    append(root / "gpu" / "a.jsonl", b"".join(game_line("square8", 2, i) for i in range(5)))
    daemon.wait_until(lambda s: total(s) == 5)
    # A directory tree created after start and written into at once: the file
    # lands before any watch on its directory can exist.
    nested = root / "cluster_9" / "host-a" / "run 1"
    nested.mkdir(parents=True)
    append(nested / "b.jsonl", b"".join(game_line("hex8", 3, i) for i in range(4)))
    status = daemon.wait_until(lambda s: total(s) == 9)
    configs = {c["name"]: c for c in status["configs"]}
    assert configs["square8_2p"]["new_games"] == 5 and configs["hex8_3p"]["total_games"] == 4
    assert configs["hex8_3p"]["threshold"] is None and configs["hex8_3p"]["state"] == "unconfigured"
    assert status["daemon"]["ready"] is True


def test_counts_are_exact_after_kill_9_and_restart_while_writers_keep_writing(
    daemon: DaemonProcess,
) -> None:
    daemon.start()
    root = daemon.folder / "data" / "selfplay"
    result: list[WritersResult] = []
    writers = threading.Thread(
        target=lambda: result.append(
            run_writers(
                root, writers=4, rate=300, games=900, small=True, partial_every=7, rotate_every=50
            )
        )
    )
    writers.start()
    daemon.wait_until(lambda s: total(s) > 100)
    daemon.stop(signal.SIGKILL)
    time.sleep(0.2)  # writers go on while no daemon runs
    daemon.start()
    writers.join(60)
    assert result, "writers did not finish"
    status = daemon.wait_until(lambda s: total(s) >= result[0].games)
    time.sleep(0.3)  # nothing more may arrive: every game counted once
    assert total(daemon.status()) == result[0].games == 900
    assert status["rejected_total"] == 0


def test_sighup_rereads_the_config_and_notify_messages_come_in_order(short_tmp: Path) -> None:
    (short_tmp / "data" / "selfplay").mkdir(parents=True)
    write_config(short_tmp)
    daemon = DaemonProcess(short_tmp, env={"WATCHDOG_USEC": "200000"})
    try:
        daemon.start()
        ready = next(m for m in daemon.messages if "READY=1" in m.split("\n")).split("\n")
        assert "READY=1" in ready and any(
            line.startswith("STATUS=") and "+0/10" in line for line in ready
        )
        # Watchdog pings every WATCHDOG_USEC / 2.
        first = time.monotonic()
        for _ in range(3):
            daemon.wait_message("WATCHDOG=1", timeout=2)
        assert time.monotonic() - first < 1.5
        write_config(short_tmp, configs="  square8_2p: {threshold: 5}\n")
        daemon.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        reloading = daemon.wait_message("RELOADING=1")
        usec = [line for line in reloading.split("\n") if line.startswith("MONOTONIC_USEC=")]
        assert (
            usec
            and abs(
                int(usec[0].split("=")[1]) - time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            )
            < 10_000_000
        )
        after = daemon.wait_message("READY=1")
        assert "STATUS=square8_2p +0/5" in after.split("\n")
        daemon.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        daemon.wait_message("STOPPING=1")
        assert daemon.proc.wait(10) == 0  # type: ignore[union-attr]
        kinds = [
            line.split("=")[0]
            for m in daemon.messages
            for line in m.split("\n")
            if line.split("=")[0] in ("READY", "RELOADING", "STOPPING")
        ]
        compact = [k for i, k in enumerate(kinds) if i == 0 or kinds[i - 1] != k or k != "READY"]
        assert compact[:1] == ["READY"] and compact[-1] == "STOPPING"
        assert compact[compact.index("RELOADING") : compact.index("RELOADING") + 2] == [
            "RELOADING",
            "READY",
        ]
    finally:
        daemon.close()


def test_the_socket_is_0660_or_stricter_and_removed_on_exit(daemon: DaemonProcess) -> None:
    daemon.start()
    mode = stat.S_IMODE(os.stat(daemon.socket).st_mode)
    assert stat.S_ISSOCK(os.stat(daemon.socket).st_mode) and mode & 0o117 == 0, oct(mode)
    assert daemon.stop() == 0
    assert not daemon.socket.exists()


def test_a_stale_socket_left_by_a_crash_is_replaced(daemon: DaemonProcess) -> None:
    daemon.start()
    daemon.stop(signal.SIGKILL)
    assert daemon.socket.exists()  # left behind
    daemon.start()
    assert daemon.status()["daemon"]["pid"] == daemon.pid


def test_a_second_daemon_on_the_same_socket_refuses_to_start(daemon: DaemonProcess) -> None:
    daemon.start()
    second = ringd("run", "--config", str(daemon.config), timeout=30)
    assert second.returncode == 1
    assert "another ringd answers on this socket" in second.stderr
    assert daemon.status()["daemon"]["pid"] == daemon.pid


def test_status_without_a_daemon_exits_2_with_a_one_line_message(tmp_path: Path) -> None:
    result = ringd("status", "--socket", str(tmp_path / "nobody.sock"))
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "no ringd answers at" in result.stderr


def test_status_finds_the_socket_from_the_environment(daemon: DaemonProcess) -> None:
    daemon.start()
    result = ringd("status", "--json", env={"RINGD_SOCKET": str(daemon.socket)})
    assert result.returncode == 0 and json.loads(result.stdout)["daemon"]["pid"] == daemon.pid
    result = ringd("status", "--config", str(daemon.config))
    assert result.returncode == 0 and "+0/10" in result.stdout


def test_metrics_and_healthz_over_the_socket(daemon: DaemonProcess) -> None:
    daemon.start()
    append(daemon.folder / "data" / "selfplay" / "a.jsonl", game_line("square8", 2, 1) + b"[]\n")
    daemon.wait_until(lambda s: total(s) == 1 and s["rejected_total"] == 1)
    out = (
        subprocess.run(
            ["curl", "-s", "--unix-socket", str(daemon.socket), "http://ringd/metrics"],
            capture_output=True,
            text=True,
        ).stdout
        if _have("curl")
        else _raw_get(daemon.socket, "/metrics")
    )
    assert 'ringd_games_total{config="square8_2p"} 1.0' in out
    assert 'ringd_threshold{config="square8_2p"} 10.0' in out
    assert 'ringd_rejects_total{reason="not_object"} 1.0' in out
    assert "ringd_detection_latency_seconds_bucket" in out and "ringd_scan_duration_seconds" in out
    assert _raw_get(daemon.socket, "/healthz").endswith("ok\n")


def test_the_daemon_process_never_imports_torch(daemon: DaemonProcess) -> None:
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed here, so the daemon could not import it anyway")
    daemon.start()
    append(daemon.folder / "data" / "selfplay" / "a.jsonl", game_line("square8", 2, 1))
    daemon.wait_until(lambda s: total(s) == 1)
    maps = Path(f"/proc/{daemon.pid}/maps").read_text()
    assert "libtorch" not in maps and "/torch/" not in maps


def test_sigterm_exits_0_quickly_and_closes_the_ledger(daemon: DaemonProcess) -> None:
    daemon.start()
    append(daemon.folder / "data" / "selfplay" / "a.jsonl", game_line("square8", 2, 1))
    daemon.wait_until(lambda s: total(s) == 1)
    started = time.monotonic()
    assert daemon.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 10
    assert "stopped" in daemon.log.read_text()
    # A clean close checkpoints the WAL away.
    assert not (daemon.folder / "var" / "ledger.sqlite-wal").exists()


def _have(tool: str) -> bool:
    import shutil

    return shutil.which(tool) is not None


def _raw_get(path: Path, url: str) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(path))
        s.sendall(f"GET {url} HTTP/1.0\r\nHost: ringd\r\n\r\n".encode())
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def test_run_with_an_invalid_config_exits_1(tmp_path: Path) -> None:
    path = write_config(tmp_path, configs="  nope: {threshold: 1}\n")
    result = subprocess.run(
        [sys.executable, "-m", "ringd.cli", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1 and "configs.nope" in result.stderr


def test_the_demo_runs_a_daemon_and_counts_every_game_its_writers_wrote(short_tmp: Path) -> None:
    result = ringd(
        "demo",
        "--dir",
        str(short_tmp / "demo"),
        "--duration",
        "2",
        "--writers",
        "2",
        "--rate",
        "30",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    found = re.findall(r"writers wrote ([\d,]+) games; ringd counted ([\d,]+)", result.stdout)
    assert found, result.stdout
    wrote, counted = (int(x.replace(",", "")) for x in found[0])
    assert wrote == counted > 0
    assert "square8_2p" in result.stdout and "/40" in result.stdout
    assert "stopped" in (short_tmp / "demo" / "ringd.log").read_text()


def test_sigterm_ends_event_streams_instead_of_waiting_for_them(daemon: DaemonProcess) -> None:
    daemon.start()
    lines: list[dict[str, object]] = []
    reader = threading.Thread(target=lambda: lines.extend(follow(daemon.socket)), daemon=True)
    reader.start()
    daemon.wait_until(lambda s: True)
    deadline = time.monotonic() + 10
    while not lines and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    assert daemon.stop(signal.SIGTERM, timeout=10) == 0
    assert time.monotonic() - started < 5
    reader.join(5)
    assert not reader.is_alive() and lines[0]["event"] == "hello"


def test_metrics_over_tcp_listen_on_loopback_only(short_tmp: Path) -> None:
    (short_tmp / "data" / "selfplay").mkdir(parents=True)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    write_config(short_tmp, extra=f"control:\n  metrics_listen: 127.0.0.1:{port}\n")
    daemon = DaemonProcess(short_tmp)
    try:
        daemon.start()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            body = b"".join(iter(lambda: s.recv(65536), b"")).decode()
        assert "ringd_new_games" in body
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /v1/status HTTP/1.0\r\nHost: x\r\n\r\n")
            assert b" 404 " in s.recv(65536).split(b"\r\n")[0] + b" "
    finally:
        daemon.close()
    refused = write_config(short_tmp, extra="control:\n  metrics_listen: 0.0.0.0:9108\n")
    result = ringd("check-config", str(refused))
    assert result.returncode == 1 and "not a loopback address" in result.stderr


def test_a_stalled_notify_reader_never_blocks_the_daemon(short_tmp: Path) -> None:
    (short_tmp / "data" / "selfplay").mkdir(parents=True)
    config = write_config(short_tmp)
    stalled = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stalled.bind(str(short_tmp / "stalled.sock"))  # bound, never read: its queue fills
    env = {**os.environ, "NOTIFY_SOCKET": str(short_tmp / "stalled.sock"), "WATCHDOG_USEC": "20000"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ringd.cli", "run", "--config", str(config)], env=env
    )
    try:
        sock = short_tmp / "var" / "ringd.sock"
        deadline = time.monotonic() + 20
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.5)  # 25 watchdog pings: far more than the queue holds
        append(short_tmp / "data" / "selfplay" / "a.jsonl", game_line("square8", 2, 1))
        deadline = time.monotonic() + 10
        while json.loads(_raw_get(sock, "/v1/status").split("\r\n\r\n", 1)[1])["total_games"] != 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        stalled.close()


def test_a_full_disk_under_the_ledger_loses_nothing_and_the_daemon_keeps_running(
    short_tmp: Path,
) -> None:
    import resource

    (short_tmp / "data" / "selfplay").mkdir(parents=True)
    text = (
        write_config(short_tmp)
        .read_text()
        .replace("roots: [data/selfplay]", "roots: [data/selfplay]\n  rescan_interval_s: 1")
    )
    (short_tmp / "ringd.yaml").write_text(text)
    daemon = DaemonProcess(short_tmp)
    # A file size limit stands in for a full disk: SQLite's writes past it fail.
    daemon.prefix = ["prlimit", "--fsize=600000:unlimited"]
    games = 15000
    try:
        daemon.start()
        append(
            short_tmp / "data" / "selfplay" / "a.jsonl",
            # More games than the limit holds at the ledger's ~80 bytes a game.
            b"".join(game_line("square8", 2, i, pad=50) for i in range(games)),
        )
        status = daemon.wait_until(lambda s: s["daemon"]["ingest_errors"] > 0, timeout=30)
        assert (
            "disk is full" in status["daemon"]["last_ingest_error"]
            or "ledger write failed" in status["daemon"]["last_ingest_error"]
        )
        assert _raw_get(daemon.socket, "/healthz").endswith("ok\n")  # still serving
        # Space again: the next reconciliation indexes everything, once.
        resource.prlimit(
            daemon.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
        )
        daemon.wait_until(lambda s: s["total_games"] == games, timeout=30)
        time.sleep(1.5)
        assert daemon.status()["total_games"] == games
    finally:
        daemon.close()
