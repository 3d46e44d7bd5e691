"""The YAML configuration: defaults, path resolution, and errors that name file:line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import REPO, ringd
from ringd.boards import split_config_name
from ringd.settings import ConfigError, Settings, load_settings


def errors_of(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "ringd.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    return info.value.errors


def test_default_config_lists_all_twelve_ringrift_configurations() -> None:
    settings = load_settings(REPO / "config" / "ringd.yaml")
    boards = ["square8", "square19", "hex8", "hexagonal"]
    assert set(settings.configs) == {f"{b}_{n}p" for b in boards for n in (2, 3, 4)}
    assert all(c.threshold >= 1 for c in settings.configs.values())


def test_relative_paths_resolve_against_the_config_files_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "etc").mkdir()
    path = tmp_path / "etc" / "ringd.yaml"
    path.write_text("state_dir: ../state\nwatch: {roots: [sp, /abs/root]}\n")
    monkeypatch.chdir("/")
    settings = load_settings(path)
    assert settings.state_dir == tmp_path / "state"
    assert settings.watch.roots == [tmp_path / "etc" / "sp", Path("/abs/root")]
    assert settings.socket_path == tmp_path / "state" / "ringd.sock"


def test_an_empty_file_means_every_default(tmp_path: Path) -> None:
    path = tmp_path / "ringd.yaml"
    path.write_text("# nothing set\n")
    settings = load_settings(path)
    assert settings.watch.debounce_ms == 50
    assert settings.watch.rescan_interval_s == 60
    assert settings.training.enabled and settings.training.devices == "auto"
    assert settings.configs == {}


def test_threshold_below_one_names_file_line_and_key_path(tmp_path: Path) -> None:
    errors = errors_of(
        tmp_path, "configs:\n  hex8_2p: {threshold: 5}\n  square8_2p:\n    threshold: 0\n"
    )
    assert errors == [f"{tmp_path / 'ringd.yaml'}:4: configs.square8_2p.threshold: must be >= 1"]


def test_unknown_keys_are_errors_at_their_line(tmp_path: Path) -> None:
    errors = errors_of(tmp_path, "watch:\n  roots: [a]\n  debounce: 10\nfoo: 1\n")
    assert errors == [
        f"{tmp_path / 'ringd.yaml'}:3: watch.debounce: unknown key",
        f"{tmp_path / 'ringd.yaml'}:4: foo: unknown key",
    ]


def test_wrong_types_are_errors(tmp_path: Path) -> None:
    errors = errors_of(
        tmp_path, "watch:\n  debounce_ms: soon\ntraining:\n  devices: gpu\n  enabled: maybe\n"
    )
    assert len(errors) == 3
    assert errors[0].startswith(
        f"{tmp_path / 'ringd.yaml'}:2: watch.debounce_ms: input should be a valid integer"
    )
    assert errors[1] == (
        f"{tmp_path / 'ringd.yaml'}:4: training.devices: "
        "must be auto, cpu or a list of GPU indices such as [0, 1] (got 'gpu')"
    )
    assert errors[2].startswith(f"{tmp_path / 'ringd.yaml'}:5: training.enabled:")


def test_config_names_must_be_board_underscore_players_p(tmp_path: Path) -> None:
    errors = errors_of(
        tmp_path,
        "configs:\n  square8_2p: {threshold: 1}\n  square8: {threshold: 1}\n  hex8_9p: {threshold: 1}\n",
    )
    assert [e.split(": ")[0] for e in errors] == [
        f"{tmp_path / 'ringd.yaml'}:3",
        f"{tmp_path / 'ringd.yaml'}:4",
    ]
    assert "configs.square8: 'square8' is not a configuration name" in errors[0]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("square8_2p", ("square8", 2)),
        ("hexagonal_4p", ("hexagonal", 4)),
        ("my_board_v2_8p", ("my_board_v2", 8)),
        ("hex8_0p", None),
        ("Square8_2p", None),
        ("8x8_2p", None),
        ("a" * 33 + "_2p", None),
    ],
)
def test_split_config_name(name: str, expected: tuple[str, int] | None) -> None:
    assert split_config_name(name) == expected


def test_invalid_yaml_names_its_line(tmp_path: Path) -> None:
    errors = errors_of(tmp_path, "watch:\n  roots: [a\nconfigs: {}\n")
    assert len(errors) == 1 and errors[0].startswith(f"{tmp_path / 'ringd.yaml'}:3: invalid YAML")


def test_duplicate_keys_are_errors(tmp_path: Path) -> None:
    errors = errors_of(tmp_path, "configs:\n  hex8_2p: {threshold: 5}\n  hex8_2p: {threshold: 6}\n")
    assert errors == [f"{tmp_path / 'ringd.yaml'}:3: configs.hex8_2p: duplicate key"]


def test_a_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(tmp_path / "absent.yaml")


def test_check_config_prints_ok_or_the_errors(tmp_path: Path) -> None:
    ok = ringd("check-config", str(REPO / "config" / "ringd.yaml"))
    assert ok.returncode == 0 and ok.stdout.startswith("OK")
    bad = tmp_path / "bad.yaml"
    bad.write_text("configs:\n  square8_2p: {threshold: 0}\n")
    result = ringd("check-config", str(bad))
    assert result.returncode == 1
    assert f"{bad}:2: configs.square8_2p.threshold: must be >= 1" in result.stderr


def test_the_published_json_schema_matches_the_models() -> None:
    published = json.loads((REPO / "config" / "ringd.schema.json").read_text())
    assert published == Settings.model_json_schema(), "run: ringd schema > config/ringd.schema.json"
