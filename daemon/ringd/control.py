"""The control server: HTTP on a Unix socket (and, optionally, /metrics on loopback TCP).

    GET /healthz      200 "ok"
    GET /v1/status    the status JSON (DESIGN.md), plus last game times and ingest rates
    GET /v1/events    JSON lines, one per event, as they happen
    GET /metrics      Prometheus text

`curl --unix-socket state/ringd.sock http://ringd/v1/status` works against all of it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from ringd.events import EventBus
from ringd.metrics import Metrics
from ringd.status import Status

SOCKET_MODE = 0o660


# sun_path holds 108 bytes, the last one a NUL.
MAX_SOCKET_PATH = 107


class ControlError(Exception):
    """The control socket cannot be served (another daemon answers, path too long, ...)."""


class ControlServer:
    def __init__(
        self,
        socket_path: Path,
        status: Callable[[], Status],
        bus: EventBus,
        metrics: Metrics,
        metrics_tcp: tuple[str, int] | None = None,
    ) -> None:
        self._socket_path = socket_path
        self._status = status
        self._bus = bus
        self._metrics = metrics
        self._metrics_tcp = metrics_tcp
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/v1/status", self._get_status)
        app.router.add_get("/v1/events", self._events)
        app.router.add_get("/metrics", self._get_metrics)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        if len(os.fsencode(self._socket_path)) > MAX_SOCKET_PATH:
            raise ControlError(
                f"{self._socket_path}: socket path longer than {MAX_SOCKET_PATH} bytes; "
                "set control.socket to a shorter path"
            )
        remove_stale_socket(self._socket_path)
        self._socket_path.parent.mkdir(parents=True, exist_ok=True)
        # Bind under a umask so the socket is never, even briefly, world-accessible.
        old = os.umask(0o117)
        try:
            await web.UnixSite(self._runner, str(self._socket_path)).start()
        finally:
            os.umask(old)
        os.chmod(self._socket_path, SOCKET_MODE)
        if self._metrics_tcp is not None:
            metrics_app = web.Application()
            metrics_app.router.add_get("/metrics", self._get_metrics)
            metrics_runner = web.AppRunner(metrics_app, handle_signals=False, access_log=None)
            await metrics_runner.setup()
            host, port = self._metrics_tcp
            await web.TCPSite(metrics_runner, host, port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        with contextlib.suppress(FileNotFoundError):
            self._socket_path.unlink()

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _get_status(self, request: web.Request) -> web.Response:
        return web.Response(text=self._status().model_dump_json(), content_type="application/json")

    async def _get_metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self._metrics.render(), content_type="text/plain", charset="utf-8")

    async def _events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        # A first line tells the follower it is connected (and from when).
        await response.write(json.dumps({"event": "hello"}).encode() + b"\n")
        async for event in self._bus.follow():
            try:
                await response.write(json.dumps(event.as_dict()).encode() + b"\n")
            except (ConnectionResetError, RuntimeError):
                break
        return response


def remove_stale_socket(path: Path) -> None:
    """Remove a socket file left by a crashed daemon; refuse if a daemon answers there."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ControlError(f"{path}: exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)  # nobody listens: left by a crash
        return
    finally:
        probe.close()
    raise ControlError(f"{path}: another ringd answers on this socket")
