"""`python -m ringd.train.validate PATH...`: one verdict per checkpoint, as JSON lines.

Run by the daemon's checkpoint registry in a child process (the daemon never
imports torch). For each file it prints `{"path", "ok", "reason", "sha256",
"config", "bytes"}` and moves on; a bad file never stops the others. Checks:

- the SHA-256 recorded beside it (the `.json` sidecar, or `meta.sha256`) matches;
- it loads with `weights_only=True` (data, never code);
- it holds a model state dict: a ringd checkpoint's `model`, or for checkpoints
  ringd did not write, a `model`/`state_dict`/`model_state_dict` entry or the
  dict of tensors itself;
- every floating-point tensor is finite;
- with ringd metadata, every tensor's shape is the one the metadata's model
  size (planes, board, channels, blocks) gives.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ringd.train.checkpoint import FORMAT, file_sha256, shape_mismatches, sidecar_path
from ringd.train.model import NetShape, build_model

STATE_DICT_KEYS = ("model", "state_dict", "model_state_dict")


def verdict(path: Path) -> dict[str, Any]:
    """Validate one file; never raises for a bad checkpoint (the reason says why)."""
    out: dict[str, Any] = {"path": str(path), "ok": False, "reason": None, "sha256": None}
    try:
        out["bytes"] = path.stat().st_size
        if out["bytes"] == 0:
            return {**out, "reason": "empty file (zero bytes)"}
        out["sha256"] = file_sha256(path)
    except OSError as e:
        return {**out, "reason": f"unreadable: {e.strerror or e}"}
    expected = _sidecar(path).get("sha256")
    if expected and expected != out["sha256"]:
        found = f"file {out['sha256'][:12]}..., recorded {expected[:12]}..."
        return {**out, "reason": f"sha256 mismatch: {found}"}
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        # Arbitrary bytes make the unpickler or the zip reader raise anything.
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return {
            **out,
            "reason": f"not a loadable checkpoint (truncated or corrupt?): {first[:200]}",
        }
    state, meta = _state_dict(payload)
    if meta.get("config"):
        out["config"] = meta["config"]
    if state is None:
        return {**out, "reason": "holds no model state dict"}
    bad = [
        name
        for name, t in state.items()
        if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]
    if bad:
        return {
            **out,
            "reason": f"non-finite values in {', '.join(bad[:3])}"
            + (" ..." if len(bad) > 3 else ""),
        }
    if isinstance(meta.get("model"), Mapping):
        try:
            expected_state = _expected_state(NetShape(**meta["model"]))
        except (TypeError, ValueError) as e:
            return {**out, "reason": f"metadata names no buildable model: {e}"}
        problems = shape_mismatches(state, expected_state)
        if problems:
            return {
                **out,
                "reason": "shapes differ from the metadata's model: " + "; ".join(problems[:3]),
            }
    return {**out, "ok": True}


@functools.lru_cache(maxsize=16)
def _expected_state(shape: NetShape) -> dict[str, torch.Tensor]:
    # Many checkpoints share a model size: build each size's network once.
    return build_model(shape, seed=0).state_dict()


def _sidecar(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(sidecar_path(path).read_bytes())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and data.get("format") == FORMAT else {}


def _state_dict(payload: object) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any]]:
    if not isinstance(payload, Mapping):
        return None, {}
    meta = payload.get("meta") if isinstance(payload.get("meta"), Mapping) else {}
    candidates = [payload.get(k) for k in STATE_DICT_KEYS] + [payload]
    for candidate in candidates:
        if (
            isinstance(candidate, Mapping)
            and candidate
            and all(
                isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in candidate.items()
            )
        ):
            return dict(candidate), dict(meta or {})
    return None, dict(meta or {})


def main(argv: Sequence[str] | None = None) -> int:
    paths = list(sys.argv[1:] if argv is None else argv)
    if not paths:
        print("usage: python -m ringd.train.validate CHECKPOINT...", file=sys.stderr)
        return 2
    torch.set_num_threads(1)  # a background check: leave the cores to training
    for path in paths:
        print(json.dumps(verdict(Path(path))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
