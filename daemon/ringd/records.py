"""Game record dialects -> (config key, game key), or the reason a line is rejected.

A game's key is a 128-bit xxh3 hash of its configuration and the raw bytes of
its `moves` value and, where present, its `initial_state` (`initialState`)
value, exactly as they stand in the line: the bytes hashed are
`{board}_{n}p "\\n" moves ["\\n" initial_state]`. Copies of a game count once
however their other fields differ (RingRift's maintenance scripts rewrite
`termination_reason`, ids, schema versions in place). A record without a
`moves` key is keyed by its whole line (the key every record had before).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

import msgspec
import xxhash

from ringd.boards import BOARD_NAME, BOARD_NAME_RULE, DEFAULT_ALIASES, MAX_PLAYERS, config_name

DEFAULT_MAX_LINE_BYTES = 64 * 1024 * 1024

# Statuses of games that did not finish, as RingRift's writers spell them: GPU
# selfplay writes `in_progress` (and `termination_reason:
# "status:completed:in_progress"` for games cut off at max_moves, which its
# cleanup script deletes as unfinished), the soak writer `error` for failed
# games, the game server `waiting`/`active`/`paused`/`abandoned`. A list of
# what did *not* finish, not of what did: victory types keep growing
# (territory, elimination, lps, stalemate, ...) and an unknown one is a game.
DEFAULT_UNFINISHED_STATUSES: tuple[str, ...] = (
    "in_progress",
    "active",
    "waiting",
    "paused",
    "abandoned",
    "aborted",
    "cancelled",
    "error",
    "failed",
)


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
    UNFINISHED = "unfinished"
    NO_MOVES = "no_moves"


@dataclass(frozen=True, slots=True)
class Rules:
    """How lines become games; built from the settings (`Settings.rules`), one per reload.

    `aliases` maps board names some writers use to RingRift's (`hex` ->
    `hexagonal`); `unfinished` holds lower-case statuses of games that did not
    finish; `max_line` is the longest line read, in bytes.
    """

    aliases: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_ALIASES))
    unfinished: frozenset[str] = frozenset(DEFAULT_UNFINISHED_STATUSES)
    max_line: int = DEFAULT_MAX_LINE_BYTES
    # Memos of this rule set's answers: few boards and statuses occur, and the
    # checks cost more than the dict lookups (ingest runs them once per game).
    _configs: dict[tuple[str, int], tuple[str, bytes]] = field(
        default_factory=dict, compare=False, repr=False
    )
    _statuses: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)


DEFAULT_RULES = Rules()


@dataclass(frozen=True, slots=True)
class Game:
    config: str
    key: bytes
    game_id: str | None


@dataclass(frozen=True, slots=True)
class Reject:
    reason: Reason
    detail: str


_ABSENT = msgspec.Raw()  # a JSON value is never empty: an empty Raw is a missing key


class _Fields(msgspec.Struct):
    # Only these fields are looked at; msgspec skips the rest without building
    # Python objects, and hands `moves`/`initial_state` over as raw bytes (a
    # slice of the line), which is what keeps ingest fast.
    boardType: object = msgspec.UNSET
    numPlayers: object = msgspec.UNSET
    id: object = msgspec.UNSET
    board_type: object = msgspec.UNSET
    num_players: object = msgspec.UNSET
    game_id: object = msgspec.UNSET
    status: object = msgspec.UNSET
    game_status: object = msgspec.UNSET
    termination_reason: object = msgspec.UNSET
    moves: msgspec.Raw = _ABSENT
    initial_state: msgspec.Raw = _ABSENT
    initialState: msgspec.Raw = _ABSENT


_decoder = msgspec.json.Decoder(_Fields)
_EMPTY_VALUES = frozenset((b"null", b"[]", b"{}", b'""'))


def line_key(line: bytes | memoryview) -> bytes:
    """The hash of a whole line: the key of a record without `moves`, and every
    game's key in ledgers before schema 4."""
    return xxhash.xxh3_128_digest(line)


def content_key(config: str, moves: bytes, initial_state: bytes = b"") -> bytes:
    """The key of a game of `config` from the raw bytes of its moves and initial state."""
    return _content_key(config.encode() + b"\n", moves, initial_state)


def _content_key(prefix: bytes, moves: bytes, initial_state: bytes) -> bytes:
    h = xxhash.xxh3_128(prefix)
    h.update(moves)
    if initial_state:
        h.update(b"\n")
        h.update(initial_state)
    return h.digest()


def game_key(line: bytes | memoryview, rules: Rules = DEFAULT_RULES) -> bytes | None:
    """The key of the game on `line` (without its newline); None when it names no config.

    Whoever reads a game back by its span (the trainer) checks this against the
    ledger's key. Unlike `parse_line`, it does not judge the game (finished,
    moves present): the key only says which game the bytes are.
    """
    try:
        fields = _decoder.decode(line)
    except msgspec.DecodeError:  # ValidationError is a DecodeError
        return None
    config = _config(fields, rules)
    if isinstance(config, Reject):
        return None
    return _key(fields, config[1], line)


def key_candidates(line: bytes, rules: Rules = DEFAULT_RULES) -> set[bytes]:
    """Every key the game on `line` may have been counted under by an earlier ringd.

    The whole-line hash (ledgers before schema 4), and the content key under
    the config as the record spells it and under the canonical config (the
    aliases may have changed since).
    """
    return _candidates(line, rules)[0]


def rekeyed(line: bytes, key: bytes, rules: Rules = DEFAULT_RULES) -> bytes | None:
    """The key `rules` give the game on `line`, if `key` is one it may have been
    counted under (`key_candidates`); None when the line is another game."""
    candidates, current = _candidates(line, rules)
    return current if key in candidates else None


_UNALIASED = Rules(aliases={})


def _candidates(line: bytes, rules: Rules) -> tuple[set[bytes], bytes | None]:
    # One decode for all of them: re-keying a ledger reads every game once.
    whole = line_key(line)
    try:
        fields = _decoder.decode(line)
    except msgspec.DecodeError:
        return {whole}, None
    out = {whole}
    current = None
    for r in (rules, _UNALIASED):
        config = _config(fields, r)
        if not isinstance(config, Reject):
            key = _key(fields, config[1], line)
            out.add(key)
            current = key if current is None else current
    return out, current


def parse_line(
    line: bytes | memoryview, rules: Rules = DEFAULT_RULES, *, ascii: bool = False
) -> Game | Reject:
    """Classify one complete line (without its trailing newline).

    `ascii`: the caller knows the line is ASCII (it checked the whole chunk).
    """
    # msgspec does not check UTF-8 inside fields it skips; isascii() is a
    # cheap pass for nearly every record.
    if not ascii and not (text := bytes(line)).isascii():
        try:
            text.decode("utf-8")
        except UnicodeDecodeError as e:
            return Reject(Reason.INVALID_UTF8, f"byte {e.start}: {e.reason}")
    try:
        fields = _decoder.decode(line)
    except msgspec.ValidationError as e:
        if not bytes(line).strip():
            return Reject(Reason.BLANK, "empty line")
        return Reject(Reason.NOT_OBJECT, str(e))
    except msgspec.DecodeError as e:
        if not bytes(line).strip():
            return Reject(Reason.BLANK, "empty line")
        return Reject(Reason.NOT_JSON, str(e))

    config = _config(fields, rules)
    if isinstance(config, Reject):
        return config
    if (status := _unfinished(fields, rules)) is not None:
        return Reject(Reason.UNFINISHED, status)
    moves = fields.moves
    if moves is not _ABSENT and len(moves) <= 8 and b"".join(bytes(moves).split()) in _EMPTY_VALUES:
        return Reject(Reason.NO_MOVES, f"moves is {bytes(moves).decode()}")

    ident = fields.id if fields.id is not msgspec.UNSET else fields.game_id
    return Game(
        config=config[0],
        key=_key(fields, config[1], line),
        game_id=str(ident) if isinstance(ident, str | int) else None,
    )


def _key(fields: _Fields, prefix: bytes, line: bytes | memoryview) -> bytes:
    if fields.moves is _ABSENT:
        return line_key(line)
    initial = fields.initial_state if fields.initial_state is not _ABSENT else fields.initialState
    return _content_key(prefix, fields.moves, initial)


def _config(fields: _Fields, rules: Rules) -> tuple[str, bytes] | Reject:
    """(config, the bytes its keys start with), or why the line names no config."""
    board = _pick(fields.boardType, fields.board_type)
    players = _pick(fields.numPlayers, fields.num_players)
    if type(board) is str and type(players) is int:
        known = rules._configs.get((board, players))
        if known is not None:
            return known
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
    config = config_name(rules.aliases.get(board, board), players)
    known = (config, config.encode() + b"\n")
    if len(rules._configs) < _MEMO_SIZE:
        rules._configs[(board, players)] = known
    return known


_MEMO_SIZE = 4096


def _unfinished(fields: _Fields, rules: Rules) -> str | None:
    """`status ...` naming the field that says the game did not finish, or None."""
    if type(value := fields.status) is str and _says_unfinished(value, rules):
        return f"status {value!r}"
    if type(value := fields.game_status) is str and _says_unfinished(value, rules):
        return f"game_status {value!r}"
    if type(value := fields.termination_reason) is str and _says_unfinished(value, rules):
        return f"termination_reason {value!r}"
    return None


def _says_unfinished(value: str, rules: Rules) -> bool:
    known = rules._statuses.get(value)
    if known is None:
        # RingRift writes `termination_reason: status:<game status>:<victory type>`;
        # a game cut off at max_moves says `status:completed:in_progress`.
        known = any(part.strip().lower() in rules.unfinished for part in value.split(":"))
        if len(rules._statuses) < _MEMO_SIZE:
            rules._statuses[value] = known
    return known


_CONFLICT = object()


def _pick(camel: object, snake: object) -> object:
    if camel is msgspec.UNSET:
        return snake
    if snake is msgspec.UNSET or snake == camel:
        return camel
    return _CONFLICT
