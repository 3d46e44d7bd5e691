"""Selfplay simulator: RingRift-shaped game records for the demo, tests and benchmarks.

Three ways to make games:

* :func:`make_record` / :func:`game_line`: one realistic finished game as a dict or
  as a JSONL line, in the canonical camelCase dialect (like the records in
  ``shared/fixtures/ringrift-golden``) or in the snake_case dialect of RingRift's
  GPU selfplay.
* :func:`write_corpus`: many files of games at disk speed, for ingest benchmarks
  and for tests that need a million games.
* :func:`run_writers`: live writer processes appending games at a chosen rate,
  for latency benchmarks, the demo and the tail/watch tests (lines written in two
  pieces, writers killed in the middle of a line).

Modules: ``game`` (the move sequence), ``records`` (records in both dialects),
``lines`` (distinct lines at disk speed), ``layout`` (folders), ``corpus``,
``writers`` (live writer processes) and ``cli`` (``ringd sim``). Board geometry is
:mod:`ringd.boards`.

Coordinates
-----------
Camel moves (and snake moves exported in canonical form) use ``{"x", "y"}`` on
square boards (``0 <= x, y < side``) and cube coordinates ``{"x", "y", "z"}``
with ``x + y + z == 0`` on hex boards (``max(|x|, |y|, |z|) <= radius``).

Raw snake moves (``move_type`` / ``from_pos`` / ``to_pos``) use ``[row, col]`` lists
on the board's canvas, as RingRift's GPU selfplay writes them: on square boards
``x = col``, ``y = row``; on hex boards of radius r ``x = col - r``, ``y = row - r``
(``z = -x - y``). :func:`ringd.boards.cell_from_canvas` turns such a list back into
a cell.

Pass moves (camel types starting with ``no_`` or ``skip_``, raw ``NO_ACTION`` and
``SKIP``) carry a placeholder destination that says nothing about the board:
``{"x": 0, "y": 0}`` (on hex boards sometimes with ``"z": null``); raw passes have
``to_pos`` null. :func:`is_pass_move` recognises them.
"""

from ringd.sim.cli import sim_main
from ringd.sim.corpus import CorpusInfo, write_corpus
from ringd.sim.records import game_line, is_pass_move, make_record, parse_config
from ringd.sim.writers import WritersResult, run_writers, writer_main

__all__ = [
    "CorpusInfo",
    "WritersResult",
    "game_line",
    "is_pass_move",
    "make_record",
    "parse_config",
    "run_writers",
    "sim_main",
    "write_corpus",
    "writer_main",
]
