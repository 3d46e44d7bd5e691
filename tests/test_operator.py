"""What an operator hits (issue 14): each test reproduces a defect as it was found,
with real `ringd` CLI processes and, where a daemon is involved, a real daemon."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from harness import WITHOUT_DAC, DaemonProcess, append, game_line, ringd, write_config


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "ringd.cli", *args]


# -- 1. relative defaults resolve against the config file's folder -------------------


def test_default_paths_resolve_against_the_config_folder_not_the_cwd(tmp_path: Path) -> None:
    srv = tmp_path / "srv" / "x"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    append(srv / "data" / "selfplay" / "a.jsonl", game_line("square8", 2, 1))
    (srv / "ringd.yaml").write_text("configs:\n  square8_2p: {threshold: 5}\n")  # all defaults
    result = ringd("scan", "--config", str(srv / "ringd.yaml"), "--json", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert "does not exist" not in result.stderr
    assert json.loads(result.stdout)["total_games"] == 1
    assert (srv / "var" / "ringd" / "ledger.sqlite").exists()
    assert list(elsewhere.iterdir()) == []  # no ./var/ringd where the command ran


# -- 2. a broken live config does not lock the clients out ---------------------------


def test_clients_reach_a_daemon_whose_config_an_edit_broke(daemon: DaemonProcess) -> None:
    daemon.start()
    with open(daemon.config, "a") as f:
        f.write("  square8_4p: {threshold: 0}\n")
    daemon.wait_until(lambda s: s["config_error"] is not None)
    config = str(daemon.config)
    shown = ringd("status", "--config", config)
    assert shown.returncode == 0, shown.stderr
    assert "config error" in shown.stdout and "square8_4p.threshold: must be >= 1" in shown.stdout
    assert "invalid configuration" not in shown.stderr
    as_json = json.loads(ringd("status", "--json", "--config", config).stdout)
    assert "must be >= 1" in as_json["config_error"]
    jobs = ringd("jobs", "--config", config)
    assert jobs.returncode == 0, jobs.stderr
    assert "no training jobs yet" in jobs.stdout
    assert "runs on its last good configuration" in jobs.stderr and "square8_4p" in jobs.stderr
    # Even YAML that no longer parses: a clear message, not a traceback.
    daemon.config.write_text("state_dir: var\nconfigs: [\n")
    broken = ringd("status", "--config", config)
    assert broken.returncode == 2 and "invalid YAML" in broken.stderr


# -- 5. options after a sub-subcommand -----------------------------------------------


def test_models_validate_takes_config_after_the_subcommand(daemon: DaemonProcess) -> None:
    daemon.start()
    for args in (
        ("models", "validate", "--config", str(daemon.config)),
        ("models", "--config", str(daemon.config), "validate"),
        ("models", "validate", "--socket", str(daemon.socket)),
    ):
        result = ringd(*args)
        assert result.returncode == 0, (args, result.stderr)
        assert "unrecognized arguments" not in result.stderr
    pin = ringd("models", "pin", str(daemon.folder / "nope.pt"), "--config", str(daemon.config))
    assert pin.returncode == 1 and "unrecognized arguments" not in pin.stderr


# -- 6. a file reached through a directory symlink is one file -----------------------


def test_a_symlinked_directory_does_not_read_a_file_twice(daemon: DaemonProcess) -> None:
    # Issue 14: `ln -s .. sp/loop/up` while the daemon runs: the new directory's scan
    # read sp/a.jsonl again as sp/loop/up/a.jsonl and counted its bad line twice.
    root = daemon.folder / "data" / "selfplay"
    (root / "loop").mkdir()
    append(root / "a.jsonl", b"not json\n" + game_line("square8", 2, 1))
    daemon.start()
    daemon.wait_until(lambda s: s["total_games"] == 1 and s["rejects"] == {"not_json": 1})
    (root / "loop" / "up").symlink_to("..")
    (root / "loop" / "b.jsonl").write_bytes(game_line("square8", 2, 2))  # a new file after it
    status = daemon.wait_until(lambda s: s["total_games"] == 2)
    time.sleep(1.0)  # the new directory's scan, and the events through the link, are done
    status = daemon.status()
    assert status["rejects"] == {"not_json": 1} and status["rejected_total"] == 1
    assert status["total_games"] == 2
    scanned = ringd("scan", "--config", str(daemon.config), "--json")  # a full scan agrees
    assert json.loads(scanned.stdout)["rejects"] == {"not_json": 1}
    import sqlite3

    db = sqlite3.connect(f"file:{daemon.folder / 'var' / 'ledger.sqlite'}?mode=ro", uri=True)
    paths = sorted(r[0] for r in db.execute("SELECT path FROM files"))
    db.close()
    assert paths == [str(root / "a.jsonl"), str(root / "loop" / "b.jsonl")]


def test_hard_links_and_file_symlinks_are_one_file_in_a_scan(tree: Path) -> None:
    root = tree / "data" / "selfplay"
    append(root / "a.jsonl", b"not json\n" + game_line("square8", 2, 1))
    os.link(root / "a.jsonl", root / "hard.jsonl")
    (root / "soft.jsonl").symlink_to("a.jsonl")
    result = ringd("scan", "--config", str(tree / "ringd.yaml"), "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["rejects"] == {"not_json": 1} and status["total_games"] == 1


# -- 7. unreadable files and directories are in the status ---------------------------


@pytest.mark.skipif(
    os.geteuid() == 0 and shutil.which("setpriv") is None,
    reason="running as root without setpriv (util-linux) to drop CAP_DAC_OVERRIDE",
)
def test_unreadable_files_and_directories_are_shown_in_status(daemon: DaemonProcess) -> None:
    root = daemon.folder / "data" / "selfplay"
    daemon.config.write_text(
        "state_dir: var\nwatch:\n  roots: [data/selfplay]\n  rescan_interval_s: 0.5\n"
        "training:\n  enabled: false\nconfigs:\n  square8_2p: {threshold: 10}\n"
    )
    append(root / "ok.jsonl", game_line("square8", 2, 1))
    append(root / "locked" / "b.jsonl", game_line("square8", 2, 2))
    append(root / "secret.jsonl", game_line("square8", 2, 3))
    (root / "locked").chmod(0o000)
    (root / "secret.jsonl").chmod(0o000)
    if os.geteuid() == 0:
        daemon.prefix = WITHOUT_DAC
    try:
        daemon.start()
        status = daemon.wait_until(lambda s: s["unreadable"]["count"] == 2)
        assert status["total_games"] == 1
        first = {p["path"]: p["reason"] for p in status["unreadable"]["first"]}
        assert first == {
            str(root / "locked"): "cannot list directory: Permission denied",
            str(root / "secret.jsonl"): "cannot read: Permission denied",
        }
        table = ringd("status", "--socket", str(daemon.socket)).stdout
        assert "unreadable: 2 paths below the watched roots cannot be read" in table
        assert f"{root / 'locked'}: cannot list directory: Permission denied" in table
        metrics = _metrics(daemon)
        assert "ringd_unreadable_paths 2.0" in metrics
        # Readable again: counted, and gone from the status at the next scan.
        (root / "locked").chmod(0o755)
        (root / "secret.jsonl").chmod(0o644)
        daemon.wait_until(lambda s: s["unreadable"]["count"] == 0 and s["total_games"] == 3)
    finally:
        (root / "locked").chmod(0o755)
        (root / "secret.jsonl").chmod(0o644)


def _metrics(daemon: DaemonProcess) -> str:
    from ringd.cli.client import get

    return get(daemon.socket, "/metrics").decode()


def test_scan_json_lists_unreadable_paths(tree: Path) -> None:
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv (util-linux) to drop CAP_DAC_OVERRIDE")
    root = tree / "data" / "selfplay"
    append(root / "locked" / "b.jsonl", game_line("square8", 2, 2))
    (root / "locked").chmod(0o000)
    try:
        result = ringd(
            "scan",
            "--config",
            str(tree / "ringd.yaml"),
            "--json",
            prefix=WITHOUT_DAC if os.geteuid() == 0 else None,
        )
    finally:
        (root / "locked").chmod(0o755)
    assert result.returncode == 0, result.stderr
    unreadable = json.loads(result.stdout)["unreadable"]
    assert unreadable == {
        "count": 1,
        "first": [
            {"path": str(root / "locked"), "reason": "cannot list directory: Permission denied"}
        ],
    }


# -- 8. status --watch without a terminal ---------------------------------------------


@pytest.mark.parametrize("as_json", [False, True])
def test_status_watch_prints_a_snapshot_per_interval_when_not_on_a_terminal(
    daemon: DaemonProcess, as_json: bool
) -> None:
    daemon.start()
    args = ["status", "--watch", "--interval", "0.2", "--socket", str(daemon.socket)]
    proc = subprocess.Popen(
        cli(*args, *(["--json"] if as_json else [])), stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(2 if as_json else 12)]
    finally:
        proc.kill()
        proc.wait()
    if as_json:
        snapshots = [json.loads(line) for line in lines]
        assert all("configs" in s for s in snapshots)
        assert snapshots[1]["generated_at"] > snapshots[0]["generated_at"]
    else:
        text = "".join(lines)
        assert text.count("config ") >= 2, text  # the table's header, twice


def test_status_watch_exits_2_when_the_daemon_goes_away(daemon: DaemonProcess) -> None:
    daemon.start()
    proc = subprocess.Popen(
        cli("status", "--watch", "--json", "--interval", "0.1", "--socket", str(daemon.socket)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    json.loads(proc.stdout.readline())
    daemon.stop(signal.SIGKILL)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 2 and "no ringd answers" in err


# -- 9. ringd events when the daemon dies ---------------------------------------------


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGKILL, 2), (signal.SIGTERM, 0)])
def test_events_exits_non_zero_when_the_daemon_dies(
    daemon: DaemonProcess, sig: int, code: int
) -> None:
    daemon.start()
    proc = subprocess.Popen(
        cli("events", "--socket", str(daemon.socket)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert json.loads(proc.stdout.readline())["event"] == "hello"
    daemon.stop(sig)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == code, err
    if sig == signal.SIGKILL:
        assert "broke off" in err and "died" in err
    else:
        assert json.loads(out.splitlines()[-1])["event"] == "daemon_stopping"
        assert "the daemon stopped" in err


# -- Also: broken pipes, 404s, plurals --------------------------------------------------


@pytest.mark.parametrize("command", [["schema"], ["--help"], ["demo", "--help"]])
def test_a_closed_pipe_ends_quietly(command: list[str]) -> None:
    shell = " ".join(cli(*command)) + " | head -1"
    result = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip()
    assert result.stderr == "", result.stderr


def test_schema_through_head_prints_no_traceback_and_exits_as_sigpipe() -> None:
    proc = subprocess.Popen(cli("schema"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.readline()
    proc.stdout.close()  # like `head -1`
    _, err = proc.communicate(timeout=60)
    assert b"Traceback" not in err and b"BrokenPipeError" not in err, err
    assert proc.returncode in (0, 128 + signal.SIGPIPE)


def test_logs_of_an_unknown_job_prints_the_daemons_message(daemon: DaemonProcess) -> None:
    daemon.start()
    for job in ("NOPE", "a/b", "../../etc"):
        result = ringd("logs", job, "--socket", str(daemon.socket))
        assert result.returncode == 1
        assert "HTTP 404" not in result.stderr and "b'404" not in result.stderr, result.stderr
        assert f"no job {job!r}" in result.stderr, result.stderr


def test_counts_of_one_are_singular(tree: Path) -> None:
    config = write_config(tree, configs="  square8_2p: {threshold: 5}\n")
    checked = ringd("check-config", str(config))
    assert checked.returncode == 0
    assert "1 configuration, 1 watched root," in checked.stdout
    append(tree / "data" / "selfplay" / "a.jsonl", game_line("square8", 2, 1))
    scanned = ringd("scan", "--config", str(config))
    assert "scanned 1 file in" in scanned.stderr and "1 new game[" not in scanned.stderr
    assert "1 new game" in scanned.stderr and "1 game," in scanned.stdout


# -- Also: check-config warnings ---------------------------------------------------------


def test_an_empty_config_passes_check_config_with_warnings(tmp_path: Path) -> None:
    path = tmp_path / "ringd.yaml"
    path.write_text("# nothing yet\n")
    result = ringd("check-config", str(path))
    assert result.returncode == 0 and result.stdout.startswith("OK:")
    assert "warning:" in result.stderr
    assert "sets nothing: every key has its default" in result.stderr
    assert "no configurations under `configs:`" in result.stderr


@pytest.mark.skipif(
    os.geteuid() == 0 and shutil.which("setpriv") is None,
    reason="running as root without setpriv (util-linux) to drop CAP_DAC_OVERRIDE",
)
def test_check_config_warns_when_the_state_dir_is_not_writable(tmp_path: Path) -> None:
    locked = tmp_path / "etc"
    locked.mkdir()
    path = locked / "ringd.yaml"
    path.write_text(
        "state_dir: var/ringd\nramdisk:\n  - {source: /dev/shm/x, target: data/ram}\n"
        "configs:\n  square8_2p: {threshold: 5}\n"
    )
    locked.chmod(0o555)  # like /etc/ringd under ProtectSystem=strict
    try:
        result = ringd("check-config", str(path), prefix=WITHOUT_DAC if os.geteuid() == 0 else None)
    finally:
        locked.chmod(0o755)
    assert result.returncode == 0, result.stderr
    assert f"state_dir {locked / 'var' / 'ringd'}: not writable by" in result.stderr
    assert f"ramdisk[0].target {locked / 'data' / 'ram'}: not writable by" in result.stderr


def test_check_config_warns_about_paths_the_unit_leaves_read_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ringd.configcheck import service_writable_paths, unit_writable_paths, warnings
    from ringd.settings import load_settings

    units = tmp_path / "units"
    (units / "ringd.service.d").mkdir(parents=True)
    (units / "ringd.service").write_text(
        "[Service]\nStateDirectory=ringd\nRuntimeDirectory=ringd\nReadWritePaths=-/srv/ringrift\n"
    )
    (units / "ringd.service.d" / "override.conf").write_text(
        f"[Service]\nReadWritePaths={tmp_path / 'data'}\n"
    )
    writable, unit = service_writable_paths([str(units)])
    assert unit == str(units / "ringd.service")
    assert writable == ["/var/lib/ringd", "/run/ringd", "/srv/ringrift", str(tmp_path / "data")]
    assert unit_writable_paths("[Service]\nReadWritePaths=/a\nReadWritePaths=\n") == []

    path = tmp_path / "ringd.yaml"
    path.write_text("state_dir: var\nconfigs:\n  square8_2p: {threshold: 5}\n")
    monkeypatch.setattr("ringd.configcheck.UNIT_DIRS", (str(units),))
    found = warnings(load_settings(path), path)
    assert any(
        f"state_dir {tmp_path / 'var'}: read-only for the service" in w and "ReadWritePaths=" in w
        for w in found
    ), found


def test_the_shipped_units_writable_paths_are_the_ones_check_config_assumes() -> None:
    from harness import REPO
    from ringd.configcheck import SERVICE_WRITABLE, unit_writable_paths

    unit = (REPO / "systemd" / "ringd.service").read_text()
    assert unit_writable_paths(unit) == list(SERVICE_WRITABLE)


# -- Also: the demo -----------------------------------------------------------------------


def test_demo_help_names_its_two_configurations() -> None:
    result = ringd("demo", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "two configurations, square8_2p and hex8_2p" in text and "twelve" not in text


def test_a_second_demo_run_says_what_the_games_of_the_first_are(short_tmp: Path) -> None:
    folder = str(short_tmp / "demo")
    args = ("demo", "--dir", folder, "--duration", "1.5", "--writers", "1", "--rate", "20")
    first = ringd(*args)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "earlier demo runs" not in first.stdout
    second = ringd(*args)
    assert second.returncode == 0, second.stdout + second.stderr
    text = " ".join(second.stdout.split())
    import re

    found = re.search(
        r"writers wrote ([\d,]+) games; ringd counted ([\d,]+) new games "
        r"\(([\d,]+) in all: ([\d,]+) from earlier demo runs in ",
        text,
    )
    assert found, text
    wrote, counted, total, before = (int(g.replace(",", "")) for g in found.groups())
    assert wrote == counted > 0 and before > 0 and total == counted + before


# -- Also: trainer preflight -----------------------------------------------------------------


def _training_config(folder: Path, command: str | None = None) -> Path:
    path = folder / "ringd.yaml"
    path.write_text(
        "state_dir: var\nwatch:\n  roots: [data/selfplay]\n"
        "training:\n  devices: cpu\n"
        + (f"  command: {command}\n" if command else "")
        + "configs:\n  square8_2p: {threshold: 2}\n"
    )
    return path


def test_a_missing_trainer_is_shown_and_starts_no_job(short_tmp: Path) -> None:
    # A venv without the train extra: torch does not import (a stand-in that fails).
    fake = short_tmp / "no-torch" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'torch'\")\n")
    (short_tmp / "data" / "selfplay").mkdir(parents=True)
    _training_config(short_tmp)
    daemon = DaemonProcess(short_tmp, env={"PYTHONPATH": str(short_tmp / "no-torch")})
    try:
        daemon.start()
        append(
            short_tmp / "data" / "selfplay" / "a.jsonl",
            b"".join(game_line("square8", 2, i) for i in range(3)),
        )
        status = daemon.wait_until(lambda s: s["trainer_unavailable"] is not None, timeout=60)
        reason = status["trainer_unavailable"]
        assert "No module named 'torch'" in reason and "pip install 'ringd[train]'" in reason
        status = daemon.wait_until(lambda s: s["total_games"] == 3)
        assert status["configs"][0]["state"] == "ready"
        time.sleep(1.5)  # a scheduling round or two: still no job
        from ringd.cli.client import get_json

        assert get_json(daemon.socket, "/v1/jobs")["jobs"] == []
        table = ringd("status", "--socket", str(daemon.socket)).stdout
        assert table.index("trainer unavailable:") < table.index("square8_2p")
        assert "ringd_trainer_available 0.0" in _metrics(daemon)
        refused = ringd("trigger", "square8_2p", "--socket", str(daemon.socket))
        assert refused.returncode == 1 and "trainer unavailable" in refused.stderr
        # A reload checks again: training off, nothing is unavailable.
        daemon.config.write_text(
            daemon.config.read_text().replace("devices: cpu", "devices: cpu\n  enabled: false")
        )
        daemon.wait_until(lambda s: s["trainer_unavailable"] is None)
    finally:
        daemon.close()


def test_a_custom_trainer_command_that_does_not_exist_is_unavailable(short_tmp: Path) -> None:
    (short_tmp / "data" / "selfplay").mkdir(parents=True)
    _training_config(short_tmp, json.dumps([sys.executable, "-m", "no_such_trainer_module"]))
    daemon = DaemonProcess(short_tmp)
    try:
        daemon.start()
        status = daemon.wait_until(lambda s: s["trainer_unavailable"] is not None, timeout=60)
        assert "cannot import no_such_trainer_module" in status["trainer_unavailable"]
        daemon.config.write_text(
            daemon.config.read_text().replace(
                json.dumps([sys.executable, "-m", "no_such_trainer_module"]),
                json.dumps(["/nonexistent/trainer"]),
            )
        )
        status = daemon.wait_until(
            lambda s: "/nonexistent/trainer: not found" in (s["trainer_unavailable"] or "")
        )
    finally:
        daemon.close()


# -- Also: child processes set themselves up ------------------------------------------------


def test_childsetup_sets_parent_death_signal_nice_and_idle_io_then_execs() -> None:
    psutil = pytest.importorskip("psutil")
    from ringd.childsetup import wrap

    probe = (
        "import ctypes, os, json, psutil\n"
        "sig = ctypes.c_int()\n"
        "ctypes.CDLL(None).prctl(2, ctypes.byref(sig), 0, 0, 0)\n"  # PR_GET_PDEATHSIG
        "print(json.dumps({'pid': os.getpid(), 'pdeathsig': sig.value,"
        " 'nice': os.getpriority(os.PRIO_PROCESS, 0),"
        " 'ioclass': int(psutil.Process().ionice().ioclass)}))\n"
    )
    proc = subprocess.Popen(
        wrap([sys.executable, "-c", probe], nice=19, idle_io=True),
        stdout=subprocess.PIPE,
        text=True,
    )
    out, _ = proc.communicate(timeout=60)
    seen: dict[str, Any] = json.loads(out)
    assert seen["pid"] == proc.pid  # exec'd in place: the same process
    assert seen["pdeathsig"] == signal.SIGTERM
    assert seen["nice"] == 19
    assert seen["ioclass"] == int(psutil.IOPRIO_CLASS_IDLE)


def test_childsetup_refuses_to_start_when_its_parent_is_already_gone() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ringd.childsetup", "--die-with-parent", "1", "--", "true"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 75 and "the parent is gone" in result.stderr


def test_no_preexec_fn_is_left_in_the_daemon() -> None:
    from harness import REPO

    offenders = [
        str(p.relative_to(REPO))
        for p in (REPO / "daemon" / "ringd").rglob("*.py")
        if "preexec_fn=" in p.read_text()
    ]
    assert offenders == []
