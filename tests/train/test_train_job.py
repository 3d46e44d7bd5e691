"""The training job end to end on CPU: it learns, it stops and resumes, it fails clearly."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from trainkit import TINY_HYPER, SpecFactory, job_process, parse_events, run_in_process, spans_of

from ringd.train.checkpoint import file_sha256, load_checkpoint
from ringd.train.encode import Samples
from ringd.train.grid import GridEncoder
from ringd.train.loader import PackedBatch
from ringd.train.model import NetShape, PolicyValueNet, build_model
from ringd.train.protocol import ExitCode
from ringd.train.step import StepSettings, compute_losses


def heldout_samples(paths: list[Path]) -> tuple[Samples, Any]:
    encoder = GridEncoder()
    geometry = encoder.geometry("square8", 2)
    parts = []
    for g in spans_of(paths):
        with open(g["path"], "rb") as f:
            f.seek(g["offset"])
            parts.append(encoder.encode(json.loads(f.read(g["length"])), geometry))
    samples = Samples(
        np.concatenate([p.planes for p in parts]),
        np.concatenate([p.policy for p in parts]),
        np.concatenate([p.value for p in parts]),
    )
    return samples, geometry


def heldout_loss(model: PolicyValueNet, samples: Samples, geometry: Any) -> float:
    model.eval()
    batch = PackedBatch(
        torch.from_numpy(samples.planes),
        torch.from_numpy(samples.policy),
        torch.from_numpy(samples.value),
    )
    with torch.no_grad():
        losses = compute_losses(model, batch, StepSettings(geometry, None, True))
    return float(losses.loss)


def final_model(path: Path) -> PolicyValueNet:
    payload = load_checkpoint(path)
    model = PolicyValueNet(NetShape(**payload["meta"]["model"]))
    model.load_state_dict(payload["model"])
    return model


def test_training_lowers_the_loss_on_held_out_games(
    square8_corpus: list[dict[str, Any]], heldout_corpus: list[Path], make_spec: SpecFactory
) -> None:
    spec = make_spec(square8_corpus, hyper={"steps": 150})
    code, run = run_in_process(spec)
    assert code == ExitCode.OK, run.all()
    start, done = run.one("start"), run.one("done")
    assert start["steps"] == done["steps"] == 150
    assert start["loader"]["tier"] == "mmap" and start["device"] == "cpu"
    assert start["cuda_graph"] == {
        "enabled": False,
        "why": "device is cpu: CUDA graphs need a CUDA device",
    }
    assert start["encoder"] == {
        "name": "grid", "version": GridEncoder.version, "board": "square8", "players": 2,
        "planes": 23, "height": 8, "width": 8,
    }  # fmt: skip
    progress = run.of("progress")
    assert [p["step"] for p in progress] == list(range(5, 151, 5))
    assert progress[-1]["eta_s"] == 0 and all(p["samples_per_s"] > 0 for p in progress)
    assert done["sha256"] == file_sha256(Path(done["checkpoint"]))
    assert run.of("checkpoint")[-1]["path"] == done["checkpoint"]

    samples, geometry = heldout_samples(heldout_corpus)
    shape = NetShape(23, 8, 8, TINY_HYPER["channels"], TINY_HYPER["blocks"])
    before = heldout_loss(build_model(shape, seed=0), samples, geometry)
    after = heldout_loss(final_model(Path(done["checkpoint"])), samples, geometry)
    assert after < 0.8 * before, (before, after)

    meta = json.loads(Path(done["checkpoint"]).with_suffix(".json").read_text())
    assert meta["sha256"] == done["sha256"]
    assert meta["meta"]["encoder"] == {"name": "grid", "version": GridEncoder.version}
    assert (meta["meta"]["seq_first"], meta["meta"]["seq_last"]) == (1, 120)
    assert meta["meta"]["step"] == 150 and meta["meta"]["model"]["channels"] == 8
    assert (Path(spec).parent / "job" / "tb").is_dir()

    # The same spec again: the final checkpoint is found, nothing is retrained.
    code, again = run_in_process(spec)
    assert code == ExitCode.OK
    assert again.one("start")["resumed_from"] == done["checkpoint"]
    assert again.of("progress") == []
    assert again.one("done")["sha256"] == done["sha256"]


def test_sigterm_saves_a_checkpoint_and_the_rerun_finishes_the_same_steps(
    square8_corpus: list[dict[str, Any]], make_spec: SpecFactory, tmp_path: Path
) -> None:
    hyper = {"steps": 200, "log_every": 1}
    spec = make_spec(square8_corpus, hyper=hyper)
    job = job_process(spec)
    assert job.stdout is not None
    seen = []
    for line in job.stdout:
        seen.append(json.loads(line))
        if seen[-1]["event"] == "progress":
            job.send_signal(signal.SIGTERM)
            break
    rest, stderr = job.communicate(timeout=60)
    events = seen + parse_events(rest)
    assert job.returncode == ExitCode.INTERRUPTED, stderr
    error = events[-1]
    assert error["event"] == "error" and error["kind"] == "interrupted"
    assert error["exit_code"] == 5 and "SIGTERM" in error["message"]
    saved = [e for e in events if e["event"] == "checkpoint"]
    assert len(saved) == 1 and saved[0]["kind"] == "resume"
    stopped_at = saved[0]["step"]
    assert 1 <= stopped_at < 200
    assert Path(saved[0]["path"]).name == "resume.pt"
    assert file_sha256(Path(saved[0]["path"])) == saved[0]["sha256"]

    job = job_process(spec)
    out, stderr = job.communicate(timeout=120)
    assert job.returncode == ExitCode.OK, stderr
    events = parse_events(out)
    start, done = events[0], events[-1]
    assert start["resumed_from"] == saved[0]["path"] and start["start_step"] == stopped_at
    assert start["steps"] == 200 and done["steps"] == 200
    assert [e["step"] for e in events if e["event"] == "progress"] == list(
        range(stopped_at + 1, 201)
    )
    assert not Path(saved[0]["path"]).exists()  # the final checkpoint supersedes it

    # Resumed = uninterrupted: the same batches (seed, step) and schedule give the same net.
    straight = make_spec(square8_corpus, hyper=hyper, output_dir=str(tmp_path / "straight"))
    code, run = run_in_process(straight)
    assert code == ExitCode.OK
    resumed, uninterrupted = (
        final_model(Path(done["checkpoint"])),
        final_model(Path(run.one("done")["checkpoint"])),
    )
    for (name, a), b in zip(
        resumed.state_dict().items(), uninterrupted.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_a_bad_spec_is_exit_2_with_one_error_event(make_spec: SpecFactory, tmp_path: Path) -> None:
    spec = make_spec([], hyper={"batch_sise": 64})
    job = job_process(spec)
    out, _ = job.communicate(timeout=60)
    assert job.returncode == ExitCode.BAD_SPEC == 2
    (error,) = parse_events(out)
    assert error["event"] == "error" and error["kind"] == "bad_spec"
    assert "hyper.batch_sise" in error["message"]


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"config": "square8_3p"}, "does not match board"),
        ({"device": "tpu"}, "device must be"),
        ({"output_dir": "relative/dir"}, "output_dir: Value error, must be an absolute path"),
        ({"encoder": "nope"}, "no encoder 'nope' registered"),
        ({"board": "octagon", "config": "octagon_2p"}, "knows the boards"),
        ({"version": 2}, "version"),
    ],
)
def test_bad_specs(
    square8_corpus: list[dict[str, Any]],
    make_spec: SpecFactory,
    fields: dict[str, Any],
    needle: str,
) -> None:
    code, run = run_in_process(make_spec(square8_corpus[:3], **fields))
    assert code == ExitCode.BAD_SPEC
    error = run.one("error")
    assert error["kind"] == "bad_spec" and needle in error["message"], error


def test_unparseable_spec_file(tmp_path: Path) -> None:
    path = tmp_path / "spec.json"
    path.write_text("{not json")
    code, run = run_in_process(path)
    assert code == ExitCode.BAD_SPEC and "spec.json" in run.one("error")["message"]
    code, run = run_in_process(tmp_path / "absent.json")
    assert code == ExitCode.BAD_SPEC and "No such file" in run.one("error")["message"]


def test_no_usable_games_is_exit_3(
    square8_corpus: list[dict[str, Any]], make_spec: SpecFactory
) -> None:
    games = [dict(g, key="0" * 32) for g in square8_corpus[:6]]  # every key mismatched
    code, run = run_in_process(make_spec(games))
    assert code == ExitCode.NO_GAMES == 3
    error = run.one("error")
    assert error["kind"] == "no_games"
    assert "none of the 6 games" in error["message"] and "key mismatch" in error["message"]
    assert run.of("start") == []


def test_start_checkpoints_that_do_not_fit_are_exit_6(
    square8_corpus: list[dict[str, Any]], make_spec: SpecFactory, tmp_path: Path
) -> None:
    games = square8_corpus[:20]
    code, run = run_in_process(make_spec(games, hyper={"steps": 2}))
    assert code == ExitCode.OK
    good = Path(run.one("done")["checkpoint"])

    def start_from(path: Path, name: str, **hyper: Any) -> tuple[int, dict[str, Any]]:
        spec = make_spec(
            games, job_id=name, init_checkpoint=str(path), output_dir=str(tmp_path / name),
            hyper={"steps": 2, **hyper},
        )  # fmt: skip
        code, run = run_in_process(spec)
        return code, (run.one("error") if code else run.one("start"))

    # It fits: a warm start.
    code, start = start_from(good, "warm")
    assert code == ExitCode.OK and start["init_checkpoint"] == str(good)

    # Other shapes: every mismatched tensor is named with both shapes.
    code, error = start_from(good, "wider", channels=16)
    assert code == ExitCode.BAD_CHECKPOINT == 6 and error["kind"] == "bad_checkpoint"
    assert "stem.0.weight: checkpoint (8, 23, 3, 3), model (16, 23, 3, 3)" in error["message"]
    code, error = start_from(good, "deeper", blocks=2)
    assert code == ExitCode.BAD_CHECKPOINT and "tower.1.a.0.weight: missing" in error["message"]

    # Corrupt: bytes changed under the sidecar's SHA-256; garbage without a sidecar; absent.
    flipped = tmp_path / "flipped.pt"
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped.write_bytes(bytes(data))
    flipped.with_suffix(".json").write_bytes(good.with_suffix(".json").read_bytes())
    code, error = start_from(flipped, "flipped")
    assert code == ExitCode.BAD_CHECKPOINT and "corrupt: its SHA-256" in error["message"]
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    code, error = start_from(garbage, "garbage")
    assert code == ExitCode.BAD_CHECKPOINT and "unreadable or corrupt" in error["message"]
    code, error = start_from(tmp_path / "absent.pt", "absent")
    assert code == ExitCode.BAD_CHECKPOINT and "no such file" in error["message"]


def test_every_loader_tier_trains_the_same_network(
    square8_corpus: list[dict[str, Any]], make_spec: SpecFactory, tmp_path: Path
) -> None:
    finals = {}
    for tier in ("resident", "pinned", "mmap"):
        spec = make_spec(
            square8_corpus[:30],
            job_id=f"tier-{tier}",
            output_dir=str(tmp_path / tier),
            hyper={"steps": 12, "loader": tier},
        )
        code, run = run_in_process(spec)
        assert code == ExitCode.OK, run.all()
        assert run.one("start")["loader"]["tier"] == tier
        finals[tier] = final_model(Path(run.one("done")["checkpoint"])).state_dict()
    for tier in ("pinned", "mmap"):
        for name, tensor in finals["resident"].items():
            assert torch.equal(tensor, finals[tier][name]), (tier, name)


@pytest.mark.parametrize(
    ("error", "code", "kind"),
    [
        (
            torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
            4,
            "out_of_memory",
        ),
        (ValueError("a bug"), 1, "internal"),
    ],
)
def test_failures_in_training_have_their_exit_code(
    square8_corpus: list[dict[str, Any]],
    make_spec: SpecFactory,
    monkeypatch: pytest.MonkeyPatch,
    error: Exception,
    code: int,
    kind: str,
) -> None:
    def fail(*args: object) -> None:
        raise error

    monkeypatch.setattr("ringd.train.step.TrainStep.__call__", fail)
    got, run = run_in_process(make_spec(square8_corpus[:5], hyper={"steps": 3}))
    assert got == code
    event = run.all()[-1]
    assert event["event"] == "error" and event["kind"] == kind and event["exit_code"] == code
    assert str(error).split(".")[0] in event["message"]
