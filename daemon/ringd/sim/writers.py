"""Live writers: OS processes appending simulated games at a chosen rate.

:func:`writer_main` is one writer; :func:`run_writers` runs several as
``python -m ringd.sim`` children (entering through :func:`writer_child_main`) and
adds up what they report.
"""

from __future__ import annotations

import io
import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from ringd.sim.layout import dialect_for, writer_dir
from ringd.sim.lines import LINE_FORMAT, Ids, Splicer
from ringd.sim.records import Dialect, check_configs, check_dialect, ordered_counts

# How run_writers' children are told apart from `ringd sim` command lines.
CHILD_FLAG = "--writer-child"

# The pause inside a line written in two pieces: long enough for a reader polling
# every few milliseconds to see the unfinished line, short against the write rate.
_PARTIAL_PAUSE_S = 0.01


class _StopFlag(Protocol):
    def is_set(self) -> bool: ...


def _write_all(out: io.FileIO, data: bytes) -> None:
    # An unbuffered file may in principle take fewer bytes than offered.
    view = memoryview(data)
    while view:
        n = out.write(view)
        view = view[n or 0 :]


class _Pacer:
    """Spaces games ``1 / rate`` seconds apart (``rate <= 0``: not at all) for ``duration`` s."""

    def __init__(self, rate: float, duration: float | None) -> None:
        self._interval = 1.0 / rate if rate > 0 else 0.0
        start = time.monotonic()
        self._deadline = start + duration if duration is not None else math.inf
        self._due = start

    def wait(self, stopped: Callable[[], bool]) -> bool:
        """Wait until the next game is due; False once the time is up or ``stopped()``."""
        while not stopped():
            now = time.monotonic()
            if now >= self._deadline:
                return False
            if self._interval and self._due > now:
                # Short naps keep the stop check and the deadline responsive.
                time.sleep(min(self._due, self._deadline, now + 0.1) - now)
                continue
            if self._interval:
                # After a stall, catch up for at most a second rather than bursting.
                self._due = max(self._due + self._interval, now - 1.0)
            return True
        return False


class _Appender:
    """A writer's file, opened "ab" unbuffered; a new one every ``rotate_every`` games if > 0."""

    def __init__(self, folder: Path, stem: str, rotate_every: int) -> None:
        self.per_file: dict[str, int] = {}  # path -> complete games
        self.name = ""
        self._folder = folder
        self._stem = stem
        self._rotate_every = rotate_every
        self._part = 0
        self._in_file = 0
        self._out = self._open()

    def _open(self) -> io.FileIO:
        stem = self._stem
        name = f"{stem}_{self._part:04d}.jsonl" if self._rotate_every > 0 else f"{stem}.jsonl"
        self.name = str(self._folder / name)
        self.per_file.setdefault(self.name, 0)
        return open(self.name, "ab", buffering=0)

    def game(self, line: bytes, cut: int | None) -> None:
        """Append one game's line: one write, or two split at ``cut`` with a pause between."""
        if self._rotate_every > 0 and self._in_file >= self._rotate_every:
            self._out.close()
            self._part += 1
            self._in_file = 0
            self._out = self._open()
        if cut is None:
            _write_all(self._out, line)
        else:
            _write_all(self._out, line[:cut])
            time.sleep(_PARTIAL_PAUSE_S)
            _write_all(self._out, line[cut:])
        self._in_file += 1
        self.per_file[self.name] += 1

    def unfinished(self, piece: bytes) -> str:
        """Append the start of a line that is never finished; returns the file's path."""
        _write_all(self._out, piece)
        return self.name

    def close(self) -> None:
        self._out.close()


def writer_main(
    root: Path,
    index: int,
    *,
    rate: float,
    duration: float | None = None,
    games: int | None = None,
    seed: int = 0,
    dialect: str = "mixed",
    configs: Sequence[str] | None = None,
    partial_every: int = 0,
    kill_mid_line: bool = False,
    small: bool = False,
    rotate_every: int = 0,
    stop: _StopFlag | None = None,
) -> dict[str, Any]:
    """Be writer ``index``: append games to this writer's file(s) under ``root``.

    Writes ``rate`` games per second (``rate <= 0``: as fast as possible) until
    ``duration`` seconds have passed, ``games`` games are written, or ``stop`` is
    set (whichever comes first; with none of them it runs until ``stop``). Files
    are opened with "ab", unbuffered; each game is one ``write`` of the whole line,
    except every ``partial_every``-th game which is written in two pieces with a
    short pause between. ``rotate_every=k`` starts a new file every k games.
    ``kill_mid_line`` ends by writing the first part of one more line (not
    counted), so that the parent can kill the process with the line unfinished.

    Game content follows ``seed``; game ids also take fresh OS randomness, so runs
    appending to the same files never repeat a line. Returns a JSON-able summary:
    ``files`` (path -> complete games), ``per_config``, ``games``, ``bytes`` and
    ``partial`` (the path left with an unfinished line, or None).
    """
    cfgs = check_configs(configs)
    check_dialect(dialect)
    if games is not None and games < 0:
        raise ValueError("games must be >= 0")
    rng = random.Random(f"ringd-sim/{seed}/{index}")
    splicer = Splicer(rng, small=small, size=16)
    ids = Ids(random.Random(int.from_bytes(os.urandom(16), "big")))
    kind, rel_dir, stem = writer_dir(index)
    folder = root / rel_dir
    folder.mkdir(parents=True, exist_ok=True)
    fixed = dialect_for(kind, dialect)
    counts = dict.fromkeys(cfgs, 0)
    written_bytes = 0
    parent = os.getppid()
    prefix = ids.prefix()

    def next_line(n: int) -> tuple[str, bytes]:
        config = rng.choice(cfgs)
        dialect_now: Dialect = fixed or ("camel" if rng.random() < 0.5 else "snake")
        head, middle, tail = splicer.parts(config, dialect_now)
        return config, LINE_FORMAT % (head, prefix, n, middle, prefix, n, tail)

    def stopped() -> bool:
        return (stop is not None and stop.is_set()) or os.getppid() != parent

    pacer = _Pacer(rate, duration)
    n = 0
    out = _Appender(folder, stem, rotate_every)
    try:
        while (games is None or n < games) and pacer.wait(stopped):
            config, line = next_line(n)
            split = partial_every > 0 and (n + 1) % partial_every == 0
            out.game(line, rng.randrange(1, len(line) - 1) if split else None)
            n += 1
            written_bytes += len(line)
            counts[config] += 1
        partial: str | None = None
        if kill_mid_line:
            _config, line = next_line(n)
            partial = out.unfinished(line[: max(1, len(line) // 2)])
    finally:
        out.close()
    return {
        "files": out.per_file,
        "per_config": ordered_counts(counts),
        "games": n,
        "bytes": written_bytes,
        "partial": partial,
    }


# --------------------------------------------------------------------------- child process


class _Flag:
    """A stop flag a signal handler can set without taking any lock."""

    def __init__(self) -> None:
        self.value = False

    def is_set(self) -> bool:
        return self.value

    def set(self) -> None:
        self.value = True


def _report(message: Mapping[str, object]) -> bool:
    """Print one JSON line to the parent; False if the parent stopped listening."""
    try:
        print(json.dumps(message), flush=True)
    except BrokenPipeError:
        # Point stdout at /dev/null so the interpreter's final flush cannot fail too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return False
    return True


def writer_child_main(spec: str) -> int:
    """Body of one writer process: run :func:`writer_main`, print its summary as one JSON line."""
    kwargs: dict[str, Any] = json.loads(spec)
    kwargs["root"] = Path(kwargs["root"])
    stop = _Flag()
    signal.signal(signal.SIGTERM, lambda _s, _f: stop.set())
    # Ctrl-C is the parent's business; it tells writers to stop with SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        summary = writer_main(stop=stop, **kwargs)
    except Exception:
        return 1 if _report({"error": traceback.format_exc()}) else 2
    if not _report(summary):
        return 0  # the parent is gone; nobody is left to tell
    if kwargs.get("kill_mid_line"):
        # Wait to be SIGKILLed with the line unfinished; leave on our own only if the
        # parent is gone or never does it.
        parent = os.getppid()
        give_up = time.monotonic() + 60.0
        while time.monotonic() < give_up and os.getppid() == parent:
            time.sleep(0.05)
    return 0


# --------------------------------------------------------------------------- parent


@dataclass(frozen=True)
class WritersResult:
    """What :func:`run_writers` wrote: complete games per file and per config.

    ``partial_files`` are the files left ending in an unfinished line (``kill_mid_line``).
    """

    files: list[Path]
    games: int
    bytes: int
    per_file: dict[Path, int]
    per_config: dict[str, int]
    partial_files: list[Path] = field(default_factory=list)
    elapsed_s: float = 0.0


def run_writers(
    root: Path,
    *,
    writers: int,
    rate: float,
    duration: float | None = None,
    games: int | None = None,
    seed: int = 0,
    dialect: str = "mixed",
    configs: Sequence[str] | None = None,
    partial_every: int = 0,
    kill_mid_line: bool = False,
    small: bool = False,
    rotate_every: int = 0,
) -> WritersResult:
    """Run ``writers`` writer processes appending games under ``root``; wait for them all.

    Together they write about ``rate`` games per second (``rate <= 0``: each as fast
    as it can), each into its own file(s) in a RingRift-like folder, until
    ``duration`` seconds or ``games`` games in total; with neither, until SIGINT or
    SIGTERM reaches this process (while it runs in the main thread), which stops
    the writers cleanly and the result is returned. See :func:`writer_main` for
    ``partial_every``, ``rotate_every`` and the line format. With ``kill_mid_line``
    each writer ends by writing half a line and is then SIGKILLed, so its file ends
    unfinished.

    Writers are OS processes, ``python -m ringd.sim`` children in their own session
    (a terminal's Ctrl-C reaches only this process, which stops them with SIGTERM).
    Raises ``RuntimeError`` if a writer fails.
    """
    if writers < 1:
        raise ValueError("writers must be >= 1")
    if games is not None and games < 0:
        raise ValueError("games must be >= 0")
    cfgs = check_configs(configs)
    check_dialect(dialect)
    quotas: list[int | None] = [None] * writers
    if games is not None:
        writers = max(1, min(writers, games))
        quotas = [games // writers + (1 if i < games % writers else 0) for i in range(writers)]
    per_writer_rate = rate / writers if rate > 0 else 0.0
    specs: list[dict[str, object]] = [
        {
            "root": str(root),
            "index": i,
            "rate": per_writer_rate,
            "duration": duration,
            "games": quotas[i],
            "seed": seed,
            "dialect": dialect,
            "configs": cfgs,
            "partial_every": partial_every,
            "kill_mid_line": kill_mid_line,
            "small": small,
            "rotate_every": rotate_every,
        }
        for i in range(writers)
    ]
    started = time.monotonic()
    summaries = _run_children(specs, kill_mid_line=kill_mid_line)
    return _add_up(summaries, time.monotonic() - started)


def _child_env() -> dict[str, str]:
    # The children import ringd from wherever this process did, installed or not:
    # put the folder holding the ringd package (ringd/sim/writers.py, 2 levels up) first.
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return env


def _run_children(
    specs: Sequence[Mapping[str, object]], *, kill_mid_line: bool
) -> list[dict[str, Any]]:
    """Run one writer child per spec until each reports; their summaries, in spec order."""
    env = _child_env()
    procs: list[subprocess.Popen[bytes]] = []
    stopping: list[bool] = []

    def stop_all() -> None:
        stopping.append(True)
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    summaries: list[dict[str, Any]] = []
    errors: list[str] = []
    restore = _stop_on_signals(stop_all)
    try:
        for spec in specs:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "ringd.sim", CHILD_FLAG, json.dumps(spec)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    env=env,
                    start_new_session=True,
                )
            )
            if stopping:
                stop_all()  # a signal came while writers were still being started
        # Reading one child after another is fine: they all run meanwhile, and a
        # kill_mid_line child just waits until its turn to be killed.
        for i, proc in enumerate(procs):
            assert proc.stdout is not None
            report = proc.stdout.readline()
            if kill_mid_line and report:
                proc.kill()
            proc.stdout.close()
            proc.wait()
            message: dict[str, Any] = json.loads(report) if report.strip() else {}
            if "error" in message:
                errors.append(f"writer {i} failed:\n{message['error']}")
            elif not message:
                errors.append(f"writer {i} exited ({proc.returncode}) without a report")
            else:
                summaries.append(message)
    finally:
        restore()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if errors:
        raise RuntimeError("\n".join(errors))
    return summaries


def _add_up(summaries: Sequence[Mapping[str, Any]], elapsed_s: float) -> WritersResult:
    per_file: dict[Path, int] = {}
    per_config: dict[str, int] = {}
    partial_files: list[Path] = []
    for summary in summaries:
        for name, count in summary["files"].items():
            per_file[Path(name)] = per_file.get(Path(name), 0) + count
        for config, count in summary["per_config"].items():
            per_config[config] = per_config.get(config, 0) + count
        if summary["partial"] is not None:
            partial_files.append(Path(summary["partial"]))
    return WritersResult(
        files=sorted(per_file),
        games=sum(s["games"] for s in summaries),
        bytes=sum(s["bytes"] for s in summaries),
        per_file=per_file,
        per_config=ordered_counts(per_config),
        partial_files=sorted(partial_files),
        elapsed_s=elapsed_s,
    )


def _stop_on_signals(on_stop: Callable[[], None]) -> Callable[[], None]:
    """Route SIGINT/SIGTERM to ``on_stop`` while writers run; returns the restorer."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(_signum: int, _frame: FrameType | None) -> None:
        on_stop()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for s, h in previous.items():
            signal.signal(s, h)

    return restore
