"""One job over several processes: torchrun + DDP, gloo on the CPU (what CI has).

Each test starts real torchrun agents with tiny nets on the sample cache the first one
fills. Two ranks on two cores: a few seconds of start-up each, a second of training.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from trainkit import SpecFactory, job_process, parse_events

from ringd.train.data import batch_indices, shard_indices

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
# The loss of a 2-rank job against one process with the same global batch, at every
# progress event. They differ only in batch norm's statistics (each rank normalises its
# half of the batch) and in summation order; measured: 0.25% at most.
LOSS_RTOL = 0.02


def torchrun(spec: Path, *args: str) -> subprocess.Popen[str]:
    """``torchrun ARGS -m ringd.train SPEC`` in its own process group, as the daemon runs it."""
    return subprocess.Popen(
        [*TORCHRUN, *args, "-m", "ringd.train", str(spec), "--workers", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def standalone(spec: Path, ranks: int = 2) -> subprocess.Popen[str]:
    return torchrun(spec, "--standalone", f"--nproc-per-node={ranks}")


def losses(events: list[dict[str, Any]]) -> list[tuple[int, float]]:
    return [(e["step"], e["loss"]) for e in events if e["event"] == "progress"]


def until_progress(job: subprocess.Popen[str]) -> list[dict[str, Any]]:
    """Read the job's events up to its first progress event."""
    assert job.stdout is not None
    seen: list[dict[str, Any]] = []
    for line in job.stdout:
        seen.append(json.loads(line))
        if seen[-1]["event"] == "progress":
            return seen
    raise AssertionError(f"no progress event: {seen}, {job.communicate()[1][-3000:]}")


def children(pid: int) -> dict[int, dict[str, str]]:
    """The child processes of ``pid`` and their environments."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            pairs = (item.split(b"=", 1) for item in environ.split(b"\0") if b"=" in item)
            found[int(entry.name)] = {k.decode(): v.decode(errors="replace") for k, v in pairs}
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_each_rank_takes_its_slice_of_the_same_global_batch() -> None:
    whole = batch_indices(5, 17, 1000, 64)
    for world in (1, 2, 4):
        parts = [shard_indices(5, 17, 1000, 64 // world, r, world) for r in range(world)]
        np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_two_gloo_ranks_train_the_loss_curve_of_one_process(
    square8_corpus: list[dict[str, Any]], make_spec: SpecFactory, tmp_path: Path
) -> None:
    hyper = {"steps": 24, "log_every": 4, "batch_size": 32}
    one = make_spec(square8_corpus, hyper=hyper, output_dir=str(tmp_path / "one"))
    single = job_process(one)
    out, err = single.communicate(timeout=120)
    assert single.returncode == 0, err[-3000:]
    two = make_spec(
        square8_corpus, hyper=hyper, output_dir=str(tmp_path / "two"), job_id="square8_2p-2"
    )
    job = standalone(two)
    out2, err2 = job.communicate(timeout=120)
    assert job.returncode == 0, err2[-3000:]

    reference, events = losses(parse_events(out)), parse_events(out2)  # rank 0 alone writes
    assert [e["event"] for e in events] == [
        "start",
        *["progress"] * 6,
        "checkpoint",
        "done",
    ]
    start = events[0]
    assert start["distributed"] == {"world_size": 2, "backend": "gloo", "local_world_size": 2}
    assert start["batch_size"] == 32 and start["compile"]["enabled"] is False
    curve = losses(events)
    assert [s for s, _ in curve] == [s for s, _ in reference] == [4, 8, 12, 16, 20, 24]
    for (step, a), (_, b) in zip(curve, reference, strict=True):
        assert a == pytest.approx(b, rel=LOSS_RTOL), (step, curve, reference)
    assert (tmp_path / "two" / "final.pt").exists() and (tmp_path / "two" / "final.json").exists()
    assert not (tmp_path / "two" / "resume.pt").exists()


def test_sigterm_stops_both_ranks_at_one_step_and_the_rerun_resumes(
    square8_corpus: list[dict[str, Any]], make_spec: SpecFactory, tmp_path: Path
) -> None:
    total = 120
    spec = make_spec(square8_corpus, hyper={"steps": total, "log_every": 4})
    job = standalone(spec)
    seen = until_progress(job)
    os.killpg(job.pid, signal.SIGTERM)  # what the daemon does on a stop or a timeout
    rest, stderr = job.communicate(timeout=60)
    events = seen + parse_events(rest)
    assert job.returncode != 0
    error = events[-1]
    assert error["event"] == "error" and error["kind"] == "interrupted", (events, stderr[-3000:])
    [saved] = [e for e in events if e["event"] == "checkpoint"]
    stopped_at = saved["step"]
    assert saved["kind"] == "resume" and 4 <= stopped_at < total
    # Both ranks stopped at that step (each logs its own stop).
    stops = set(re.findall(r"\[rank (\d)\]: SIGTERM at step (\d+) of", stderr))
    assert stops == {("0", str(stopped_at)), ("1", str(stopped_at))}, stderr[-3000:]

    again = standalone(spec)
    out, stderr = again.communicate(timeout=120)
    assert again.returncode == 0, stderr[-3000:]
    events = parse_events(out)
    assert events[0]["start_step"] == stopped_at and events[0]["resumed_from"] == saved["path"]
    assert events[-1]["event"] == "done" and events[-1]["steps"] == total
    assert next(e["step"] for e in events if e["event"] == "progress") > stopped_at


def test_sigkill_of_one_rank_fails_the_job_within_the_timeout(
    square8_corpus: list[dict[str, Any]], make_spec: SpecFactory
) -> None:
    spec = make_spec(square8_corpus, hyper={"steps": 1_000_000, "dist_timeout_s": 20})
    job = standalone(spec)
    until_progress(job)
    ranks = {int(env["RANK"]): pid for pid, env in children(job.pid).items() if "RANK" in env}
    assert sorted(ranks) == [0, 1]
    killed = time.monotonic()
    os.kill(ranks[1], signal.SIGKILL)
    rest, stderr = job.communicate(timeout=60)
    assert time.monotonic() - killed < 30
    assert job.returncode != 0, stderr[-3000:]  # torchrun: a rank failed
    for pid in ranks.values():  # torchrun took the other rank down with it
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    events = parse_events(rest)
    assert not any(e["event"] == "done" for e in events)
    if events and events[-1]["event"] == "error":  # rank 0 says why, unless killed first
        assert events[-1]["kind"] == "distributed", events[-1]
        assert events[-1]["exit_code"] == 7


def test_two_torchrun_agents_on_a_loopback_rendezvous_train_and_checkpoint(
    square8_corpus: list[dict[str, Any]], make_spec: SpecFactory, tmp_path: Path
) -> None:
    spec = make_spec(square8_corpus, hyper={"steps": 16, "log_every": 4})
    endpoint = f"127.0.0.1:{free_port()}"
    agents = [
        torchrun(
            spec,
            "--nnodes=2",
            "--nproc-per-node=1",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={endpoint}",
            "--rdzv-id=two-agents",
            "--max-restarts=0",
        )
        for _ in range(2)
    ]
    outputs = [agent.communicate(timeout=120) for agent in agents]
    for agent, (_, stderr) in zip(agents, outputs, strict=True):
        assert agent.returncode == 0, stderr[-3000:]
    # One agent holds rank 0, and only rank 0 writes events.
    streams = [parse_events(out) for out, _ in outputs]
    [events] = [s for s in streams if s]
    assert events[0]["distributed"] == {
        "world_size": 2,
        "backend": "gloo",
        "local_world_size": 1,
    }
    assert events[-1]["event"] == "done" and events[-1]["steps"] == 16
    assert Path(events[-1]["checkpoint"]) == tmp_path / "job" / "final.pt"
    assert (tmp_path / "job" / "final.pt").exists()
