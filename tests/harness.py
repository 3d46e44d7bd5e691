"""What the tests share: real files, the ringd CLI, the daemon as a process or in-process.

Imported by name (`from harness import ...`); pytest fixtures live in conftest.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from ringd import app
from ringd.service.notify import Notifier
from ringd.service.supervisor import Supervisor
from ringd.settings import load_settings

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO.parent / "shared" / "fixtures" / "ringrift-golden"


def game_line(board: str, players: int, i: int, *, dialect: str = "camel", pad: int = 0) -> bytes:
    """A small valid game record as one JSONL line (newline included)."""
    if dialect == "camel":
        record: dict[str, object] = {"id": f"g{i}", "boardType": board, "numPlayers": players}
    else:
        record = {"game_id": f"g{i}", "board_type": board, "num_players": players}
    # A game's identity is its moves: `thinkTimeMs` makes game i's moves its own.
    record["moves"] = [{"to": {"x": i % 8, "y": (i // 8) % 8}, "thinkTimeMs": i}] + [
        {"pad": "x" * pad}
    ] * bool(pad)
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def append(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as f:
        f.write(data)


def write_config(folder: Path, extra: str = "", configs: str | None = None) -> Path:
    path = folder / "ringd.yaml"
    if configs is None:
        configs = "  square8_2p: {threshold: 10}\n  hex8_2p: {threshold: 5}\n  hexagonal_2p: {threshold: 5}\n"
    path.write_text(
        "state_dir: var\nwatch:\n  roots: [data/selfplay]\ntraining:\n  enabled: false\n  devices: cpu\n"
        + extra
        + "configs:\n"
        + configs
    )
    return path


def ringd(
    *args: str,
    check: bool = False,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    cwd: Path | None = None,
    prefix: list[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the ringd CLI in a real subprocess (`prefix`: e.g. setpriv, fewer privileges)."""
    return subprocess.run(
        [*(prefix or []), sys.executable, "-m", "ringd.cli", *args],
        capture_output=True,
        text=True,
        check=check,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


# Root reads and writes anywhere: run as root without the capabilities that let it,
# to see what an operator's service user sees (setpriv is util-linux's).
WITHOUT_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


class DaemonProcess:
    """A real `ringd run` child with a NOTIFY_SOCKET bound by the test."""

    def __init__(self, folder: Path, env: dict[str, str] | None = None) -> None:
        self.folder = folder
        self.config = folder / "ringd.yaml"
        self.socket = folder / "var" / "ringd.sock"
        self.log = folder / "daemon.log"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify_path = folder / "notify.sock"
        self.notify_path.unlink(missing_ok=True)
        self.notify.bind(str(self.notify_path))
        self.messages: list[str] = []
        # Read every datagram at once, as systemd does: a full queue would make
        # the daemon drop messages (it never blocks on them).
        self._arrived = threading.Condition()
        self._seen = 0
        self._closed = False
        threading.Thread(target=self._receive, daemon=True).start()
        self._env = {**os.environ, "NOTIFY_SOCKET": str(self.notify_path), **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.prefix: list[str] = []  # e.g. setpriv, to run it with fewer privileges

    def start(self, wait_ready: bool = True) -> DaemonProcess:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    *self.prefix,
                    sys.executable,
                    "-m",
                    "ringd.cli",
                    "run",
                    "--config",
                    str(self.config),
                ],
                stdout=log,
                stderr=log,
                env=self._env,
            )
        if wait_ready:
            self.wait_message("READY=1")
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _receive(self) -> None:
        self.notify.settimeout(0.2)
        while not self._closed:
            try:
                message = self.notify.recv(65536).decode()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._arrived:
                self.messages.append(message)
                self._arrived.notify_all()

    def wait_message(self, needle: str, timeout: float = 30.0, *, prefix: bool = False) -> str:
        """The next notify datagram with a line `needle` (or starting with it, with `prefix`).

        "Next": after the one the previous call returned. All are kept in .messages.
        """
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                for i in range(self._seen, len(self.messages)):
                    lines = self.messages[i].split("\n")
                    if needle in lines or (
                        prefix and any(line.startswith(needle) for line in lines)
                    ):
                        self._seen = i + 1
                        return self.messages[i]
                assert self.proc is not None
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._arrived.wait(0.2)):
                    state = "exited" if self.proc.poll() is not None else "running"
                    raise AssertionError(
                        f"no {needle!r} within {timeout}s (daemon {state}); got {self.messages}\n"
                        f"{self.log.read_text()}"
                    )
                self._arrived.wait(min(left, 0.5))

    def status(self) -> dict[str, Any]:
        from ringd.cli.client import get_json

        result: dict[str, Any] = get_json(self.socket, "/v1/status")
        return result

    def configs(self) -> dict[str, dict[str, Any]]:
        return {c["name"]: c for c in self.status()["configs"]}

    def wait_until(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 20.0
    ) -> dict[str, Any]:
        """Poll the status until `predicate` holds (a deadline, not a sleep)."""
        deadline = time.monotonic() + timeout
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = self.status()
            if predicate(status):
                return status
            time.sleep(0.02)
        raise AssertionError(
            f"condition not met within {timeout}s; last status: {json.dumps(status)[:2000]}"
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._closed = True
        self.notify.close()


READY_TIMEOUT_S = 30.0


@contextlib.asynccontextmanager
async def running_daemon(config: Path) -> AsyncIterator[Supervisor]:
    """The daemon in this process and event loop, READY, stopped on exit (like uvicorn's
    `run_server`): for tests of reload, trigger, pause, status and events that need no
    real process. Signals are left alone; `reload()` stands in for SIGHUP.
    """
    supervisor = app.build(config, load_settings(config), notifier=Notifier(None))
    serving = asyncio.create_task(supervisor.serve(install_signals=False))
    ready = asyncio.create_task(supervisor.ready.wait())
    await asyncio.wait(
        {serving, ready}, timeout=READY_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
    )
    if not ready.done() and not serving.done():
        serving.cancel()
        raise AssertionError(f"no READY within {READY_TIMEOUT_S}s; tasks:\n{_task_stacks()}")
    if serving.done():
        ready.cancel()
        serving.result()  # the start-up error
        raise AssertionError("the daemon stopped before READY")
    try:
        yield supervisor
    finally:
        supervisor.stop()
        done, _ = await asyncio.wait({serving}, timeout=READY_TIMEOUT_S)
        if not done:
            raise AssertionError(f"no stop within {READY_TIMEOUT_S}s; tasks:\n{_task_stacks()}")
        serving.result()


def _task_stacks() -> str:
    return "\n\n".join(
        f"{task.get_name()}:\n"
        + "".join(traceback.format_list(traceback.extract_stack(frame)[-3:]))
        for task in asyncio.all_tasks()
        for frame in task.get_stack()[-1:]
    )


async def until(
    supervisor: Supervisor, predicate: Callable[[dict[str, Any]], bool], timeout: float = 20.0
) -> dict[str, Any]:
    """Poll the in-process daemon's status JSON until `predicate` holds (a deadline)."""
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = supervisor.status().model_dump(mode="json")
        if predicate(status):
            return status
        await asyncio.sleep(0.02)
    raise AssertionError(
        f"condition not met within {timeout}s; last status: {json.dumps(status)[:2000]}"
    )
