"""TensorBoard scalars under the job's output folder; optional at run time.

A GPU host without the ``tensorboard`` package still trains: the job says so once on
stderr and writes no curves.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

from ringd.train.launch import env_rank

log = logging.getLogger(__name__)


class Scalars(Protocol):
    def add(self, tag: str, value: float, step: int) -> None: ...

    def close(self) -> None: ...


class _NoScalars:
    def add(self, tag: str, value: float, step: int) -> None:
        pass

    def close(self) -> None:
        pass


class _TensorBoard:
    def __init__(self, folder: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(folder))

    def add(self, tag: str, value: float, step: int) -> None:
        self._writer.add_scalar(tag, value, step)

    def close(self) -> None:
        self._writer.close()


def open_scalars(folder: Path) -> Scalars:
    """TensorBoard curves under ``folder``; none on ranks other than 0 of a multi-process job."""
    if env_rank() != 0:
        return _NoScalars()
    try:
        return _TensorBoard(folder)
    except ImportError as e:
        log.warning("no TensorBoard curves: %s (pip install tensorboard)", e)
        return _NoScalars()
