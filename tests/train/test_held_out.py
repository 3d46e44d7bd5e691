"""Held-out evaluation in the trainer: every checkpoint measured, never a held-out game trained on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from trainkit import SpecFactory, run_in_process, spans_of

from ringd.train.checkpoint import load_checkpoint, save_checkpoint
from ringd.train.grid import GridEncoder
from ringd.train.holdout import BUCKETS, bucket_of, is_held_out
from ringd.train.protocol import ExitCode


@pytest.fixture(scope="session")
def heldout_games(heldout_corpus: list[Path]) -> list[dict[str, Any]]:
    """The other seed's games as spec games, numbered after the corpus (seq 1001..)."""
    return spans_of(heldout_corpus, first_seq=1001)


def test_the_slice_is_a_pure_function_of_the_key() -> None:
    key = bytes.fromhex("00000000000000c8" + "ff" * 8)  # first 8 bytes: 200
    assert bucket_of(key) == 200 and BUCKETS == 10_000
    assert not is_held_out(key, 0.02) and is_held_out(key, 0.0201)
    assert not is_held_out(key, 0.0)
    with pytest.raises(ValueError):
        is_held_out(key, 1.0)


def test_every_checkpoint_is_evaluated_with_the_network_it_started_from(
    square8_corpus: list[dict[str, Any]],
    heldout_games: list[dict[str, Any]],
    make_spec: SpecFactory,
    tmp_path: Path,
) -> None:
    holdout = {"fraction": 0.0, "games": heldout_games}
    spec = make_spec(square8_corpus, hyper={"steps": 120}, holdout=holdout)
    code, run = run_in_process(spec)
    assert code == ExitCode.OK, run.all()
    done = run.one("done")
    ev = done["eval"]
    assert ev["step"] == 120 and ev["games"] == len(heldout_games) and ev["samples"] > 500
    assert ev["start_checkpoint"] is None  # from scratch: the untrained network of the seed
    assert set(ev["model"]) == {"loss", "policy_loss", "policy_acc", "value_mse"}
    model, start = ev["model"], ev["start"]
    assert model["loss"] == pytest.approx(model["policy_loss"] + model["value_mse"], abs=1e-5)
    assert model["loss"] < 0.8 * start["loss"] and model["policy_acc"] >= start["policy_acc"]
    # The same numbers in the final checkpoint's event and in its sidecar.
    assert run.of("checkpoint")[-1]["eval"] == ev
    sidecar = json.loads(Path(done["checkpoint"]).with_suffix(".json").read_text())
    assert sidecar["meta"]["eval"] == ev
    tb = Path(spec).parent / "job" / "tb"
    assert _tags(tb) >= {"holdout/loss", "holdout/policy_acc", "holdout/value_mse"}

    # The next job warm-starts from it: its start is the first job's model, same samples.
    second = make_spec(
        square8_corpus,
        job_id="square8_2p-000002",
        output_dir=str(tmp_path / "second"),
        init_checkpoint=done["checkpoint"],
        hyper={"steps": 30},
        holdout=holdout,
    )
    code, run2 = run_in_process(second)
    assert code == ExitCode.OK, run2.all()
    ev2 = run2.one("done")["eval"]
    assert ev2["start_checkpoint"] == done["checkpoint"]
    for name, value in model.items():
        assert ev2["start"][name] == pytest.approx(value, abs=1e-4), name


def test_periodic_checkpoints_are_evaluated_and_one_saved_on_a_stop_is_not(
    square8_corpus: list[dict[str, Any]],
    heldout_games: list[dict[str, Any]],
    make_spec: SpecFactory,
) -> None:
    spec = make_spec(
        square8_corpus[:30],
        hyper={"steps": 4, "checkpoint_every_s": 1e-9},
        holdout={"fraction": 0.0, "games": heldout_games[:4]},
    )
    code, run = run_in_process(spec)
    assert code == ExitCode.OK, run.all()
    saved = run.of("checkpoint")
    assert [c["kind"] for c in saved] == ["resume"] * 3 + ["final"]
    assert [c["eval"]["step"] for c in saved] == [1, 2, 3, 4]
    assert all(c["eval"]["model"]["loss"] is not None for c in saved)
    assert len({c["eval"]["start"]["loss"] for c in saved}) == 1


def test_without_held_out_games_the_metrics_are_null(
    square8_corpus: list[dict[str, Any]], make_spec: SpecFactory
) -> None:
    code, run = run_in_process(make_spec(square8_corpus[:10], hyper={"steps": 2}))
    assert code == ExitCode.OK, run.all()
    ev = run.one("done")["eval"]
    assert (ev["games"], ev["samples"], ev["model"], ev["start"]) == (0, 0, None, None)


def test_a_spec_whose_window_holds_a_held_out_game_is_refused(
    square8_corpus: list[dict[str, Any]],
    heldout_games: list[dict[str, Any]],
    make_spec: SpecFactory,
) -> None:
    listed = make_spec(square8_corpus[:5], holdout={"fraction": 0.0, "games": square8_corpus[3:4]})
    code, run = run_in_process(listed)
    assert code == ExitCode.BAD_SPEC, run.all()
    assert "seq 4" in run.one("error")["message"] and "held-out" in run.one("error")["message"]
    # By the slice: a fraction that holds one of the window's games out.
    game = next(g for g in square8_corpus if bucket_of(bytes.fromhex(g["key"])) < 5000)
    fraction = (bucket_of(bytes.fromhex(game["key"])) + 1) / BUCKETS
    code, run = run_in_process(make_spec([game], holdout={"fraction": fraction, "games": []}))
    assert code == ExitCode.BAD_SPEC and "is a held-out game" in run.one("error")["message"]


def test_a_warm_start_across_encoder_versions_needs_the_same_network(
    square8_corpus: list[dict[str, Any]], make_spec: SpecFactory, tmp_path: Path
) -> None:
    games = square8_corpus[:20]
    code, run = run_in_process(make_spec(games, hyper={"steps": 2}))
    assert code == ExitCode.OK
    good = Path(run.one("done")["checkpoint"])

    def rewritten(name: str, encoder: dict[str, Any]) -> Path:
        payload = load_checkpoint(good)
        path = tmp_path / f"{name}.pt"
        meta = {**payload["meta"], "encoder": encoder}
        save_checkpoint(
            path, meta=meta, model=payload["model"], optimizer={}, resume=payload["resume"]
        )
        return path

    def start_from(path: Path, name: str, **hyper: Any) -> tuple[int, dict[str, Any]]:
        spec = make_spec(
            games, job_id=name, init_checkpoint=str(path), output_dir=str(tmp_path / name),
            hyper={"steps": 2, **hyper},
        )  # fmt: skip
        code, run = run_in_process(spec)
        return code, (run.one("error") if code else run.one("start"))

    older = rewritten("v1", {"name": "grid", "version": GridEncoder.version - 1})
    code, start = start_from(older, "upgraded")
    assert code == ExitCode.OK and start["init_checkpoint"] == str(older)
    code, error = start_from(older, "upgraded-wider", channels=16)
    assert code == ExitCode.BAD_CHECKPOINT and "trained with encoder grid v1" in error["message"]
    assert "channels 8" in error["message"] and "channels 16" in error["message"]
    other = rewritten("site", {"name": "site", "version": GridEncoder.version})
    code, error = start_from(other, "other-encoder")
    assert code == ExitCode.BAD_CHECKPOINT and "trained with encoder site" in error["message"]


def _tags(folder: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: set[str] = set()
    for events in folder.glob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    return tags


REAL = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "ringrift-real"


@pytest.mark.parametrize("config", ["hex8_2p", "square8_2p"])
def test_a_model_trained_on_the_real_corpus_beats_an_untrained_one_on_held_out_games(
    config: str, make_spec: SpecFactory, tmp_path: Path
) -> None:
    if not REAL.is_dir():
        pytest.skip(f"the real RingRift corpus is not at {REAL} (it lives in the shared/ folder)")
    from ringd.ledger import Ledger
    from ringd.records import Rules
    from ringd.scan import scan

    fraction = 0.2
    with Ledger(tmp_path / "ledger.sqlite") as db:
        scan(db, [REAL / "selfplay"], Rules())
        last = db.max_seq(config)
        spans = db.window(config, last, 10_000)
        held = db.held_out_games(config, last, 1000, fraction)

    def game(s: Any) -> dict[str, Any]:
        return {"path": s.path, "offset": s.offset, "length": s.length, "key": s.key.hex(),
                "seq": s.seq}  # fmt: skip

    window = [game(s) for s in spans if not is_held_out(s.key, fraction)]
    holdout = [game(s) for s in held]
    assert len(window) > 30 and len(holdout) >= 5
    board = config.rsplit("_", 1)[0]
    spec = make_spec(
        window,
        config=config,
        board=board,
        new_from_seq=window[0]["seq"],
        hyper={"steps": 200},
        holdout={"fraction": fraction, "games": holdout},
    )
    code, run = run_in_process(spec)
    assert code == ExitCode.OK, run.all()
    ev = run.one("done")["eval"]
    assert ev["samples"] >= 300, ev
    # `start` is the untrained network of the same shape and seed, on the same samples.
    assert ev["start_checkpoint"] is None
    trained, untrained = ev["model"], ev["start"]
    assert trained["loss"] < 0.8 * untrained["loss"], ev
    assert trained["policy_loss"] < untrained["policy_loss"], ev
    assert trained["policy_acc"] >= untrained["policy_acc"], ev
