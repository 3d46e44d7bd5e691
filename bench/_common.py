"""Shared by the benchmark scripts: timing with medians, and a side-by-side table."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    wall: float  # median seconds
    cpu: float  # median CPU seconds of this process (user + sys), children excluded
    runs: int


def measure(
    fn: Callable[[], object], runs: int, setup: Callable[[], object] | None = None
) -> Timing:
    """Median wall and CPU time of `fn` over `runs` runs, each after `setup` (untimed)."""
    walls, cpus = [], []
    for _ in range(runs):
        if setup is not None:
            setup()
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return Timing(statistics.median(walls), statistics.median(cpus), runs)


def machine() -> str:
    return f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} cores, {platform.machine()}"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])
