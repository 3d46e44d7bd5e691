"""The YAML configuration: pydantic models, loading, and errors that name file:line."""

from __future__ import annotations

import ipaddress
import os.path
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    ValidationInfo,
    model_validator,
)

# The job spec's hyperparameters: a torch-free contract module, validated here so
# a typo in the YAML is an error at load, with its line.
from ringd.boards import (
    BOARD_NAME,
    BOARD_NAME_RULE,
    BOARDS,
    DEFAULT_ALIASES,
    MAX_PLAYERS,
    split_config_name,
)
from ringd.records import DEFAULT_MAX_LINE_BYTES, DEFAULT_UNFINISHED_STATUSES, Rules
from ringd.rsync import RSYNC, SSH, parse_endpoint
from ringd.train.spec import Hyper


class ConfigError(Exception):
    """An invalid configuration; `errors` holds one `file:line: key.path: message` each."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def _check_config_name(name: str) -> str:
    if split_config_name(name) is None:
        raise ValueError(
            f"{name!r} is not a configuration name: expected {{board}}_{{n}}p, e.g. square8_2p "
            f"(board {BOARD_NAME_RULE}; n from 1 to {MAX_PLAYERS})"
        )
    return name


def _resolve(path: Path, info: ValidationInfo) -> Path:
    # Relative paths are relative to the config file's folder, not the cwd,
    # so the daemon behaves the same under systemd and from a shell.
    base = (info.context or {}).get("base_dir")
    path = path.expanduser()
    if base is not None and not path.is_absolute():
        path = Path(base) / path
    return Path(os.path.normpath(path))


def _check_board_name(name: str) -> str:
    if not BOARD_NAME.match(name):
        raise ValueError(f"{name!r} is not a board name ({BOARD_NAME_RULE})")
    return name


def _check_status(status: str) -> str:
    if not status.strip():
        raise ValueError("a status must not be empty")
    return status.strip().lower()


ConfigPath = Annotated[Path, AfterValidator(_resolve)]
ConfigName = Annotated[str, AfterValidator(_check_config_name)]
BoardName = Annotated[str, AfterValidator(_check_board_name)]
Status = Annotated[str, AfterValidator(_check_status)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WatchSettings(_Model):
    # validate_default: the default resolves against the config file's folder too.
    roots: list[ConfigPath] = Field(
        default_factory=lambda: [Path("data/selfplay")], validate_default=True
    )
    debounce_ms: StrictInt = Field(default=50, ge=0, le=60_000)
    rescan_interval_s: float = Field(default=60.0, gt=0)
    # inotify sees no writes made by other NFS clients; polling does.
    force_polling: bool = False
    max_line_bytes: StrictInt = Field(default=DEFAULT_MAX_LINE_BYTES, ge=1024)


class RamdiskMapping(_Model):
    source: ConfigPath
    target: ConfigPath
    # A game is fsynced to the target within this long of its newline.
    flush_interval_ms: StrictInt = Field(default=500, ge=1, le=60_000)
    # A full pass over the source tree catches what watch events miss.
    sweep_interval_s: float = Field(default=5.0, gt=0)
    # Free RAM: delete sources fully copied and unchanged this long (off by default).
    delete_source_after_s: float | None = Field(default=None, gt=0)


class RecordSettings(_Model):
    """How lines become games (records.Rules)."""

    # Board names some writers put in records -> RingRift's board. Replaces the
    # default map whole: list the defaults you keep.
    board_aliases: dict[BoardName, BoardName] = Field(default=dict(DEFAULT_ALIASES))
    # A `status`/`game_status` (or a part of a `termination_reason` such as
    # `status:completed:in_progress`) among these: rejected as `unfinished`.
    unfinished_statuses: list[Status] = Field(default=list(DEFAULT_UNFINISHED_STATUSES))


def _check_devices(value: object) -> object:
    if value in ("auto", "cpu"):
        return value
    if (
        isinstance(value, list)
        and value
        and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value)
    ):
        return value
    raise ValueError(f"must be auto, cpu or a list of GPU indices such as [0, 1] (got {value!r})")


Devices = Annotated[Literal["auto", "cpu"] | list[int], BeforeValidator(_check_devices)]


class WindowSettings(_Model):
    """How many of a config's most recent games a job trains on (a KataGo-like taper)."""

    min_games: StrictInt = Field(default=10_000, ge=1)
    max_games: StrictInt = Field(default=500_000, ge=1)
    alpha: float = Field(default=0.75, gt=0, le=1)
    beta: float = Field(default=0.4, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> WindowSettings:
        if self.max_games < self.min_games:
            raise ValueError(
                f"max_games ({self.max_games}) must be >= min_games ({self.min_games})"
            )
        return self


class HoldoutSettings(_Model):
    """Each config's held-out slice: never trained on; every job is measured on it."""

    # Share of games held out, by key (ringd.train.holdout): the slice never changes as
    # games arrive. Changing it moves games in or out of the slice.
    fraction: float = Field(default=0.02, ge=0, le=0.5)
    # The most recent held-out games of the config each job evaluates on.
    games: StrictInt = Field(default=100, ge=1)
    # With fewer held-out samples the metrics are shown, but promotion does not gate on them.
    min_samples: StrictInt = Field(default=200, ge=0)


def _check_endpoint_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, e.g. node0:29400 (got {value!r})")
    return value


class LauncherSettings(_Model):
    """One job over several hosts: torchrun agents meeting at a c10d rendezvous.

    The daemon runs `prefix` + `torchrun --nnodes=N --rdzv-backend=c10d ...`; the prefix
    (Slurm's `srun`, a site script) starts one agent on each of the job's hosts. The
    spec, the samples and the output folder must be on storage every host shares.
    """

    nnodes: StrictInt = Field(ge=1, le=1024)
    rdzv_endpoint: Annotated[str, AfterValidator(_check_endpoint_port)]
    # Restarts of the whole job after a rank fails (each resumes from its last checkpoint).
    max_restarts: StrictInt = Field(default=0, ge=0, le=100)
    # argv that places one torchrun agent per host, e.g. [srun, --nodes=2, --ntasks-per-node=1].
    prefix: list[str] = Field(default_factory=list)


class SampleCacheSettings(_Model):
    """The trainer's sample cache (state_dir/samples): bounded per config."""

    # After each job, drop from the config's cache the games outside that job's window
    # and held-out set, once they take more than this share on top of the window.
    compact: bool = True
    margin: float = Field(default=0.25, ge=0, le=10)


class TrainingSettings(_Model):
    enabled: bool = True
    # One job slot per entry: `auto` finds the GPUs, `cpu` is one CPU slot.
    devices: Devices = "auto"
    # > 1: one job over that many GPUs (torchrun + DDP); the slots become groups of that
    # many GPUs (a GPU left over forms no slot). On a CPU slot: that many processes (gloo).
    gpus_per_job: StrictInt = Field(default=1, ge=1, le=64)
    # Several hosts per job (torchrun's c10d rendezvous); null: the job stays on this host.
    launcher: LauncherSettings | None = None
    # argv of a custom trainer; the job spec's path is appended.
    command: list[str] | None = None
    encoder: str = "grid"
    # The trainer's hyperparameters, written into each job spec (docs/training-job.md).
    hyper: Hyper = Field(default_factory=Hyper)
    window: WindowSettings = Field(default_factory=WindowSettings)
    holdout: HoldoutSettings = Field(default_factory=HoldoutSettings)
    sample_cache: SampleCacheSettings = Field(default_factory=SampleCacheSettings)
    timeout_s: float = Field(default=6 * 3600, gt=0)
    # SIGTERM, then this long to save a resumable checkpoint, then SIGKILL.
    grace_s: float = Field(default=60, gt=0)
    min_interval_s: float = Field(default=0, ge=0)
    backoff_base_s: float = Field(default=60, gt=0)
    backoff_cap_s: float = Field(default=3600, gt=0)


class ConfigEntry(_Model):
    # Strict: `true`, "100" and 10.0 are not thresholds (lax mode took them as 1, 100, 10).
    threshold: StrictInt = Field(ge=1)


def _check_loopback(value: str) -> str:
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, e.g. 127.0.0.1:9108 (got {value!r})")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise ValueError(f"{host!r} is not a loopback address: metrics are served on loopback only")
    return value


# -- rsync: remotes (pull games) and publish destinations (push models) ------------------

REMOTE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_BWLIMIT = re.compile(r"^\d+(\.\d+)?[KMGkmg]?$")


def _check_remote_name(name: str) -> str:
    # It names a folder (roots[0]/remote/NAME) and a metrics label.
    if not REMOTE_NAME.match(name):
        raise ValueError(
            f"{name!r}: a remote's name is [a-z0-9][a-z0-9_.-]*, at most 64 characters"
        )
    return name


def _check_endpoint(value: str, info: ValidationInfo) -> str:
    endpoint = parse_endpoint(value)
    if endpoint.kind == "local":
        return str(_resolve(Path(endpoint.spec), info)).rstrip("/") + "/"
    return endpoint.spec


def _check_bwlimit(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return str(value)
    if isinstance(value, str) and _BWLIMIT.match(value):
        return value
    raise ValueError(f"expected KiB/s or a rate such as 10M (got {value!r})")


def _check_ssh_value(value: str) -> str:
    # The ssh command reaches rsync as one string it splits at spaces, honouring
    # single quotes; a quote in a value would end the quoting early.
    if "'" in value or '"' in value or "\n" in value:
        raise ValueError(f"{value!r}: quotes and newlines are not allowed here")
    return value


def _check_ssh_path(path: Path) -> Path:
    _check_ssh_value(str(path))
    return path


def _check_ssh_option(value: str) -> str:
    if not re.match(r"^[A-Za-z][A-Za-z0-9]*=\S", value):
        raise ValueError(f"{value!r}: expected an ssh -o option, Key=Value")
    return _check_ssh_value(value)


RsyncEndpoint = Annotated[str, AfterValidator(_check_endpoint)]
Bwlimit = Annotated[str, BeforeValidator(_check_bwlimit)]
SshPath = Annotated[Path, AfterValidator(_resolve), AfterValidator(_check_ssh_path)]


class SshSettings(_Model):
    """How rsync reaches host:/path/ endpoints (ssh's own ~/.ssh/config applies too)."""

    user: Annotated[str, AfterValidator(_check_ssh_value)] | None = None
    port: StrictInt | None = Field(default=None, ge=1, le=65535)
    # IdentityFile of the ringd user, e.g. /var/lib/ringd/.ssh/id_ed25519
    key: SshPath | None = None
    known_hosts: SshPath | None = None  # UserKnownHostsFile
    options: list[Annotated[str, AfterValidator(_check_ssh_option)]] = Field(default_factory=list)


class _RsyncSettings(_Model):
    ssh: SshSettings = Field(default_factory=SshSettings)
    # rsync daemons: the password file (mode 0600); RSYNC_PASSWORD in the environment works too.
    password_file: ConfigPath | None = None
    bwlimit: Bwlimit | None = None  # rsync's --bwlimit: KiB/s, or 10M
    # A whole pull's (or publish's) wall-clock limit: longer than the biggest file takes.
    timeout_s: float = Field(default=3600.0, gt=0)
    backoff_cap_s: float = Field(default=600.0, gt=0)  # retries after failures: doubling, capped


class RemoteSettings(_RsyncSettings):
    """A host whose selfplay games are pulled into a watched root."""

    name: Annotated[str, AfterValidator(_check_remote_name)]
    source: RsyncEndpoint  # host:/path/, rsync://host/module/path/ or a local folder
    interval_s: float = Field(default=30.0, gt=0)
    target: ConfigPath | None = None  # default: roots[0]/remote/NAME; must be under a watched root


class PublishDestination(_RsyncSettings):
    """Where each new validated `latest` checkpoint is copied (DEST/CONFIG/...)."""

    dest: RsyncEndpoint


def _destination(value: object) -> object:
    return {"dest": value} if isinstance(value, str) else value


class ModelsSettings(_Model):
    """The checkpoint registry."""

    # Also register *.pt / *.pth below these (ringd never removes files it did not write).
    dirs: list[ConfigPath] = Field(default_factory=list)
    # Per config, the newest `keep` validated checkpoints of ringd's own are kept...
    keep: StrictInt = Field(default=5, ge=1)
    # ...and older ones deleted only with `delete_old` (pinned ones never).
    retention: Literal["keep_all", "delete_old"] = "keep_all"
    # Which validated checkpoints of jobs become `latest` (ringd.promote): every one, one
    # whose held-out loss is within promote_tolerance of latest's, or a site's gate
    # (promote_command + candidate + current latest; exit 0 promotes).
    promote: Literal["always", "if_not_worse", "command"] = "if_not_worse"
    promote_tolerance: float = Field(default=0.02, ge=0)
    promote_command: list[str] | None = None
    promote_timeout_s: float = Field(default=600.0, gt=0)

    @model_validator(mode="after")
    def _gate(self) -> ModelsSettings:
        if self.promote == "command" and not self.promote_command:
            raise ValueError("promote: command needs promote_command (the gate's argv)")
        return self

    # Child processes validating new or changed files at once (lowest I/O priority).
    validate_concurrency: StrictInt = Field(default=1, ge=1, le=16)
    # rsync destinations (host:/path/, rsync://..., a folder) of every new validated latest.
    publish: list[Annotated[PublishDestination, BeforeValidator(_destination)]] = Field(
        default_factory=list
    )


class ControlSettings(_Model):
    socket: ConfigPath | None = None
    # Optional TCP listener for Prometheus scrapes of /metrics; loopback only.
    metrics_listen: Annotated[str, AfterValidator(_check_loopback)] | None = None

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        if self.metrics_listen is None:
            return None
        host, _, port = self.metrics_listen.rpartition(":")
        return host.strip("[]"), int(port)


class Settings(_Model):
    state_dir: ConfigPath = Field(default=Path("var/ringd"), validate_default=True)
    watch: WatchSettings = Field(default_factory=WatchSettings)
    ramdisk: list[RamdiskMapping] = Field(default_factory=list)
    records: RecordSettings = Field(default_factory=RecordSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    control: ControlSettings = Field(default_factory=ControlSettings)
    models: ModelsSettings = Field(default_factory=ModelsSettings)
    configs: dict[ConfigName, ConfigEntry] = Field(default_factory=dict)
    remotes: list[RemoteSettings] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _validate_default_sections(cls, data: Any) -> Any:
        # pydantic does not validate a default: an absent `watch:` section would keep
        # its relative default root as it stands (resolved later against the cwd).
        # Validating `{}` resolves it against the config file's folder.
        if isinstance(data, dict) and "watch" not in data:
            return {**data, "watch": {}}
        return data

    @property
    def ledger_path(self) -> Path:
        return self.state_dir / "ledger.sqlite"

    @property
    def socket_path(self) -> Path:
        return self.control.socket or self.state_dir / "ringd.sock"

    @property
    def rules(self) -> Rules:
        """The parse rules of records (aliases, unfinished statuses, line limit)."""
        return Rules(
            aliases=dict(self.records.board_aliases),
            unfinished=frozenset(self.records.unfinished_statuses),
            max_line=self.watch.max_line_bytes,
        )

    def remote_target(self, remote: RemoteSettings) -> Path:
        """Where a remote's games land: its `target`, or roots[0]/remote/NAME."""
        if remote.target is not None:
            return remote.target
        return self.watch.roots[0] / "remote" / remote.name

    def threshold(self, config: str) -> int | None:
        entry = self.configs.get(config)
        return entry.threshold if entry else None


# -- loading ----------------------------------------------------------------------------

_Loc = tuple[str | int, ...]


def load_settings(path: Path | str) -> Settings:
    """Read and validate a config file; raises ConfigError with file:line messages."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"{path}: cannot read: {e}"]) from None
    return parse_settings(text, path)


def find_socket(path: Path | str) -> Path:
    """The control socket a config file names, reading only `state_dir` and
    `control.socket` (leniently): clients find a daemon whose config file has
    since been broken by an edit. ConfigError if even those cannot be read."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"{path}: cannot read: {e}"]) from None
    except yaml.YAMLError as e:
        raise ConfigError([f"{path}: invalid YAML, no socket to be found: {e}"]) from None
    data = data if isinstance(data, dict) else {}
    control = data.get("control")
    socket = control.get("socket") if isinstance(control, dict) else None
    state_dir = data.get("state_dir")
    base = path.resolve().parent
    if isinstance(socket, str) and socket:
        return Path(os.path.normpath(base / Path(socket).expanduser()))
    if not isinstance(state_dir, str) or not state_dir:
        state_dir = str(Settings.model_fields["state_dir"].default)
    return Path(os.path.normpath(base / Path(state_dir).expanduser())) / "ringd.sock"


def parse_settings(text: str, path: Path) -> Settings:
    """Validate YAML text as if it were the file at `path` (relative paths resolve there)."""
    data, lines = _parse_yaml(text, path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}:1: the top level must be a mapping of keys to values"])
    base_dir = path.resolve().parent
    try:
        settings = Settings.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as e:
        raise ConfigError(_format_errors(path, lines, e)) from None
    if problems := _check_aliases(settings) + _check_remotes(settings):
        raise ConfigError(_format_problems(path, lines, problems))
    return settings


def _check_aliases(settings: Settings) -> list[tuple[_Loc, str]]:
    """Aliases must name boards ringd can train: RingRift's, or one named in `configs`."""
    aliases = settings.records.board_aliases
    known = set(BOARDS) | {
        parts[0] for name in settings.configs if (parts := split_config_name(name))
    }
    problems: list[tuple[_Loc, str]] = []
    for alias, board in aliases.items():
        loc: _Loc = ("records", "board_aliases", alias)
        if alias in BOARDS:
            problems.append((loc, f"{alias!r} is a RingRift board; it cannot be an alias"))
        elif board in aliases:
            problems.append(
                (loc, f"{board!r} is itself an alias: map {alias!r} to the board it stands for")
            )
        elif board not in known:
            problems.append(
                (
                    loc,
                    f"{alias!r} maps to unknown board {board!r} "
                    f"(RingRift's: {', '.join(BOARDS)}; or a board named in configs)",
                )
            )
    for name in settings.configs:
        parts = split_config_name(name)
        if parts is not None and parts[0] in aliases:
            canonical = f"{aliases[parts[0]]}_{parts[1]}p"
            problems.append(
                (
                    ("configs", name),
                    f"{parts[0]!r} is an alias of {aliases[parts[0]]!r} "
                    f"(records.board_aliases): name the configuration {canonical}",
                )
            )
    return problems


def _check_remotes(settings: Settings) -> list[tuple[_Loc, str]]:
    """Remotes land in distinct folders under a watched root; rsync (and ssh) are installed."""
    problems: list[tuple[_Loc, str]] = []
    targets: dict[Path, str] = {}
    for i, remote in enumerate(settings.remotes):
        if remote.name in {r.name for r in settings.remotes[:i]}:
            problems.append((("remotes", i, "name"), f"{remote.name!r}: two remotes of this name"))
        target = settings.remote_target(remote)
        if not settings.watch.roots:
            problems.append((("remotes", i), "no watched root to pull into (watch.roots is empty)"))
        elif not any(target.is_relative_to(root) for root in settings.watch.roots):
            problems.append(
                (
                    ("remotes", i, "target"),
                    f"{target} is not under a watched root ({', '.join(map(str, settings.watch.roots))}):"
                    " its games would never be counted",
                )
            )
        for other, name in targets.items():
            if target.is_relative_to(other) or other.is_relative_to(target):
                problems.append(
                    (("remotes", i, "target"), f"{target} overlaps remote {name!r}'s {other}")
                )
        targets[target] = remote.name
    endpoints = [(("remotes",), r.source) for r in settings.remotes] + [
        (("models", "publish"), d.dest) for d in settings.models.publish
    ]
    path = os.environ.get("PATH", "")
    if endpoints and shutil.which(RSYNC) is None:
        problems.append(
            (
                endpoints[0][0],
                f"{RSYNC} is not on PATH ({path}): install it (apt-get install rsync)",
            )
        )
    ssh = [loc for loc, spec in endpoints if parse_endpoint(spec).kind == "ssh"]
    if ssh and shutil.which(SSH) is None:
        problems.append(
            (
                ssh[0],
                f"{SSH} is not on PATH ({path}): host:/path/ endpoints need it (openssh-client)",
            )
        )
    return problems


def _format_problems(
    path: Path, lines: dict[_Loc, int], problems: list[tuple[_Loc, str]]
) -> list[str]:
    out = []
    for loc, message in problems:
        line = _line_for(lines, loc)
        where = f"{path}:{line}" if line else str(path)
        out.append((line or 0, f"{where}: {_dotted(loc)}: {message}"))
    return [message for _, message in sorted(out, key=lambda item: item[0])]


def _parse_yaml(text: str, path: Path) -> tuple[Any, dict[_Loc, int]]:
    """YAML -> plain data, plus the line of every key path (for error messages)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError([f"{where}: invalid YAML: {problem}"]) from None
    lines: dict[_Loc, int] = {}
    errors: list[str] = []
    if node is None:
        return None, lines
    constructor = yaml.SafeLoader("")
    data = _construct(node, (), lines, errors, constructor, path)
    if errors:
        raise ConfigError(errors)
    return data, lines


def _construct(
    node: yaml.Node,
    loc: _Loc,
    lines: dict[_Loc, int],
    errors: list[str],
    constructor: yaml.SafeLoader,
    path: Path,
) -> Any:
    lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = constructor.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool) and key is not None:
                errors.append(
                    f"{path}:{key_node.start_mark.line + 1}: {_dotted(loc)}: keys must be scalars"
                )
                continue
            child = (*loc, str(key))
            if key in out:
                errors.append(
                    f"{path}:{key_node.start_mark.line + 1}: {_dotted(child)}: duplicate key"
                )
            lines[child] = key_node.start_mark.line + 1
            out[key] = _construct(value_node, child, lines, errors, constructor, path)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [
            _construct(item, (*loc, i), lines, errors, constructor, path)
            for i, item in enumerate(node.value)
        ]
    return constructor.construct_object(node, deep=True)


def _dotted(loc: _Loc) -> str:
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        else:
            parts.append(("." if parts else "") + part)
    return "".join(parts) or "(top level)"


_BRANCH = re.compile(r"^[a-z-]+\[.*\]$")


def _clean_loc(loc: tuple[Any, ...]) -> _Loc:
    # pydantic adds union branch names ("list[int]", "literal['auto','cpu']")
    # and "[key]" markers for dict keys; users know only their YAML keys.
    return tuple(
        part
        for part in loc
        if isinstance(part, int) or not (part == "[key]" or _BRANCH.match(part))
    )


def _message(err: Any) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "greater_than_equal":
        return f"must be >= {ctx['ge']}"
    if kind == "greater_than":
        return f"must be > {ctx['gt']}"
    if kind == "less_than_equal":
        return f"must be <= {ctx['le']}"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    msg: str = err["msg"]
    value = err.get("input")
    if kind.endswith("_type") or kind.endswith("_parsing") or kind == "literal_error":
        return f"{msg[0].lower()}{msg[1:]} (got {value!r})"
    return msg


def _format_errors(path: Path, lines: dict[_Loc, int], error: ValidationError) -> list[str]:
    # A union (e.g. `devices`) fails once per branch: one line per key, the
    # branches' messages joined.
    by_loc: dict[_Loc, list[str]] = {}
    for err in error.errors():
        messages = by_loc.setdefault(_clean_loc(tuple(err["loc"])), [])
        if (message := _message(err)) not in messages:
            messages.append(message)
    out = []
    for loc, messages in by_loc.items():
        line = _line_for(lines, loc)
        where = f"{path}:{line}" if line else str(path)
        out.append((line or 0, f"{where}: {_dotted(loc)}: {'; or '.join(messages)}"))
    return [message for _, message in sorted(out, key=lambda item: item[0])]


def _line_for(lines: dict[_Loc, int], loc: _Loc) -> int | None:
    for prefix in _prefixes(loc):
        if prefix in lines:
            return lines[prefix]
    return None


def _prefixes(loc: _Loc) -> Iterator[_Loc]:
    for end in range(len(loc), -1, -1):
        yield loc[:end]
