"""Publishing checkpoints: names at the destination, staging, what was published, retention.

At a destination DEST, a configuration's models live in DEST/CONFIG/: each
published checkpoint under a name of its own (`<job id>.pt`, sidecar
`<job id>.json`), and `latest.pt`, a symlink to the newest. A publish first
copies the checkpoint and its sidecar (rsync: temporary name, then rename),
and only when both arrived moves `latest.pt` (a new symlink renamed over the
old), so a selfplay host that opens DEST/CONFIG/latest.pt always gets a whole,
validated checkpoint; one killed midway leaves the old pointer and model.

Which names went to a destination is kept in state_dir/publish/KEY.json
(oldest first, the last one is `latest.pt`'s), so retention can delete exactly
the files ringd published there and nothing else.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from ringd.fsutil import write_bytes_atomically

POINTER = "latest.pt"
SIDECAR = ".json"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")  # also keeps rsync's filter wildcards out


def published_name(path: str, job_id: str | None, sha256: str | None) -> str:
    """A checkpoint's file name at destinations: its own, and the same at every publish."""
    p = Path(path)
    if job_id:
        stem = job_id  # ringd's jobs all write final.pt; the job id tells them apart
    elif sha256:
        stem = f"{p.stem}-{sha256[:12]}"
    else:
        stem = f"{p.parent.name}-{p.stem}"
    return _UNSAFE.sub("_", stem) + (p.suffix or ".pt")


def sidecar_name(name: str) -> str:
    return str(Path(name).with_suffix(SIDECAR))


def destination_key(dest: str) -> str:
    """A short stable name for a destination's local files."""
    return hashlib.sha256(dest.encode()).hexdigest()[:16]


def stage_upload(stage: Path, config: str, checkpoint: Path, name: str) -> None:
    """stage/CONFIG/NAME (and its sidecar): symlinks rsync follows (--copy-links)."""
    shutil.rmtree(stage, ignore_errors=True)
    folder = stage / config
    folder.mkdir(parents=True)
    os.symlink(checkpoint, folder / name)
    sidecar = checkpoint.with_suffix(SIDECAR)
    if sidecar.exists():
        os.symlink(sidecar, folder / sidecar_name(name))


def stage_pointer(stage: Path, config: str, name: str) -> None:
    """stage/CONFIG/latest.pt -> NAME, a relative symlink rsync copies as a symlink."""
    shutil.rmtree(stage, ignore_errors=True)
    folder = stage / config
    folder.mkdir(parents=True)
    os.symlink(name, folder / POINTER)


def stage_empty(stage: Path) -> None:
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)


def record(history: dict[str, list[str]], config: str, name: str) -> None:
    """`name` is now the destination's latest for `config` (moved to the end if known)."""
    names = [n for n in history.get(config, []) if n != name]
    history[config] = [*names, name]


def to_prune(names: Sequence[str], keep: int) -> list[str]:
    """Published names beyond the newest `keep` (the last, the latest, is always kept)."""
    return list(names[: max(0, len(names) - max(1, keep))])


def load_history(path: Path) -> dict[str, list[str]]:
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except ValueError:
        return {}  # unreadable: the next publish rewrites it; older files are left alone
    configs = data.get("configs") if isinstance(data, dict) else None
    if not isinstance(configs, dict):
        return {}
    return {
        str(config): [str(n) for n in names]
        for config, names in configs.items()
        if isinstance(names, list)
    }


def save_history(path: Path, dest: str, history: dict[str, list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"dest": dest, "configs": history}
    write_bytes_atomically(path, json.dumps(data, indent=1, sort_keys=True).encode())
