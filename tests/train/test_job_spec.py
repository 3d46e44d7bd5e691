"""The torch-free parts the daemon imports: spec, window and steps, exit codes, events;
and the encoder plug-in point."""

from __future__ import annotations

import importlib.metadata
import io
import json
import math
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from ringd.train import encode
from ringd.train.encode import ENTRY_POINT_GROUP, UnknownEncoder, load_encoder
from ringd.train.grid import GridEncoder
from ringd.train.lr import FINAL_LR_FRACTION, lr_at, warmup_steps
from ringd.train.protocol import (
    ERROR_KINDS,
    DoneEvent,
    Events,
    ExitCode,
    ProgressEvent,
    StartEvent,
)
from ringd.train.spec import SpecError, load_spec
from ringd.train.window import train_steps, window_games

REPO = Path(__file__).resolve().parents[2]
KEY = "0123456789abcdef" * 2


def spec_dict(**fields: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "version": 1,
        "job_id": "hex8_3p-000004",
        "config": "hex8_3p",
        "board": "hex8",
        "players": 3,
        "games": [
            {"path": "/d/a.jsonl", "offset": 0, "length": 10, "key": KEY, "seq": 3},
            {"path": "/d/a.jsonl", "offset": 11, "length": 10, "key": KEY[::-1], "seq": 9},
        ],
        "new_from_seq": 9,
        "output_dir": "/state/jobs/hex8_3p-000004",
        "samples_dir": "/state/samples",
    }
    spec.update(fields)
    return spec


def test_the_daemon_side_imports_no_torch() -> None:
    code = (
        "import sys\n"
        "import ringd.train, ringd.train.spec, ringd.train.window, ringd.train.protocol\n"
        "import ringd.train.lr\n"
        "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "print(len(loaded), loaded[:5])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith("0 "), f"torch was imported: {out}"


def test_a_minimal_spec_gets_the_documented_defaults() -> None:
    spec = load_spec(json.dumps(spec_dict()))
    assert spec.encoder == "grid" and spec.device == "auto" and spec.seed == 0
    assert spec.init_checkpoint is None
    hyper = spec.hyper
    assert (hyper.batch_size, hyper.steps, hyper.replay_ratio, hyper.lr) == (256, None, 4.0, 2e-3)
    assert (hyper.channels, hyper.blocks, hyper.loader, hyper.prefetch) == (64, 6, "auto", 4)
    assert hyper.cuda_graphs and hyper.channels_last and hyper.compile == "auto"
    assert hyper.compile_mode == "default" and hyper.dist_timeout_s == 600
    assert spec.games[1].key_bytes == bytes.fromhex(KEY[::-1])


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"extra": 1}, "extra: Extra inputs are not permitted"),
        ({"hyper": {"batch_size": 0}}, "hyper.batch_size"),
        ({"hyper": {"loader": "fast"}}, "hyper.loader"),
        ({"config": "hex8_2p"}, "does not match board"),
        ({"device": "cuda:x"}, "device must be"),
        ({"samples_dir": "state/samples"}, "samples_dir"),
        ({"job_id": "../escape"}, "job_id"),
        (
            {"games": [{"path": "/a", "offset": 0, "length": 1, "key": "XYZ", "seq": 1}]},
            "32 lowercase hex",
        ),
        (
            {"games": [{"path": "/a", "offset": 0, "length": 0, "key": KEY, "seq": 1}]},
            "games.0.length",
        ),
    ],
)
def test_invalid_specs_name_the_field(fields: dict[str, Any], needle: str) -> None:
    with pytest.raises(SpecError, match=None) as failed:
        load_spec(json.dumps(spec_dict(**fields)))
    assert needle in str(failed.value)


def test_games_must_be_oldest_first() -> None:
    games = spec_dict()["games"][::-1]
    with pytest.raises(SpecError, match="oldest first"):
        load_spec(json.dumps(spec_dict(games=games)))


def test_the_fingerprint_follows_what_is_trained_not_where_or_how_fast() -> None:
    base = load_spec(json.dumps(spec_dict())).training_fingerprint()
    same = spec_dict(
        output_dir="/elsewhere", device="cpu", hyper={"loader": "mmap", "log_every": 1}
    )
    assert load_spec(json.dumps(same)).training_fingerprint() == base
    for change in (
        {"seed": 1},
        {"hyper": {"lr": 1e-3}},
        {"new_from_seq": 3},
        {"games": spec_dict()["games"][:1]},
    ):
        assert load_spec(json.dumps(spec_dict(**change))).training_fingerprint() != base


def test_window_games_taper() -> None:
    w = lambda n: window_games(n, min_games=10_000, max_games=500_000)  # noqa: E731
    assert [w(0), w(1), w(10_000)] == [0, 1, 10_000]
    assert (w(20_000), w(100_000), w(1_000_000)) == (13_636, 34_658, 173_321)
    assert w(10**9) == 500_000
    sizes = [w(n) for n in range(0, 3_000_000, 7_919)]
    assert sizes == sorted(sizes)  # never shrinks as games accumulate
    assert all(s <= n for s, n in zip(sizes, range(0, 3_000_000, 7_919), strict=True))
    # sublinear: ten times the games, far less than ten times the window
    assert w(1_000_000) < 6 * w(100_000)
    # alpha = 1: linear growth at slope beta past min_games
    assert window_games(30_000, min_games=10_000, max_games=10**6, alpha=1.0, beta=0.5) == 20_000
    for bad in ({"min_games": 0}, {"max_games": 5}, {"alpha": 0.0}, {"alpha": 1.5}, {"beta": 0.0}):
        kwargs: dict[str, Any] = {"min_games": 10, "max_games": 100, **bad}
        with pytest.raises(ValueError):
            window_games(50, **kwargs)


def test_train_steps() -> None:
    assert train_steps(1000, batch_size=256, replay_ratio=4.0) == math.ceil(4000 / 256) == 16
    assert train_steps(0, batch_size=256, replay_ratio=4.0) == 1
    assert train_steps(10**6, batch_size=256, replay_ratio=4.0, steps=7) == 7
    with pytest.raises(ValueError):
        train_steps(10, batch_size=0, replay_ratio=1.0)


def test_lr_schedule_warms_up_then_decays() -> None:
    total, peak = 1000, 0.01
    warm = warmup_steps(100, total)
    lrs = [lr_at(s, total_steps=total, peak=peak, warmup=warm) for s in range(total)]
    assert lrs[0] == pytest.approx(peak / 100) and lrs[99] == pytest.approx(peak)
    assert lrs[:100] == sorted(lrs[:100]) and lrs[100:] == sorted(lrs[100:], reverse=True)
    assert lrs[-1] == pytest.approx(peak * FINAL_LR_FRACTION, rel=1e-3)
    assert warmup_steps(100, 50) == 10  # a short job warms up for a fifth of its steps


def test_exit_codes_are_distinct_and_each_has_an_error_kind() -> None:
    assert [int(c) for c in ExitCode] == [0, 1, 2, 3, 4, 5, 6, 7]
    assert set(ERROR_KINDS) == set(ExitCode) - {ExitCode.OK}
    assert len(set(ERROR_KINDS.values())) == len(ERROR_KINDS)


def test_events_are_json_lines_without_nan() -> None:
    stream = io.StringIO()
    events = Events(stream)
    events.emit(ProgressEvent(step=3, loss=float("nan"), nested={"x": [float("inf"), 1.5]}))
    (line,) = stream.getvalue().splitlines()
    event = json.loads(line)
    assert (
        event["event"] == "progress"
        and event["loss"] is None
        and event["nested"]["x"] == [None, 1.5]
    )
    assert isinstance(event["time"], float)
    with pytest.raises(ValidationError):
        ProgressEvent(step="three")  # type: ignore[arg-type]  # what emit could be handed


class _Closed(io.StringIO):
    def write(self, s: str) -> int:
        raise BrokenPipeError


def test_a_vanished_reader_does_not_stop_the_job() -> None:
    events = Events(_Closed())
    events.emit(StartEvent())
    events.emit(DoneEvent())  # no exception: the job finishes and checkpoints regardless


def test_pyproject_registers_the_grid_encoder() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    value = project["entry-points"][ENTRY_POINT_GROUP]["grid"]
    point = importlib.metadata.EntryPoint(name="grid", value=value, group=ENTRY_POINT_GROUP)
    assert point.load() is GridEncoder


def test_a_site_encoder_is_found_through_its_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    point = importlib.metadata.EntryPoint(
        name="site", value="trainkit_plugin:SiteEncoder", group=ENTRY_POINT_GROUP
    )

    def entry_points(*, group: str) -> list[importlib.metadata.EntryPoint]:
        return [point] if group == ENTRY_POINT_GROUP else []

    monkeypatch.setattr(encode.importlib.metadata, "entry_points", entry_points)
    encoder = load_encoder("site")
    assert (encoder.name, encoder.version) == ("site", 3)
    assert encoder.geometry("square8", 2).planes == 1
    assert isinstance(load_encoder("grid"), GridEncoder)  # built in, even when not listed
    with pytest.raises(UnknownEncoder, match="known: grid, site"):
        load_encoder("other")
    not_an_encoder = importlib.metadata.EntryPoint(
        name="broken", value="trainkit_plugin:NotAnEncoder", group=ENTRY_POINT_GROUP
    )
    point = not_an_encoder
    with pytest.raises(UnknownEncoder, match="lacks"):
        load_encoder("broken")


def test_the_utilisation_sampler_keeps_what_it_reads() -> None:
    import threading

    from ringd.train.gpu_util import UtilizationSampler

    readings = iter([None, 40, 90, 95])
    enough = threading.Event()

    def read() -> int | None:
        value = next(readings, 97)
        if value == 97:
            enough.set()
        return value

    with UtilizationSampler(read, interval_s=0.005) as sampler:
        assert enough.wait(timeout=10)
    assert sampler.samples[:3] == [40, 90, 95]  # None (no reading) is skipped
    assert sampler.latest() == 97 and sampler.median() is not None
