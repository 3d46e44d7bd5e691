"""`ringd demo`: simulated selfplay writers and ringd, side by side, on a demo tree."""

from __future__ import annotations

import threading
import time
from importlib import resources
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from ringd.ledger import Ledger
from ringd.settings import load_settings
from ringd.sim import WritersResult, run_writers
from ringd.status import Status, build_status, view
from ringd.watch import scan


def prepare(folder: Path) -> Path:
    """Create the demo tree with its configuration; return the config file."""
    (folder / "data" / "selfplay").mkdir(parents=True, exist_ok=True)
    config = folder / "ringd.yaml"
    if not config.exists():
        config.write_text(resources.files("ringd").joinpath("demo.yaml").read_text())
    return config


def run_demo(
    folder: Path, *, duration: float, writers: int, rate: float, console: Console
) -> Status:
    """Run writers for `duration` seconds while indexing what they write every second."""
    config = prepare(folder)
    settings = load_settings(config)
    console.print(
        f"ringd demo: {writers} selfplay writers at {rate:g} games/s into "
        f"{settings.watch.roots[0]} for {duration:g}s (config {config})"
    )
    result: list[WritersResult] = []
    writer = threading.Thread(
        target=lambda: result.append(
            run_writers(
                settings.watch.roots[0],
                writers=writers,
                rate=rate,
                duration=duration,
                seed=int(time.time()),
            )
        ),
        daemon=True,
    )
    writer.start()
    with Ledger(settings.ledger_path) as ledger, Live(console=console, auto_refresh=False) as live:
        while True:
            alive = writer.is_alive()
            report = scan(ledger, settings.watch.roots, settings.watch.max_line_bytes)
            status = build_status(
                ledger.config_counts(), settings, ledger.reject_counts(), config_file=str(config)
            )
            live.update(
                Group(
                    view(status),
                    Text(
                        f"last scan: {report.new_total} new games in {report.seconds * 1000:.0f} ms",
                        style="dim",
                    ),
                ),
                refresh=True,
            )
            if not alive:
                break
            time.sleep(1.0)
    console.print()
    if result:
        console.print(
            f"writers wrote {result[0].games:,} games; ringd counted {status.total_games:,} in all"
        )
    return status
