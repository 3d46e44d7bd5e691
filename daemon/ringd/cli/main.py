"""`ringd`: the command line. Each subcommand is a thin shell over the modules."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeAlias

from rich.console import Console
from rich.live import Live

from ringd import __version__
from ringd.cli import client
from ringd.cli.render import ScanProgress, count, jobs_view, models_view, view
from ringd.ledger import Ledger, LedgerError
from ringd.scan import scan
from ringd.settings import ConfigError, Settings, find_socket, load_settings
from ringd.status import Status, Unreadable, build_status, unreadable_problem

DEFAULT_CONFIG = "/etc/ringd/ringd.yaml"

EXIT_OK, EXIT_ERROR, EXIT_UNAVAILABLE = 0, 1, 2
CONFIG_HELP = f"the YAML configuration (default: $RINGD_CONFIG or {DEFAULT_CONFIG})"
SOCKET_HELP = (
    "the daemon's control socket (default: from --config, else $RINGD_SOCKET, "
    "else from $RINGD_CONFIG or " + DEFAULT_CONFIG + ")"
)
# argparse's type for the object add_subparsers returns.
_Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `ringd` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return EXIT_ERROR
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        code = handler(args)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `ringd schema | head -1`: the reader left. Leave quietly, as a C tool killed by
        # SIGPIPE would, and point stdout at /dev/null: Python flushes it again at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + signal.SIGPIPE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ringd",
        description=(
            "ringd watches selfplay output (*.jsonl, one game per line), counts every game "
            "exactly once per configuration (board + players) and trains when a "
            "configuration has gathered enough new games."
        ),
    )
    parser.add_argument("--version", action="version", version=f"ringd {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    _daemon_commands(sub)
    _operator_commands(sub)
    _models_command(sub)
    _offline_commands(sub)
    return parser


def _daemon_commands(sub: _Subparsers) -> None:
    """The daemon itself, and what follows it: run, status, events."""
    p = sub.add_parser(
        "run",
        help="run the daemon in the foreground (what systemd runs)",
        description=(
            "Watch the roots, count every new game, serve status on the control socket "
            "(state_dir/ringd.sock) and apply config edits without a restart. Logs go to "
            "stderr: JSON lines when not on a terminal (journald), readable otherwise. "
            "SIGHUP re-reads the config; SIGTERM or SIGINT stop it cleanly."
        ),
    )
    p.add_argument("--config", type=Path, help=CONFIG_HELP)
    p.set_defaults(handler=_cmd_run)

    p = sub.add_parser(
        "status",
        help="show +N/threshold per configuration from the running daemon",
        description=(
            "One row per configuration: +N/threshold, a bar of N against the threshold, "
            "total games, state and the age of the last game. Exit 2 when no daemon answers."
        ),
    )
    _daemon_args(p, CONFIG_HELP, SOCKET_HELP)
    p.add_argument("--json", action="store_true", help="print the status JSON instead")
    p.add_argument(
        "--watch",
        action="store_true",
        help="refresh the table every --interval; not on a terminal (or with --json): "
        "print one snapshot per interval (with --json, one JSON object per line)",
    )
    p.add_argument(
        "--interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="seconds between refreshes with --watch (default: %(default)s)",
    )
    p.set_defaults(handler=_cmd_status)

    p = sub.add_parser(
        "events",
        help="follow the daemon's event stream (JSON lines: games, files, rejects, reloads)",
        description=(
            "Print the daemon's events as JSON lines as they happen. Exit 0 when the daemon "
            "stops normally, 2 when it cannot be reached or its stream breaks off (the "
            "daemon died)."
        ),
    )
    _daemon_args(p, CONFIG_HELP, SOCKET_HELP)
    p.set_defaults(handler=_cmd_events)


def _operator_commands(sub: _Subparsers) -> None:
    """Jobs and operators' actions on the running daemon."""
    p = sub.add_parser(
        "jobs",
        help="recent training jobs: state, progress, duration, checkpoint",
    )
    _daemon_args(p, CONFIG_HELP, SOCKET_HELP)
    p.add_argument("--json", action="store_true", help="print the jobs as JSON")
    p.set_defaults(handler=_cmd_jobs)

    for name, text in (
        ("trigger", "train CONFIG now, even below its threshold (when a slot is free)"),
        ("pause", "start no training job for CONFIG until resumed (survives restarts)"),
        ("resume", "let CONFIG train again"),
        ("publish", "copy CONFIG's latest checkpoint to every models.publish destination now"),
    ):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("name", metavar="CONFIG", help="a configuration, e.g. square8_2p")
        _daemon_args(p, CONFIG_HELP, SOCKET_HELP)
        p.set_defaults(handler=_cmd_config_action, action=name)

    text = "pull remote NAME now (rsync), even while it backs off after failures"
    p = sub.add_parser("pull", help=text, description=text)
    p.add_argument("name", metavar="NAME", help="a remote's name (remotes: in the config)")
    _daemon_args(p, CONFIG_HELP, SOCKET_HELP)
    p.set_defaults(handler=_cmd_pull)

    p = sub.add_parser("logs", help="print a training job's log (the trainer's stderr)")
    p.add_argument("job", metavar="JOB", help="a job id from `ringd jobs`")
    _daemon_args(p, CONFIG_HELP, SOCKET_HELP)
    p.set_defaults(handler=_cmd_logs)


def _models_command(sub: _Subparsers) -> None:
    """`ringd models` and its actions."""
    p = sub.add_parser(
        "models",
        help="checkpoints: per config latest, held-out metrics, promotions, verdicts",
        description=(
            "The checkpoint registry. Without an action: list per config the latest "
            "checkpoint, counts and sizes, and the held-out loss and accuracy of latest "
            "and of the newest checkpoints, each promoted or not and why. `validate "
            "[PATH]` validates again (one file or all); `pin PATH` keeps a checkpoint "
            "from retention; `promote PATH` makes a validated checkpoint its "
            "configuration's latest over the promotion gate (models.promote)."
        ),
    )
    _daemon_args(p, CONFIG_HELP, SOCKET_HELP)
    p.add_argument("--json", action="store_true", help="print everything as JSON")
    p.add_argument("--config-name", metavar="NAME", help="only this configuration, e.g. square8_2p")
    p.set_defaults(handler=_cmd_models)
    models = p.add_subparsers(title="actions", metavar="ACTION")
    q = models.add_parser("validate", help="validate again: PATH, or every checkpoint")
    q.add_argument("path", nargs="?", metavar="PATH")
    _daemon_args(q, CONFIG_HELP, SOCKET_HELP, after_subcommand=True)
    q.set_defaults(handler=_cmd_models_validate)
    q = models.add_parser("pin", help="never remove PATH by retention (--unpin to undo)")
    q.add_argument("path", metavar="PATH")
    q.add_argument("--unpin", action="store_true")
    _daemon_args(q, CONFIG_HELP, SOCKET_HELP, after_subcommand=True)
    q.set_defaults(handler=_cmd_models_pin)
    q = models.add_parser(
        "promote", help="make PATH its configuration's latest, over the promotion gate"
    )
    q.add_argument("path", metavar="PATH")
    _daemon_args(q, CONFIG_HELP, SOCKET_HELP, after_subcommand=True)
    q.set_defaults(handler=_cmd_models_promote)


def _offline_commands(sub: _Subparsers) -> None:
    """Commands that need no daemon: scan, check-config, sim, demo, schema."""
    p = sub.add_parser(
        "scan",
        help="index every new game now, without a daemon, and print the status",
        description=(
            "Walk every watched root, index every *.jsonl line not yet in the ledger "
            "(state_dir/ledger.sqlite) and print one row per configuration with its "
            "+N/threshold. Safe to interrupt at any moment: what was committed stays."
        ),
    )
    p.add_argument("--config", type=Path, help=CONFIG_HELP)
    p.add_argument("--json", action="store_true", help="print the status JSON instead")
    p.set_defaults(handler=_cmd_scan)

    p = sub.add_parser(
        "check-config",
        help="validate a configuration file without running anything",
        description="Print OK, or every error as FILE:LINE: key.path: message. Exit 0 or 1.",
    )
    p.add_argument("file", type=Path)
    p.set_defaults(handler=_cmd_check_config)

    p = sub.add_parser(
        "sim",
        help="selfplay simulator: write RingRift-shaped games (tests, demo, benchmarks)",
        add_help=False,
        # No option prefixes, so every argument goes to sim_main's own parser: REMAINDER
        # alone leaves out a leading option (`ringd sim --help`, `ringd sim --writers 1 DIR`).
        prefix_chars="\0",
    )
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(handler=_cmd_sim)

    p = sub.add_parser(
        "demo",
        help="run simulated selfplay and ringd together on a demo tree",
        description=(
            "Create DIR (default ./ringd-demo) with a demo configuration (two "
            "configurations, square8_2p and hex8_2p, with tiny thresholds and a tiny "
            "network trained on the CPU), start simulated selfplay writers there and run "
            "the ringd daemon on it, showing its live table of +N/threshold while they "
            "write. Ctrl-C (or --duration) stops the writers, shows the final count and "
            "stops the daemon; the ledger stays in DIR, so a second run in DIR counts on "
            "from the first."
        ),
    )
    p.add_argument(
        "--dir", type=Path, default=Path("ringd-demo"), help="demo folder (default: %(default)s)"
    )
    p.add_argument(
        "--duration", type=float, default=None, help="seconds of selfplay (default: until Ctrl-C)"
    )
    p.add_argument("--writers", type=int, default=4, help="writer processes (default: %(default)s)")
    p.add_argument(
        "--rate", type=float, default=8.0, help="games per second in all (default: %(default)s)"
    )
    p.set_defaults(handler=_cmd_demo)

    p = sub.add_parser(
        "schema",
        help="print the JSON schema of the configuration file",
    )
    p.set_defaults(handler=_cmd_schema)


def _daemon_args(
    p: argparse.ArgumentParser, config_help: str, socket_help: str, after_subcommand: bool = False
) -> None:
    """--config and --socket: how a command finds the running daemon.

    `after_subcommand`: a sub-subcommand's copy (`ringd models validate --config X`);
    left out, it must not overwrite what was given before the subcommand.
    """
    default = argparse.SUPPRESS if after_subcommand else None
    p.add_argument("--config", type=Path, help=config_help, default=default)
    p.add_argument("--socket", type=Path, help=socket_help, default=default)


def _config_path(arg: Path | None) -> Path:
    return arg or Path(os.environ.get("RINGD_CONFIG", DEFAULT_CONFIG))


def _stdout() -> Console:
    # Piped output keeps whole lines (for grep and scripts); a terminal gets its width.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 200)


def _err(message: str) -> None:
    Console(stderr=True, highlight=False).print(f"[bold red]ringd:[/] {message}", soft_wrap=True)


def _load(arg: Path | None) -> Settings | None:
    """The settings, or None after printing why they are invalid."""
    try:
        return load_settings(_config_path(arg))
    except ConfigError as e:
        _err("invalid configuration:\n" + str(e))
        return None


def _cmd_run(args: argparse.Namespace) -> int:
    from ringd import app, log
    from ringd.service.control import ControlError

    path = _config_path(args.config)
    settings = _load(path)
    if settings is None:
        return EXIT_ERROR
    log.configure()
    try:
        return app.run(path, settings)
    except (LedgerError, ControlError) as e:
        _err(str(e))
        return EXIT_ERROR


def _socket_path(args: argparse.Namespace) -> Path | None:
    """Where the daemon listens: --socket, $RINGD_SOCKET, or the config file's
    `state_dir`/`control.socket`, read without validating the rest: a broken edit
    of a live config must not lock the operator out of the daemon it could not
    reconfigure (the daemon reports that error itself)."""
    if args.socket:
        return Path(args.socket)
    if args.config is None and (env := os.environ.get("RINGD_SOCKET")):
        return Path(env)
    config = _config_path(args.config)
    try:
        return find_socket(config)
    except ConfigError as e:
        _err(f"cannot find the daemon's socket:\n{e}")
        return None


def _config_error_note(args: argparse.Namespace, path: Path) -> None:
    """The config file does not validate: say what the daemon made of it (on stderr)."""
    if args.socket or (args.config is None and os.environ.get("RINGD_SOCKET")):
        return
    try:
        load_settings(_config_path(args.config))
    except ConfigError:
        pass
    else:
        return
    try:
        error = client.get_json(path, "/v1/status").get("config_error")
    except (client.DaemonUnavailable, client.Refused, ValueError):
        return
    if error:
        _err(
            "the daemon refused the config file's last edit and runs on its last good "
            f"configuration:\n{error}"
        )


def _cmd_status(args: argparse.Namespace) -> int:
    path = _socket_path(args)
    if path is None:
        return EXIT_UNAVAILABLE
    console = _stdout()
    try:
        if args.watch:
            _watch_status(path, console, args.json, max(0.1, args.interval))
        elif args.json:
            print(json.dumps(client.get_json(path, "/v1/status"), indent=2))
        else:
            console.print(view(Status.model_validate(client.get_json(path, "/v1/status"))))
    except client.DaemonUnavailable as e:
        _err(f"{e}; is the daemon running? (systemctl status ringd, or ringd run --config FILE)")
        return EXIT_UNAVAILABLE
    return EXIT_OK


def _watch_status(path: Path, console: Console, as_json: bool, interval: float) -> None:
    """A live table on a terminal; elsewhere (a pipe, a file, a log) one snapshot per
    interval: the table and a blank line, or with --json one JSON object per line."""
    if console.is_terminal and not as_json:
        with Live(console=console, auto_refresh=False) as live:
            while True:
                status = Status.model_validate(client.get_json(path, "/v1/status"))
                live.update(view(status), refresh=True)
                time.sleep(interval)
    while True:
        document = client.get_json(path, "/v1/status")
        if as_json:
            print(json.dumps(document), flush=True)
        else:
            console.print(view(Status.model_validate(document)))
            console.print()
            sys.stdout.flush()
        time.sleep(interval)


def _with_daemon(args: argparse.Namespace, action: Callable[[Path], int]) -> int:
    path = _socket_path(args)
    if path is None:
        return EXIT_UNAVAILABLE
    try:
        _config_error_note(args, path)
        return action(path)
    except client.DaemonUnavailable as e:
        _err(f"{e}; is the daemon running? (systemctl status ringd, or ringd run --config FILE)")
        return EXIT_UNAVAILABLE
    except client.Refused as e:
        _err(str(e))
        return EXIT_ERROR


def _cmd_jobs(args: argparse.Namespace) -> int:
    def show(path: Path) -> int:
        jobs = client.get_json(path, "/v1/jobs")["jobs"]
        if args.json:
            print(json.dumps(jobs, indent=2))
            return EXIT_OK
        _stdout().print(jobs_view(jobs))
        return EXIT_OK

    return _with_daemon(args, show)


def _post(args: argparse.Namespace, url: str) -> int:
    """An operator's action: POST it to the daemon and print its answer."""

    def act(path: Path) -> int:
        print(client.post_json(path, url)["message"])
        return EXIT_OK

    return _with_daemon(args, act)


def _cmd_config_action(args: argparse.Namespace) -> int:
    return _post(args, f"/v1/configs/{args.name}/{args.action}")


def _cmd_pull(args: argparse.Namespace) -> int:
    return _post(args, f"/v1/remotes/{args.name}/pull")


def _cmd_models(args: argparse.Namespace) -> int:
    def show(path: Path) -> int:
        models = client.get_json(path, "/v1/models")
        if args.config_name:
            models["configs"] = {
                k: v for k, v in models["configs"].items() if k == args.config_name
            }
            models["checkpoints"] = [
                c for c in models["checkpoints"] if c["config"] == args.config_name
            ]
        if args.json:
            print(json.dumps(models, indent=2))
        else:
            _stdout().print(models_view(models))
        return EXIT_OK

    return _with_daemon(args, show)


def _cmd_models_validate(args: argparse.Namespace) -> int:
    query = f"?{urllib.parse.urlencode({'path': os.path.abspath(args.path)})}" if args.path else ""
    return _post(args, f"/v1/models/validate{query}")


def _cmd_models_pin(args: argparse.Namespace) -> int:
    query = urllib.parse.urlencode(
        {"path": os.path.abspath(args.path), "pinned": 0 if args.unpin else 1}
    )
    return _post(args, f"/v1/models/pin?{query}")


def _cmd_models_promote(args: argparse.Namespace) -> int:
    query = urllib.parse.urlencode({"path": os.path.abspath(args.path)})
    return _post(args, f"/v1/models/promote?{query}")


def _cmd_logs(args: argparse.Namespace) -> int:
    def show(path: Path) -> int:
        url = f"/v1/jobs/{urllib.parse.quote(args.job, safe='')}/log"
        sys.stdout.write(client.get(path, url, timeout=30).decode(errors="replace"))
        return EXIT_OK

    return _with_daemon(args, show)


def _cmd_events(args: argparse.Namespace) -> int:
    path = _socket_path(args)
    if path is None:
        return EXIT_UNAVAILABLE
    try:
        for event in client.follow(path):
            print(json.dumps(event), flush=True)
    except client.DaemonUnavailable as e:
        _err(f"{e}; is the daemon running?")
        return EXIT_UNAVAILABLE
    _err("the daemon stopped")
    return EXIT_OK


def _cmd_check_config(args: argparse.Namespace) -> int:
    from ringd.configcheck import warnings

    try:
        settings = load_settings(args.file)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return EXIT_ERROR
    print(
        f"OK: {args.file}: {count(len(settings.configs), 'configuration')}, "
        f"{count(len(settings.watch.roots), 'watched root')}, state in {settings.state_dir}"
    )
    # Valid, but it may not work: said on stderr, and the exit stays 0.
    for warning in warnings(settings, args.file, args.file.read_text(errors="replace")):
        Console(stderr=True, highlight=False).print(
            f"[yellow]warning:[/] {warning}", soft_wrap=True
        )
    return EXIT_OK


def _cmd_scan(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    if settings is None:
        return EXIT_ERROR
    try:
        ledger = Ledger(settings.ledger_path, writer=True)
    except LedgerError as e:
        _err(f"cannot open the ledger: {e}")
        return EXIT_ERROR
    stderr = Console(stderr=True)
    with ledger, ScanProgress(stderr) as progress:
        report = scan(ledger, settings.watch.roots, settings.rules, on_plan=progress.start)
        status = build_status(
            ledger.config_counts(),
            settings,
            ledger.reject_counts(),
            config_file=str(_config_path(args.config)),
        )
    problems = [p for e in report.errors if (p := unreadable_problem(e)) is not None]
    status.unreadable = Unreadable.of(dict(problems))
    for error in report.errors:
        stderr.print(f"[yellow]warning:[/] {error}", highlight=False, soft_wrap=True)
    if args.json:
        print(status.model_dump_json(indent=2))
    else:
        _stdout().print(view(status))
        stderr.print(
            f"[dim]scanned {count(report.files, 'file')} in {report.seconds:.2f}s: read "
            f"{report.bytes_read / 1e6:,.1f} MB from {report.files_read:,}, "
            f"{count(report.new_total, 'new game')}[/]"
        )
    return EXIT_OK


def _cmd_sim(args: argparse.Namespace) -> int:
    from ringd.sim import sim_main

    return sim_main(args.args)


def _cmd_demo(args: argparse.Namespace) -> int:
    from ringd.cli.demo import run_demo

    run_demo(
        args.dir, duration=args.duration, writers=args.writers, rate=args.rate, console=Console()
    )
    return EXIT_OK


def _cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(Settings.model_json_schema(), indent=2))
    return EXIT_OK
