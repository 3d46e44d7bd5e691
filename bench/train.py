"""Training throughput: the real job beside its limit and beside the old way, same model.

    PYTHONPATH=daemon python bench/train.py            # on the GPU host (defaults below)
    .venv/bin/python bench/train.py --quick            # tiny, on the CPU: checks the script

For each case (config, batch size), with a 128-channel, 10-block net by default:

1. job: ``python -m ringd.train SPEC`` as the daemon runs it (sample cache already
   filled, loader tier chosen by the job, CUDA graph); samples/s is the median of its
   progress events after the first quarter (start-up, warmup and capture excluded).
2. limit: the same model's whole training step captured as one CUDA graph and replayed
   on a batch already on the GPU: nothing left to feed. The job's target is >= 0.9x.
3. eager + get_batch: plain eager PyTorch fed by a per-sample ``get_batch`` loop on the
   host (the old pipeline's way).

GPU utilisation (NVML, else nvidia-smi) is sampled every 0.2 s during each. Cases
default to square8_2p at batch 256 and 1024 and hexagonal_2p at batch 1024. Figures
are medians; the corpus and the sample cache are built once under --dir and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from _common import machine, table
from _window import PerSample, host_arrays, prepared_window, write_spec
from ringd.train.data import batch_indices
from ringd.train.encode import Geometry
from ringd.train.gpu_util import UtilizationSampler, utilization_reader
from ringd.train.loader import PackedBatch
from ringd.train.model import NetShape, build_model
from ringd.train.prepare import Prepared
from ringd.train.step import GRAPH_WARMUP_STEPS, StepSettings, TrainStep, make_optimizer

REPO = Path(__file__).resolve().parents[1]
LR = 2e-3
GAMES = {"square8_2p": 2000, "square19_2p": 400, "hex8_2p": 1500, "hexagonal_2p": 500}


@dataclass
class Figure:
    samples_per_s: float
    gpu_util: float | None = None
    note: str = ""


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sampler(device: torch.device) -> UtilizationSampler | None:
    if device.type != "cuda":
        return None
    read = utilization_reader(device.index or 0)
    return UtilizationSampler(read) if read else None


def timed(fn: Any, device: torch.device, batch: int, seconds: float) -> Figure:
    """Run ``fn()`` (one step) repeatedly for about ``seconds``; samples/s and GPU use."""
    t0 = time.perf_counter()
    probe = 0
    while time.perf_counter() - t0 < min(1.0, seconds / 4) or probe < 3:
        fn()
        probe += 1
    sync(device)
    per_step = (time.perf_counter() - t0) / probe
    steps = max(5, int(seconds / per_step))
    gpu = sampler(device)
    if gpu:
        gpu.__enter__()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    rate = steps * batch / (time.perf_counter() - t0)
    if gpu:
        gpu.__exit__()
    return Figure(rate, gpu.median() if gpu else None)


def device_batch(arrays: Any, batch: int, device: torch.device) -> PackedBatch:
    idx = batch_indices(0, 0, len(arrays.policy), batch)
    return PackedBatch(
        torch.from_numpy(arrays.planes[idx]).to(device),
        torch.from_numpy(arrays.policy[idx]).to(device),
        torch.from_numpy(arrays.value[idx]).to(device),
    )


def amp_of(device: torch.device) -> torch.dtype | None:
    return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None


def limit(
    arrays: Any,
    geometry: Geometry,
    shape: NetShape,
    batch: int,
    device: torch.device,
    seconds: float,
) -> Figure:
    """The whole step as one CUDA graph, replayed on a batch already on the device."""
    cuda = device.type == "cuda"
    model = build_model(shape, seed=0).to(device).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = make_optimizer(model, lr=LR, weight_decay=1e-4, device=device, for_graph=cuda)
    step = TrainStep(
        model, optimizer, StepSettings(geometry, amp_of(device), True),
        batch_size=batch, device=device, graph=cuda, why="bench",
    )  # fmt: skip
    packed = device_batch(arrays, batch, device)
    for _ in range(GRAPH_WARMUP_STEPS + 2):  # eager warmups, then the capture
        step(packed, LR)
    sync(device)
    if cuda and not step.graph_enabled:
        return Figure(0.0, None, f"capture failed: {step.graph_why}")
    figure = timed(step.replay_static if cuda else lambda: step(packed, LR), device, batch, seconds)
    figure.note = "CUDA graph" if cuda else "eager (no CUDA graphs on a CPU)"
    return figure


def eager_per_sample(
    arrays: Any,
    geometry: Geometry,
    shape: NetShape,
    batch: int,
    device: torch.device,
    seconds: float,
) -> Figure:
    """Plain eager PyTorch, each batch built by a per-sample Python loop and copied over."""
    model = build_model(shape, seed=0).to(device).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=1e-4)
    data = PerSample(arrays, geometry)
    amp = amp_of(device)
    counter = [0]

    def step() -> None:
        idx = batch_indices(0, counter[0], len(data), batch)
        counter[0] += 1
        x, p, v = data.get_batch(idx, device)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            policy, value = model(x)
        loss = F.cross_entropy(policy.float(), p) + F.mse_loss(value.float(), v)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()

    return timed(step, device, batch, seconds)


def job(
    folder: Path,
    config: str,
    spans: list[dict[str, Any]],
    shape: NetShape,
    batch: int,
    steps: int,
    device: torch.device,
    loader: str = "auto",
) -> Figure:
    """``python -m ringd.train`` on the cached window; steady-state samples/s and GPU use."""
    out = folder / f"job-{config}-{batch}"
    shutil.rmtree(out, ignore_errors=True)  # never resume a previous run's checkpoint
    spec = write_spec(
        folder / f"job-{config}-{batch}.json", config, spans, folder,
        output_dir=str(out), device=str(device), job_id=f"bench-{config}-{batch}",
        hyper={
            "batch_size": batch, "steps": steps, "channels": shape.channels, "blocks": shape.blocks,
            "log_every": max(5, steps // 40), "checkpoint_every_s": 1e9, "loader": loader,
        },
    )  # fmt: skip
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO / "daemon"), env.get("PYTHONPATH")) if p
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "ringd.train", str(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    events: list[dict[str, Any]] = []
    gpu = sampler(device)
    sampling = False
    for line in proc.stdout:
        events.append(json.loads(line))
        if events[-1]["event"] == "start" and gpu:  # sample the training, not the start-up
            gpu.__enter__()
            sampling = True
        if events[-1]["event"] in ("done", "error") and gpu and sampling:
            gpu.__exit__()
            sampling = False
    _, stderr = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"the job failed ({proc.returncode}): {events[-1:]}\n{stderr[-3000:]}")
    start = next(e for e in events if e["event"] == "start")
    progress = [e for e in events if e["event"] == "progress"]
    steady = progress[len(progress) // 4 :] or progress
    rate = statistics.median(e["samples_per_s"] for e in steady)
    done = events[-1]
    note = f"loader {start['loader']['tier']}, graph {'on' if done['cuda_graph']['enabled'] else 'off'}"
    return Figure(rate, gpu.median() if gpu else None, note)


def case(
    folder: Path,
    config: str,
    batch: int,
    args: argparse.Namespace,
    device: torch.device,
    games: int,
) -> list[str]:
    prepared: Prepared
    prepared, geometry, spans = prepared_window(folder, config, games)
    shape = NetShape(geometry.planes, geometry.height, geometry.width, args.channels, args.blocks)
    seconds = args.seconds
    arrays = host_arrays(prepared)
    print(f"\n{config} batch {batch}: window {prepared.window.size:,} samples", flush=True)

    top = limit(arrays, geometry, shape, batch, device, seconds)
    print(f"  limit: {top.samples_per_s:,.0f} samples/s ({top.note})", flush=True)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    steps = int(min(50_000, max(60, top.samples_per_s * seconds * 1.5 / batch)))
    real = job(folder, config, spans, shape, batch, steps, device, args.loader)
    print(f"  job: {real.samples_per_s:,.0f} samples/s ({real.note}; {steps} steps)", flush=True)
    old = eager_per_sample(arrays, geometry, shape, batch, device, seconds)
    print(f"  eager + per-sample get_batch: {old.samples_per_s:,.0f} samples/s", flush=True)
    if device.type == "cuda":
        torch.cuda.empty_cache()

    def util(f: Figure) -> str:
        return f"{f.gpu_util:.0f}%" if f.gpu_util is not None else "-"

    return [
        f"{config} b{batch}",
        f"{real.samples_per_s:,.0f}",
        f"{top.samples_per_s:,.0f}",
        f"{real.samples_per_s / top.samples_per_s:.2f}x" if top.samples_per_s else "-",
        f"{old.samples_per_s:,.0f}",
        f"{real.samples_per_s / old.samples_per_s:.1f}x",
        f"{util(real)} / {util(top)} / {util(old)}",
        real.note,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny model and data on the CPU")
    parser.add_argument(
        "--device", default=None, help="default: cuda if available (cpu with --quick)"
    )
    parser.add_argument(
        "--cases",
        default="square8_2p:256,square8_2p:1024,hexagonal_2p:1024",
        help="CONFIG:BATCH,...",
    )
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each measurement")
    parser.add_argument(
        "--games", type=int, default=None, help="games per corpus (default per board)"
    )
    parser.add_argument("--dir", type=Path, default=Path("/tmp/ringd-bench/train"))
    parser.add_argument(
        "--loader",
        choices=["auto", "resident", "pinned", "mmap"],
        default="auto",
        help="force the job's loader tier (default: the job chooses)",
    )
    args = parser.parse_args()
    if args.quick:
        args.device = args.device or "cpu"
        args.cases, args.channels, args.blocks, args.seconds = "square8_2p:64", 16, 2, 2.0
        args.games = args.games or 60
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        name = torch.cuda.get_device_name(device)
    else:
        name = "CPU"
    print(
        f"{machine()}; torch {torch.__version__}; {name}; net {args.channels}ch x {args.blocks} blocks"
    )

    rows = []
    for item in args.cases.split(","):
        config, batch = item.split(":")
        games = args.games or GAMES.get(config, 500)
        rows.append(case(args.dir, config, int(batch), args, device, games))
    print()
    print(
        table(
            [
                "case",
                "job",
                "limit",
                "job/limit",
                "eager+get_batch",
                "job/eager",
                "GPU util job/limit/eager",
                "job path",
            ],
            rows,
        )
    )
    print("\nsamples/s, medians; targets: job >= 0.9x limit, GPU utilisation >= 90%.")


if __name__ == "__main__":
    main()
