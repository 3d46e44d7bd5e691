"""Cost that stays flat as the history grows (issue 15): the ledger at 20 M games, a job
start with a 500,000-game window, and the sample cache after 20 jobs.

    .venv/bin/python bench/scale.py [--dir bench/out/scale] [--parts ledger,restart,upgrade,jobstart,cache]
        [--fill 20000000] [--new-games 20000] [--old-tree PATH]

Corpora are `ringd sim --small` corpora (about 290 bytes a game), generated once under
DIR/corpus and reused: the measured batch m0 (`--corpus 300:10000 --seed 1000`, 3 M
games) and the fill batches f1..f8 (`--corpus 250:10000 --seed N`, 2.5 M each).

ledger    `ringd scan --json` (the whole command, as an operator runs it) indexing m0 into
          an empty ledger, and into copies of a ledger filled to 10 M and to 20 M games,
          three rounds with the sizes alternating, medians (the fill itself is timed
          too, batch by batch); games/s by wall time and by CPU seconds of the command;
          bytes per game. Target: the 20 M rate >= 0.8x empty,
          <= 100 bytes a game.
restart   the 20 M ledger: `ringd run` restart to READY, GET /v1/status, `ringd status
          --json` and `ringd scan --json` of the unchanged tree (targets: <= 2 s).
upgrade   a copy of the 20 M ledger turned back into schema 6 (the version before):
          opening it (the migration to schema 7 and VACUUM) and its first commit (every
          epoch's key filter made from the index), as the first start of this version.
jobstart  a copy of the 20 M ledger; the config with the most games; a 500,000-game
          window whose newest --new-games games are new (not yet in the sample cache,
          which holds the rest). Daemon seconds to plan the job and write its spec
          (all of `_plan`; first and next job alternating, medians of 3):
          today's JSON spec (the window inline, as ringd before issue 15 built it) and
          the spans file (first job: from the ledger; next job: the previous job's file
          extended); spec bytes; the trainer's seconds from its start to its first step
          (`python -m ringd.train SPEC`, its `start` event), with the spans file and,
          with --old-tree (a checkout of ringd before issue 15), today's trainer on
          today's spec; beside the seconds that encoding only the new games takes.
cache     20 jobs of square8_2p, 5,000 new games each, window 5,000..20,000 games:
          the sample cache's bytes after each job, with compaction (margin 25%) and
          without.

Results are printed and written to DIR/results.json. Every number is measured at the
size stated beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from _common import machine, table
from _daemon import BenchDaemon
from ringd.cli import client
from ringd.fsutil import tree_bytes, write_bytes_atomically
from ringd.ledger import Cursor, GameRow, Ledger
from ringd.records import Rules
from ringd.scan import scan
from ringd.service.jobs import _plan
from ringd.settings import TrainingSettings
from ringd.sim import write_corpus
from ringd.train.holdout import bucket_of, held_out_buckets
from ringd.train.spec import GameSpan, HoldOut, JobSpec
from ringd.windows import SPANS_FILE, build_window

REPO = Path(__file__).resolve().parents[1]
MEASURED = ("m0", 300, 10_000, 1000)  # name, files, games per file, seed
FILLS = [(f"f{n}", 250, 10_000, n) for n in range(1, 9)]
TINY = {"batch_size": 32, "channels": 8, "blocks": 1, "steps": 1, "log_every": 1}


def out(results: dict[str, Any], dir_: Path) -> None:
    (dir_ / "results.json").write_text(json.dumps(results, indent=1, default=str))


def corpus(dir_: Path, name: str, files: int, per_file: int, seed: int) -> Path:
    root = dir_ / "corpus" / name
    marker = root / ".done"
    if not marker.exists():
        shutil.rmtree(root, ignore_errors=True)
        print(f"generating {files * per_file:,} small games in {root} ...", flush=True)
        write_corpus(root, files, per_file, seed=seed, small=True)
        marker.write_text(json.dumps([files, per_file, seed]))
    return root


@dataclass
class Ran:
    wall: float
    cpu: float
    games: int
    new: int

    @property
    def rate(self) -> float:
        return self.new / self.wall

    @property
    def cpu_rate(self) -> float:
        return self.new / self.cpu


def config_file(folder: Path, roots: list[Path]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "ringd.yaml"
    path.write_text(
        f"state_dir: {folder / 'var'}\nwatch: {{roots: [{', '.join(str(r) for r in roots)}]}}\n"
        "training: {enabled: false}\nconfigs: {}\n"
    )
    return path


def ringd_scan(folder: Path, roots: list[Path]) -> Ran:
    """`ringd scan --json` over `roots` into folder/var/ledger.sqlite: wall and CPU."""
    cfg = config_file(folder, roots)
    before = (folder / "var" / "ledger.sqlite").exists() and _games(folder)
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "ringd.cli", "scan", "--config", str(cfg), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    total = json.loads(done.stdout)["total_games"]
    return Ran(wall, cpu, total, total - int(before or 0))


def _games(folder: Path) -> int:
    con = sqlite3.connect(folder / "var" / "ledger.sqlite")
    try:
        return int(con.execute("SELECT COALESCE(SUM(total), 0) FROM configs").fetchone()[0])
    finally:
        con.close()


def copy_ledger(src: Path, dst: Path) -> None:
    shutil.rmtree(dst, ignore_errors=True)
    (dst / "var").mkdir(parents=True)
    for name in ("ledger.sqlite", "ledger.sqlite-wal"):
        if (src / "var" / name).exists():
            shutil.copyfile(src / "var" / name, dst / "var" / name)


def part_ledger(dir_: Path, fill_to: int, results: dict[str, Any], rounds: int = 3) -> None:
    m0 = corpus(dir_, *MEASURED)
    runs = dir_ / "runs"
    fill = runs / "fill"
    half = runs / "half"  # the fill ledger as it was at fill_to / 2 games
    done_marker = fill / "fill.json"
    if not done_marker.exists():
        results.pop("ledger", None)  # a new fill: measure everything again
        shutil.rmtree(half, ignore_errors=True)
    res = results.setdefault("ledger", {})
    fills_done: list[dict[str, Any]] = (
        json.loads(done_marker.read_text()) if done_marker.exists() else []
    )
    res["fill"] = fills_done
    roots: list[Path] = []
    for name, files, per_file, seed in FILLS:
        have = _games(fill) if (fill / "var" / "ledger.sqlite").exists() else 0
        if have >= fill_to:
            break
        roots.append(corpus(dir_, name, files, per_file, seed))
        if any(f["batch"] == name for f in fills_done):
            continue
        print(f"filling: {name} into a ledger of {have:,} games ...", flush=True)
        ran = ringd_scan(fill, roots)
        if ran.games >= fill_to // 2 and not half.exists():
            copy_ledger(fill, half)
        fills_done.append({"batch": name, "before": have, **vars(ran)})
        done_marker.write_text(json.dumps(fills_done))
        out(results, dir_)
    total = _games(fill)
    res["filled"] = total
    res["bytes_per_game"] = (fill / "var" / "ledger.sqlite").stat().st_size / total
    # The machine is shared and a run takes about a minute: each size is measured
    # `rounds` times, the sizes alternating, and the medians compared.
    bases = [("empty", None), (f"{_games(half):,}", half), (f"{total:,}", fill)]
    ran_at: dict[str, list[Ran]] = {label: [] for label, _ in bases}
    for round_ in range(rounds):
        for label, base in bases:
            print(f"round {round_ + 1}: indexing m0 (3 M games) into {label} ...", flush=True)
            at = runs / "measure"
            if base is None:
                shutil.rmtree(at, ignore_errors=True)
            else:
                copy_ledger(base, at)
            ran_at[label].append(ringd_scan(at, [m0]))
            if base is None:
                size = (at / "var" / "ledger.sqlite").stat().st_size
                res["empty_bytes_per_game"] = size / ran_at[label][-1].games
            shutil.rmtree(at, ignore_errors=True)
    res["runs"] = {label: [vars(r) for r in rs] for label, rs in ran_at.items()}
    medians = {
        label: Ran(
            statistics.median(r.wall for r in rs),
            statistics.median(r.cpu for r in rs),
            rs[0].games,
            rs[0].new,
        )
        for label, rs in ran_at.items()
    }
    res["medians"] = {label: vars(r) for label, r in medians.items()}
    out(results, dir_)
    base_run = medians["empty"]
    print(
        f"\ningest of 3,000,000 small games (m0) with `ringd scan --json`, median of "
        f"{rounds} alternating rounds; {machine()}\n"
        + table(
            [
                "into a ledger of",
                "wall s",
                "games/s",
                "CPU s",
                "games/CPU-s",
                "vs empty (wall, CPU)",
                "wall s, each round",
            ],
            [
                [
                    label,
                    f"{r.wall:.1f}",
                    f"{r.rate:,.0f}",
                    f"{r.cpu:.1f}",
                    f"{r.cpu_rate:,.0f}",
                    f"{r.rate / base_run.rate:.2f}x, {r.cpu_rate / base_run.cpu_rate:.2f}x",
                    ", ".join(f"{x.wall:.1f}" for x in ran_at[label]),
                ]
                for label, r in medians.items()
            ],
        )
    )
    print(
        f"bytes per game: {res['bytes_per_game']:.1f} at {total:,} games "
        f"(empty + m0: {res['empty_bytes_per_game']:.1f})"
    )
    print("fill, batch by batch:")
    for f in fills_done:
        print(
            f"  {f['batch']} into {f['before']:>12,}: {f['new'] / f['wall']:>8,.0f} games/s wall, "
            f"{f['new'] / f['cpu']:>8,.0f} per CPU-s"
        )


def part_restart(dir_: Path, results: dict[str, Any], runs_n: int = 3) -> None:
    fill = dir_ / "runs" / "fill"
    total = _games(fill)
    roots = [dir_ / "corpus" / name for name, *_ in FILLS if (dir_ / "corpus" / name).exists()]
    roots = [r for r in roots if _indexed(fill, r)]
    cfg = config_file(fill, roots)
    scans = []
    for _ in range(runs_n):
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "ringd.cli", "scan", "--config", str(cfg), "--json"],
            capture_output=True,
            check=True,
        )
        scans.append(time.perf_counter() - t0)
    daemon = BenchDaemon(dir_ / "runs" / "fill-daemon", roots, state_dir=fill / "var")
    ready, requests, commands = [], [], []
    try:
        for _ in range(runs_n):
            ready.append(daemon.start())
            for _ in range(20):
                t0 = time.perf_counter()
                client.get_json(daemon.socket, "/v1/status")
                requests.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "ringd.cli",
                    "status",
                    "--socket",
                    str(daemon.socket),
                    "--json",
                ],
                capture_output=True,
                check=True,
            )
            commands.append(time.perf_counter() - t0)
            assert daemon.status()["total_games"] == total
            daemon.stop()
    finally:
        daemon.stop()
    res = {
        "games": total,
        "files": sum(1 for r in roots for _ in r.rglob("*.jsonl")),
        "scan_s": statistics.median(scans),
        "ready_s": statistics.median(ready),
        "status_request_s": statistics.median(requests),
        "status_request_max_s": max(requests),
        "status_command_s": statistics.median(commands),
    }
    results["restart"] = res
    out(results, dir_)
    print(
        f"\nthe {total:,}-game ledger ({res['files']:,} files), median of {runs_n}:\n"
        + table(
            ["what", "s"],
            [
                ["`ringd scan --json`, unchanged tree", f"{res['scan_s']:.3f}"],
                ["`ringd run`: restart to READY", f"{res['ready_s']:.3f}"],
                ["GET /v1/status (median of 20 per start)", f"{res['status_request_s']:.4f}"],
                ["`ringd status --json`, whole command", f"{res['status_command_s']:.3f}"],
            ],
        )
    )


def part_upgrade(dir_: Path, results: dict[str, Any]) -> None:
    """The first start of this version on a schema 6 ledger of the fill's games: the
    migration to schema 7 (the games table reordered, the key index rebuilt, VACUUM),
    then the first commit (every epoch's key filter made from the index)."""
    fill = dir_ / "runs" / "fill"
    work = dir_ / "runs" / "upgrade"
    copy_ledger(fill, work)
    db = work / "var" / "ledger.sqlite"
    print("turning a copy of the fill ledger back into schema 6 ...", flush=True)
    con = sqlite3.connect(db, isolation_level=None)
    con.executescript(SCHEMA_6)
    con.close()
    t0 = time.perf_counter()
    with Ledger(db, writer=True) as ledger:
        opened = time.perf_counter() - t0
        file_id = ledger.track_file("/upgrade/new.jsonl", 1, 1)
        t1 = time.perf_counter()
        ledger.commit(
            file_id, Cursor(1, 1, 100, b"", 100, 0), [GameRow("hex8_2p", b"u" * 16, 0, 99, None)]
        )
        first = time.perf_counter() - t1
        games = ledger.game_count()
    res = {"games": games, "migrate_s": opened, "first_commit_s": first}
    results["upgrade"] = res
    out(results, dir_)
    shutil.rmtree(work, ignore_errors=True)
    print(
        f"\nupgrade of a {games:,}-game schema 6 ledger; {machine()}\n"
        + table(
            ["what", "s"],
            [
                ["open: migration to schema 7 and VACUUM", f"{opened:.1f}"],
                ["first commit: every epoch's key filter from the index", f"{first:.1f}"],
            ],
        )
    )


# A schema 6 games table (ringd before this version), rebuilt from a schema 7 one.
SCHEMA_6 = """
CREATE TABLE games6 (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, key BLOB NOT NULL, config_id INTEGER NOT NULL,
    file_id INTEGER NOT NULL, offset INTEGER NOT NULL, length INTEGER NOT NULL
);
INSERT INTO games6 SELECT seq, key, config_id, file_id, offset, length FROM games ORDER BY seq;
DROP TABLE games;
ALTER TABLE games6 RENAME TO games;
CREATE UNIQUE INDEX games_by_key ON games(key);
CREATE INDEX games_by_config ON games(config_id, seq);
DROP TABLE key_filters;
DELETE FROM meta WHERE name IN ('games_seq', 'key_rewrites', 'key_filter_format');
PRAGMA user_version = 6;
VACUUM;
"""


def _indexed(fill: Path, root: Path) -> bool:
    con = sqlite3.connect(fill / "var" / "ledger.sqlite")
    try:
        return bool(
            con.execute(
                "SELECT 1 FROM files WHERE path >= ? AND path < ? LIMIT 1",
                (str(root) + "/", str(root) + "0"),
            ).fetchone()
        )
    finally:
        con.close()


# -- job start ---------------------------------------------------------------------------


def training(window: int, **hyper: Any) -> TrainingSettings:
    return TrainingSettings.model_validate(
        {
            "devices": "cpu",
            "hyper": {**TINY, **hyper},
            "holdout": {"fraction": 0.0},
            "window": {"min_games": window, "max_games": window},
        }
    )


def old_plan(db: Ledger, config: str, size: int, first: int, last: int, folder: Path) -> int:
    """Today's (before issue 15) job spec: the window inline as JSON, built as its _plan
    built it (ledger window, held-out filter, GameSpan per game, pydantic, JSON, write)."""
    buckets = held_out_buckets(0.0)
    spans = [s for s in db.window(config, last, size) if bucket_of(s.key) >= buckets]
    board, players = config.rsplit("_", 1)
    spec = JobSpec(
        version=1,
        job_id="old",
        config=config,
        board=board,
        players=int(players[:-1]),
        games=[
            GameSpan(path=s.path, offset=s.offset, length=s.length, key=s.key.hex(), seq=s.seq)
            for s in spans
        ],
        new_from_seq=first,
        output_dir=str(folder),
        samples_dir=str(folder.parent / "samples"),
        device="cpu",
        seed=first,
        hyper=training(size).hyper,
        holdout=HoldOut(fraction=0.0),
    )
    data = spec.model_dump_json(indent=1).encode()
    folder.mkdir(parents=True, exist_ok=True)
    write_bytes_atomically(folder / "spec.json", data)
    return len(data)


def trainer_first_step(spec: Path, pythonpath: Path | None = None) -> float:
    """Seconds from `python -m ringd.train SPEC` to its `start` event (its first step)."""
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ringd.train", str(spec), "--workers", str(os.cpu_count() or 1)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=spec.parent,
    )
    assert proc.stdout is not None
    seconds = None
    for line in proc.stdout:
        event = json.loads(line)
        if event.get("event") == "start" and seconds is None:
            seconds = time.perf_counter() - t0
        if event.get("event") == "error":
            raise RuntimeError(f"{spec}: {event}")
    proc.wait()
    assert seconds is not None, f"{spec}: no start event"
    return seconds


@contextlib.contextmanager
def cache_as_is(samples: Path) -> Iterator[None]:
    """Put the sample cache back as it was (the runs' new games uncached again)."""
    saved = {p: p.read_bytes() for p in samples.rglob("index.json")}
    try:
        yield
    finally:
        for p, data in saved.items():
            p.write_bytes(data)
        for folder in {p.parent for p in saved}:
            listed = {s["id"] for s in json.loads((folder / "index.json").read_text())["shards"]}
            for f in folder.glob("*.npy"):
                if int(f.name.split(".")[0]) not in listed:
                    f.unlink()
            shutil.rmtree(folder / "pins", ignore_errors=True)


def part_jobstart(
    dir_: Path,
    results: dict[str, Any],
    window: int,
    new: int,
    old_tree: Path | None,
    repeats: int = 3,
) -> None:
    from ringd.train.encode import load_encoder
    from ringd.train.job import read_spec
    from ringd.train.prepare import prepare_window
    from ringd.train.spans import WindowSpans

    fill = dir_ / "runs" / "fill"
    work = dir_ / "runs" / "jobstart"
    state = work / "var"
    marker = work / "prepared.json"
    want = {"games": _games(fill), "window": window, "new": new}
    if not marker.exists() or json.loads(marker.read_text()) != want:
        print("copying the ledger for the job start ...", flush=True)
        copy_ledger(fill, work)
        shutil.rmtree(state / "samples", ignore_errors=True)
    with Ledger(state / "ledger.sqlite") as db:
        config = max(db.config_counts(), key=lambda c: c.total).name
        last = db.max_seq(config)
        prev_last = db.window_start(config, last, new) - 1  # the previous job's last game
        # The config's watermark: all but the newest `new` games trained.
        db._db.execute(
            "UPDATE configs SET trained_through = ?, trained_count = "
            "(SELECT COUNT(*) FROM games WHERE config_id = configs.id AND seq <= ?) WHERE name = ?",
            (prev_last, prev_last, config),
        )
        db._db.execute("DELETE FROM jobs")
        shutil.rmtree(state / "jobs", ignore_errors=True)
        # The previous job's window (for the extension) and the cache it left.
        prev_job = f"{config}-prev"
        prev_folder = state / "jobs" / prev_job
        prev_folder.mkdir(parents=True)
        db.create_job(prev_job, config, 1, prev_last, 0, False)
        db.finish_job(prev_job, "succeeded")
        built_prev = build_window(db, config, prev_last, window, 0.0, prev_folder / SPANS_FILE)
        if not marker.exists() or json.loads(marker.read_text()) != want:
            print(
                f"encoding the previous window ({built_prev.spans.count:,} games) into the "
                "sample cache, once ...",
                flush=True,
            )
            encoder = load_encoder("grid")
            board, players = config.rsplit("_", 1)
            geometry = encoder.geometry(board, int(players[:-1]))
            prev_spec = JobSpec(
                version=1,
                job_id=prev_job,
                config=config,
                board=board,
                players=int(players[:-1]),
                spans=built_prev.spans,
                new_from_seq=0,
                output_dir=str(prev_folder),
                samples_dir=str(state / "samples"),
            )
            t0 = time.perf_counter()
            prepared = prepare_window(prev_spec, encoder, geometry, stop=lambda: False)
            if prepared.pin is not None:
                prepared.pin.release()
            print(f"  {time.perf_counter() - t0:.0f} s", flush=True)
            marker.write_text(json.dumps(want))
        # Daemon: today's JSON spec.
        t0 = time.perf_counter()
        old_bytes = old_plan(db, config, window, prev_last + 1, last, work / "old")
        old_s = time.perf_counter() - t0
        # Daemon: the whole plan of a job (`_plan`: counts, held-out games, the spans
        # file, the spec), as a config's first job (no earlier spans file to extend: the
        # window read from the ledger) and as its next job (the previous file extended).
        # Alternating, medians.
        plans: dict[str, list[float]] = {"first": [], "next": []}
        aside = prev_folder / "aside.spans"
        for _ in range(repeats):
            for kind in ("first", "next"):
                if kind == "first":
                    (prev_folder / SPANS_FILE).rename(aside)
                    for stale in (state / "jobs").glob(f"*/{SPANS_FILE}"):
                        stale.unlink()
                t0 = time.perf_counter()
                planned = _plan(db, config, training(window), False, None, state, "cpu", {})
                plans[kind].append(time.perf_counter() - t0)
                if kind == "first":
                    aside.rename(prev_folder / SPANS_FILE)
                    assert planned is not None
                    Path(planned[1].spans.path).unlink()  # type: ignore[union-attr]
        full_s, plan_s = statistics.median(plans["first"]), statistics.median(plans["next"])
        assert planned is not None
        spec = planned[1]
        assert spec.spans is not None and spec.spans.count <= window
        spec_bytes = (Path(spec.output_dir) / "spec.json").stat().st_size
        spans_bytes = Path(spec.spans.path).stat().st_size
    spec_path = Path(spec.output_dir) / "spec.json"
    new_only = work / "new-only"
    shutil.rmtree(new_only, ignore_errors=True)
    new_only.mkdir()
    spans = WindowSpans.from_file(spec.spans)
    newest = [
        GameSpan(
            path=spans.path(i),
            offset=spans.offset(i),
            length=spans.length(i),
            key=spans.key(i).hex(),
            seq=int(spans.seq[i]),
        )
        for i in range(len(spans))
        if int(spans.seq[i]) > prev_last
    ]
    only = spec.model_copy(
        update={
            "spans": None,
            "games": newest,
            "samples_dir": str(new_only / "samples"),
            "output_dir": str(new_only / "job"),
        }
    )
    (new_only / "spec.json").write_text(only.model_dump_json())
    encoder = load_encoder("grid")
    geometry = encoder.geometry(spec.board, spec.players)
    encodes = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        prepare_window(read_spec(new_only / "spec.json"), encoder, geometry, stop=lambda: False)
        encodes.append(time.perf_counter() - t0)
        shutil.rmtree(new_only / "samples")
    encode_s = statistics.median(encodes)
    # The trainer, time to its first step (new games uncached each time).
    samples = state / "samples"
    old_spec = work / "old" / "spec.json"
    old_json = json.loads(old_spec.read_text())
    old_json.update(samples_dir=str(samples), output_dir=str(work / "old" / "job"))
    old_spec.write_text(json.dumps(old_json))
    # The machine is shared: the runs alternate, three rounds, medians.
    timings: dict[str, list[float]] = {"spans": [], "new_only": [], "json": [], "old": []}
    for _ in range(repeats):
        with cache_as_is(samples):
            timings["spans"].append(trainer_first_step(spec_path))
        with cache_as_is(new_only / "samples"):
            timings["new_only"].append(trainer_first_step(new_only / "spec.json"))
        shutil.rmtree(new_only / "samples", ignore_errors=True)
        shutil.rmtree(new_only / "job", ignore_errors=True)
        with cache_as_is(samples):
            timings["json"].append(trainer_first_step(old_spec))
        if old_tree is not None:
            with cache_as_is(samples):
                timings["old"].append(trainer_first_step(old_spec, old_tree / "daemon"))
        shutil.rmtree(work / "old" / "job", ignore_errors=True)
        shutil.rmtree(Path(spec.output_dir) / "tb", ignore_errors=True)
        for leftover in ("final.pt", "final.json", "resume.pt", "resume.json"):
            (Path(spec.output_dir) / leftover).unlink(missing_ok=True)
    first_step = statistics.median(timings["spans"])
    new_only_step = statistics.median(timings["new_only"])
    json_new_trainer = statistics.median(timings["json"])
    json_old_trainer = statistics.median(timings["old"]) if timings["old"] else None
    res = {
        "config": config,
        "window": spec.spans.count,
        "new_games": len(newest),
        "old_daemon_s": old_s,
        "old_spec_bytes": old_bytes,
        "first_job_daemon_s": full_s,
        "next_job_daemon_s": plan_s,
        "spec_bytes": spec_bytes,
        "spans_bytes": spans_bytes,
        "trainer_first_step_s": first_step,
        "trainer_json_spec_first_step_s": json_new_trainer,
        "old_trainer_json_spec_first_step_s": json_old_trainer,
        "trainer_new_games_only_first_step_s": new_only_step,
        "encode_new_games_only_s": encode_s,
        "runs": timings,
        "plan_runs": plans,
        "encode_runs": encodes,
    }
    results["jobstart"] = res
    out(results, dir_)
    print(
        f"\njob start: {config}, a {res['window']:,}-game window, {res['new_games']:,} new "
        f"games (the rest in the sample cache); {machine()}\n"
        + table(
            ["what", "daemon s", "spec bytes", "trainer s to first step"],
            [
                [
                    "today's JSON spec (window inline), today's trainer",
                    f"{old_s:.2f}",
                    f"{old_bytes:,}",
                    f"{json_old_trainer:.1f}" if json_old_trainer else "-",
                ],
                [
                    "today's JSON spec, this trainer",
                    "",
                    "",
                    f"{json_new_trainer:.1f}",
                ],
                [
                    "spans file, first job (the window read from the ledger)",
                    f"{full_s:.2f}",
                    f"{spans_bytes:,} (file)",
                    "",
                ],
                [
                    "spans file, next job (previous file extended)",
                    f"{plan_s:.2f}",
                    f"{spec_bytes:,}",
                    f"{first_step:.1f}",
                ],
                ["only the new games: encoding them (in process)", "", "", f"{encode_s:.1f}"],
                ["only the new games: the trainer", "", "", f"{new_only_step:.1f}"],
            ],
        )
    )
    print(f"first step / encoding the new games: {first_step / encode_s:.2f}x (target <= 2x)")


# -- the sample cache --------------------------------------------------------------------


def part_cache(
    dir_: Path, results: dict[str, Any], jobs: int = 20, per_job: int = 5000, divide: int = 1
) -> None:
    from ringd.train.compact import compact, kept_keys
    from ringd.train.encode import load_encoder
    from ringd.train.prepare import prepare_holdout, prepare_window

    per_job //= divide
    config = "square8_2p"
    root = dir_ / "corpus" / "cache"
    if not (root / ".done").exists():
        shutil.rmtree(root, ignore_errors=True)
        for i in range(jobs):
            write_corpus(
                root / f"b{i:02d}", 5, per_job // 5, seed=3000 + i, configs=[config], small=True
            )
        (root / ".done").write_text("x")
    encoder = load_encoder("grid")
    geometry = encoder.geometry("square8", 2)
    settings = TrainingSettings.model_validate(
        {
            "devices": "cpu",
            "hyper": TINY,
            "window": {"min_games": per_job, "max_games": 4 * per_job},
        }
    )
    out_rows: dict[str, dict[str, list[Any]]] = {}
    for mode in ("on", "off"):
        work = dir_ / "runs" / f"cache-{mode}"
        shutil.rmtree(work, ignore_errors=True)
        state = work / "var"
        sizes, plans = [], []
        with Ledger(state / "ledger.sqlite") as db:
            for i in range(jobs):
                scan(db, [root / f"b{n:02d}" for n in range(i + 1)], Rules())
                t0 = time.perf_counter()
                planned = _plan(db, config, settings, False, None, state, "cpu", {})
                plans.append(time.perf_counter() - t0)
                assert planned is not None
                job, spec = planned
                prepared = prepare_window(spec, encoder, geometry, stop=lambda: False)
                prepare_holdout(spec, encoder, geometry, stop=lambda: False)
                if prepared.pin is not None:
                    prepared.pin.release()
                db.finish_job(job.id, "succeeded")
                window_bytes = prepared.window.nbytes
                if mode == "on":
                    from ringd.train.cache import SampleCache

                    cache = SampleCache(
                        state / "samples", config, "grid", encoder.version, geometry
                    )
                    compact(cache, kept_keys(spec), margin=0.25, config=config)
                sizes.append((tree_bytes(state / "samples" / config), window_bytes))
        out_rows[mode] = {"bytes": sizes, "plan_s": plans}
    results["cache"] = out_rows
    out(results, dir_)
    on, off = out_rows["on"]["bytes"], out_rows["off"]["bytes"]
    print(
        f"\nsample cache of {config} after each of {jobs} jobs ({per_job:,} new games each, "
        "window 5,000..20,000 games):\n"
        + table(
            ["after job", "window's samples MB", "compaction on MB", "off MB", "on / window"],
            [
                [
                    str(i + 1),
                    f"{on[i][1] / 1e6:.2f}",
                    f"{on[i][0] / 1e6:.2f}",
                    f"{off[i][0] / 1e6:.2f}",
                    f"{on[i][0] / on[i][1]:.2f}",
                ]
                for i in range(len(on))
                if i in (0, 4, 9, 14, len(on) - 1)
            ],
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", type=Path, default=REPO / "bench" / "out" / "scale")
    parser.add_argument("--parts", default="ledger,restart,upgrade,jobstart,cache")
    parser.add_argument("--fill", type=int, default=20_000_000)
    parser.add_argument("--window", type=int, default=500_000)
    parser.add_argument("--new-games", type=int, default=20_000)
    parser.add_argument("--old-tree", type=Path, default=None)
    parser.add_argument(
        "--divide",
        type=int,
        default=1,
        help="divide every corpus by this (a smoke run of the script; not a measurement)",
    )
    args = parser.parse_args()
    # The daemon's job planning logs each window it writes: not part of the tables.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    if args.divide > 1:
        global MEASURED, FILLS
        MEASURED = (MEASURED[0], MEASURED[1], MEASURED[2] // args.divide, MEASURED[3])
        FILLS = [(n, f, g // args.divide, s) for n, f, g, s in FILLS]
    args.dir = args.dir.resolve()
    args.dir.mkdir(parents=True, exist_ok=True)
    path = args.dir / "results.json"
    results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    results["machine"] = machine()
    parts = args.parts.split(",")
    if "ledger" in parts:
        part_ledger(args.dir, args.fill, results)
    if "restart" in parts:
        part_restart(args.dir, results)
    if "upgrade" in parts:
        part_upgrade(args.dir, results)
    if "jobstart" in parts:
        part_jobstart(args.dir, results, args.window, args.new_games, args.old_tree)
    if "cache" in parts:
        part_cache(args.dir, results, divide=args.divide)


if __name__ == "__main__":
    main()
