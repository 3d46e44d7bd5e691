"""Promotion: which validated checkpoints become a configuration's `latest`.

`latest` is what the next job warm-starts from and what publishing copies, so a
checkpoint of a job becomes it only once promoted, as `models.promote` says:

- `always`: every validated checkpoint (ringd before promotion gates);
- `if_not_worse` (the default): its held-out loss is not worse than latest's by
  more than `models.promote_tolerance` (relative), both measured by the job on the
  same held-out samples (its sidecar's `meta.eval`: `model` and `start`, the job
  having started from latest);
- `command`: a site's gate (say, a match between the two networks in its engine):
  `models.promote_command` with the candidate's and the current latest's paths
  appended; exit 0 promotes, any other exit or a timeout does not; its output is
  the reason.

Whatever the mode, the first checkpoint of a configuration is promoted (there is
nothing to compare it with), a checkpoint older than latest (trained through an
earlier game) is not, and checkpoints found under `models.dirs` (placed there by
hand) are eligible without a gate. A checkpoint that is not promoted stays valid
and listed with its reason; `ringd models promote PATH` promotes one by hand.
The decision is recorded in the ledger (ledger.set_promotion) and never made twice
for the same file.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ringd import childsetup
from ringd.ledger import CheckpointRow
from ringd.settings import ModelsSettings

OUTPUT_TAIL = 1000  # characters of a gate's output kept as the reason


@dataclass(frozen=True, slots=True)
class Decision:
    promoted: bool
    reason: str


def undecided(rows: dict[str, CheckpointRow]) -> list[CheckpointRow]:
    """Validated checkpoints still in place whose promotion is not decided, oldest first."""
    pending = [
        r
        for r in rows.values()
        if r.verdict == "ok"
        and r.promoted is None
        and not r.removed
        and not r.quarantined_to
        and r.config is not None
    ]
    return sorted(pending, key=lambda r: (r.config or "", r.last_seq or 0, r.mtime_ns))


def read_held_out(path: str) -> dict[str, Any] | None:
    """A checkpoint's held-out evaluation from its sidecar (``meta.eval``), if it has one."""
    try:
        data = json.loads(Path(path).with_suffix(".json").read_bytes())
        held_out = data["meta"]["eval"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return held_out if isinstance(held_out, dict) else None


def decide(
    candidate: CheckpointRow,
    held_out: dict[str, Any] | None,
    current: CheckpointRow | None,
    models: ModelsSettings,
    min_samples: int,
) -> Decision | None:
    """The decision on ``candidate`` against ``current`` (latest); None: the gate command's."""
    if candidate.origin != "job":
        return Decision(True, "found under models.dirs (placed by hand): not gated")
    if models.promote == "always":
        if current is not None and _older(candidate, current):
            return Decision(False, _older_reason(candidate, current))
        return Decision(True, "models.promote: always")
    loss = _model_loss(held_out)
    if models.promote == "if_not_worse" and held_out and held_out.get("samples") and loss is None:
        return Decision(False, "its held-out loss is not finite: training diverged")
    if current is None:
        return Decision(
            True, f"the first checkpoint of {candidate.config}: nothing to compare with"
        )
    if _older(candidate, current):
        return Decision(False, _older_reason(candidate, current))
    if models.promote == "command":
        return None
    return judge(held_out, current.path, models.promote_tolerance, min_samples)


def judge(
    held_out: dict[str, Any] | None, latest: str, tolerance: float, min_samples: int
) -> Decision:
    """`if_not_worse`: the candidate's held-out loss against latest's, from one job."""
    if held_out is None:
        return Decision(True, "no held-out metrics (its trainer wrote none): not gated")
    samples = int(held_out.get("samples") or 0)
    if samples == 0:
        return Decision(True, "no held-out games yet: not gated")
    loss = _model_loss(held_out)
    if loss is None:
        return Decision(False, "its held-out loss is not finite: training diverged")
    start = held_out.get("start_checkpoint")
    if start is None:
        return Decision(
            True,
            f"held-out loss {loss:.4f}; the job started from scratch (latest has another "
            "network size?), so nothing was measured to compare with",
        )
    if not _same_file(start, latest):
        return Decision(
            False,
            f"measured against {start}, but latest is now {latest}: the next job compares with it",
        )
    base = (held_out.get("start") or {}).get("loss")
    if base is None:
        return Decision(True, f"held-out loss {loss:.4f}; latest's is not finite")
    versus = f"held-out loss {loss:.4f} vs latest's {base:.4f} ({_change(loss, base)}"
    if samples < min_samples:
        return Decision(
            True,
            f"{versus}) on only {samples} samples (training.holdout.min_samples: "
            f"{min_samples}): not gated",
        )
    if loss <= base * (1 + tolerance):
        return Decision(True, f"{versus}, tolerance {tolerance:.1%})")
    return Decision(False, f"{versus}): worse by more than the tolerance {tolerance:.1%}")


async def run_gate(argv: Sequence[str], candidate: str, current: str, timeout_s: float) -> Decision:
    """`command`: run the site's gate (argv + candidate + current); exit 0 promotes."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            candidate,
            current,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # its own group: a timeout kills what it started too
        )
    except OSError as e:
        return Decision(False, f"the gate {argv[0]} cannot start: {e}")
    assert process.stdout is not None
    output = bytearray()

    async def read() -> None:
        assert process.stdout is not None
        while chunk := await process.stdout.read(65536):
            output.extend(chunk)
            del output[: max(0, len(output) - 4 * OUTPUT_TAIL)]
        await process.wait()

    try:
        async with asyncio.timeout(timeout_s):
            await read()
    except TimeoutError:
        await childsetup.reap(process, group=True)
        return Decision(False, f"the gate timed out after {timeout_s:g} s: {_tail(output)}")
    except asyncio.CancelledError:
        await childsetup.reap(process, group=True)
        raise
    if process.returncode == 0:
        return Decision(True, f"the gate passed (exit 0): {_tail(output)}")
    return Decision(False, f"the gate said no (exit {process.returncode}): {_tail(output)}")


def _tail(output: bytes | bytearray) -> str:
    text = bytes(output).decode(errors="replace").strip()
    if not text:
        return "(no output)"
    return ("..." + text[-OUTPUT_TAIL:]) if len(text) > OUTPUT_TAIL else text


def _model_loss(held_out: dict[str, Any] | None) -> float | None:
    model = (held_out or {}).get("model") or {}
    loss = model.get("loss")
    return float(loss) if isinstance(loss, int | float) else None


def _older(candidate: CheckpointRow, current: CheckpointRow) -> bool:
    return (
        current.origin == "job"
        and candidate.last_seq is not None
        and current.last_seq is not None
        and candidate.last_seq < current.last_seq
    )


def _older_reason(candidate: CheckpointRow, current: CheckpointRow) -> str:
    return (
        f"older than latest: trained through game {candidate.last_seq}, latest through "
        f"{current.last_seq}"
    )


def _change(loss: float, base: float) -> str:
    return f"{(loss - base) / base:+.1%}" if base > 0 else f"{loss - base:+.4f}"


def _same_file(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def change_of(held_out: dict[str, Any] | None) -> float | None:
    """The relative change of the held-out loss from the network the job started from."""
    loss = _model_loss(held_out)
    base = ((held_out or {}).get("start") or {}).get("loss")
    if loss is None or not isinstance(base, int | float) or base <= 0:
        return None
    return (loss - base) / base
