"""Checkpoints: model + optimizer + metadata, written atomically, with a JSON sidecar.

``NAME.pt`` is a ``torch.save`` of a dict::

    format            "ringd-checkpoint"
    format_version    1
    meta              config, board, players, encoder {name, version}, geometry,
                      model {planes, height, width, channels, blocks}, seq range
                      trained on, step, total_steps, losses, created, torch version
    model             the network's state_dict
    optimizer         the optimizer's state_dict
    resume            {"fingerprint": the spec's training fingerprint, "step": ...}

``NAME.json`` beside it holds ``meta`` plus ``sha256`` and ``bytes``: the SHA-256 and
size of the ``.pt`` file's bytes exactly as written. The daemon can list, describe
and verify checkpoints from the sidecars alone, without importing torch. Both files
are written temp-file, fsync, rename, fsync of the folder; the ``.pt`` first, so a
sidecar never describes a file that is not there.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ringd.fsutil import write_bytes_atomically

FORMAT = "ringd-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(Exception):
    """A checkpoint that cannot be used: unreadable, corrupt, or made for another model."""


@dataclass(frozen=True)
class Saved:
    path: Path
    sha256: str
    bytes: int


def sidecar_path(path: Path) -> Path:
    return path.with_suffix(".json")


def save_checkpoint(
    path: Path,
    *,
    meta: Mapping[str, Any],
    model: Mapping[str, torch.Tensor],
    optimizer: Mapping[str, Any],
    resume: Mapping[str, Any],
) -> Saved:
    """Write ``path`` and its sidecar atomically; returns the file's SHA-256."""
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "meta": dict(meta),
        "model": dict(model),
        "optimizer": dict(optimizer),
        "resume": dict(resume),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomically(path, data)
    sidecar = {"format": FORMAT, "sha256": digest, "bytes": len(data), "meta": dict(meta)}
    write_bytes_atomically(sidecar_path(path), json.dumps(sidecar, indent=1).encode())
    return Saved(path, digest, len(data))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint (tensors on the CPU); :class:`CheckpointError` says what is wrong.

    If a sidecar is present, the file must have the SHA-256 it records. Loading uses
    ``weights_only=True``: a checkpoint is data, never code.
    """
    sidecar = sidecar_path(path)
    if sidecar.exists():
        try:
            expected = json.loads(sidecar.read_bytes())["sha256"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{sidecar}: unreadable sidecar: {e}") from e
        try:
            actual = file_sha256(path)
        except OSError as e:
            raise CheckpointError(f"{path}: {e.strerror or e}") from e
        if actual != expected:
            raise CheckpointError(
                f"{path}: corrupt: its SHA-256 is {actual[:16]}..., the sidecar says "
                f"{expected[:16]}..."
            )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: no such file") from e
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: unreadable or corrupt checkpoint: {first}") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a ringd checkpoint")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {payload.get('format_version')}, "
            f"this ringd reads {FORMAT_VERSION}"
        )
    for key in ("meta", "model", "optimizer", "resume"):
        if not isinstance(payload.get(key), dict):
            raise CheckpointError(f"{path}: checkpoint has no {key!r} section")
    return payload


def shape_mismatches(
    saved: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> list[str]:
    """Every tensor that differs between a saved state_dict and the model's, described."""
    problems = []
    for name, tensor in expected.items():
        if name not in saved:
            problems.append(f"{name}: missing from the checkpoint")
        elif tuple(saved[name].shape) != tuple(tensor.shape):
            problems.append(
                f"{name}: checkpoint {tuple(saved[name].shape)}, model {tuple(tensor.shape)}"
            )
    problems += [f"{name}: not in the model" for name in saved if name not in expected]
    return problems
