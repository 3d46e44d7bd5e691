"""Trainer preflight: can a training job start at all on this host?

Without it, a daemon installed without the `train` extra starts every job only to
see it die of `ModuleNotFoundError: numpy`, and backs off forever. The check runs
in a child process (the daemon never imports torch): the built-in trainer must
import; a custom `training.command` must name a program that exists (and, for
`python -m MODULE` or `python SCRIPT`, a module that imports or a script that
exists). The scheduler starts no job while the trainer is unavailable, and the
status says why and what to install.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import sys
from collections.abc import Sequence

from ringd import childsetup

# The job, and the training loop it imports once the samples are ready (torch, numpy).
TRAINER_MODULE = "ringd.train.job, ringd.train.loop"
CHECK_TIMEOUT_S = 300.0


def install_hint() -> str:
    """The command that installs the built-in trainer's dependencies into this environment."""
    return f"{shlex.quote(sys.executable)} -m pip install 'ringd[train]'"


async def check_trainer(command: Sequence[str] | None) -> str | None:
    """None when a job can start; otherwise why not, and what to do."""
    if command is None:
        problem = await _imports(sys.executable, TRAINER_MODULE)
        if problem is None:
            return None
        return f"{problem}; install the trainer's dependencies: {install_hint()}"
    return await _check_command(list(command))


async def _check_command(argv: list[str]) -> str | None:
    program = argv[0]
    found = shutil.which(program)
    if found is None:
        return f"training.command: {program}: not found or not executable"
    if _is_python(found) and len(argv) > 1:
        if argv[1] == "-m" and len(argv) > 2:
            problem = await _imports(found, argv[2])
            return None if problem is None else f"training.command: {problem}"
        script = argv[1]
        if not script.startswith("-") and not os.path.isfile(script):
            return f"training.command: {script}: no such file"
    return None


def _is_python(path: str) -> bool:
    return os.path.basename(path).startswith("python")


async def _imports(python: str, module: str) -> str | None:
    """None if `python -c "import module"` succeeds, else the error's last line."""
    try:
        process = await asyncio.create_subprocess_exec(
            python,
            "-c",
            f"import {module}",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as e:
        return f"cannot run {python}: {e.strerror or e}"
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            _, err = await process.communicate()
    except TimeoutError:
        await childsetup.reap(process)
        return f"importing {module} took longer than {CHECK_TIMEOUT_S:g} s"
    except asyncio.CancelledError:  # a reload started another check, or the daemon stops
        await childsetup.reap(process)
        raise
    if process.returncode == 0:
        return None
    lines = err.decode(errors="replace").strip().splitlines()
    return f"cannot import {module}: {lines[-1] if lines else f'exit {process.returncode}'}"
