"""How many games a job trains on, and for how many steps (pure arithmetic, torch-free).

The daemon calls :func:`window_games` to choose the window (the most recent W games
of a config) and writes it into the job spec; the job calls :func:`train_steps`.
"""

from __future__ import annotations

import math


def window_games(
    total_games: int,
    *,
    min_games: int,
    max_games: int,
    alpha: float = 0.75,
    beta: float = 0.4,
) -> int:
    """The number of most recent games to train on when a config has ``total_games``.

    A KataGo-like taper: while there are at most ``min_games`` games the window is all
    of them; beyond that it keeps growing, but sublinearly, so old games (played by
    weaker networks) fall out of it while the window still widens as data accumulates::

        W(N) = N                                                   if N <= min_games
        W(N) = min_games * (1 + beta * ((N / min_games)**alpha - 1) / alpha)
               capped at max_games                                 otherwise

    At ``N = min_games`` both pieces give ``min_games`` and the second grows at first by
    ``beta`` games per new game, then ever slower (as ``N**alpha``; ``alpha = 1`` makes it
    linear with slope ``beta``). With the defaults and ``min_games = 10,000``: 20,000
    games give a window of 13,636, 100,000 give 34,658 and a million 173,321.

    The result is never more than ``total_games``, never less than
    ``min(total_games, min_games)``, and never decreases as ``total_games`` grows.
    """
    if min_games < 1:
        raise ValueError(f"min_games must be >= 1, got {min_games}")
    if max_games < min_games:
        raise ValueError(f"max_games ({max_games}) must be >= min_games ({min_games})")
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if total_games <= min_games:
        return max(0, total_games)
    growth = float((total_games / min_games) ** alpha)
    grown = min_games * (1 + beta * (growth - 1) / alpha)
    # floor, but never below min_games through rounding
    return max(min_games, min(max_games, total_games, math.floor(grown)))


def train_steps(
    new_samples: int, *, batch_size: int, replay_ratio: float, steps: int | None = None
) -> int:
    """Optimizer steps for a job: ``steps`` if given, else replay_ratio x new samples / batch.

    Each new sample is then drawn ``replay_ratio`` times on average (the window's older
    samples are drawn too, in proportion; the count follows the new data so that the
    cost of a job grows with what arrived, not with the window). Always at least one.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if steps is not None:
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        return steps
    if replay_ratio <= 0:
        raise ValueError(f"replay_ratio must be > 0, got {replay_ratio}")
    return max(1, math.ceil(replay_ratio * max(0, new_samples) / batch_size))
