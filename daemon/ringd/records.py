"""Game record dialects -> (config key, game key), or the reason a line is rejected."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import msgspec
import xxhash

from ringd.boards import BOARD_NAME, BOARD_NAME_RULE, MAX_PLAYERS, config_name


class Reason(enum.StrEnum):
    """Why a line is not counted as a game."""

    BLANK = "blank_line"
    INVALID_UTF8 = "invalid_utf8"
    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    MISSING_BOARD = "missing_board"
    BOARD_NOT_STRING = "board_not_string"
    BAD_BOARD_NAME = "bad_board_name"
    MISSING_PLAYERS = "missing_players"
    PLAYERS_NOT_INTEGER = "players_not_integer"
    PLAYERS_OUT_OF_RANGE = "players_out_of_range"
    CONFLICTING_DIALECTS = "conflicting_dialects"
    TOO_LONG = "line_too_long"


@dataclass(frozen=True, slots=True)
class Game:
    config: str
    key: bytes
    game_id: str | None


@dataclass(frozen=True, slots=True)
class Reject:
    reason: Reason
    detail: str


class _KeyFields(msgspec.Struct):
    # Only these fields are materialised; msgspec skips the rest (the moves)
    # without building Python objects, which is what makes ingest fast.
    boardType: object = msgspec.UNSET
    numPlayers: object = msgspec.UNSET
    id: object = msgspec.UNSET
    board_type: object = msgspec.UNSET
    num_players: object = msgspec.UNSET
    game_id: object = msgspec.UNSET


_decoder = msgspec.json.Decoder(_KeyFields)


def game_key(line: bytes) -> bytes:
    """128-bit key of a game: the hash of its line's bytes (without the newline)."""
    return xxhash.xxh3_128_digest(line)


def parse_line(line: bytes) -> Game | Reject:
    """Classify one complete line (without its trailing newline)."""
    # msgspec does not check UTF-8 inside fields it skips; isascii() is a
    # cheap pass for nearly every record.
    if not line.isascii():
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as e:
            return Reject(Reason.INVALID_UTF8, f"byte {e.start}: {e.reason}")
    try:
        fields = _decoder.decode(line)
    except msgspec.ValidationError as e:
        if not line.strip():
            return Reject(Reason.BLANK, "empty line")
        return Reject(Reason.NOT_OBJECT, str(e))
    except msgspec.DecodeError as e:
        if not line.strip():
            return Reject(Reason.BLANK, "empty line")
        return Reject(Reason.NOT_JSON, str(e))

    board = _pick(fields.boardType, fields.board_type)
    players = _pick(fields.numPlayers, fields.num_players)
    if board is _CONFLICT or players is _CONFLICT:
        return Reject(
            Reason.CONFLICTING_DIALECTS,
            "boardType/board_type or numPlayers/num_players disagree",
        )
    if board is msgspec.UNSET or board is None:
        return Reject(Reason.MISSING_BOARD, "no boardType or board_type")
    if not isinstance(board, str):
        return Reject(Reason.BOARD_NOT_STRING, f"board is {type(board).__name__}: {board!r}")
    if not BOARD_NAME.match(board):
        return Reject(Reason.BAD_BOARD_NAME, f"{board[:64]!r} is not {BOARD_NAME_RULE}")
    if players is msgspec.UNSET or players is None:
        return Reject(Reason.MISSING_PLAYERS, "no numPlayers or num_players")
    if not isinstance(players, int) or isinstance(players, bool):
        return Reject(
            Reason.PLAYERS_NOT_INTEGER, f"players is {type(players).__name__}: {players!r}"
        )
    if not 1 <= players <= MAX_PLAYERS:
        return Reject(Reason.PLAYERS_OUT_OF_RANGE, f"{players} players (1 to {MAX_PLAYERS})")

    ident = fields.id if fields.id is not msgspec.UNSET else fields.game_id
    return Game(
        config=config_name(board, players),
        key=game_key(line),
        game_id=str(ident) if isinstance(ident, str | int) else None,
    )


_CONFLICT = object()


def _pick(camel: object, snake: object) -> object:
    if camel is msgspec.UNSET:
        return snake
    if snake is msgspec.UNSET or snake == camel:
        return camel
    return _CONFLICT
