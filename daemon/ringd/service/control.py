"""The control server: HTTP on a Unix socket (and, optionally, /metrics on loopback TCP).

    GET /healthz      200 "ok"
    GET /v1/status    the status JSON (DESIGN.md), plus last game times and ingest rates
    GET /v1/events    JSON lines, one per event, as they happen; `daemon_stopping` last
    GET /metrics      Prometheus text
    GET /v1/jobs      recent training jobs, newest first
    GET /v1/jobs/ID/log                the job's log (stderr of the trainer)
    POST /v1/configs/NAME/trigger      train NAME now, below its threshold too
    POST /v1/configs/NAME/pause        start no job for NAME until resumed (survives restarts)
    POST /v1/configs/NAME/resume
    POST /v1/configs/NAME/publish      copy NAME's latest checkpoint to every models.publish destination
    POST /v1/remotes/NAME/pull         pull remote NAME now (backoff or not)
    GET /v1/models                     checkpoints: per config latest, counts, sizes
    POST /v1/models/validate[?path=P]  validate again (one file, or all)
    POST /v1/models/pin?path=P[&pinned=0]
    POST /v1/models/promote?path=P     make P its config's latest, over the promotion gate

`curl --unix-socket state/ringd.sock http://ringd/v1/status` works against all of it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from ringd.service.errors import OperatorError
from ringd.service.events import EventBus
from ringd.service.metrics import Metrics
from ringd.status import Status

SOCKET_MODE = 0o660
# The event stream's last line when the daemon stops (ringd.cli.client knows it too).
STREAM_END = "daemon_stopping"


# sun_path holds 108 bytes, the last one a NUL.
MAX_SOCKET_PATH = 107


class ControlError(Exception):
    """The control socket cannot be served (another daemon answers, path too long, ...)."""


class Operations(Protocol):
    """What the daemon lets operators do through the socket."""

    def status(self) -> Status: ...
    async def jobs(self) -> list[dict[str, Any]]: ...
    def job_log(self, job_id: str) -> Path: ...
    async def trigger(self, config: str) -> str: ...
    async def pause(self, config: str, paused: bool) -> str: ...
    async def models(self) -> dict[str, Any]: ...
    async def validate_models(self, path: str | None) -> str: ...
    async def pin_model(self, path: str, pinned: bool) -> str: ...
    async def promote_model(self, path: str) -> str: ...
    async def pull(self, remote: str) -> str: ...
    async def publish(self, config: str) -> str: ...


class ControlServer:
    def __init__(
        self,
        socket_path: Path,
        bus: EventBus,
        metrics: Metrics,
        metrics_tcp: tuple[str, int] | None = None,
    ) -> None:
        self._socket_path = socket_path
        self._bus = bus
        self._metrics = metrics
        self._metrics_tcp = metrics_tcp
        self._runner: web.AppRunner | None = None

    async def start(self, operations: Operations) -> None:
        """Serve `operations` on the socket (and /metrics on TCP where configured)."""
        self._ops = operations
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/v1/status", self._get_status)
        app.router.add_get("/v1/events", self._events)
        app.router.add_get("/metrics", self._get_metrics)
        app.router.add_get("/v1/jobs", self._get_jobs)
        app.router.add_get("/v1/jobs/{job}/log", self._get_job_log)
        app.router.add_post(
            "/v1/configs/{config}/{action:trigger|pause|resume|publish}", self._config_action
        )
        app.router.add_post("/v1/remotes/{remote}/pull", self._pull)
        app.router.add_get("/v1/models", self._get_models)
        app.router.add_post("/v1/models/{action:validate|pin|promote}", self._models_action)
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
        return web.Response(
            text=self._ops.status().model_dump_json(), content_type="application/json"
        )

    async def _get_jobs(self, request: web.Request) -> web.Response:
        return web.json_response({"jobs": await self._ops.jobs()})

    async def _get_job_log(self, request: web.Request) -> web.StreamResponse:
        try:
            path = self._ops.job_log(request.match_info["job"])
        except OperatorError as e:
            return web.json_response({"error": str(e)}, status=e.status)
        return web.FileResponse(path, headers={"Content-Type": "text/plain; charset=utf-8"})

    async def _get_models(self, request: web.Request) -> web.Response:
        return web.json_response(await self._ops.models())

    async def _models_action(self, request: web.Request) -> web.Response:
        path = request.query.get("path")
        try:
            action = request.match_info["action"]
            if action == "validate":
                message = await self._ops.validate_models(path)
            elif path is None:
                raise OperatorError(400, f"{action} needs ?path=CHECKPOINT")
            elif action == "promote":
                message = await self._ops.promote_model(path)
            else:
                message = await self._ops.pin_model(path, request.query.get("pinned", "1") != "0")
        except OperatorError as e:
            return web.json_response({"error": str(e)}, status=e.status)
        return web.json_response({"ok": True, "message": message})

    async def _config_action(self, request: web.Request) -> web.Response:
        config, action = request.match_info["config"], request.match_info["action"]
        try:
            if action == "trigger":
                message = await self._ops.trigger(config)
            elif action == "publish":
                message = await self._ops.publish(config)
            else:
                message = await self._ops.pause(config, action == "pause")
        except OperatorError as e:
            return web.json_response({"error": str(e)}, status=e.status)
        return web.json_response({"ok": True, "message": message})

    async def _pull(self, request: web.Request) -> web.Response:
        try:
            message = await self._ops.pull(request.match_info["remote"])
        except OperatorError as e:
            return web.json_response({"error": str(e)}, status=e.status)
        return web.json_response({"ok": True, "message": message})

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
                return response  # the follower left
        # The bus closed: the daemon stops. A last line says so, so that a follower
        # tells a clean stop from a daemon that died (its stream just breaks off).
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            await response.write(json.dumps({"event": STREAM_END}).encode() + b"\n")
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
