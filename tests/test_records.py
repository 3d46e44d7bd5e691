"""Record dialects -> config key and game key; every reject reason."""

from __future__ import annotations

import json

import pytest

from ringd.records import Game, Reason, Reject, game_key, parse_line


def test_golden_records_parse_under_their_configs(golden_lines: list[bytes]) -> None:
    parsed = [parse_line(line.rstrip(b"\n")) for line in golden_lines]
    assert all(isinstance(p, Game) for p in parsed)
    configs = sorted(p.config for p in parsed if isinstance(p, Game))
    assert configs == ["hex8_2p", "hex8_2p", "square8_2p", "square8_2p", "square8_2p"]


def test_snake_case_dialect_of_gpu_selfplay() -> None:
    line = b'{"game_id":"a1","board_type":"hexagonal","board_size":25,"num_players":3,"moves":[]}'
    assert parse_line(line) == Game("hexagonal_3p", game_key(line), "a1")


def test_board_names_match_exactly_hex8_is_not_hexagonal() -> None:
    hex8 = parse_line(b'{"boardType":"hex8","numPlayers":2}')
    hexagonal = parse_line(b'{"boardType":"hexagonal","numPlayers":2}')
    assert isinstance(hex8, Game) and hex8.config == "hex8_2p"
    assert isinstance(hexagonal, Game) and hexagonal.config == "hexagonal_2p"


def test_game_key_is_the_hash_of_the_lines_bytes() -> None:
    a = parse_line(b'{"boardType":"square8","numPlayers":2,"id":"x"}')
    b = parse_line(b'{"boardType":"square8","numPlayers":2,"id":"y"}')
    again = parse_line(b'{"boardType":"square8","numPlayers":2,"id":"x"}')
    assert isinstance(a, Game) and isinstance(b, Game) and isinstance(again, Game)
    assert a.key != b.key and a.key == again.key and len(a.key) == 16


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"", Reason.BLANK),
        (b"   \r", Reason.BLANK),
        (b'{"boardType":"square8","numPlayers":2,"x":"\xff\xfe"}', Reason.INVALID_UTF8),
        (b'{"boardType":"square8","numPlayers":2', Reason.NOT_JSON),
        (b"garbage", Reason.NOT_JSON),
        (b'{"boardType":"square8"} trailing', Reason.NOT_JSON),
        (b'["square8", 2]', Reason.NOT_OBJECT),
        (b'"square8_2p"', Reason.NOT_OBJECT),
        (b'{"numPlayers":2}', Reason.MISSING_BOARD),
        (b'{"boardType":null,"numPlayers":2}', Reason.MISSING_BOARD),
        (b'{"boardType":8,"numPlayers":2}', Reason.BOARD_NOT_STRING),
        (b'{"board_type":["square8"],"num_players":2}', Reason.BOARD_NOT_STRING),
        (b'{"boardType":"Square8","numPlayers":2}', Reason.BAD_BOARD_NAME),
        (b'{"boardType":"square 8","numPlayers":2}', Reason.BAD_BOARD_NAME),
        (b'{"boardType":"' + b"a" * 33 + b'","numPlayers":2}', Reason.BAD_BOARD_NAME),
        (b'{"boardType":"square8"}', Reason.MISSING_PLAYERS),
        (b'{"boardType":"square8","numPlayers":"2"}', Reason.PLAYERS_NOT_INTEGER),
        (b'{"boardType":"square8","numPlayers":2.0}', Reason.PLAYERS_NOT_INTEGER),
        (b'{"boardType":"square8","numPlayers":true}', Reason.PLAYERS_NOT_INTEGER),
        (b'{"boardType":"square8","numPlayers":0}', Reason.PLAYERS_OUT_OF_RANGE),
        (b'{"boardType":"square8","numPlayers":9}', Reason.PLAYERS_OUT_OF_RANGE),
        (
            b'{"boardType":"square8","board_type":"hex8","numPlayers":2}',
            Reason.CONFLICTING_DIALECTS,
        ),
    ],
)
def test_reject_reasons(line: bytes, reason: Reason) -> None:
    result = parse_line(line)
    assert isinstance(result, Reject), result
    assert result.reason is reason
    assert result.detail


def test_both_dialects_agreeing_is_fine() -> None:
    result = parse_line(
        b'{"boardType":"square8","board_type":"square8","numPlayers":4,"num_players":4}'
    )
    assert isinstance(result, Game) and result.config == "square8_4p"


def test_non_ascii_text_in_valid_utf8_is_accepted() -> None:
    line = json.dumps(
        {"boardType": "hex8", "numPlayers": 3, "name": "Jörg ♟"}, ensure_ascii=False
    ).encode()
    result = parse_line(line)
    assert isinstance(result, Game) and result.config == "hex8_3p"
