"""``ringd sim``: the simulator's command line (live writers or a bulk corpus)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from ringd.boards import CONFIGS
from ringd.sim.corpus import write_corpus
from ringd.sim.writers import CHILD_FLAG, run_writers, writer_child_main


def _corpus_spec(text: str) -> tuple[int, int]:
    try:
        files, games = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FILES:GAMES_PER_FILE, got {text!r}") from None
    if files < 0 or games < 0:
        raise argparse.ArgumentTypeError("FILES and GAMES_PER_FILE must be >= 0")
    return files, games


def _config_list(text: str) -> list[str]:
    names = [c.strip() for c in text.split(",") if c.strip()]
    bad = [c for c in names if c not in CONFIGS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown config(s) {', '.join(bad) or '(none)'}; known: {', '.join(CONFIGS)}"
        )
    return names


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ringd sim",
        description=(
            "Selfplay simulator: write RingRift-shaped game records (JSONL, one game a "
            "line) under OUT_DIR, either live from writer processes at a chosen rate "
            "or as a bulk corpus at disk speed."
        ),
        epilog=(
            "examples:\n"
            "  ringd sim data/selfplay --writers 4 --rate 20            # until Ctrl-C\n"
            "  ringd sim data/selfplay --writers 64 --rate 1000 --duration 30\n"
            "  ringd sim /tmp/sp --games 500 --configs hex8_2p,square8_3p --partial-every 10\n"
            "  ringd sim /tmp/sp --games 40 --kill-mid-line             # files end mid-line\n"
            "  ringd sim /tmp/corpus --corpus 100:300                   # ~1 GB, 30,000 games\n"
            "  ringd sim /tmp/corpus --corpus 1000:1000 --small         # 1M tiny games\n"
            f"\nconfigs: {', '.join(CONFIGS)}"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", type=Path, help="root of the selfplay tree")
    _add_game_options(parser)
    _add_live_options(parser)
    bulk = parser.add_argument_group("bulk corpus")
    bulk.add_argument(
        "--corpus",
        type=_corpus_spec,
        metavar="FILES:GAMES_PER_FILE",
        help="write FILES files of GAMES_PER_FILE games each as fast as the disk allows, then exit",
    )
    return parser


def _add_game_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("games")
    group.add_argument(
        "--dialect",
        choices=("camel", "snake", "mixed"),
        default="mixed",
        help="record dialect: camelCase canonical, snake_case GPU selfplay, or both (default)",
    )
    group.add_argument(
        "--configs",
        type=_config_list,
        metavar="A,B",
        help="comma-separated configs to draw games from (default: all twelve)",
    )
    group.add_argument("--seed", type=int, default=0, help="seed for game content (default 0)")
    group.add_argument(
        "--small",
        action="store_true",
        help="tiny valid games (~150-300 bytes) instead of real-sized",
    )


def _add_live_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("live writers (the default mode)")
    group.add_argument(
        "--writers", type=int, default=4, metavar="N", help="writer processes (default 4)"
    )
    group.add_argument(
        "--rate",
        type=float,
        default=20.0,
        metavar="GAMES_PER_S",
        help="games per second, all writers together; <= 0: as fast as possible (default 20)",
    )
    until = group.add_mutually_exclusive_group()
    until.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    until.add_argument("--games", type=int, metavar="N", help="stop after N games in total")
    group.add_argument(
        "--partial-every",
        type=int,
        default=0,
        metavar="K",
        help="write every K-th game in two pieces with a pause between",
    )
    group.add_argument(
        "--kill-mid-line",
        action="store_true",
        help="finish by SIGKILLing each writer after half a line, leaving its file unfinished",
    )
    group.add_argument(
        "--rotate-every",
        type=int,
        default=0,
        metavar="K",
        help="start a new file every K games per writer",
    )


def _human_bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _summary(
    mode: str,
    games: int,
    nbytes: int,
    files: int,
    seconds: float,
    per_config: Mapping[str, int],
) -> str:
    # Bulk mode is judged by throughput, live mode by its game rate.
    if mode == "corpus":
        speed = f"{nbytes / 1e6 / seconds:.0f} MB/s" if seconds > 0 else "-"
    else:
        speed = f"{games / seconds:.1f} games/s" if seconds > 0 else "-"
    configs = " ".join(f"{c}={n}" for c, n in per_config.items()) or "-"
    return (
        f"ringd sim {mode}: {games} games, {_human_bytes(nbytes)}, {files} files "
        f"in {seconds:.1f} s ({speed}); {configs}"
    )


def sim_main(argv: Sequence[str] | None = None) -> int:
    """Run ``ringd sim`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [CHILD_FLAG] and len(argv) == 2:
        # run_writers' children come in this way; not part of the documented CLI.
        return writer_child_main(argv[1])
    parser = _build_parser()
    args = parser.parse_args(argv)
    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    if args.corpus is not None:
        files, per_file = args.corpus
        info = write_corpus(
            out_dir,
            files,
            per_file,
            seed=args.seed,
            dialect=args.dialect,
            configs=args.configs,
            small=args.small,
        )
        seconds = time.monotonic() - started
        print(_summary("corpus", info.games, info.bytes, len(info.files), seconds, info.per_config))
        return 0
    if args.writers < 1:
        parser.error("--writers must be >= 1")
    if args.duration is None and args.games is None:
        print(f"ringd sim: writing under {out_dir} until Ctrl-C", file=sys.stderr)
    result = run_writers(
        out_dir,
        writers=args.writers,
        rate=args.rate,
        duration=args.duration,
        games=args.games,
        seed=args.seed,
        dialect=args.dialect,
        configs=args.configs,
        partial_every=args.partial_every,
        kill_mid_line=args.kill_mid_line,
        small=args.small,
        rotate_every=args.rotate_every,
    )
    line = _summary(
        "writers",
        result.games,
        result.bytes,
        len(result.files),
        result.elapsed_s,
        result.per_config,
    )
    if result.partial_files:
        line += f"; {len(result.partial_files)} files end mid-line"
    print(line)
    return 0
