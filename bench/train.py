"""Training throughput: the real job beside its limits and beside the old way, same model.

    PYTHONPATH=daemon python bench/train.py            # on the GPU host (defaults below)
    .venv/bin/python bench/train.py --quick            # tiny, on the CPU: checks the script

For each case (config, batch size), with a 128-channel, 10-block net by default:

1. job: ``python -m ringd.train SPEC`` as the daemon runs it (sample cache already
   filled, loader tier chosen by the job, CUDA graph, the model compiled: ``hyper.compile``
   is ``auto``); samples/s is the median of its progress events after the first quarter
   (start-up, compiling, warmup and capture excluded). Its compile time is the first
   step's (the ``done`` event's ``compile.seconds``): with an empty compile cache
   (first job) and again with the cache the first job filled (second job).
2. job, uncompiled: the same with ``hyper.compile: false`` (the job before compiling).
3. limit: the same model's whole training step captured as one CUDA graph and replayed
   on a batch already on the GPU: nothing left to feed. ``compiled limit``: the same
   with the model compiled. The job's targets: >= 0.9x its limit, >= 1.2x the
   uncompiled limit.
4. eager + get_batch (unless --no-eager): plain eager PyTorch fed by a per-sample
   ``get_batch`` loop on the host (the old pipeline's way).
5. with --torchrun: the job as ``torchrun --nproc-per-node=1`` (DDP of one rank, its
   CUDA graph after DDP's warmup): what DDP costs a step on one GPU.

MFU: the model's FLOPs per sample (``torch.utils.flop_counter.FlopCounterMode`` over a
forward and backward) x samples/s / the GPU's dense bf16 peak (PEAK_BF16, by name).
GPU utilisation (NVML, else nvidia-smi) is sampled every 0.2 s during each. Cases
default to square8_2p at batch 256 and 1024 and hexagonal_2p at batch 1024. Figures
are medians; the corpus and the sample cache are built once under --dir and reused;
the compile cache (--dir/compile-cache) is emptied at the start.
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
# Dense bf16 tensor-core peaks (TFLOP/s, datasheets, SXM parts), by a part of the name.
PEAK_BF16 = {"H200": 989, "H100 PCIe": 756, "H100": 989, "A100": 312, "L40S": 362, "L4": 121}


@dataclass
class Figure:
    samples_per_s: float
    gpu_util: float | None = None
    note: str = ""
    compile_s: float | None = None  # the first step's time, compiling included


def peak_flops(device: torch.device) -> float | None:
    """The GPU's dense bf16 peak in FLOP/s (None: not in PEAK_BF16, or not a GPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for part, tflops in PEAK_BF16.items():
        if part in name:
            return tflops * 1e12
    return None


def flops_per_sample(shape: NetShape, geometry: Geometry) -> float:
    """Model FLOPs of one sample's forward and backward, counted by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(shape, seed=0)
    n = 4
    x = torch.zeros(n, geometry.planes, geometry.height, geometry.width)
    with FlopCounterMode(display=False) as counter:
        policy, value = model(x)
        (policy.float().sum() + value.float().sum()).backward()  # type: ignore[no-untyped-call]
    return float(counter.get_total_flops()) / n


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
    compile: bool = False,
    mode: str = "default",
    profile: bool = False,
) -> Figure:
    """The whole step as one CUDA graph, replayed on a batch already on the device."""
    cuda = device.type == "cuda"
    model = build_model(shape, seed=0).to(device).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = make_optimizer(model, lr=LR, weight_decay=1e-4, device=device, for_graph=cuda)
    step = TrainStep(
        model, optimizer, StepSettings(geometry, amp_of(device), True),
        batch_size=batch, device=device, graph=cuda, why="bench", compile=compile,
        compile_mode=mode,
    )  # fmt: skip
    packed = device_batch(arrays, batch, device)
    for _ in range(GRAPH_WARMUP_STEPS + 2):  # eager warmups, then the capture
        step(packed, LR)
    sync(device)
    if cuda and not step.graph_enabled:
        return Figure(0.0, None, f"capture failed: {step.graph_why}")
    if compile and not step.compile_enabled:
        return Figure(0.0, None, step.compile_why)
    figure = timed(step.replay_static if cuda else lambda: step(packed, LR), device, batch, seconds)
    figure.note = "CUDA graph" if cuda else "eager (no CUDA graphs on a CPU)"
    figure.compile_s = step.compile_seconds if compile else None
    if profile and cuda:
        kernels(step, device)
    return figure


def kernels(step: TrainStep, device: torch.device, top: int = 25) -> None:
    """The step's GPU kernels by time (graph replays traced kernel by kernel)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            step.replay_static()
        sync(device)
    print(
        prof.key_averages().table(
            sort_by="cuda_time_total", row_limit=top, max_name_column_width=70
        )
    )


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
    compile: bool | str = "auto",
    torchrun: bool = False,
    name: str = "job",
) -> Figure:
    """``python -m ringd.train`` on the cached window; steady-state samples/s and GPU use.

    ``torchrun``: started as ``torchrun --standalone --nproc-per-node=1`` (DDP, one rank).
    """
    out = folder / f"{name}-{config}-{batch}"
    shutil.rmtree(out, ignore_errors=True)  # never resume a previous run's checkpoint
    spec = write_spec(
        folder / f"{name}-{config}-{batch}.json", config, spans, folder,
        output_dir=str(out), device="cuda" if device.type == "cuda" else "cpu",
        job_id=f"bench-{config}-{batch}",
        hyper={
            "batch_size": batch, "steps": steps, "channels": shape.channels, "blocks": shape.blocks,
            "log_every": max(5, steps // 40), "checkpoint_every_s": 1e9, "loader": loader,
            "compile": compile,
        },
    )  # fmt: skip
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO / "daemon"), env.get("PYTHONPATH")) if p
    )
    if device.type == "cuda" and device.index is not None:
        env["CUDA_VISIBLE_DEVICES"] = env.get("CUDA_VISIBLE_DEVICES", str(device.index))
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1"]
    proc = subprocess.Popen(
        [*(run if torchrun else [sys.executable]), "-m", "ringd.train", str(spec)],
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
        event = events[-1]
        # Sample the steady training (the steps the rate is taken over), not the start-up
        # and the compiling.
        steady = event["event"] == "progress" and event["step"] >= steps // 4
        if steady and gpu and not sampling:
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
    compiled = done["compile"]
    note = (
        f"loader {start['loader']['tier']}, graph {'on' if done['cuda_graph']['enabled'] else 'off'}"
        f", compiled {'yes' if compiled['enabled'] else 'no'}"
    )
    if compile is not False and not compiled["enabled"]:
        note += f" ({compiled['why']})"
    return Figure(rate, gpu.median() if gpu else None, note, compiled.get("seconds"))


def case(
    folder: Path,
    config: str,
    batch: int,
    args: argparse.Namespace,
    device: torch.device,
    games: int,
) -> tuple[list[str], list[str]]:
    """(throughput row, compile-time row) of one case."""
    prepared: Prepared
    prepared, geometry, spans = prepared_window(folder, config, games)
    shape = NetShape(geometry.planes, geometry.height, geometry.width, args.channels, args.blocks)
    seconds = args.seconds
    arrays = host_arrays(prepared)
    per_sample = flops_per_sample(shape, geometry)
    peak = peak_flops(device)
    print(
        f"\n{config} batch {batch}: window {prepared.window.size:,} samples; "
        f"{per_sample / 1e9:.3f} GFLOP per sample (forward + backward)",
        flush=True,
    )

    def mfu(f: Figure) -> str:
        return f"{100 * per_sample * f.samples_per_s / peak:.1f}%" if peak else "-"

    def release() -> None:
        if device.type == "cuda":
            torch.cuda.empty_cache()

    top = limit(arrays, geometry, shape, batch, device, seconds)
    print(f"  limit (uncompiled): {top.samples_per_s:,.0f} samples/s, MFU {mfu(top)}", flush=True)
    release()
    if args.limits_only:
        ctop = limit(
            arrays, geometry, shape, batch, device, seconds, compile=True, mode=args.compile_mode,
            profile=args.profile,
        )  # fmt: skip
        print(
            f"  compiled limit ({args.compile_mode}): {ctop.samples_per_s:,.0f} samples/s, "
            f"MFU {mfu(ctop)}; first step {ctop.compile_s} s",
            flush=True,
        )
        return [], []
    compiling = device.type == "cuda" or args.compile_on_cpu
    want: bool | str = True if compiling else "auto"
    # The job's steps: about 1.5 x --seconds at the compiled rate (guessed 1.3x the limit).
    steps = int(min(50_000, max(60, top.samples_per_s * 1.3 * seconds * 1.5 / batch)))
    real = job(folder, config, spans, shape, batch, steps, device, args.loader, compile=want)
    print(
        f"  job: {real.samples_per_s:,.0f} samples/s, MFU {mfu(real)} ({real.note}; "
        f"{steps} steps; first step {real.compile_s} s)",
        flush=True,
    )
    again = job(folder, config, spans, shape, batch, 60, device, args.loader, compile=want)
    print(f"  second job (compile cache filled): first step {again.compile_s} s", flush=True)
    ctop = Figure(0.0, note="not compiled")
    if compiling:
        ctop = limit(arrays, geometry, shape, batch, device, seconds, compile=True)
        print(
            f"  compiled limit: {ctop.samples_per_s:,.0f} samples/s, MFU {mfu(ctop)} {ctop.note}",
            flush=True,
        )
        release()
    plain_steps = int(min(50_000, max(60, top.samples_per_s * seconds * 1.5 / batch)))
    plain = job(
        folder, config, spans, shape, batch, plain_steps, device, args.loader, compile=False,
        name="plain",
    )  # fmt: skip
    print(f"  job uncompiled: {plain.samples_per_s:,.0f} samples/s, MFU {mfu(plain)}", flush=True)
    ddp = None
    if f"{config}:{batch}" in args.torchrun.split(","):
        ddp = job(
            folder, config, spans, shape, batch, steps, device, args.loader, compile=want,
            torchrun=True, name="ddp1",
        )  # fmt: skip
        print(
            f"  torchrun, 1 rank (DDP): {ddp.samples_per_s:,.0f} samples/s, MFU {mfu(ddp)} "
            f"({ddp.note}; first step {ddp.compile_s} s)",
            flush=True,
        )
    old = None
    if not args.no_eager:
        old = eager_per_sample(arrays, geometry, shape, batch, device, seconds)
        print(f"  eager + per-sample get_batch: {old.samples_per_s:,.0f} samples/s", flush=True)
        release()

    def util(f: Figure | None) -> str:
        return f"{f.gpu_util:.0f}%" if f is not None and f.gpu_util is not None else "-"

    def rate(f: Figure | None) -> str:
        return f"{f.samples_per_s:,.0f}" if f is not None and f.samples_per_s else "-"

    def ratio(a: Figure | None, b: Figure | None) -> str:
        if a is None or b is None or not a.samples_per_s or not b.samples_per_s:
            return "-"
        return f"{a.samples_per_s / b.samples_per_s:.2f}x"

    row = [
        f"{config} b{batch}",
        f"{rate(real)} ({mfu(real)})",
        f"{rate(plain)} ({mfu(plain)})",
        f"{rate(top)} ({mfu(top)})",
        f"{rate(ctop)} ({mfu(ctop) if ctop.samples_per_s else '-'})",
        ratio(real, top),
        ratio(real, ctop),
        ratio(real, plain),
        f"{rate(ddp)} ({mfu(ddp)})" if ddp else "-",
        rate(old),
        f"{util(real)} / {util(plain)} / {util(top)} / {util(ctop)} / {util(old)}",
        real.note,
    ]
    times = [
        f"{config} b{batch}",
        f"{real.compile_s}",
        f"{again.compile_s}",
        f"{plain.compile_s}",
        f"{ctop.compile_s}" if ctop.compile_s is not None else "-",
        f"{ddp.compile_s}" if ddp else "-",
    ]
    return row, times


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
    parser.add_argument("--no-eager", action="store_true", help="skip the old way's baseline")
    parser.add_argument(
        "--limits-only", action="store_true", help="only the limit and the compiled limit"
    )
    parser.add_argument(
        "--compile-mode",
        default="default",
        choices=["default", "max-autotune-no-cudagraphs"],
        help="torch.compile mode of the compiled limit (--limits-only)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="print the compiled step's kernels (--limits-only)"
    )
    parser.add_argument(
        "--torchrun",
        default="",
        help="CONFIG:BATCH,...: cases also run under torchrun (1 rank, DDP)",
    )
    parser.add_argument(
        "--compile-on-cpu", action="store_true", help="compile on a CPU device too (slow)"
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

    # An empty compile cache: the first job of each case compiles from scratch.
    cache = args.dir / "compile-cache"
    shutil.rmtree(cache, ignore_errors=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache / "inductor")
    os.environ["TRITON_CACHE_DIR"] = str(cache / "triton")
    peak = peak_flops(device)
    print(f"peak dense bf16: {peak / 1e12:.0f} TFLOP/s" if peak else "peak: unknown (no MFU)")

    rows, times = [], []
    for item in args.cases.split(","):
        config, batch = item.split(":")
        games = args.games or GAMES.get(config, 500)
        row, time_row = case(args.dir, config, int(batch), args, device, games)
        rows.append(row)
        times.append(time_row)
    if args.limits_only:
        return
    print()
    print(
        table(
            [
                "case",
                "job (MFU)",
                "job uncompiled",
                "limit",
                "compiled limit",
                "job/limit",
                "job/compiled limit",
                "job/uncompiled job",
                "torchrun 1 rank",
                "eager+get_batch",
                "GPU util job/uncompiled/limit/compiled limit/eager",
                "job path",
            ],
            rows,
        )
    )
    print(
        "\nsamples/s, medians (MFU: model FLOPs x samples/s / dense bf16 peak); targets: "
        "job >= 1.2x the uncompiled limit and >= 0.9x the compiled one, GPU utilisation >= 90%."
    )
    print()
    print(
        table(
            [
                "case",
                "first job",
                "second job (cache)",
                "uncompiled job",
                "compiled limit",
                "torchrun 1 rank",
            ],
            times,
        )
    )
    print("\nfirst step's seconds (compiling, warmup and capture included)")


if __name__ == "__main__":
    main()
