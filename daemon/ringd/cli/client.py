"""A small synchronous client for the control socket (the CLI's side of control.py)."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class DaemonUnavailable(Exception):
    """No daemon answers on the socket."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("ringd", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self._path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _request(path: Path, method: str, url: str, timeout: float) -> http.client.HTTPResponse:
    conn = _UnixConnection(path, timeout)
    try:
        conn.request(method, url)
        return conn.getresponse()
    except (FileNotFoundError, ConnectionRefusedError) as e:
        raise DaemonUnavailable(f"no ringd answers at {path} ({e.strerror})") from None
    except OSError as e:
        raise DaemonUnavailable(f"no ringd answers at {path} ({e})") from None


class Refused(Exception):
    """The daemon answered, and said no (the message says why)."""


def get(path: Path, url: str, timeout: float = 5.0) -> bytes:
    """GET a document from the daemon."""
    return _body(_request(path, "GET", url, timeout), url)


def post_json(path: Path, url: str, timeout: float = 10.0) -> Any:
    """POST an operator's action; its JSON answer, or Refused with the daemon's reason."""
    return json.loads(_body(_request(path, "POST", url, timeout), url))


def _body(response: http.client.HTTPResponse, url: str) -> bytes:
    body = response.read()
    if response.status == 200:
        return body
    try:
        message = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        # Not one of the daemon's own answers (those are {"error": ...}): no such endpoint.
        text = body.decode(errors="replace").strip()[:200]
        message = f"the daemon answered {url} with {response.status} {response.reason}" + (
            f" ({text})" if text and text != f"{response.status}: {response.reason}" else ""
        )
    raise Refused(message)


def get_json(path: Path, url: str, timeout: float = 5.0) -> Any:
    """GET a JSON document from the daemon."""
    return json.loads(get(path, url, timeout))


# The last line of the event stream when the daemon stops normally (control.py).
STREAM_END = "daemon_stopping"


def follow(path: Path, url: str = "/v1/events") -> Iterator[dict[str, Any]]:
    """Each JSON line of a streaming endpoint, as it arrives, until the daemon says it
    stops; a stream that breaks off before (the daemon was killed) is DaemonUnavailable."""
    response = _request(path, "GET", url, timeout=3600 * 24)
    try:
        while line := response.readline():
            event = json.loads(line)
            yield event
            if event.get("event") == STREAM_END:
                return
    except (OSError, http.client.HTTPException) as e:
        raise DaemonUnavailable(f"the event stream from {path} broke off ({e!r})") from None
    raise DaemonUnavailable(
        f"the event stream from {path} broke off: the daemon died without stopping"
    )
