"""Batches for the training step, from three tiers chosen by where the window fits.

* ``resident``: the whole window (bit-packed) lives on the training device; a batch
  is three ``index_select`` calls there. On CUDA nothing but the 8-byte indices
  crosses the bus per sample. On the CPU device it means tensors in RAM.
* ``pinned``: the window lives in host memory; a background thread gathers whole
  batches with one vectorised numpy ``take`` per array into pinned batch slots, and
  on CUDA copies them to the device on a side stream, ``prefetch`` batches ahead.
* ``mmap``: the window stays in the cache's memory-mapped shards (it does not fit in
  RAM); the background thread gathers each batch from them with a thread pool.

Every tier returns a :class:`PackedBatch` on the device: planes still bit-packed
(unpacked on the device by :func:`unpack_planes`, part of the training step), and
for a given (seed, step) exactly the samples :func:`ringd.train.data.batch_indices`
picks, in that order: the tiers differ in speed, never in data. There is no
per-sample Python anywhere on these paths.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import torch

from ringd.train.data import (
    DEFAULT_BUDGET_FRACTION,
    HostBatch,
    IntArray,
    Window,
    host_available_bytes,
    shard_indices,
)
from ringd.train.encode import Geometry

Tier = Literal["resident", "pinned", "mmap"]
GB = 1e9
STAGING_ROWS = 1 << 16  # rows per host->device copy while loading the resident window
INDEX_RING = 8  # pinned index buffers in flight (resident tier on CUDA)
MMAP_THREADS = 8


@dataclass(frozen=True)
class PackedBatch:
    """A batch on the device, as stored: bit-packed planes, int32 policy, float32 value."""

    planes: torch.Tensor  # (batch, packed_bytes) uint8
    policy: torch.Tensor  # (batch,) int32
    value: torch.Tensor  # (batch,) float32

    @staticmethod
    def empty(
        batch: int, geometry: Geometry, device: torch.device, *, pin: bool = False
    ) -> PackedBatch:
        def new(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
            return torch.empty(shape, dtype=dtype, device=device, pin_memory=pin)

        return PackedBatch(
            new((batch, geometry.packed_bytes), torch.uint8),
            new((batch,), torch.int32),
            new((batch,), torch.float32),
        )

    @staticmethod
    def from_host(host: HostBatch) -> PackedBatch:
        """Tensors sharing ``host``'s memory (no copy)."""
        return PackedBatch(
            torch.from_numpy(host.planes),
            torch.from_numpy(host.policy),
            torch.from_numpy(host.value),
        )

    def copy_(self, other: PackedBatch, *, non_blocking: bool = False) -> None:
        self.planes.copy_(other.planes, non_blocking=non_blocking)
        self.policy.copy_(other.policy, non_blocking=non_blocking)
        self.value.copy_(other.value, non_blocking=non_blocking)

    def host_view(self) -> HostBatch:
        """numpy views of host tensors (pinned or not)."""
        return HostBatch(self.planes.numpy(), self.policy.numpy(), self.value.numpy())


def unpack_planes(packed: torch.Tensor, geometry: Geometry, dtype: torch.dtype) -> torch.Tensor:
    """(batch, packed_bytes) uint8 -> (batch, planes, height, width) of 0/1 in ``dtype``.

    The inverse of ``np.packbits`` (big-endian bits). Each byte indexes a 256 x 8 table
    of its bits, already in ``dtype``: one gather writes the output, 2.5x faster on a
    CPU than shifting and converting. The table is built by device ops, so all of it
    can run inside a CUDA graph.
    """
    shifts = torch.arange(7, -1, -1, dtype=torch.int32, device=packed.device)
    table = (
        (torch.arange(256, dtype=torch.int32, device=packed.device)[:, None] >> shifts) & 1
    ).to(dtype)
    n = packed.shape[0]
    bits = table.index_select(0, packed.reshape(-1).int()).reshape(n, -1)
    flat = bits[:, : geometry.planes * geometry.cells]
    return flat.reshape(n, geometry.planes, geometry.height, geometry.width)


def cuda_event() -> torch.cuda.Event:
    return torch.cuda.Event()  # type: ignore[no-untyped-call]  # untyped in torch's stubs


def cuda_stream(device: torch.device) -> torch.cuda.Stream:
    return torch.cuda.Stream(device)  # type: ignore[no-untyped-call]


# --------------------------------------------------------------------------- choosing


@dataclass(frozen=True)
class TierChoice:
    tier: Tier
    why: str


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def choose_tier(
    requested: str,
    *,
    cuda: bool,
    window_bytes: int,
    gpu_budget: float | None,
    host_budget: float,
) -> TierChoice:
    """The fastest tier the window fits in (a pure function, so it is tested as one)."""
    size = f"window {_size(window_bytes)}"
    if requested != "auto":
        if requested not in ("resident", "pinned", "mmap"):
            raise ValueError(f"unknown loader tier {requested!r}")
        tier: Tier = requested  # type: ignore[assignment]
        return TierChoice(tier, f"hyper.loader = {requested} ({size})")
    if cuda:
        assert gpu_budget is not None
        if window_bytes <= gpu_budget:
            return TierChoice("resident", f"{size} fits the GPU budget {_size(gpu_budget)}")
        if window_bytes <= host_budget:
            return TierChoice(
                "pinned",
                f"{size} exceeds the GPU budget {_size(gpu_budget)}, "
                f"fits the host budget {_size(host_budget)}",
            )
        return TierChoice(
            "mmap",
            f"{size} exceeds the GPU budget {_size(gpu_budget)} and the host budget "
            f"{_size(host_budget)}",
        )
    # A copy in RAM would hold the window twice (the shards are in the page cache when
    # they fit) and delay the first step by the copy: 2 s for 0.9 GB on a VM here.
    return TierChoice("mmap", f"{size} read in place from the cache's shards (CPU device)")


def memory_budgets(
    device: torch.device, gpu_budget_gb: float | None, host_budget_gb: float | None
) -> tuple[float | None, float]:
    """(GPU budget or None off CUDA, host budget), in bytes."""
    gpu: float | None = None
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        gpu = gpu_budget_gb * GB if gpu_budget_gb else free * DEFAULT_BUDGET_FRACTION
    host = (
        host_budget_gb * GB if host_budget_gb else host_available_bytes() * DEFAULT_BUDGET_FRACTION
    )
    return gpu, host


# --------------------------------------------------------------------------- loaders


@dataclass(frozen=True)
class Shard:
    """Which slice of each step's global batch this process takes (one of ``world`` ranks)."""

    rank: int = 0
    world: int = 1


class Loader(Protocol):
    tier: Tier

    def get(self, step: int) -> PackedBatch:
        """The batch of ``step``; steps are asked for in order, one each, from the start step.

        The batch stays valid until the next call.
        """
        ...

    def close(self) -> None: ...


def open_loader(
    choice: TierChoice,
    window: Window,
    *,
    device: torch.device,
    batch: int,
    seed: int,
    start_step: int,
    stop_step: int,
    prefetch: int,
    shard: Shard | None = None,
) -> Loader:
    """The loader of ``choice``'s tier; ``batch`` rows a step (a rank's share under ``shard``)."""
    shard = shard or Shard()
    if choice.tier == "resident":
        return ResidentLoader(window, device=device, batch=batch, seed=seed, shard=shard)
    if choice.tier == "pinned":
        # The window itself stays pageable: only the batch slots it is gathered into are
        # pinned, and only they are copied to the device. Pinning the whole window would
        # take long and count against the driver's page-locked limit for nothing.
        host = _host_window(window)

        def take(indices: IntArray, out: HostBatch) -> None:
            # mode="clip" lets numpy write straight into `out` (indices are in range).
            np.take(host.planes, indices, axis=0, out=out.planes, mode="clip")
            np.take(host.policy, indices, out=out.policy, mode="clip")
            np.take(host.value, indices, out=out.value, mode="clip")

        return PrefetchLoader(
            "pinned",
            take,
            window,
            device=device,
            batch=batch,
            seed=seed,
            start_step=start_step,
            stop_step=stop_step,
            prefetch=prefetch,
            shard=shard,
        )
    pool = ThreadPoolExecutor(MMAP_THREADS, thread_name_prefix="mmap-gather")

    def gather(indices: IntArray, out: HostBatch) -> None:
        window.gather(indices, out, pool)

    return PrefetchLoader(
        "mmap",
        gather,
        window,
        device=device,
        batch=batch,
        seed=seed,
        start_step=start_step,
        stop_step=stop_step,
        prefetch=prefetch,
        on_close=pool.shutdown,
        shard=shard,
    )


def _host_window(window: Window) -> HostBatch:
    host = HostBatch.empty(window.size, window.geometry)
    window.materialize(host)
    return host


class ResidentLoader:
    """The window on the device; each batch gathered there by the step's indices."""

    tier: Tier = "resident"

    def __init__(
        self,
        window: Window,
        *,
        device: torch.device,
        batch: int,
        seed: int,
        shard: Shard | None = None,
    ) -> None:
        self._device = _with_index(device)
        self._shard = shard or Shard()
        self._batch = batch
        self._seed = seed
        self._size = window.size
        if device.type == "cpu":
            self._data = PackedBatch.from_host(_host_window(window))
        else:
            self._data = PackedBatch.empty(window.size, window.geometry, device)
            # Through a pinned staging buffer, a slice at a time: the host never holds
            # the whole window twice.
            rows = min(STAGING_ROWS, max(1, window.size))
            staging = PackedBatch.empty(rows, window.geometry, torch.device("cpu"), pin=True)
            for a in range(0, window.size, STAGING_ROWS):
                b = min(window.size, a + STAGING_ROWS)
                window.materialize(staging.host_view(), a, b)
                part = PackedBatch(
                    staging.planes[: b - a], staging.policy[: b - a], staging.value[: b - a]
                )
                PackedBatch(
                    self._data.planes[a:b], self._data.policy[a:b], self._data.value[a:b]
                ).copy_(part)
            torch.cuda.synchronize(device)
        # Pinned index buffers, reused round-robin once their copy has completed.
        self._ring: list[tuple[torch.Tensor, torch.cuda.Event | None]] = []
        if device.type == "cuda":
            self._ring = [
                (torch.empty(batch, dtype=torch.int64, pin_memory=True), None)
                for _ in range(INDEX_RING)
            ]
        self._calls = 0

    def _indices(self, step: int) -> torch.Tensor:
        indices = shard_indices(
            self._seed, step, self._size, self._batch, self._shard.rank, self._shard.world
        )
        if self._device.type == "cpu":
            return torch.from_numpy(indices)
        slot = self._calls % INDEX_RING
        self._calls += 1
        pinned, copied = self._ring[slot]
        if copied is not None:
            copied.synchronize()  # the copy out of this buffer has finished
        pinned.numpy()[:] = indices
        on_device = pinned.to(self._device, non_blocking=True)
        event = cuda_event()
        event.record()
        self._ring[slot] = (pinned, event)
        return on_device

    def get(self, step: int) -> PackedBatch:
        idx = self._indices(step)
        return PackedBatch(
            self._data.planes.index_select(0, idx),
            self._data.policy.index_select(0, idx),
            self._data.value.index_select(0, idx),
        )

    def close(self) -> None:
        pass


class _Slot:
    """One batch buffer of a PrefetchLoader: host (pinned on CUDA) and device tensors."""

    def __init__(self, batch: int, geometry: Geometry, device: torch.device) -> None:
        cuda = device.type == "cuda"
        self.host = PackedBatch.empty(batch, geometry, torch.device("cpu"), pin=cuda)
        self.host_np = self.host.host_view()
        self.device = PackedBatch.empty(batch, geometry, device) if cuda else self.host
        self.copied: torch.cuda.Event | None = None  # host -> device copy done
        self.released: torch.cuda.Event | None = None  # the step that used it is done


class PrefetchLoader:
    """A background thread fills batch slots ``prefetch`` steps ahead of the training loop.

    ``fill(indices, out)`` gathers the samples into a host slot (vectorised numpy); on
    CUDA the slot is then copied to the device on a side stream, and the training
    stream waits for that copy only (an event), never the host. A slot is refilled
    only after the step that used it has finished on the device.
    """

    def __init__(
        self,
        tier: Tier,
        fill: Callable[[IntArray, HostBatch], None],
        window: Window,
        *,
        device: torch.device,
        batch: int,
        seed: int,
        start_step: int,
        stop_step: int,
        prefetch: int,
        on_close: Callable[[], None] | None = None,
        shard: Shard | None = None,
    ) -> None:
        self.tier = tier
        self._shard = shard or Shard()
        self._fill = fill
        self._size = window.size
        self._device = _with_index(device)
        self._batch = batch
        self._seed = seed
        self._steps = range(start_step, stop_step)
        self._on_close = on_close
        self._free: queue.Queue[_Slot] = queue.Queue()
        self._ready: queue.Queue[tuple[int, _Slot] | BaseException] = queue.Queue()
        # prefetch slots being filled or waiting, one in use by the step, one of slack
        # for the step the device is still finishing.
        for _ in range(prefetch + 2):
            self._free.put(_Slot(batch, window.geometry, device))
        self._current: _Slot | None = None
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._produce, name=f"loader-{tier}", daemon=True)
        self._thread.start()

    def _take_free(self) -> _Slot | None:
        while not self._closing.is_set():
            try:
                return self._free.get(timeout=0.1)
            except queue.Empty:
                continue
        return None

    def _produce(self) -> None:
        try:
            cuda = self._device.type == "cuda"
            if cuda:
                torch.cuda.set_device(self._device)
            stream = cuda_stream(self._device) if cuda else None
            for step in self._steps:
                slot = self._take_free()
                if slot is None:
                    return
                if slot.released is not None:
                    slot.released.synchronize()
                rank, world = self._shard.rank, self._shard.world
                indices = shard_indices(self._seed, step, self._size, self._batch, rank, world)
                self._fill(indices, slot.host_np)
                if stream is not None:
                    with torch.cuda.stream(stream):
                        slot.device.copy_(slot.host, non_blocking=True)
                        slot.copied = cuda_event()
                        slot.copied.record(stream)
                self._ready.put((step, slot))
        except BaseException as e:  # handed to the training loop, which raises it
            self._ready.put(e)

    def get(self, step: int) -> PackedBatch:
        if self._current is not None:
            self._release(self._current)
            self._current = None
        item = self._ready.get()
        if isinstance(item, BaseException):
            raise RuntimeError(f"{self.tier} loader failed: {item}") from item
        got, slot = item
        if got != step:
            raise RuntimeError(f"{self.tier} loader: asked for step {step}, next is {got}")
        self._current = slot
        if slot.copied is not None:
            torch.cuda.current_stream(self._device).wait_event(slot.copied)
        return slot.device

    def _release(self, slot: _Slot) -> None:
        if self._device.type == "cuda":
            slot.released = cuda_event()
            slot.released.record(torch.cuda.current_stream(self._device))
        self._free.put(slot)

    def close(self) -> None:
        self._closing.set()
        self._thread.join()
        if self._on_close is not None:
            self._on_close()


def _with_index(device: torch.device) -> torch.device:
    # "cuda" means the current GPU of the thread that made the loader; its
    # producer thread must pin that one, not whatever is current there.
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device
