"""`ringd demo`: simulated selfplay and a real ringd daemon, side by side, on a demo tree."""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from ringd.cli import client
from ringd.cli.render import view
from ringd.settings import load_settings
from ringd.status import Status

REFRESH_S = 0.5
START_TIMEOUT_S = 30.0


def prepare(folder: Path) -> Path:
    """Create the demo tree with its configuration; return the config file."""
    (folder / "data" / "selfplay").mkdir(parents=True, exist_ok=True)
    config = folder / "ringd.yaml"
    if not config.exists():
        config.write_text(resources.files("ringd.cli").joinpath("demo.yaml").read_text())
    return config


def run_demo(
    folder: Path, *, duration: float | None, writers: int, rate: float, console: Console
) -> int:
    """Run the daemon and selfplay writers until Ctrl-C or `duration`; show the live table."""
    # One script of what a person sees, start to end: it reads best as one function.
    config = prepare(folder)
    settings = load_settings(config)
    log = open(folder / "ringd.log", "ab")  # noqa: SIM115 - lives as long as the daemon
    python = sys.executable
    # Own sessions: the terminal's Ctrl-C is for this process alone, which then
    # stops the writers and shows the final count before stopping the daemon.
    daemon = subprocess.Popen(
        [python, "-m", "ringd.cli", "run", "--config", str(config)],
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    sim_args = [python, "-m", "ringd.sim", str(settings.watch.roots[0] / "demo")]
    sim_args += ["--writers", str(writers), "--rate", str(rate), "--seed", str(time.time_ns())]
    sim_args += ["--configs", ",".join(settings.configs)]
    if duration is not None:
        sim_args += ["--duration", str(duration)]
    sim = None
    try:
        if not _wait_for_daemon(settings.socket_path, daemon):
            console.print(f"[red]the daemon did not start; see {folder / 'ringd.log'}[/]")
            return 1
        # Games already in the ledger: a demo run before this one in the same folder.
        before = _status(settings.socket_path).total_games
        console.print(
            f"ringd demo: daemon pid {daemon.pid} on {settings.socket_path}; {writers} selfplay "
            f"writers at {rate:g} games/s into {settings.watch.roots[0]}"
            + (f" for {duration:g}s" if duration else "; Ctrl-C stops")
        )
        sim = subprocess.Popen(
            sim_args,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        with (
            Live(console=console, auto_refresh=False) as live,
            contextlib.suppress(KeyboardInterrupt),
        ):
            while sim.poll() is None:
                live.update(_screen(settings.socket_path, folder), refresh=True)
                time.sleep(REFRESH_S)
        written = _stop_writers(sim)
        # Every game the writers finished is counted: wait for the last ones.
        status = _status(settings.socket_path)
        deadline = time.monotonic() + 10
        while (
            written is not None
            and status.total_games - before < written
            and time.monotonic() < deadline
        ):
            time.sleep(0.05)
            status = _status(settings.socket_path)
        console.print(view(status))
        if written is not None:
            console.print(
                f"writers wrote {written:,} games; ringd counted {status.total_games - before:,} "
                "new games"
                + (
                    f" ({status.total_games:,} in all: {before:,} from earlier demo runs in "
                    f"{folder})"
                    if before
                    else ""
                ),
                soft_wrap=True,
            )
        console.print(
            f"ledger and daemon log are in {folder}; `ringd scan --config {config}` "
            "shows the counts again",
            soft_wrap=True,
        )
        return 0
    finally:
        if sim is not None and sim.poll() is None:
            sim.kill()
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(15)
        except subprocess.TimeoutExpired:
            daemon.kill()
        log.close()


def _wait_for_daemon(socket_path: Path, daemon: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and daemon.poll() is None:
        try:
            if client.get_json(socket_path, "/v1/status").get("daemon", {}).get("ready"):
                return True
        except client.DaemonUnavailable:
            pass
        time.sleep(0.05)
    return False


def _status(socket_path: Path) -> Status:
    return Status.model_validate(client.get_json(socket_path, "/v1/status"))


def _screen(socket_path: Path, folder: Path) -> Group:
    try:
        status = _status(socket_path)
    except client.DaemonUnavailable as e:
        return Group(Text(f"daemon not answering: {e}; see {folder / 'ringd.log'}", style="red"))
    rate = sum(r.games_per_s or 0.0 for r in status.configs)
    return Group(view(status), Text(f"ingest {rate:.1f} games/s over the last minute", style="dim"))


def _stop_writers(sim: subprocess.Popen[str]) -> int | None:
    """Stop the simulator (it stops its writers cleanly); the games they completed."""
    if sim.poll() is None:
        sim.send_signal(signal.SIGTERM)
    out, _ = sim.communicate(timeout=30)
    match = re.search(r"ringd sim writers: (\d+) games", out)
    return int(match.group(1)) if match else None
