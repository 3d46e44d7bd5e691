"""Warnings about a valid configuration (`ringd check-config`): it loads, but will it work?

Errors make a configuration invalid (settings.py); these only warn: an empty
file or no configurations (ringd counts but never trains), and folders the
daemon must write to that it cannot write to, either as the current user or
under the systemd unit's `ProtectSystem=strict`, where everything outside
`StateDirectory=`, `RuntimeDirectory=` and `ReadWritePaths=` is read-only.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from ringd.settings import Settings

# Where the shipped unit (systemd/ringd.service) lets the daemon write: its
# StateDirectory=, RuntimeDirectory= and ReadWritePaths=. An installed unit is read
# instead (UNIT_PATHS), with the drop-ins of `systemctl edit ringd`.
SERVICE_WRITABLE = ("/var/lib/ringd", "/run/ringd", "/srv/ringrift")
UNIT_NAME = "ringd.service"
UNIT_DIRS = (
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
)
# A config here is meant for the service (the unit's ExecStart reads /etc/ringd/ringd.yaml).
SERVICE_CONFIG_DIR = Path("/etc/ringd")


def warnings(settings: Settings, config: Path, text: str | None = None) -> list[str]:
    """What may not work with this valid configuration, one line each."""
    out: list[str] = []
    if text is not None and not _has_content(text):
        out.append(f"{config}: the file sets nothing: every key has its default")
    if not settings.configs:
        out.append(
            f"{config}: no configurations under `configs:`: ringd counts games but never trains "
            "(add e.g. `configs: {square8_2p: {threshold: 500}}`)"
        )
    writable, unit = service_writable_paths()
    for what, path in _written_paths(settings):
        if not _user_can_create(path):
            out.append(f"{config}: {what} {path}: not writable by {_user()}")
        if (unit is not None or _meant_for_service(config)) and not _under(path, writable):
            source = unit or "systemd/ringd.service"
            out.append(
                f"{config}: {what} {path}: read-only for the service ({source} has "
                f"ProtectSystem=strict; writable: {', '.join(writable)}): use an absolute path "
                "there or add it to ReadWritePaths= (systemctl edit ringd)"
            )
    return out


def _has_content(text: str) -> bool:
    return any(line.strip() and not line.lstrip().startswith("#") for line in text.splitlines())


def _written_paths(settings: Settings) -> Iterator[tuple[str, Path]]:
    yield "state_dir", settings.state_dir
    if settings.control.socket is not None:
        yield "control.socket's folder", settings.control.socket.parent
    for i, mapping in enumerate(settings.ramdisk):
        yield f"ramdisk[{i}].target", mapping.target


def _user_can_create(path: Path) -> bool:
    """Can this user write `path`, or create it in its nearest existing ancestor?"""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate.is_dir() and os.access(candidate, os.W_OK | os.X_OK)
    return False


def _user() -> str:
    try:
        import pwd

        return f"user {pwd.getpwuid(os.geteuid()).pw_name}"
    except (ImportError, KeyError):
        return f"uid {os.geteuid()}"


def _meant_for_service(config: Path) -> bool:
    return _under(config.resolve(), [str(SERVICE_CONFIG_DIR)])


def _under(path: Path, folders: Iterable[str]) -> bool:
    return any(path == Path(f) or path.is_relative_to(f) for f in folders)


def service_writable_paths(
    unit_dirs: Iterable[str] | None = None,
) -> tuple[list[str], str | None]:
    """The folders the service may write: from the installed unit (and its drop-ins)
    if there is one, else the shipped unit's. Returns them and the unit's path."""
    for folder in UNIT_DIRS if unit_dirs is None else unit_dirs:
        unit = Path(folder) / UNIT_NAME
        if unit.is_file():
            texts = [unit.read_text(errors="replace")]
            dropins = Path(folder) / f"{UNIT_NAME}.d"
            if dropins.is_dir():
                texts += [p.read_text(errors="replace") for p in sorted(dropins.glob("*.conf"))]
            return unit_writable_paths("\n".join(texts)), str(unit)
    return list(SERVICE_WRITABLE), None


def unit_writable_paths(text: str) -> list[str]:
    """StateDirectory=, RuntimeDirectory=, CacheDirectory=, LogsDirectory= and
    ReadWritePaths= of a unit (and its drop-ins), as absolute folders."""
    bases = {
        "StateDirectory": "/var/lib",
        "RuntimeDirectory": "/run",
        "CacheDirectory": "/var/cache",
        "LogsDirectory": "/var/log",
    }
    managed: list[str] = []
    read_write: list[str] = []
    for raw in text.splitlines():
        key, sep, value = raw.strip().partition("=")
        if not sep or key.startswith(("#", ";")):
            continue
        if key in bases:
            managed += [os.path.join(bases[key], word) for word in value.split()]
        elif key == "ReadWritePaths":
            if not value.strip():
                read_write = []  # an empty assignment resets the list (drop-ins)
            read_write += [word.lstrip("-+") for word in value.split()]
    return managed + read_write
