"""The checkpoint registry: every verdict with its reason, quarantine, latest, cached validation."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from harness import DaemonProcess, write_config
from ringd.cli.client import get_json, post_json

torch = pytest.importorskip("torch", reason="checkpoints are made with torch (the train extra)")

from ringd.train.checkpoint import save_checkpoint  # noqa: E402
from ringd.train.model import NetShape, build_model  # noqa: E402

SHAPE = NetShape(planes=4, height=5, width=5, channels=4, blocks=1)


def write_valid(
    path: Path, config: str = "square8_2p", shape: NetShape = SHAPE, **meta: Any
) -> None:
    model = build_model(shape, seed=1).state_dict()
    save_checkpoint(
        path,
        meta={"config": config, "model": shape.as_dict(), **meta},
        model=model,
        optimizer={},
        resume={},
    )


def make_zoo(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    zoo = {
        name: folder / f"{name}.pt"
        for name in ("valid", "truncated", "zero", "nonfinite", "wrongshape", "wrongsha", "notckpt")
    }
    write_valid(zoo["valid"])
    write_valid(zoo["truncated"])
    data = zoo["truncated"].read_bytes()
    zoo["truncated"].with_suffix(".json").unlink()  # no sidecar: loading itself must fail
    zoo["truncated"].write_bytes(data[: len(data) // 2])
    zoo["zero"].write_bytes(b"")
    model = build_model(SHAPE, seed=2).state_dict()
    model["stem.0.weight"][0, 0, 0, 0] = float("nan")
    save_checkpoint(
        zoo["nonfinite"],
        meta={"config": "square8_2p", "model": SHAPE.as_dict()},
        model=model,
        optimizer={},
        resume={},
    )
    bigger = NetShape(planes=4, height=5, width=5, channels=8, blocks=1)
    save_checkpoint(
        zoo["wrongshape"],
        meta={"config": "square8_2p", "model": SHAPE.as_dict()},
        model=build_model(bigger, seed=3).state_dict(),
        optimizer={},
        resume={},
    )
    write_valid(zoo["wrongsha"])
    sidecar = json.loads(zoo["wrongsha"].with_suffix(".json").read_text())
    sidecar["sha256"] = "0" * 64
    zoo["wrongsha"].with_suffix(".json").write_text(json.dumps(sidecar))
    zoo["notckpt"].write_text("this is a text file, not weights\n")
    return zoo


REASONS = {
    "truncated": "not a loadable checkpoint",
    "zero": "empty file",
    "nonfinite": "non-finite values in stem.0.weight",
    "wrongshape": "shapes differ from the metadata's model",
    "wrongsha": "sha256 mismatch",
    "notckpt": "not a loadable checkpoint",
}


@pytest.fixture
def models_daemon(short_tmp: Path) -> DaemonProcess:
    (short_tmp / "data" / "selfplay").mkdir(parents=True)
    write_config(short_tmp, extra="models:\n  dirs: [models]\n")
    return DaemonProcess(short_tmp)


def settled(daemon: DaemonProcess, count: int) -> dict[str, Any]:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        models: dict[str, Any] = get_json(daemon.socket, "/v1/models")
        done = [c for c in models["checkpoints"] if c["verdict"] != "pending"]
        if len(done) >= count:
            return models
        time.sleep(0.1)
    raise AssertionError(f"validation did not settle: {models}")


def linked(link: Path, target: Path, timeout: float = 30.0) -> None:
    """Wait until `link` points at `target`."""
    deadline = time.monotonic() + timeout
    while not (link.is_symlink() and os.readlink(link) == str(target)):
        assert time.monotonic() < deadline, f"{link} does not point at {target}"
        time.sleep(0.05)


def test_each_bad_checkpoint_gets_its_reason_and_is_quarantined(
    models_daemon: DaemonProcess,
) -> None:
    zoo = make_zoo(models_daemon.folder / "models" / "square8_2p")
    models_daemon.start()
    try:
        models = settled(models_daemon, len(zoo))
        by_name = {Path(c["path"]).stem: c for c in models["checkpoints"]}
        assert by_name["valid"]["verdict"] == "ok" and by_name["valid"]["sha256"]
        for name, reason in REASONS.items():
            row = by_name[name]
            assert row["verdict"] == "bad" and reason in row["reason"], (name, row["reason"])
            assert not zoo[name].exists(), f"{name} was not moved away"
            assert Path(row["quarantined_to"]).exists() and "/quarantine/" in row["quarantined_to"]
        latest = models_daemon.folder / "var" / "models" / "square8_2p" / "latest.pt"
        linked(latest, zoo["valid"])
        assert models["configs"]["square8_2p"]["ok"] == 1
        assert sum(c["bad"] for c in models["configs"].values()) == 6
        assert models["stats"]["validated"] == 7 and models["stats"]["quarantined"] == 6
    finally:
        models_daemon.close()


def test_a_restart_opens_no_checkpoint_and_a_touched_one_is_validated_again(
    models_daemon: DaemonProcess,
) -> None:
    folder = models_daemon.folder / "models" / "hex8_2p"
    folder.mkdir(parents=True)
    for i in range(3):
        write_valid(folder / f"m{i}.pt", config="hex8_2p")
    models_daemon.start()
    try:
        assert settled(models_daemon, 3)["stats"]["validated"] == 3
        models_daemon.stop()
        models_daemon.start()
        time.sleep(1.5)  # a refresh ran after READY (stat only)
        models = get_json(models_daemon.socket, "/v1/models")
        assert models["stats"]["validated"] == 0 and all(
            c["verdict"] == "ok" for c in models["checkpoints"]
        )
        os.utime(folder / "m1.pt")  # touched: its stat changed
        post_json(models_daemon.socket, "/v1/models/validate?path=" + str(folder / "m0.pt"))
        deadline = time.monotonic() + 60
        while get_json(models_daemon.socket, "/v1/models")["stats"]["validated"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(0.5)
        assert (
            get_json(models_daemon.socket, "/v1/models")["stats"]["validated"] == 2
        )  # m1 and the forced m0
    finally:
        models_daemon.close()


def test_latest_follows_the_newest_valid_checkpoint_and_pin_keeps_it(
    models_daemon: DaemonProcess,
) -> None:
    folder = models_daemon.folder / "models" / "hex8_3p"
    folder.mkdir(parents=True)
    write_valid(folder / "old.pt", config="hex8_3p")
    models_daemon.start()
    try:
        settled(models_daemon, 1)
        latest = models_daemon.folder / "var" / "models" / "hex8_3p" / "latest.pt"
        # The verdict is shown first; the link follows once the promotion is decided.
        linked(latest, folder / "old.pt")
        time.sleep(0.01)
        (folder / "new.pt").write_bytes(b"\0" * 100)  # newer but bad: latest must not move
        post_json(models_daemon.socket, "/v1/models/validate")
        settled(models_daemon, 2)
        assert os.readlink(latest) == str(folder / "old.pt")
        pinned = post_json(models_daemon.socket, "/v1/models/pin?path=" + str(folder / "old.pt"))
        assert "pinned" in pinned["message"]
        shown = models_daemon.folder / "shown.txt"
        os.system(
            f"{os.sys.executable} -m ringd.cli models --socket {models_daemon.socket} > {shown}"
        )  # type: ignore[attr-defined]
        text = shown.read_text()
        assert "hex8_3p" in text and str(folder / "old.pt") in text and "bad:" in text
    finally:
        models_daemon.close()


def test_retention_keeps_the_newest_own_and_pinned_and_never_foreign_files(tmp_path: Path) -> None:
    from ringd.ledger import Ledger
    from ringd.registry import prune

    with Ledger(tmp_path / "ledger.sqlite") as db:
        paths = []
        for seq in range(1, 5):
            path = tmp_path / "jobs" / f"job{seq}" / "final.pt"
            write_valid(path, config="hex8_2p")
            st = path.stat()
            stat = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            db.register_checkpoint(
                str(path),
                config="hex8_2p",
                origin="job",
                job_id=f"j{seq}",
                last_seq=seq * 10,
                stat=stat,
            )
            db.record_verdict(str(path), ok=True, reason=None, sha256="x", config="hex8_2p")
            paths.append(path)
        foreign = tmp_path / "theirs" / "old.pt"
        write_valid(foreign, config="hex8_2p")
        st = foreign.stat()
        db.register_checkpoint(
            str(foreign),
            config="hex8_2p",
            origin="dir",
            job_id=None,
            last_seq=None,
            stat=(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns),
        )
        db.record_verdict(str(foreign), ok=True, reason=None, sha256="y", config="hex8_2p")
        db.set_checkpoint_flags(str(paths[0]), pinned=True)
        removed = prune(db, keep=2)
        assert removed == [str(paths[1])]
        assert (
            paths[0].exists() and not paths[1].exists() and paths[2].exists() and paths[3].exists()
        )
        assert not paths[1].with_suffix(".json").exists() and foreign.exists()
        assert db.checkpoints()[str(paths[1])].removed
