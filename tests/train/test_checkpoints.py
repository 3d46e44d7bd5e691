"""Checkpoints are atomic, self-verifying through their sidecar, and restore training state."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ringd.train.checkpoint import (
    CheckpointError,
    file_sha256,
    load_checkpoint,
    save_checkpoint,
    shape_mismatches,
)
from ringd.train.model import NetShape, build_model
from ringd.train.step import make_optimizer, restore_optimizer

SHAPE = NetShape(planes=5, height=4, width=4, channels=4, blocks=1)


def trained_optimizer(model: torch.nn.Module) -> torch.optim.AdamW:
    optimizer = make_optimizer(
        model, lr=1e-2, weight_decay=1e-4, device=torch.device("cpu"), for_graph=False
    )
    model(torch.ones(2, 5, 4, 4))[0].sum().backward()  # type: ignore[no-untyped-call]
    optimizer.step()
    return optimizer


def test_save_then_load(tmp_path: Path) -> None:
    model = build_model(SHAPE, seed=1)
    optimizer = trained_optimizer(model)
    path = tmp_path / "ckpt" / "final.pt"
    saved = save_checkpoint(
        path,
        meta={"config": "x_2p", "step": 3},
        model=model.state_dict(),
        optimizer=optimizer.state_dict(),
        resume={"fingerprint": "f", "step": 3, "total_steps": 9},
    )
    assert saved.sha256 == file_sha256(path) and saved.bytes == path.stat().st_size
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar == {
        "format": "ringd-checkpoint",
        "sha256": saved.sha256,
        "bytes": saved.bytes,
        "meta": {"config": "x_2p", "step": 3},
    }
    assert sorted(p.name for p in path.parent.iterdir()) == ["final.json", "final.pt"]  # no temps

    payload = load_checkpoint(path)
    assert payload["resume"] == {"fingerprint": "f", "step": 3, "total_steps": 9}
    again = build_model(SHAPE, seed=2)
    assert shape_mismatches(payload["model"], again.state_dict()) == []
    again.load_state_dict(payload["model"])
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)

    fresh = make_optimizer(
        again, lr=5e-3, weight_decay=0.0, device=torch.device("cpu"), for_graph=False
    )
    restore_optimizer(fresh, payload["optimizer"])
    assert fresh.param_groups[0]["lr"] == 5e-3  # this run's settings stay...
    state = next(iter(fresh.state.values()))  # ...the moments come back
    assert int(state["step"]) == 1 and state["exp_avg"].abs().sum() > 0


def test_a_changed_byte_is_caught_by_the_sidecar(tmp_path: Path) -> None:
    model = build_model(SHAPE, seed=1)
    path = tmp_path / "resume.pt"
    save_checkpoint(path, meta={}, model=model.state_dict(), optimizer={}, resume={})
    data = bytearray(path.read_bytes())
    data[-100] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt: its SHA-256"):
        load_checkpoint(path)


def test_other_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="not a ringd checkpoint"):
        load_checkpoint(path)


def test_shape_mismatches_name_every_tensor() -> None:
    small = build_model(SHAPE, seed=0).state_dict()
    wide = build_model(NetShape(5, 4, 4, 6, 2), seed=0).state_dict()
    problems = shape_mismatches(small, wide)
    assert "stem.0.weight: checkpoint (4, 5, 3, 3), model (6, 5, 3, 3)" in problems
    assert "tower.1.a.0.weight: missing from the checkpoint" in problems
    assert "tower.1.a.0.weight: not in the model" in shape_mismatches(wide, small)
