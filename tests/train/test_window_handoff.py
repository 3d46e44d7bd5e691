"""The daemon hands a job its window as a spans file (issue 15): built from the ledger,
extended job to job, read by the trainer memory-mapped; a backlog over max_games trains
on the newest games; games under a site's own board alias are read back, not missing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from trainkit import TINY_HYPER, run_in_process

from ringd.cli.render import jobs_view
from ringd.ledger import Ledger
from ringd.records import Rules, game_key
from ringd.scan import scan
from ringd.service.jobs import _plan
from ringd.settings import TrainingSettings
from ringd.sim import write_corpus
from ringd.train.games import read_games
from ringd.train.job import read_spec
from ringd.train.prepare import window_spans
from ringd.train.protocol import ExitCode, JobFailed
from ringd.train.spans import SpansError, WindowSpans, iter_spans, read_header
from ringd.train.spec import HoldOut, JobSpec, SpansFile
from ringd.windows import SPANS_FILE, build_window, window_size

CONFIG = "square8_2p"


def training(**window: int) -> TrainingSettings:
    return TrainingSettings.model_validate(
        {
            "devices": "cpu",
            "hyper": {**TINY_HYPER, "steps": 2},
            "holdout": {"fraction": 0.0},
            "window": {"min_games": 10, "max_games": 10_000, **window},
        }
    )


def corpus(root: Path, files: int, per_file: int, seed: int) -> None:
    write_corpus(root / f"batch{seed}", files, per_file, seed=seed, configs=[CONFIG], small=True)


def spans_of_ledger(db: Ledger, last: int, size: int) -> list[tuple[int, bytes, str, int, int]]:
    return [(s.seq, s.key, s.path, s.offset, s.length) for s in db.window(CONFIG, last, size)]


def test_a_spans_file_round_trips_and_is_extended_job_to_job(tmp_path: Path) -> None:
    root = tmp_path / "data"
    corpus(root, 3, 40, seed=1)
    with Ledger(tmp_path / "ledger.sqlite") as db:
        scan(db, [root], Rules())
        last = db.max_seq(CONFIG)
        first = build_window(db, CONFIG, last, 100, 0.0, tmp_path / "a.spans")
        assert (first.spans.count, first.extended, first.read) == (100, None, 100)
        as_read = [(s.seq, s.key, s.path, s.offset, s.length) for s in iter_spans(first.spans.path)]
        assert as_read == spans_of_ledger(db, last, 100)

        # The trainer's side: memory-mapped, checksum and count checked.
        mapped = WindowSpans.from_file(first.spans)
        assert [int(s) for s in mapped.seq] == [r[0] for r in as_read]
        assert [mapped.key(i) for i in range(len(mapped))] == [r[1] for r in as_read]
        assert [mapped.path(i) for i in range(len(mapped))] == [r[2] for r in as_read]
        read = read_games(mapped, range(len(mapped)))
        assert not read.missing and len(read.lines) == 100
        assert all(game_key(line) == mapped.key(i) for i, line in read.lines.items())
        with pytest.raises(SpansError, match="sha256"):
            WindowSpans.from_file(first.spans.model_copy(update={"sha256": "0" * 64}))
        with pytest.raises(SpansError, match="records"):
            WindowSpans.from_file(first.spans.model_copy(update={"count": 99}))

        # New games: the next window is the old file's tail plus only the new games.
        corpus(root, 1, 30, seed=2)
        scan(db, [root], Rules())
        last2 = db.max_seq(CONFIG)
        second = build_window(
            db, CONFIG, last2, 110, 0.0, tmp_path / "b.spans", [tmp_path / "a.spans"]
        )
        assert second.extended == str(tmp_path / "a.spans")
        assert (second.reused, second.read, second.spans.count) == (80, 30, 110)
        full = build_window(db, CONFIG, last2, 110, 0.0, tmp_path / "c.spans")
        assert full.extended is None and full.read == 110
        assert list(iter_spans(second.spans.path)) == list(iter_spans(full.spans.path))
        assert read_header(Path(second.spans.path)).meta["from_seq"] == full.start

        # A span moved since (a rewritten file): the old file is stale, the window is
        # read whole again.
        victim = next(p for p in root.rglob("*.jsonl") if "batch2" not in str(p))
        data = victim.read_bytes()
        victim.write_bytes(b"\n" + data)  # every game one byte further on
        version = db.spans_version(CONFIG)
        scan(db, [root], Rules())
        assert db.spans_version(CONFIG) > version
        third = build_window(
            db, CONFIG, last2, 110, 0.0, tmp_path / "d.spans", [tmp_path / "b.spans"]
        )
        assert third.extended is None
        assert [(s.seq, s.key, s.path, s.offset) for s in iter_spans(third.spans.path)] == [
            r[:4] for r in spans_of_ledger(db, last2, 110)
        ]


def first_job(tmp_path: Path, *, files: int, per_file: int, seed: int) -> JobSpec:
    """The spec the daemon writes for the first job of a fresh corpus under tmp_path."""
    root = tmp_path / "data"
    corpus(root, files, per_file, seed=seed)
    state = tmp_path / "var"
    with Ledger(state / "ledger.sqlite") as db:
        scan(db, [root], Rules())
        plan = _plan(db, CONFIG, training(), False, None, state, "cpu")
    assert plan is not None
    return plan[1]


def test_the_daemon_writes_a_spans_file_the_trainer_trains_on(tmp_path: Path) -> None:
    spec = first_job(tmp_path, files=2, per_file=30, seed=3)
    assert spec.spans is not None and spec.spans.count == 60 and not spec.games
    on_disk = read_spec(Path(spec.output_dir) / "spec.json")
    assert on_disk == spec and (Path(spec.output_dir) / SPANS_FILE).is_file()
    # the spec's size does not grow with the window
    assert len((Path(spec.output_dir) / "spec.json").read_bytes()) < 3000
    code, captured = run_in_process(Path(spec.output_dir) / "spec.json")
    assert code == ExitCode.OK, captured.all()
    start = captured.one("start")
    assert (start["games"], start["usable_games"], start["missing_games"]) == (60, 60, 0)
    assert start["skipped_games"] == 0 and start["new_games"] == 60


def test_a_spans_file_listing_a_held_out_game_or_missing_is_refused(tmp_path: Path) -> None:
    spec = first_job(tmp_path, files=1, per_file=40, seed=4)
    with pytest.raises(JobFailed) as refused:
        window_spans(spec.model_copy(update={"holdout": HoldOut(fraction=0.5)}))
    assert refused.value.code == ExitCode.BAD_SPEC and "held-out" in refused.value.message
    assert spec.spans is not None
    tampered = spec.spans.model_copy(update={"path": str(tmp_path / "gone.spans")})
    with pytest.raises(JobFailed) as missing:
        window_spans(spec.model_copy(update={"spans": tampered}))
    assert missing.value.code == ExitCode.BAD_SPEC


def test_a_backlog_over_max_games_trains_on_the_newest_and_reports_the_rest(
    tmp_path: Path,
) -> None:
    assert window_size(5000, 300, min_games=10, max_games=120, alpha=0.75, beta=0.4).skipped == 180
    root = tmp_path / "data"
    corpus(root, 3, 100, seed=5)  # 300 new games, a window of at most 120
    state = tmp_path / "var"
    with Ledger(state / "ledger.sqlite") as db:
        scan(db, [root], Rules())
        last = db.max_seq(CONFIG)
        plan = _plan(db, CONFIG, training(max_games=120), False, None, state, "cpu")
        assert plan is not None
        job, spec = plan
        assert (job.first_seq, job.last_seq, job.games, job.skipped) == (1, last, 300, 180)
        assert spec.spans is not None and spec.spans.count == 120 and spec.skipped_games == 180
        newest = [s.seq for s in db.window(CONFIG, last, 120)]
        assert [s.seq for s in iter_spans(spec.spans.path)] == newest
        rows = db.jobs()
    code, captured = run_in_process(Path(spec.output_dir) / "spec.json")
    assert code == ExitCode.OK, captured.all()
    start = captured.one("start")
    # the steps follow the new games inside the window: all 120 of them
    assert (start["games"], start["new_games"], start["skipped_games"]) == (120, 120, 180)
    assert start["new_samples"] == start["samples"]
    view = jobs_view([{**_asdict(r), "progress": None} for r in rows])
    assert "180 older skipped" in _render(view)


def test_games_under_a_sites_own_board_alias_are_not_missing(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    lines = []
    for i in range(12):
        rec = {
            "board_type": "sqr8",  # the site's own name for square8
            "num_players": 2,
            "winner": 1,
            "moves": [{"type": "place_ring", "player": 1, "to": {"x": i % 8, "y": i // 8}}],
        }
        lines.append(json.dumps(rec).encode() + b"\n")
    (root / "site.jsonl").write_bytes(b"".join(lines))
    aliases = {"sqr8": "square8"}
    state = tmp_path / "var"
    with Ledger(state / "ledger.sqlite") as db:
        scan(db, [root], Rules(aliases=aliases))
        assert db.total(CONFIG) == 12
        plan = _plan(db, CONFIG, training(), False, None, state, "cpu", aliases)
    assert plan is not None
    spec = plan[1]
    assert spec.board_aliases == aliases
    spans = window_spans(spec)
    # keyed with the default aliases the lines name another config: every game missing
    assert len(read_games(spans, range(len(spans))).missing) == 12
    code, captured = run_in_process(Path(spec.output_dir) / "spec.json")
    assert code == ExitCode.OK, captured.all()
    start = captured.one("start")
    assert (start["games"], start["missing_games"], start["usable_games"]) == (12, 0, 12)


def test_a_spans_file_is_refused_when_it_is_not_whole(tmp_path: Path) -> None:
    root = tmp_path / "data"
    corpus(root, 1, 10, seed=6)
    with Ledger(tmp_path / "ledger.sqlite") as db:
        scan(db, [root], Rules())
        built = build_window(db, CONFIG, db.max_seq(CONFIG), 10, 0.0, tmp_path / "w.spans")
    path = Path(built.spans.path)
    data = path.read_bytes()
    path.write_bytes(data[:-7])
    with pytest.raises(SpansError):
        read_header(path)
    with pytest.raises(SpansError):
        WindowSpans.from_file(SpansFile(path=str(path), count=10, sha256=built.spans.sha256))


def _asdict(row: object) -> dict[str, object]:
    import dataclasses

    return dataclasses.asdict(row)  # type: ignore[call-overload]


def _render(view: object) -> str:
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(view)
    return console.export_text()


async def test_the_daemon_compacts_a_configs_cache_after_a_job(tmp_path: Path) -> None:
    from ringd.service.events import EventBus
    from ringd.service.jobs import JobRunner
    from ringd.service.metrics import Metrics
    from ringd.settings import Settings
    from ringd.train.encode import load_encoder
    from ringd.train.prepare import prepare_window

    root = tmp_path / "data"
    state = tmp_path / "var"
    encoder = load_encoder("grid")
    geometry = encoder.geometry("square8", 2)
    settings = training(min_games=40, max_games=40)
    with Ledger(state / "ledger.sqlite") as db:
        for seed in (7, 8, 9):  # three jobs of 40 new games: each window is its own games
            corpus(root, 1, 40, seed=seed)
            scan(db, [root], Rules())
            plan = _plan(db, CONFIG, settings, False, None, state, "cpu")
            assert plan is not None
            job, spec = plan
            prepared = prepare_window(spec, encoder, geometry, stop=lambda: False, workers=1)
            assert prepared.pin is not None
            prepared.pin.release()
            db.finish_job(job.id, "succeeded")
    cache = state / "samples" / CONFIG
    runner = JobRunner(
        Settings.model_validate({"state_dir": str(state), "training": {"devices": "cpu"}}),
        EventBus(),
        Metrics(),
    )
    try:
        await runner.measure_samples()
        before = runner.samples_bytes[CONFIG]
        await runner._compact(CONFIG, Path(spec.output_dir) / "spec.json", True, 0.25)
        after = runner.samples_bytes[CONFIG]
    finally:
        await runner.close()
    assert 0 < after < before / 2  # two windows of three dropped
    manifest = json.loads((cache / f"grid-v{encoder.version}" / "index.json").read_text())
    assert [s["games"] for s in manifest["shards"]] == [40]
