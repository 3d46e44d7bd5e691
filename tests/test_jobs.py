"""From +N/threshold to a finished job: a real daemon, real trainer processes."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from harness import REPO, DaemonProcess, append, game_line, ringd

FAKE = REPO / "tests" / "fake_trainer.py"


def training(mode: str, seconds: float = 0.5, **extra: object) -> str:
    settings = {"backoff_base_s": 1, "backoff_cap_s": 2, "timeout_s": 30, "grace_s": 5, **extra}
    lines = "".join(f"  {k}: {v}\n" for k, v in settings.items())
    command = json.dumps([sys.executable, str(FAKE), mode, str(seconds)])
    return f"training:\n  devices: cpu\n  command: {command}\n{lines}"


@pytest.fixture
def make_daemon(short_tmp: Path):  # type: ignore[no-untyped-def]
    started: list[DaemonProcess] = []

    def make(mode: str, configs: str, seconds: float = 0.5, **extra: object) -> DaemonProcess:
        (short_tmp / "data" / "selfplay").mkdir(parents=True, exist_ok=True)
        (short_tmp / "ringd.yaml").write_text(
            "state_dir: var\nwatch:\n  roots: [data/selfplay]\n"
            + training(mode, seconds, **extra)
            + "configs:\n"
            + configs
        )
        daemon = DaemonProcess(short_tmp)
        started.append(daemon)
        return daemon

    yield make
    for daemon in started:
        daemon.close()


def write_games(
    daemon: DaemonProcess, board: str, players: int, start: int, count: int, name: str = "a"
) -> None:
    append(
        daemon.folder / "data" / "selfplay" / "gpu" / f"{name}.jsonl",
        b"".join(game_line(board, players, i) for i in range(start, start + count)),
    )


def config(status: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in status["configs"] if c["name"] == name)


def jobs(daemon: DaemonProcess) -> list[dict[str, Any]]:
    from ringd.cli.client import get_json

    result: list[dict[str, Any]] = get_json(daemon.socket, "/v1/jobs")["jobs"]
    return result


def test_a_successful_job_consumes_exactly_its_range(make_daemon) -> None:  # type: ignore[no-untyped-def]
    daemon = make_daemon("ok", "  square8_2p: {threshold: 5}\n", seconds=1.5)
    daemon.start()
    write_games(daemon, "square8", 2, 0, 6)
    status = daemon.wait_until(lambda s: config(s, "square8_2p")["state"] == "training")
    job = config(status, "square8_2p")["job"]
    assert (job["first_seq"], job["last_seq"], job["games"]) == (1, 6, 6)
    write_games(daemon, "square8", 2, 100, 3, name="b")  # arrive while it trains
    status = daemon.wait_until(lambda s: config(s, "square8_2p")["trained_through"] == 6)
    row = config(status, "square8_2p")
    assert row["new_games"] == 3 and row["total_games"] == 9 and row["state"] == "idle"
    [done] = jobs(daemon)
    assert (
        done["state"] == "succeeded" and done["attempts"] == 1 and Path(done["checkpoint"]).exists()
    )
    assert done["checkpoint_sha256"] and done["exit_code"] == 0
    folder = daemon.folder / "var" / "jobs" / done["id"]
    assert {"spec.json", "events.jsonl", "job.log"} <= {p.name for p in folder.iterdir()}
    spec = json.loads((folder / "spec.json").read_text())
    assert spec["config"] == "square8_2p" and spec["device"] == "cpu"
    assert spec["spans"]["count"] == 6 and not spec["games"]  # the window is a spans file


@pytest.mark.parametrize(
    ("mode", "error"),
    [
        ("fail", "no_usable_games: every game failed its key check"),
        ("hang", "timed out after 2 s"),
        ("selfkill", "killed by SIGKILL"),
    ],
)
def test_a_failed_job_keeps_the_watermark_backs_off_and_retries(
    make_daemon, mode: str, error: str
) -> None:  # type: ignore[no-untyped-def]
    # A backoff long enough to be seen by a CLI started on a loaded machine.
    daemon = make_daemon(
        mode,
        "  hex8_2p: {threshold: 3}\n",
        timeout_s=2,
        grace_s=1,
        backoff_base_s=6,
        backoff_cap_s=6,
    )
    daemon.start()
    write_games(daemon, "hex8", 2, 0, 4)
    status = daemon.wait_until(lambda s: config(s, "hex8_2p")["state"] == "backoff", timeout=30)
    row = config(status, "hex8_2p")
    assert row["trained_through"] == 0 and row["new_games"] == 4
    assert row["last_error"] is not None and error in row["last_error"]
    assert row["backoff_until"] > time.time() - 1
    shown = ringd("status", "--socket", str(daemon.socket))
    assert "backoff" in shown.stdout
    # After the backoff it runs again (and fails again: the count of attempts grows).
    daemon.wait_until(lambda s: sum(j["attempts"] for j in jobs(daemon)) >= 2, timeout=30)
    assert all(j["state"] in ("failed", "running") for j in jobs(daemon))
    assert config(daemon.status(), "hex8_2p")["trained_through"] == 0


def test_a_retry_after_a_failure_succeeds_and_then_the_watermark_moves(make_daemon) -> None:  # type: ignore[no-untyped-def]
    daemon = make_daemon("fail_once", "  hex8_2p: {threshold: 3}\n")
    daemon.start()
    write_games(daemon, "hex8", 2, 0, 3)
    status = daemon.wait_until(lambda s: config(s, "hex8_2p")["trained_through"] == 3, timeout=30)
    assert config(status, "hex8_2p")["new_games"] == 0
    [job] = jobs(daemon)
    assert job["state"] == "succeeded" and job["attempts"] == 2  # the same range, retried


def test_a_daemon_killed_during_a_job_reruns_it_and_the_range_is_trained_once(make_daemon) -> None:  # type: ignore[no-untyped-def]
    daemon = make_daemon("ok", "  square8_2p: {threshold: 4}\n", seconds=4)
    daemon.start()
    write_games(daemon, "square8", 2, 0, 5)
    status = daemon.wait_until(
        lambda s: (config(s, "square8_2p")["job"] or {}).get("step") is not None
    )
    job_id = config(status, "square8_2p")["job"]["id"]
    daemon.stop(signal.SIGKILL)
    daemon.start()
    status = daemon.wait_until(
        lambda s: config(s, "square8_2p")["trained_through"] == 5, timeout=40
    )
    assert config(status, "square8_2p")["new_games"] == 0
    [job] = jobs(daemon)
    assert job["id"] == job_id and job["state"] == "succeeded" and job["attempts"] == 2
    runs = (daemon.folder / "var" / "jobs" / job_id / "runs.log").read_text().split("\n")[:-1]
    assert [r.split()[2:] for r in runs] == [
        ["1", "5"],
        ["1", "5"],
    ]  # the same range, twice started
    # The orphaned first run was stopped (SIGTERM on its daemon's death) and saved a resume point.
    assert (daemon.folder / "var" / "jobs" / job_id / "resume.marker").exists()


def test_the_higher_ratio_goes_first_with_one_slot(make_daemon) -> None:  # type: ignore[no-untyped-def]
    daemon = make_daemon(
        "ok",
        "  square8_2p: {threshold: 10}\n  hex8_2p: {threshold: 4}\n  hexagonal_2p: {threshold: 50}\n",
        seconds=1.0,
    )
    write_games(daemon, "square8", 2, 0, 12)  # 1.2x
    write_games(daemon, "hex8", 2, 0, 8, name="h")  # 2.0x: first
    daemon.start()
    daemon.wait_until(lambda s: config(s, "hex8_2p")["state"] == "training")
    assert config(daemon.status(), "square8_2p")["state"] == "ready"  # waiting for the slot
    daemon.wait_until(lambda s: config(s, "square8_2p")["trained_through"] > 0, timeout=30)
    first, second = sorted(jobs(daemon), key=lambda j: j["started"])
    assert (first["config"], second["config"]) == ("hex8_2p", "square8_2p")


def test_jobs_and_logs_commands(make_daemon) -> None:  # type: ignore[no-untyped-def]
    daemon = make_daemon(
        "fail", "  hex8_3p: {threshold: 2}\n", backoff_base_s=60, backoff_cap_s=3600
    )
    daemon.start()
    write_games(daemon, "hex8", 3, 0, 2)
    daemon.wait_until(lambda s: config(s, "hex8_3p")["state"] == "backoff")
    listed = ringd("jobs", "--socket", str(daemon.socket))
    assert (
        listed.returncode == 0
        and "hex8_3p-000000001-000000002" in listed.stdout
        and "failed" in listed.stdout
    )
    as_json = json.loads(ringd("jobs", "--json", "--socket", str(daemon.socket)).stdout)
    assert as_json[0]["state"] == "failed" and as_json[0]["exit_code"] == 3
    logs = ringd("logs", as_json[0]["id"], "--socket", str(daemon.socket))
    assert logs.returncode == 0 and "fake trainer: giving up" in logs.stdout
    missing = ringd("logs", "nope", "--socket", str(daemon.socket))
    assert missing.returncode == 1 and "no job 'nope'" in missing.stderr
    metrics = (
        __import__("ringd.cli.client", fromlist=["get"]).get(daemon.socket, "/metrics").decode()
    )
    assert 'ringd_jobs_total{config="hex8_3p",state="failed"} 1.0' in metrics


def test_sigterm_stops_running_jobs_which_are_recorded_interrupted(make_daemon) -> None:  # type: ignore[no-untyped-def]
    daemon = make_daemon("ok", "  square8_2p: {threshold: 2}\n", seconds=30)
    daemon.start()
    write_games(daemon, "square8", 2, 0, 2)
    daemon.wait_until(lambda s: (config(s, "square8_2p")["job"] or {}).get("step") is not None)
    started = time.monotonic()
    assert daemon.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 10
    daemon.start()
    # It was recorded interrupted, and runs again at once (no backoff for interruptions).
    status = daemon.wait_until(lambda s: config(s, "square8_2p")["state"] == "training")
    [job] = jobs(daemon)
    assert job["attempts"] == 2
    assert config(status, "square8_2p")["trained_through"] == 0


def test_the_real_trainer_on_cpu_checkpoint_and_the_counter_starts_again(short_tmp: Path) -> None:
    pytest.importorskip("torch", reason="the real trainer needs torch (the train extra)")
    import random

    from ringd.sim import game_line as sim_line
    from ringd.sim import make_record

    (short_tmp / "data" / "selfplay" / "gpu").mkdir(parents=True)
    (short_tmp / "ringd.yaml").write_text(
        "state_dir: var\nwatch:\n  roots: [data/selfplay]\n"
        "training:\n  devices: cpu\n"
        "  hyper: {channels: 8, blocks: 1, batch_size: 32, steps: 12, warmup_steps: 2, log_every: 2}\n"
        "  window: {min_games: 50, max_games: 500}\n"
        "configs:\n  square8_2p: {threshold: 6}\n"
    )
    rng = random.Random(5)
    games = [
        sim_line(make_record(rng, "square8_2p", "camel", f"r{i}", moves=30)) for i in range(10)
    ]
    daemon = DaemonProcess(short_tmp)
    try:
        daemon.start()
        append(short_tmp / "data" / "selfplay" / "gpu" / "a.jsonl", b"".join(games[:6]))
        daemon.wait_until(lambda s: config(s, "square8_2p")["state"] == "training", timeout=30)
        append(
            short_tmp / "data" / "selfplay" / "gpu" / "b.jsonl", b"".join(games[6:])
        )  # meanwhile
        status = daemon.wait_until(
            lambda s: config(s, "square8_2p")["trained_through"] == 6, timeout=120
        )
        row = config(status, "square8_2p")
        assert row["new_games"] == 4 and row["total_games"] == 10
        [job] = jobs(daemon)
        assert job["state"] == "succeeded", job
        checkpoint = Path(job["checkpoint"])
        assert checkpoint.exists() and checkpoint.stat().st_size > 0
        # The registry validates it and points latest.pt at it; the next job warm-starts there.
        latest = short_tmp / "var" / "models" / "square8_2p" / "latest.pt"
        deadline = time.monotonic() + 60
        while not latest.exists():
            assert time.monotonic() < deadline, "the new checkpoint was never validated"
            time.sleep(0.1)
        assert latest.resolve() == checkpoint.resolve()
    finally:
        daemon.close()


def test_warm_start_only_from_a_latest_checkpoint_of_the_configured_size(tmp_path: Path) -> None:
    from ringd.service.jobs import _warm_start
    from ringd.settings import TrainingSettings

    checkpoint = tmp_path / "final.pt"
    checkpoint.write_bytes(b"weights")
    checkpoint.with_suffix(".json").write_text(
        json.dumps({"meta": {"model": {"channels": 8, "blocks": 1}}})
    )
    latest = tmp_path / "models" / "hex8_2p" / "latest.pt"
    latest.parent.mkdir(parents=True)
    latest.symlink_to(checkpoint)
    same = TrainingSettings.model_validate({"hyper": {"channels": 8, "blocks": 1}})
    bigger = TrainingSettings.model_validate({"hyper": {"channels": 64, "blocks": 6}})
    assert _warm_start(latest, same) == str(checkpoint)
    assert _warm_start(latest, bigger) is None
    assert _warm_start(tmp_path / "models" / "square8_2p" / "latest.pt", same) is None


def test_slots_one_per_gpu_found_by_nvidia_smi_else_one_cpu_slot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ringd.service.jobs import Slot, detect_slots

    assert detect_slots("cpu") == [Slot("cpu", "cpu", "")]
    assert detect_slots([2, 3]) == [Slot("cuda:2", "cuda", "2"), Slot("cuda:3", "cuda", "3")]
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi, no driver: one CPU slot
    assert detect_slots("auto") == [Slot("cpu", "cpu", "")]
    smi = tmp_path / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-a)'\necho 'GPU 1: NVIDIA H200 (UUID: GPU-b)'\n"
    )
    smi.chmod(0o755)
    assert [s.name for s in detect_slots("auto")] == ["cuda:0", "cuda:1"]
    assert [s.cuda_visible_devices for s in detect_slots("auto")] == ["0", "1"]


def test_an_interrupted_job_is_resumed_first_when_new_games_arrived_meanwhile(
    make_daemon,  # type: ignore[no-untyped-def]
) -> None:
    # Issue 14: threshold 10, 12 games, a job starts, SIGTERM, 3 more games arrive,
    # restart: the interrupted job (1..12) runs again from its resume point, not a new
    # job over 1..15 from scratch; the 3 stay new for the next one.
    daemon = make_daemon("ok", "  square8_2p: {threshold: 10}\n", seconds=3)
    daemon.start()
    write_games(daemon, "square8", 2, 0, 12)
    status = daemon.wait_until(
        lambda s: (config(s, "square8_2p")["job"] or {}).get("step") is not None
    )
    job_id = config(status, "square8_2p")["job"]["id"]
    assert job_id == "square8_2p-000000001-000000012"
    assert daemon.stop(signal.SIGTERM) == 0
    folder = daemon.folder / "var" / "jobs" / job_id
    assert (folder / "resume.marker").exists()  # the fake trainer's resume.pt
    write_games(daemon, "square8", 2, 100, 3, name="b")
    daemon.start()
    # The watermark moves in the job's last ledger transaction; the stage then clears
    # the running job, a moment later.
    status = daemon.wait_until(
        lambda s: (
            config(s, "square8_2p")["trained_through"] == 12
            and config(s, "square8_2p")["state"] != "training"
        ),
        timeout=40,
    )
    row = config(status, "square8_2p")
    assert row["new_games"] == 3 and row["total_games"] == 15 and row["state"] == "idle"
    [job] = jobs(daemon)
    assert job["id"] == job_id and job["state"] == "succeeded" and job["attempts"] == 2
    runs = (folder / "runs.log").read_text().splitlines()
    assert [r.split()[2:] for r in runs] == [["1", "12"], ["1", "12"]]
    starts = [
        json.loads(line)
        for line in (folder / "events.jsonl").read_text().splitlines()
        if json.loads(line)["event"] == "start"
    ]
    assert [s["resumed"] for s in starts] == [False, True]
    # A success shows its final step, not the last sampled one.
    assert (job["progress"]["step"], job["progress"]["total_steps"]) == (10, 10)
    listed = ringd("jobs", "--socket", str(daemon.socket))
    assert "10/10" in listed.stdout
    # The daemon's own stop is routine: the interrupted job is logged at info, not error.
    finished = [
        json.loads(line)
        for line in daemon.log.read_text().splitlines()
        if line.startswith("{") and '"job finished"' in line
    ]
    assert [(f["state"], f["level"]) for f in finished] == [
        ("interrupted", "info"),
        ("succeeded", "info"),
    ]


def test_gpus_per_job_groups_slots_and_the_job_runs_under_torchrun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ringd.service.jobs import Slot, detect_slots, trainer_argv, trainer_env
    from ringd.settings import Settings, TrainingSettings

    assert detect_slots([0, 1, 2, 3], 2) == [
        Slot("cuda:0,1", "cuda", "0,1", 2),
        Slot("cuda:2,3", "cuda", "2,3", 2),
    ]
    assert [s.name for s in detect_slots([0, 1, 2, 3, 4, 5, 6, 7], 3)] == [
        "cuda:0,1,2",
        "cuda:3,4,5",
    ]
    assert detect_slots([4, 5], 4) == [Slot("cuda:4,5", "cuda", "4,5", 2)]  # all there is
    assert detect_slots([0, 1], 1) == [Slot("cuda:0", "cuda", "0"), Slot("cuda:1", "cuda", "1")]
    assert detect_slots("cpu", 2) == [Slot("cpu", "cpu", "", 2)]  # two gloo processes

    spec = tmp_path / "spec.json"
    plain = TrainingSettings()
    one = Slot("cuda:3", "cuda", "3")
    assert trainer_argv(plain, one, spec, "j") == [sys.executable, "-m", "ringd.train", str(spec)]
    pair = Slot("cuda:0,1", "cuda", "0,1", 2)
    assert trainer_argv(plain, pair, spec, "j") == [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
        "-m", "ringd.train", str(spec),
    ]  # fmt: skip
    hosts = TrainingSettings.model_validate(
        {
            "gpus_per_job": 8,
            "launcher": {
                "nnodes": 2,
                "rdzv_endpoint": "node0:29400",
                "max_restarts": 1,
                "prefix": ["srun", "--nodes=2", "--ntasks-per-node=1"],
            },
        }
    )
    eight = Slot("cuda:0,1,2,3,4,5,6,7", "cuda", "0,1,2,3,4,5,6,7", 8)
    assert trainer_argv(hosts, eight, spec, "square8_2p-000000001-000000009") == [
        "srun", "--nodes=2", "--ntasks-per-node=1",
        sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=8",
        "--rdzv-backend=c10d", "--rdzv-endpoint=node0:29400",
        "--rdzv-id=square8_2p-000000001-000000009", "--max-restarts=1",
        "-m", "ringd.train", str(spec),
    ]  # fmt: skip
    custom = TrainingSettings.model_validate({"gpus_per_job": 2, "command": ["my-trainer"]})
    assert trainer_argv(custom, pair, spec, "j") == ["my-trainer", str(spec)]
    with pytest.raises(ValueError, match="HOST:PORT"):
        TrainingSettings.model_validate({"launcher": {"nnodes": 2, "rdzv_endpoint": "node0"}})

    settings = Settings.model_validate(
        {"state_dir": str(tmp_path / "var"), "training": {"grace_s": 45}}
    )
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    env = trainer_env(settings, pair)
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1"
    cache = tmp_path / "var" / "compile-cache"
    assert env["TORCHINDUCTOR_CACHE_DIR"] == str(cache / "inductor")
    assert env["TRITON_CACHE_DIR"] == str(cache / "triton")
    assert env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] == "45"
