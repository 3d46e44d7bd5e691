"""Loader throughput: the three loader tiers beside the old per-sample batch building.

    .venv/bin/python bench/loader.py --device cpu                  # any machine
    PYTHONPATH=daemon python bench/loader.py --device cuda         # the GPU host
    ... --config hexagonal_2p --games 200                          # bigger samples

Every method delivers the same thing for the same steps: a batch of model inputs on
the device (float planes, int64 policy targets), drawn by the same indices (seed,
step). The tiers gather bit-packed samples (on the device, or on the host by a
background thread) and unpack them on the device; the baselines build each sample
in Python (``get_batch``: a loop; ``DataLoader``: 4 worker processes with a
per-sample ``__getitem__``). The "packed" column is the tier alone: the bit-packed
batch on the device, as the training step receives it (it unpacks inside its CUDA
graph). Medians of --runs timed runs; target >= 20x the per-sample loop.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from _common import machine, table
from _window import PerSample, host_arrays, prepared_window
from ringd.train.data import batch_indices
from ringd.train.loader import Loader, TierChoice, open_loader, unpack_planes

SEED = 0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_runs(
    next_batch: Callable[[int], object], device: torch.device, seconds: float, runs: int, batch: int
) -> float:
    """Median samples/s over ``runs`` runs of consecutive steps lasting ``seconds`` each.

    Each run is long enough for the prefetching loaders' head start (their queue is full
    when a run begins) to be a small part of it.
    """
    step = 0
    next_batch(step)  # warm-up: lazy initialisation, worker start-up
    step += 1
    sync(device)
    rates = []
    for _ in range(runs):
        t0 = time.perf_counter()
        n = 0
        while n < 5 or time.perf_counter() - t0 < seconds:
            next_batch(step)
            step += 1
            n += 1
        sync(device)
        rates.append(n * batch / (time.perf_counter() - t0))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--config", default="square8_2p")
    parser.add_argument("--games", type=int, default=600)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--seconds", type=float, default=1.0, help="length of each timed run")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (CPU: 1)")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/ringd-bench/loader"))
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        # One intra-op thread: on a small shared CPU host, OpenMP threads spinning beside
        # the loaders' own threads (and other processes) collapse by orders of magnitude,
        # which would measure the scheduler instead of the loaders. --threads overrides.
        torch.set_num_threads(args.threads or 1)

    prepared, geometry, _ = prepared_window(args.dir, args.config, args.games)
    window = prepared.window
    print(
        f"{machine()}; torch {torch.__version__}; device {device}\n"
        f"{args.config}: window of {window.size:,} samples ({window.nbytes / 1e6:.0f} MB packed), "
        f"batch {args.batch}, median of {args.runs} runs of {args.seconds:g} s\n",
        flush=True,
    )
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows: list[tuple[str, float | None, float]] = []  # (method, packed, model input)

    for tier in ("resident", "pinned", "mmap"):
        rates = []
        for unpack in (False, True):
            loader = open_loader(
                TierChoice(tier, "bench"),  # type: ignore[arg-type]
                window,
                device=device,
                batch=args.batch,
                seed=SEED,
                start_step=0,
                stop_step=10**12,  # as many as the runs take
                prefetch=4,
            )

            def tier_batch(step: int, loader: Loader = loader, unpack: bool = unpack) -> object:
                packed = loader.get(step)
                if not unpack:  # what the loader hands the training step
                    return packed
                return unpack_planes(packed.planes, geometry, dtype), packed.policy.long()

            rates.append(timed_runs(tier_batch, device, args.seconds, args.runs, args.batch))
            loader.close()
        rows.append((f"ringd loader: {tier}", rates[0], rates[1]))
        print(f"  {rows[-1][0]}: {rates[0]:,.0f} / {rates[1]:,.0f} samples/s", flush=True)

    per_sample = PerSample(host_arrays(prepared), geometry)

    def loop_batch(step: int) -> object:
        return per_sample.get_batch(batch_indices(SEED, step, window.size, args.batch), device)

    baseline = timed_runs(loop_batch, device, args.seconds, args.runs, args.batch)
    rows.append(("per-sample get_batch loop (baseline)", None, baseline))
    print(f"  {rows[-1][0]}: {baseline:,.0f} samples/s", flush=True)

    # The same indices, step after step, for as long as the runs take.
    order = (
        int(i) for s in itertools.count() for i in batch_indices(SEED, s, window.size, args.batch)
    )
    data = torch.utils.data.DataLoader(
        per_sample,
        batch_size=args.batch,
        sampler=order,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
    )
    batches = iter(data)

    def dataloader_batch(step: int) -> object:
        x, p, v = next(batches)
        return x.to(device, non_blocking=True), p.to(device), v.to(device)

    rate = timed_runs(dataloader_batch, device, args.seconds, args.runs, args.batch)
    rows.append((f"torch DataLoader, {args.workers} workers, per-sample __getitem__", None, rate))
    print(f"  {rows[-1][0]}: {rate:,.0f} samples/s\n", flush=True)

    print(
        table(
            ["method", "packed, samples/s", "model input, samples/s", "vs per-sample loop"],
            [
                [
                    name,
                    f"{packed:,.0f}" if packed else "-",
                    f"{rate:,.0f}",
                    f"{rate / baseline:.1f}x",
                ]
                for name, packed, rate in rows
            ],
        )
    )
    print(
        "\npacked: the batch as the loader hands it to the training step (bit-packed, on the "
        "device);\nmodel input: unpacked to float planes (the step does this on the device; "
        "the baselines\nbuild it per sample on the host)."
    )


if __name__ == "__main__":
    main()
