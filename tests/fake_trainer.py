"""A stand-in trainer for the job runner's tests: `training.command` points here.

    python tests/fake_trainer.py MODE [SECONDS] SPEC.json

It speaks the training job's protocol (JSON lines on stdout) and behaves by MODE:
ok (train for SECONDS, write a checkpoint, exit 0), fail (exit 1 with an error
event), hang (never finish, ignore nothing), selfkill (SIGKILL itself mid-run),
fail_once (fail on the first attempt of a job, succeed after). On SIGTERM it
saves a resumable marker and exits 5, like the real trainer. Every run appends
one line to runs.log in the job folder: pid, mode, the spec's sequence range.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path


def emit(**event: object) -> None:
    print(json.dumps(event), flush=True)


def main() -> int:
    mode, spec_path = sys.argv[1], Path(sys.argv[-1])
    seconds = float(sys.argv[2]) if len(sys.argv) > 3 else 0.5
    spec = json.loads(spec_path.read_text())
    out = Path(spec["output_dir"])
    if spec.get("spans"):  # the window as the daemon hands it over: a spans file
        from ringd.train.spans import iter_spans

        seqs = [span.seq for span in iter_spans(spec["spans"]["path"])]
    else:
        seqs = [g["seq"] for g in spec["games"]]
    new = [s for s in seqs if s >= spec["new_from_seq"]]
    with open(out / "runs.log", "a") as log:
        log.write(f"{os.getpid()} {mode} {min(new)} {max(new)}\n")
    resumed = (out / "resume.marker").exists()

    def on_term(*_: object) -> None:
        (out / "resume.marker").write_text("step 1\n")
        emit(event="error", kind="interrupted", message="SIGTERM")
        sys.exit(5)

    signal.signal(signal.SIGTERM, on_term)
    emit(event="start", config=spec["config"], games=len(seqs), new_games=len(new), resumed=resumed)
    if mode == "fail" or (mode == "fail_once" and not (out / "failed.once").exists()):
        (out / "failed.once").write_text("x")
        emit(event="error", kind="no_usable_games", message="every game failed its key check")
        print("fake trainer: giving up", file=sys.stderr)
        return 3 if mode == "fail" else 1
    steps = 10
    for step in range(1, steps + 1):
        time.sleep(seconds / steps)
        emit(
            event="progress",
            step=step,
            total_steps=steps,
            loss=1.0 / step,
            eta_s=(steps - step) * seconds / steps,
        )
        if mode == "selfkill" and step == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        while mode == "hang":
            time.sleep(3600)
    checkpoint = out / "model.pt"
    checkpoint.write_bytes(b"fake weights " + spec["job_id"].encode())
    sha = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    emit(event="checkpoint", path=str(checkpoint), sha256=sha, step=steps)
    emit(event="done", steps=steps, checkpoint=str(checkpoint), sha256=sha, seconds=seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
