"""Record dialects -> config key and game key; every reject reason."""

from __future__ import annotations

import json

import pytest

from ringd.records import (
    Game,
    Reason,
    Reject,
    Rules,
    content_key,
    game_key,
    key_candidates,
    line_key,
    parse_line,
)


def test_golden_records_parse_under_their_configs(golden_lines: list[bytes]) -> None:
    parsed = [parse_line(line.rstrip(b"\n")) for line in golden_lines]
    assert all(isinstance(p, Game) for p in parsed)
    configs = sorted(p.config for p in parsed if isinstance(p, Game))
    assert configs == ["hex8_2p", "hex8_2p", "square8_2p", "square8_2p", "square8_2p"]


def test_snake_case_dialect_of_gpu_selfplay() -> None:
    line = b'{"game_id":"a1","board_type":"hexagonal","board_size":25,"num_players":3,"moves":[1]}'
    assert parse_line(line) == Game("hexagonal_3p", content_key("hexagonal_3p", b"[1]"), "a1")
    assert game_key(line) == content_key("hexagonal_3p", b"[1]")


def test_board_names_match_exactly_hex8_is_not_hexagonal() -> None:
    hex8 = parse_line(b'{"boardType":"hex8","numPlayers":2}')
    hexagonal = parse_line(b'{"boardType":"hexagonal","numPlayers":2}')
    assert isinstance(hex8, Game) and hex8.config == "hex8_2p"
    assert isinstance(hexagonal, Game) and hexagonal.config == "hexagonal_2p"


def test_a_record_without_moves_is_keyed_by_its_whole_line() -> None:
    a = parse_line(b'{"boardType":"square8","numPlayers":2,"id":"x"}')
    b = parse_line(b'{"boardType":"square8","numPlayers":2,"id":"y"}')
    again = parse_line(b'{"boardType":"square8","numPlayers":2,"id":"x"}')
    assert isinstance(a, Game) and isinstance(b, Game) and isinstance(again, Game)
    assert a.key != b.key and a.key == again.key and len(a.key) == 16
    assert a.key == line_key(b'{"boardType":"square8","numPlayers":2,"id":"x"}')


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
        (b'{"boardType":"square8","numPlayers":2,"moves":null}', Reason.NO_MOVES),
        (b'{"boardType":"square8","numPlayers":2,"moves":[]}', Reason.NO_MOVES),
        (b'{"boardType":"square8","numPlayers":2,"moves": [ ] }', Reason.NO_MOVES),
        (b'{"board_type":"square8","num_players":2,"moves":""}', Reason.NO_MOVES),
        (
            b'{"board_type":"sq8","num_players":2,"status":"in_progress","moves":[1]}',
            Reason.UNFINISHED,
        ),
        (b'{"board_type":"hex8","num_players":2,"status":"ERROR","moves":null}', Reason.UNFINISHED),
        (
            b'{"board_type":"hex8","num_players":2,"game_status":"abandoned","moves":[1]}',
            Reason.UNFINISHED,
        ),
        (
            b'{"board_type":"hex8","num_players":2,"status":"completed",'
            b'"termination_reason":"status:completed:in_progress","moves":[1]}',
            Reason.UNFINISHED,
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


# ----------------------------------------------------------------------------- identity

GPU = (
    b'{"game_id":"%s","board_type":"hex8","num_players":2,"status":"completed",'
    b'"termination_reason":"%s","moves":[{"type":"place_ring","to":{"x":0,"y":1,"z":-1}}],'
    b'"initial_state":{"rings":18},"timestamp":"%s"}'
)


def test_a_games_key_is_its_config_moves_and_initial_state_not_its_other_fields() -> None:
    written = parse_line(GPU % (b"g1", b"status:completed:territory", b"2026-11-28T10:00"))
    # What RingRift's cleanup_victory_types.py --clean-jsonl does to the same game.
    cleaned = parse_line(GPU % (b"renamed", b"territory", b"2026-11-29T11:00"))
    assert isinstance(written, Game) and isinstance(cleaned, Game)
    assert written.key == cleaned.key
    assert written.game_id == "g1" and cleaned.game_id == "renamed"  # display only
    assert written.key == content_key(
        "hex8_2p", b'[{"type":"place_ring","to":{"x":0,"y":1,"z":-1}}]', b'{"rings":18}'
    )


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b'"x":0,"y":1,"z":-1', b'"x":1,"y":0,"z":-1'),  # another move
        (b'"type":"place_ring"', b'"type": "place_ring"'),  # the same, other raw bytes
        (b'"rings":18', b'"rings":19'),  # another initial state
    ],
)
def test_other_moves_or_initial_state_bytes_are_another_game(old: bytes, new: bytes) -> None:
    base = GPU % (b"g1", b"territory", b"t")
    a, b = parse_line(base), parse_line(base.replace(old, new))
    assert isinstance(a, Game) and isinstance(b, Game) and a.key != b.key


def test_the_same_moves_under_another_config_are_another_game() -> None:
    two = parse_line(b'{"boardType":"hex8","numPlayers":2,"moves":[1,2]}')
    three = parse_line(b'{"boardType":"hex8","numPlayers":3,"moves":[1,2]}')
    assert isinstance(two, Game) and isinstance(three, Game) and two.key != three.key


def test_camel_initial_state_counts_too() -> None:
    a = parse_line(b'{"boardType":"hex8","numPlayers":2,"moves":[1],"initialState":{"a":1}}')
    b = parse_line(b'{"boardType":"hex8","numPlayers":2,"moves":[1],"initialState":{"a":2}}')
    assert isinstance(a, Game) and isinstance(b, Game) and a.key != b.key


def test_game_key_needs_only_the_line_and_ignores_the_games_status() -> None:
    line = b'{"board_type":"hex","num_players":2,"status":"in_progress","moves":[1]}'
    assert isinstance(parse_line(line), Reject)
    assert game_key(line) == content_key("hexagonal_2p", b"[1]")
    assert game_key(b"not json") is None
    assert game_key(b'{"board_type":"hex8"}') is None


def test_key_candidates_cover_line_keys_and_keys_made_before_an_alias() -> None:
    line = b'{"board_type":"hex","num_players":2,"moves":[1]}'
    assert key_candidates(line) == {
        line_key(line),
        content_key("hex_2p", b"[1]"),
        content_key("hexagonal_2p", b"[1]"),
    }


# ----------------------------------------------------------------------------- rules


@pytest.mark.parametrize(
    ("board", "config"),
    [
        ("hex", "hexagonal_2p"),
        ("full_hex", "hexagonal_2p"),
        ("hex24", "hexagonal_2p"),
        ("sq8", "square8_2p"),
        ("sq19", "square19_2p"),
        ("hex8", "hex8_2p"),  # never hexagonal
        ("hexagonal", "hexagonal_2p"),
    ],
)
def test_ringrifts_board_aliases_by_default(board: str, config: str) -> None:
    result = parse_line(b'{"board_type":"%s","num_players":2,"moves":[1]}' % board.encode())
    assert isinstance(result, Game) and result.config == config


def test_an_aliased_game_and_its_canonical_copy_are_one_game() -> None:
    a = parse_line(b'{"board_type":"hex","num_players":2,"moves":[1]}')
    b = parse_line(b'{"board_type":"hexagonal","num_players":2,"moves":[1]}')
    assert isinstance(a, Game) and isinstance(b, Game) and a.key == b.key


def test_rules_replace_aliases_and_statuses() -> None:
    rules = Rules(aliases={"tiny": "square8"}, unfinished=frozenset({"timeout"}))
    hexline = b'{"board_type":"hex","num_players":2,"moves":[1]}'
    assert parse_line(hexline, rules) == Game("hex_2p", content_key("hex_2p", b"[1]"), None)
    tiny = parse_line(b'{"board_type":"tiny","num_players":4,"moves":[1]}', rules)
    assert isinstance(tiny, Game) and tiny.config == "square8_4p"
    running = b'{"board_type":"hex8","num_players":2,"status":"in_progress","moves":[1]}'
    assert isinstance(parse_line(running, rules), Game)
    timeout = parse_line(running.replace(b"in_progress", b"timeout"), rules)
    assert isinstance(timeout, Reject) and timeout.reason is Reason.UNFINISHED


@pytest.mark.parametrize(
    "status", [b"completed", b"finished", b"territory", b"status:completed:elimination"]
)
def test_finished_games_and_unknown_statuses_are_games(status: bytes) -> None:
    line = b'{"board_type":"hex8","num_players":2,"status":"%s","moves":[1]}' % status
    assert isinstance(parse_line(line), Game)
    line = b'{"board_type":"hex8","num_players":2,"termination_reason":"%s","moves":[1]}' % status
    assert isinstance(parse_line(line), Game)


def test_unfinished_details_name_the_field() -> None:
    result = parse_line(
        b'{"board_type":"hex8","num_players":2,"status":"completed",'
        b'"termination_reason":"status:completed:in_progress","moves":[1]}'
    )
    assert isinstance(result, Reject)
    assert result.detail == "termination_reason 'status:completed:in_progress'"
