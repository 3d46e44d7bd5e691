"""The sample cache: each game encoded once, ever; missing games never trained on."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from trainkit import SpecFactory

from ringd.train.data import HostBatch
from ringd.train.encode import Geometry, Samples
from ringd.train.grid import GridEncoder
from ringd.train.job import read_spec
from ringd.train.prepare import Prepared, prepare_window
from ringd.train.protocol import ExitCode, JobFailed


class CountingEncoder(GridEncoder):
    """The grid encoder, counting the games it is asked to encode."""

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, record: Mapping[str, Any], geometry: Geometry) -> Samples:
        self.calls += 1
        return super().encode(record, geometry)


def prepare(
    spec: Path,
    encoder: GridEncoder,
    *,
    workers: int = 1,
    stop: Callable[[], bool] = lambda: False,
) -> Prepared:
    job = read_spec(spec)
    return prepare_window(
        job, encoder, encoder.geometry(job.board, job.players), stop=stop, workers=workers
    )


def window_arrays(prepared: Prepared) -> HostBatch:
    out = HostBatch.empty(prepared.window.size, prepared.window.geometry)
    prepared.window.materialize(out)
    return out


def encode_directly(games: list[dict[str, Any]]) -> Samples:
    encoder = GridEncoder()
    parts = []
    for g in games:
        with open(g["path"], "rb") as f:
            f.seek(g["offset"])
            record = json.loads(f.read(g["length"]))
        parts.append(encoder.encode(record, encoder.geometry("square8", 2)))
    return Samples(
        np.concatenate([p.planes for p in parts]),
        np.concatenate([p.policy for p in parts]),
        np.concatenate([p.value for p in parts]),
    )


def assert_window_is(prepared: Prepared, games: list[dict[str, Any]]) -> None:
    got, expected = window_arrays(prepared), encode_directly(games)
    np.testing.assert_array_equal(got.planes, expected.planes)
    np.testing.assert_array_equal(got.policy, expected.policy)
    np.testing.assert_array_equal(got.value, expected.value)


def test_each_game_is_encoded_once(
    square8_corpus: list[dict[str, Any]], make_spec: SpecFactory
) -> None:
    games = square8_corpus
    encoder = CountingEncoder()
    first = prepare(make_spec(games[:80], job_id="a"), encoder)
    assert (first.encoded, first.cached, encoder.calls) == (80, 0, 80)
    assert_window_is(first, games[:80])

    # The next job's window overlaps: only its 40 new games are encoded.
    second = prepare(make_spec(games[40:], job_id="b"), encoder)
    assert (second.encoded, second.cached, encoder.calls) == (40, 40, 120)
    assert_window_is(second, games[40:])

    again = prepare(make_spec(games, job_id="c"), encoder)
    assert (again.encoded, again.cached, encoder.calls) == (0, 120, 120)
    assert_window_is(again, games)
    assert again.window.size == len(window_arrays(again).policy)
    # new_from_seq splits the window: steps follow the new games' samples only
    new = [g for g in games if g["seq"] >= games[60]["seq"]]
    assert again.new_games == len(new)
    assert again.new_samples == len(encode_directly(new).policy)
    assert (again.seq_first, again.seq_last) == (games[0]["seq"], games[-1]["seq"])


def test_a_process_pool_encodes_the_same_samples(
    square8_corpus: list[dict[str, Any]], make_spec: SpecFactory, tmp_path: Path
) -> None:
    pooled = prepare(
        make_spec(square8_corpus, samples_dir=str(tmp_path / "pooled")), GridEncoder(), workers=2
    )
    assert pooled.encoded == len(square8_corpus)
    assert_window_is(pooled, square8_corpus)


def test_unreadable_or_changed_games_are_missing_never_trained(
    square8_corpus: list[dict[str, Any]], make_spec: SpecFactory, tmp_path: Path
) -> None:
    games = [dict(g) for g in square8_corpus[:10]]
    games[1]["key"] = games[2]["key"]  # the bytes at the span are another game
    games[3]["path"] = str(tmp_path / "gone.jsonl")
    games[5]["offset"] = 10**9  # past the end: a truncated file
    encoder = CountingEncoder()
    prepared = prepare(make_spec(games, job_id="a"), encoder)
    reasons = {m.seq: m.reason for m in prepared.missing}
    assert set(reasons) == {games[1]["seq"], games[3]["seq"], games[5]["seq"]}
    assert reasons[games[1]["seq"]].startswith("key mismatch")
    assert reasons[games[3]["seq"]].startswith("unreadable file")
    assert reasons[games[5]["seq"]].startswith("short read")
    good = [g for i, g in enumerate(square8_corpus[:10]) if i not in (1, 3, 5)]
    assert_window_is(prepared, good)
    assert encoder.calls == 7

    # Missing games are not cached: once readable again they are encoded.
    fixed = prepare(make_spec(square8_corpus[:10], job_id="b"), encoder)
    assert (fixed.encoded, fixed.missing) == (3, [])
    assert_window_is(fixed, square8_corpus[:10])


def test_cached_games_are_not_read_again(make_spec: SpecFactory, tmp_path: Path) -> None:
    from trainkit import spans_of, write_games

    path = write_games(tmp_path / "g.jsonl", "square8_2p", 6, seed=1)
    games = spans_of([path])
    expected = encode_directly(games)
    first = prepare(make_spec(games, job_id="a"), GridEncoder())
    path.unlink()  # the file is gone, but the cache holds these very games (same keys)
    second = prepare(make_spec(games, job_id="b"), GridEncoder())
    assert (second.cached, second.missing) == (6, [])
    np.testing.assert_array_equal(window_arrays(second).policy, expected.policy)
    assert first.window.size == second.window.size


def test_rejected_games_are_remembered(make_spec: SpecFactory, tmp_path: Path) -> None:
    from trainkit import spans_of, write_games

    path = write_games(tmp_path / "g.jsonl", "square8_2p", 3, seed=2)
    bad = {
        "boardType": "square8",
        "numPlayers": 2,
        "moves": [{"type": "move_stack", "player": 1, "to": {"x": 9, "y": 9}}],
    }
    with open(path, "ab") as f:
        f.write(json.dumps(bad).encode() + b"\n")
    games = spans_of([path])
    encoder = CountingEncoder()
    first = prepare(make_spec(games, job_id="a"), encoder)
    assert [seq for seq in (games[i]["seq"] for i, _ in first.rejected)] == [games[3]["seq"]]
    assert "off the square8 board" in first.rejected[0][1]
    second = prepare(make_spec(games, job_id="b"), encoder)
    assert encoder.calls == 4  # the bad game was not encoded again
    assert len(second.rejected) == 1
    assert_window_is(second, games[:3])


def test_interrupted_encoding_keeps_its_progress(
    square8_corpus: list[dict[str, Any]], make_spec: SpecFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ringd.train.prepare as prepare_module

    monkeypatch.setattr(prepare_module, "CHUNK_GAMES", 4)
    encoder = CountingEncoder()
    with pytest.raises(JobFailed) as failed:
        prepare(make_spec(square8_corpus, job_id="a"), encoder, stop=lambda: encoder.calls >= 20)
    assert failed.value.code == ExitCode.INTERRUPTED
    done = encoder.calls
    assert 20 <= done < len(square8_corpus)
    resumed = prepare(make_spec(square8_corpus, job_id="b"), encoder)
    assert resumed.cached == done and resumed.encoded == len(square8_corpus) - done
    assert_window_is(resumed, square8_corpus)


def test_leftovers_of_a_crashed_writer_are_ignored(
    square8_corpus: list[dict[str, Any]], make_spec: SpecFactory, tmp_path: Path
) -> None:
    prepare(make_spec(square8_corpus[:5], job_id="a"), GridEncoder())
    folder = tmp_path / "samples" / "square8_2p" / f"grid-v{GridEncoder.version}"
    for part in ("planes", "policy", "value", "games"):  # shard 2, never listed
        (folder / f"000002.{part}.npy").write_bytes(b"torn write")
    later = prepare(make_spec(square8_corpus[:10], job_id="b"), GridEncoder())
    assert later.encoded == 5
    assert_window_is(later, square8_corpus[:10])
    manifest = json.loads((folder / "index.json").read_text())
    assert [s["id"] for s in manifest["shards"]] == [1, 2]


def test_a_site_encoder_gets_its_own_cache(
    square8_corpus: list[dict[str, Any]], make_spec: SpecFactory, tmp_path: Path
) -> None:
    from trainkit_plugin import SiteEncoder

    games = [g for g in square8_corpus if _is_camel(g)][:5]
    encoder = SiteEncoder()
    job = read_spec(make_spec(games, encoder="site"))
    prepared = prepare_window(
        job, encoder, encoder.geometry("square8", 2), stop=lambda: False, workers=1
    )
    assert prepared.encoded == 5 and prepared.window.geometry.planes == 1
    assert (tmp_path / "samples" / "square8_2p" / "site-v3" / "index.json").is_file()
    policy = window_arrays(prepared).policy
    assert len(policy) == prepared.window.size > 0 and policy.max() <= 64


def _is_camel(game: dict[str, Any]) -> bool:
    with open(game["path"], "rb") as f:
        f.seek(game["offset"])
        return b'"boardType"' in f.read(200)


def test_compaction_bounds_the_cache_and_never_removes_a_pinned_shard(
    square8_corpus: list[dict[str, Any]], make_spec: SpecFactory, tmp_path: Path
) -> None:
    from ringd.train.cache import SampleCache
    from ringd.train.compact import compact

    games = square8_corpus
    encoder = CountingEncoder()
    geometry = encoder.geometry("square8", 2)
    cache = SampleCache(tmp_path / "samples", "square8_2p", "grid", GridEncoder.version, geometry)
    finished = prepare(make_spec(games[:40], job_id="a"), encoder)  # shard 1: games 0..39
    assert finished.pin is not None
    finished.pin.release()  # job a ended (its process exited)
    running = prepare(make_spec(games[30:70], job_id="b"), encoder)  # shard 2: 40..69
    assert running.pin is not None and cache.pinned() == {1, 2}  # job b still "runs"
    latest = prepare(make_spec(games[60:], job_id="c"), encoder)  # shard 3: 70..119
    assert latest.pin is not None
    latest.pin.release()
    assert cache.shard_ids() == [1, 2, 3]
    keep = np.frombuffer(b"".join(bytes.fromhex(g["key"]) for g in games[60:]), "V16")

    # A pin left by a job that died (no lock held) protects nothing: it is removed.
    stale = cache.folder / "pins" / "square8_2p-gone-999999-1.pin"
    stale.write_text(json.dumps({"pid": 999999, "shards": [3]}))

    report = compact(cache, keep, margin=0.0)
    assert report.pinned == [1, 2] and not stale.exists()
    assert report.dropped == [] and report.rewritten == []  # only pinned shards hold dead games
    assert cache.shard_ids() == [1, 2, 3]
    assert_window_is(running, games[30:70])  # job b's window reads as before

    running.pin.release()  # job b ends
    report = compact(cache, keep, margin=0.0)
    assert report.dropped == [1] and report.rewritten == [2] and report.pinned == []
    assert report.samples_after == report.kept_samples < report.samples_before
    assert report.bytes_after < report.bytes_before
    assert sorted(cache.shard_ids()) == [3, 4]  # ids are never reused
    assert not (cache.folder / "000001.planes.npy").exists()
    assert not (cache.folder / "000002.games.npy").exists()
    # The window's games are all still cached, with the same samples.
    again = prepare(make_spec(games[60:], job_id="d"), encoder)
    assert (again.cached, again.encoded, encoder.calls) == (60, 0, 120)
    assert_window_is(again, games[60:])


def test_compaction_keeps_a_margin_over_the_window(
    square8_corpus: list[dict[str, Any]], make_spec: SpecFactory, tmp_path: Path
) -> None:
    from ringd.train.cache import SampleCache
    from ringd.train.compact import compact

    games = square8_corpus
    encoder = GridEncoder()
    geometry = encoder.geometry("square8", 2)
    cache = SampleCache(tmp_path / "samples", "square8_2p", "grid", GridEncoder.version, geometry)
    for n, start in enumerate(range(0, 120, 10)):  # twelve jobs, a shard of 10 games each
        done = prepare(make_spec(games[max(0, start - 30) : start + 10], job_id=f"j{n}"), encoder)
        assert done.pin is not None
        done.pin.release()
    window = games[60:]
    keep = np.frombuffer(b"".join(bytes.fromhex(g["key"]) for g in window), "V16")
    report = compact(cache, keep, margin=0.25)
    assert report.dropped == [1, 2, 3, 4, 5, 6]  # nothing of the window: deleted whole
    assert report.samples_after <= 1.25 * report.kept_samples
    assert report.samples_before > 1.25 * report.kept_samples
    assert_window_is(prepare(make_spec(window, job_id="next"), encoder), window)
