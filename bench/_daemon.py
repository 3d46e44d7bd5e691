"""Start and stop a real `ringd run` for the benchmarks."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from ringd.cli import client


class BenchDaemon:
    def __init__(
        self, folder: Path, roots: list[Path], extra: str = "", state_dir: Path | None = None
    ) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "ringd.yaml"
        state = state_dir or folder / "var"
        self.socket = state / "ringd.sock"
        roots_yaml = ", ".join(str(r) for r in roots)
        self.config.write_text(
            f"state_dir: {state}\nwatch: {{roots: [{roots_yaml}], debounce_ms: 50}}\n"
            f"training: {{enabled: false}}\n{extra}configs:\n  square8_2p: {{threshold: 1000}}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def launch(self) -> None:
        """Start it without waiting."""
        with open(self.folder / "daemon.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ringd.cli", "run", "--config", str(self.config)],
                stdout=log,
                stderr=log,
            )

    def start(self, timeout: float = 600) -> float:
        """Start it; return the seconds until it reported ready."""
        started = time.monotonic()
        self.launch()
        assert self.proc is not None
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited; see {self.folder / 'daemon.log'}")
            try:
                if client.get_json(self.socket, "/v1/status")["daemon"]["ready"]:
                    return time.monotonic() - started
            except client.DaemonUnavailable:
                pass
            time.sleep(0.01)
        raise TimeoutError("daemon not ready")

    def status(self) -> dict:  # type: ignore[type-arg]
        return client.get_json(self.socket, "/v1/status")  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
