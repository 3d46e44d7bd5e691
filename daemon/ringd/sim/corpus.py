"""Bulk corpora: many files of simulated games written at disk speed."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ringd.sim.layout import DIR_KINDS, DIR_WEIGHTS, corpus_dir, dialect_for
from ringd.sim.lines import LINE_FORMAT, Ids, Splicer
from ringd.sim.records import Dialect, check_configs, check_dialect, ordered_counts


@dataclass(frozen=True)
class CorpusInfo:
    """What :func:`write_corpus` wrote: the files, the games and bytes in them, games per config."""

    files: list[Path]
    games: int
    bytes: int
    per_config: dict[str, int]


def write_corpus(
    root: Path,
    files: int,
    games_per_file: int,
    *,
    seed: int = 0,
    dialect: str = "mixed",
    configs: Sequence[str] | None = None,
    small: bool = False,
) -> CorpusInfo:
    """Write ``files`` JSONL files of ``games_per_file`` games each under ``root``, fast.

    Files land in RingRift-like folders (``gpu/<config>/``, ``mcts_<n>/``,
    ``hybrid_<n>/``, ``daemon_<n>/``, ``cluster_<n>/<host>/``) and a few oddly named
    ones. Most files hold one config, some a mix. ``dialect`` is ``"camel"``,
    ``"snake"`` or ``"mixed"`` (by folder: ``gpu/`` snake, ``mcts_``/``daemon_``
    camel, the rest line by line). ``small=True`` writes tiny valid games (about
    150-300 bytes) for tests of a million games. Files are created afresh ("wb").
    Output depends only on the arguments: the same seed gives the same bytes.
    """
    if files < 0 or games_per_file < 0:
        raise ValueError("files and games_per_file must be >= 0")
    cfgs = check_configs(configs)
    check_dialect(dialect)
    rng = random.Random(seed)
    splicer = Splicer(rng, small=small)
    ids = Ids(rng)
    counts = dict.fromkeys(cfgs, 0)
    paths: list[Path] = []
    total_bytes = 0
    for index in range(files):
        kind = rng.choices(DIR_KINDS, DIR_WEIGHTS)[0]
        single = rng.random() < 0.7 or len(cfgs) == 1
        file_cfgs = [rng.choice(cfgs)] if single else cfgs
        label = file_cfgs[0] if single else "mixed"
        fixed = dialect_for(kind, dialect)
        folder = root / corpus_dir(rng, kind, label)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{label}_{index:05d}.jsonl"
        paths.append(path)
        prefix = ids.prefix()
        total_bytes += _write_games(
            path, rng, splicer, prefix, file_cfgs, fixed, games_per_file, counts
        )
    return CorpusInfo(paths, files * games_per_file, total_bytes, ordered_counts(counts))


def _write_games(
    path: Path,
    rng: random.Random,
    splicer: Splicer,
    prefix: bytes,
    cfgs: list[str],
    fixed: Dialect | None,
    games: int,
    counts: dict[str, int],
) -> int:
    # The hot loop of write_corpus: a few bytes concatenations per game; no JSON work.
    written = 0
    parts = splicer.parts
    choice = rng.choice
    rand = rng.random
    line_format = LINE_FORMAT
    single = cfgs[0] if len(cfgs) == 1 else None
    with open(path, "wb", buffering=1 << 20) as out:
        write = out.write
        for n in range(games):
            config = single or choice(cfgs)
            dialect: Dialect = fixed or ("camel" if rand() < 0.5 else "snake")
            head, middle, tail = parts(config, dialect)
            line = line_format % (head, prefix, n, middle, prefix, n, tail)
            write(line)
            written += len(line)
            counts[config] += 1
    return written
