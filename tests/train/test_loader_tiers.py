"""Every loader tier yields exactly the batches a naive gather yields for the same seed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from ringd.train.cache import SampleCache
from ringd.train.data import HostBatch, Window, batch_indices
from ringd.train.encode import Geometry, Samples
from ringd.train.loader import TierChoice, choose_tier, open_loader, unpack_planes

GEOMETRY = Geometry("square8", 2, 23, 8, 8)
BATCH = 300  # more rows than one mmap gather task takes: the thread pool splits it
SEED = 11


@dataclass
class Reference:
    window: Window
    arrays: HostBatch  # the window's samples, concatenated in window order


def random_samples(rng: np.random.Generator, n: int) -> Samples:
    return Samples(
        rng.integers(0, 256, (n, GEOMETRY.packed_bytes), dtype=np.uint8),
        rng.integers(0, GEOMETRY.policy_size, n, dtype=np.int32),
        rng.choice(np.array([-1.0, 0.0, 1.0], np.float32), n),
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """A window over several shards, with gaps (games left out) and empty games."""
    cache = SampleCache(tmp_path_factory.mktemp("cache"), "square8_2p", "test", 1, GEOMETRY)
    rng = np.random.default_rng(0)
    games: list[tuple[bytes, Samples | None]] = []
    for g in range(80):
        n = int(rng.integers(0, 150)) if g % 9 else 0
        games.append((g.to_bytes(16, "big"), random_samples(rng, n) if g % 13 != 5 else None))
    with cache.locked():
        writer = cache.writer(shard_bytes=2000 * GEOMETRY.sample_bytes)
        for key, samples in games:
            writer.add(key, samples)
        writer.flush()
    assert len(cache.shard_ids()) >= 3
    chosen = [(k, s) for i, (k, s) in enumerate(games) if i % 7 != 3 and s is not None]
    entries = cache.lookup([k for k, _ in chosen])
    shards = {i: cache.open_shard(i) for i in cache.shard_ids()}
    window = Window.from_entries(GEOMETRY, [e for e in entries if e is not None], shards)
    arrays = HostBatch(
        np.concatenate([s.planes for _, s in chosen if s is not None]),
        np.concatenate([s.policy for _, s in chosen if s is not None]),
        np.concatenate([s.value for _, s in chosen if s is not None]),
    )
    assert window.size == len(arrays.policy) > 3 * BATCH
    return Reference(window, arrays)


def test_materialize_is_the_window_in_order(reference: Reference) -> None:
    out = HostBatch.empty(reference.window.size, GEOMETRY)
    reference.window.materialize(out)
    np.testing.assert_array_equal(out.planes, reference.arrays.planes)
    np.testing.assert_array_equal(out.policy, reference.arrays.policy)
    np.testing.assert_array_equal(out.value, reference.arrays.value)
    part = HostBatch.empty(500, GEOMETRY)
    reference.window.materialize(part, 1000, 1500)
    np.testing.assert_array_equal(part.planes, reference.arrays.planes[1000:1500])


@pytest.mark.parametrize("tier", ["resident", "pinned", "mmap"])
@pytest.mark.parametrize("start", [0, 7])
def test_every_tier_yields_the_naive_batches(reference: Reference, tier: str, start: int) -> None:
    steps = 12
    loader = open_loader(
        TierChoice(tier, "test"),  # type: ignore[arg-type]
        reference.window,
        device=torch.device("cpu"),
        batch=BATCH,
        seed=SEED,
        start_step=start,
        stop_step=start + steps,
        prefetch=2,
    )
    try:
        assert loader.tier == tier
        for step in range(start, start + steps):
            batch = loader.get(step)
            idx = batch_indices(SEED, step, reference.window.size, BATCH)
            assert batch.planes.dtype == torch.uint8 and batch.policy.dtype == torch.int32
            np.testing.assert_array_equal(batch.planes.numpy(), reference.arrays.planes[idx])
            np.testing.assert_array_equal(batch.policy.numpy(), reference.arrays.policy[idx])
            np.testing.assert_array_equal(batch.value.numpy(), reference.arrays.value[idx])
    finally:
        loader.close()


def test_a_prefetching_loader_refuses_steps_out_of_order(reference: Reference) -> None:
    loader = open_loader(
        TierChoice("pinned", "test"), reference.window, device=torch.device("cpu"),
        batch=8, seed=SEED, start_step=0, stop_step=5, prefetch=2,
    )  # fmt: skip
    try:
        loader.get(0)
        with pytest.raises(RuntimeError, match="asked for step 2"):
            loader.get(2)
    finally:
        loader.close()


def test_batch_indices_are_a_pure_function_of_seed_and_step() -> None:
    a = batch_indices(3, 10, 1000, 256)
    np.testing.assert_array_equal(a, batch_indices(3, 10, 1000, 256))
    assert not np.array_equal(a, batch_indices(3, 11, 1000, 256))
    assert not np.array_equal(a, batch_indices(4, 10, 1000, 256))
    assert a.dtype == np.int64 and a.min() >= 0 and a.max() < 1000
    # uniform over the window: every part of it is drawn
    many = np.concatenate([batch_indices(0, s, 50, 256) for s in range(20)])
    assert set(many.tolist()) == set(range(50))


def test_unpack_planes_inverts_packbits() -> None:
    rng = np.random.default_rng(1)
    for geometry in (GEOMETRY, Geometry("hex8", 3, 29, 9, 9), Geometry("x", 1, 3, 5, 5)):
        bits = rng.integers(0, 2, (17, geometry.planes, geometry.height, geometry.width), np.uint8)
        packed = np.packbits(bits.reshape(17, -1), axis=1)
        assert packed.shape[1] == geometry.packed_bytes
        out = unpack_planes(torch.from_numpy(packed), geometry, torch.float32)
        assert out.shape == bits.shape and out.dtype == torch.float32
        np.testing.assert_array_equal(out.numpy(), bits)


def test_choose_tier() -> None:
    gb = 1e9
    pick = choose_tier(
        "auto", cuda=True, window_bytes=int(2 * gb), gpu_budget=3 * gb, host_budget=9 * gb
    )
    assert pick.tier == "resident" and "fits the GPU budget 3.0 GB" in pick.why
    pick = choose_tier(
        "auto", cuda=True, window_bytes=int(5 * gb), gpu_budget=3 * gb, host_budget=9 * gb
    )
    assert pick.tier == "pinned" and "exceeds the GPU budget" in pick.why
    pick = choose_tier(
        "auto", cuda=True, window_bytes=int(12 * gb), gpu_budget=3 * gb, host_budget=9 * gb
    )
    assert pick.tier == "mmap"
    for window in (5, 12):  # on the CPU the shards are read in place, fitting RAM or not
        pick = choose_tier(
            "auto", cuda=False, window_bytes=int(window * gb), gpu_budget=None, host_budget=9 * gb
        )
        assert pick.tier == "mmap" and "CPU" in pick.why
    pick = choose_tier("pinned", cuda=False, window_bytes=1, gpu_budget=None, host_budget=0)
    assert pick.tier == "pinned" and "hyper.loader" in pick.why


def test_cache_files_stay_closed_to_writes(reference: Reference) -> None:
    shard = next(iter(reference.window.shards.values()))
    with pytest.raises(ValueError):
        shard.planes[0, 0] = 1  # memory-mapped read-only: no job can corrupt the cache
