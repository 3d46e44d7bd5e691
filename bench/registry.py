"""Start-up with 3,000 checkpoints already validated, beside `torch.load` of each
(the old service's way at every start), in the same run.

    .venv/bin/python bench/registry.py [--files 3000] [--runs 3]

Small checkpoints (a 4-channel net) keep the run short; the baseline's time is
also scaled by bytes to the old models folder (2,992 files, 153 GB). The
daemon's start-up touches only `stat`: the figure is start to READY, and the
validations run after a restart (must be 0). Target: <= 0.5 s.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine, table
from _daemon import BenchDaemon
from ringd.cli import client

OLD_BYTES = 153e9


def make(folder: Path, files: int) -> int:
    script = (
        "import sys\nfrom pathlib import Path\n"
        "from ringd.train.checkpoint import save_checkpoint\n"
        "from ringd.train.model import NetShape, build_model\n"
        "shape = NetShape(planes=4, height=8, width=8, channels=4, blocks=1)\n"
        "model = build_model(shape, seed=0).state_dict()\n"
        "for i in range(int(sys.argv[2])):\n"
        "    save_checkpoint(Path(sys.argv[1]) / f'c{i % 12}' / f'm{i:05d}.pt', "
        "meta={'config': f'square8_{2 + i % 3}p', 'model': shape.as_dict()}, model=model, optimizer={}, resume={})\n"
    )
    subprocess.run([sys.executable, "-c", script, str(folder), str(files)], check=True)
    return sum(p.stat().st_size for p in folder.rglob("*.pt"))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="rd-reg-", dir="/tmp"))
    try:
        total = make(folder / "models", args.files)
        daemon = BenchDaemon(
            folder,
            [folder / "selfplay"],
            extra="models:\n  dirs: [models]\n  validate_concurrency: 2\n",
        )
        (folder / "selfplay").mkdir()
        t0 = time.monotonic()
        daemon.start()
        while client.get_json(daemon.socket, "/v1/models")["stats"]["validated"] < args.files:
            time.sleep(0.2)
        first_s = time.monotonic() - t0
        daemon.stop()
        ready, validated = [], []
        for _ in range(args.runs):
            ready.append(daemon.start())
            time.sleep(2)  # the registry's refresh after READY (stat only)
            validated.append(client.get_json(daemon.socket, "/v1/models")["stats"]["validated"])
            daemon.stop()
        load = (
            "import sys, time, torch\nfrom pathlib import Path\n"
            "t = time.perf_counter()\n"
            "for p in sorted(Path(sys.argv[1]).rglob('*.pt')):\n"
            "    torch.load(p, map_location='cpu', weights_only=True)\n"
            "print(time.perf_counter() - t)\n"
        )
        baseline = float(
            subprocess.run(
                [sys.executable, "-c", load, str(folder / "models")],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
    finally:
        daemon.stop()
        shutil.rmtree(folder, ignore_errors=True)
    median = statistics.median(ready)
    scaled = baseline * OLD_BYTES / total
    print(
        f"registry: {args.files:,} checkpoints, {total / 1e6:,.1f} MB; {machine()}; median of {args.runs} restarts"
    )
    print(
        table(
            ["what", "s", "checkpoints opened"],
            [
                ["ringd restart to READY, all validated", f"{median:.3f}", str(max(validated))],
                [
                    "first start: validate all (background, 2 children)",
                    f"{first_s:.1f}",
                    f"{args.files:,}",
                ],
                ["torch.load of each (the old start-up)", f"{baseline:.1f}", f"{args.files:,}"],
                ["torch.load scaled by bytes to 153 GB", f"{scaled:,.0f}", "2,992"],
            ],
        )
    )
    print(
        f"target <= 0.5 s: {'MET' if median <= 0.5 and max(validated) == 0 else 'MISSED'} ({median:.3f} s, {max(validated)} opened)"
    )


if __name__ == "__main__":
    main()
