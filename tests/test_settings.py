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


@pytest.mark.parametrize("value", ["true", '"100"', "10.0", "1e3"])
def test_a_threshold_is_an_integer_not_a_bool_string_or_float(tmp_path: Path, value: str) -> None:
    # Lax validation took `true` as 1, "100" as 100 and 10.0 as 10 (issue 14).
    errors = errors_of(tmp_path, f"configs:\n  square8_2p: {{threshold: {value}}}\n")
    assert len(errors) == 1
    assert errors[0].startswith(
        f"{tmp_path / 'ringd.yaml'}:2: configs.square8_2p.threshold: input should be a valid integer"
    )
    keep = errors_of(tmp_path, "models:\n  keep: true\n")
    assert "models.keep: input should be a valid integer" in keep[0]


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


def test_records_default_to_ringrifts_aliases_and_unfinished_statuses(tmp_path: Path) -> None:
    path = tmp_path / "ringd.yaml"
    path.write_text("watch: {max_line_bytes: 4096}\n")
    rules = load_settings(path).rules
    assert rules.aliases == {
        "hex": "hexagonal",
        "full_hex": "hexagonal",
        "hex24": "hexagonal",
        "sq8": "square8",
        "sq19": "square19",
    }
    assert {"in_progress", "error", "abandoned"} <= rules.unfinished
    assert rules.max_line == 4096


def test_records_rules_are_read_from_the_yaml(tmp_path: Path) -> None:
    path = tmp_path / "ringd.yaml"
    path.write_text(
        "records:\n"
        "  board_aliases: {tiny: square8, big: my_board}\n"
        "  unfinished_statuses: [In_Progress, timeout]\n"
        "configs:\n  my_board_2p: {threshold: 5}\n"
    )
    rules = load_settings(path).rules
    assert rules.aliases == {"tiny": "square8", "big": "my_board"}
    assert rules.unfinished == {"in_progress", "timeout"}


def test_an_alias_of_an_unknown_board_names_its_line(tmp_path: Path) -> None:
    errors = errors_of(
        tmp_path,
        "records:\n  board_aliases:\n    hex: hexagonal\n    sq9: square9\n    hx: hex\n"
        "    hex8: hexagonal\n",
    )
    where = tmp_path / "ringd.yaml"
    assert errors == [
        f"{where}:4: records.board_aliases.sq9: 'sq9' maps to unknown board 'square9' "
        "(RingRift's: square8, square19, hex8, hexagonal; or a board named in configs)",
        f"{where}:5: records.board_aliases.hx: 'hex' is itself an alias: "
        "map 'hx' to the board it stands for",
        f"{where}:6: records.board_aliases.hex8: 'hex8' is a RingRift board; it cannot be an alias",
    ]


def test_alias_and_board_names_follow_the_board_name_rule(tmp_path: Path) -> None:
    errors = errors_of(
        tmp_path, "records:\n  board_aliases:\n    Hex: hexagonal\n    ok: Square8\n"
    )
    assert [e.split(": ", 2)[:2] for e in errors] == [
        [f"{tmp_path / 'ringd.yaml'}:3", "records.board_aliases.Hex"],
        [f"{tmp_path / 'ringd.yaml'}:4", "records.board_aliases.ok"],
    ]
    assert "is not a board name" in errors[0]


def test_a_configuration_named_by_an_alias_is_an_error(tmp_path: Path) -> None:
    errors = errors_of(
        tmp_path, "configs:\n  hexagonal_2p: {threshold: 5}\n  hex_2p: {threshold: 5}\n"
    )
    assert errors == [
        f"{tmp_path / 'ringd.yaml'}:3: configs.hex_2p: 'hex' is an alias of 'hexagonal' "
        "(records.board_aliases): name the configuration hexagonal_2p"
    ]


def test_an_empty_status_is_an_error(tmp_path: Path) -> None:
    errors = errors_of(tmp_path, "records:\n  unfinished_statuses: [error, '  ']\n")
    assert len(errors) == 1 and errors[0].startswith(
        f"{tmp_path / 'ringd.yaml'}:2: records.unfinished_statuses[1]: a status must not be empty"
    )
