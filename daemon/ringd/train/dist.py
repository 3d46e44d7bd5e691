"""One job over several processes: torchrun's environment, the process group, and the few
collectives the training loop needs itself (DDP reduces the gradients).

The daemon starts ``torchrun --nproc-per-node=N -m ringd.train SPEC`` for a job of N
GPUs (``training.gpus_per_job``); torchrun starts N copies of the job, each with
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` and the rendezvous in its environment, and
tears the others down when one dies. Each rank trains on its slice of the same global
batch (:func:`ringd.train.data.shard_indices`); only rank 0 writes events, checkpoints
and TensorBoard files.

Host-side agreement (stop flags, barriers) goes over a gloo group on the CPU, so that
asking "did anyone get SIGTERM?" never waits for the GPU: the training stream stays
full while the ranks agree.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections import deque
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from ringd.train.launch import launched_by_torchrun, local_rank

__all__ = [
    "STOP_CHECK_EVERY",
    "Dist",
    "init",
    "is_collective_failure",
    "launched_by_torchrun",
    "local_rank",
]

log = logging.getLogger(__name__)

# A stop (SIGTERM, timeout) is agreed on every this many steps: all ranks stop at the
# same step. Each check is one CPU all-reduce of a flag (a fraction of a millisecond).
STOP_CHECK_EVERY = 8


@dataclass
class Dist:
    """This rank in the job's process group."""

    rank: int
    world: int
    local_rank: int
    local_world: int
    backend: str
    _flags: dist.ProcessGroup | None  # gloo group for host-side flags (None: the default)
    # The tensors of the last collectives, kept until the group is gone. A gloo worker
    # thread frees its finished work after the caller has its result; were it the last
    # owner of a Python tensor it would need the GIL, which the main thread holds while
    # it destroys the group and waits for that very thread: a hang at exit.
    # (These few live as long as this object.)
    _recent: deque[torch.Tensor] = field(default_factory=lambda: deque(maxlen=64))

    @property
    def main(self) -> bool:
        """Rank 0: the one that reports, checkpoints and writes TensorBoard files."""
        return self.rank == 0

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any (a CPU all-reduce)."""
        t = self._held(torch.tensor([int(flag)], dtype=torch.int32))
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self._flags)
        return bool(t.item())

    def agree(self, *values: int) -> bool:
        """Whether every rank passed the same ``values``."""
        t = self._held(torch.tensor([*values, *(-v for v in values)], dtype=torch.int64))
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self._flags)
        n = len(values)
        return all(int(t[i]) == v and -int(t[n + i]) == v for i, v in enumerate(values))

    def barrier(self) -> None:
        """Wait until every rank is here (over the CPU group: no GPU work is waited for)."""
        dist.barrier(group=self._flags)

    def mean_(self, tensor: torch.Tensor) -> None:
        """Average ``tensor`` over the ranks, in place (on the tensor's own device)."""
        dist.all_reduce(self._held(tensor), op=dist.ReduceOp.SUM)
        tensor.div_(self.world)

    def close(self) -> None:
        """Leave the group; call it after the DDP model is freed (its reducer holds the group)."""
        with contextlib.suppress(Exception):
            dist.destroy_process_group()

    def _held(self, tensor: torch.Tensor) -> torch.Tensor:
        self._recent.append(tensor)
        return tensor


def init(device: torch.device, timeout_s: float) -> Dist:
    """Join the process group torchrun set up: NCCL on CUDA, gloo on the CPU.

    ``device`` is this rank's device (``cuda:LOCAL_RANK`` on GPUs). A collective that
    waits longer than ``timeout_s`` for a rank fails (and the job with it).
    """
    timeout = datetime.timedelta(seconds=timeout_s)
    cuda = device.type == "cuda"
    backend = "nccl" if cuda else "gloo"
    if cuda:
        dist.init_process_group(backend, timeout=timeout, device_id=device)
        flags = dist.new_group(backend="gloo", timeout=timeout)
    else:
        dist.init_process_group(backend, timeout=timeout)
        flags = None
    info = Dist(
        rank=dist.get_rank(),
        world=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        local_world=int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1"))),
        backend=backend,
        _flags=flags,
    )
    log.info(
        "rank %d of %d (local %d of %d, %s)",
        info.rank,
        info.world,
        info.local_rank,
        info.local_world,
        backend,
    )
    return info


def is_collective_failure(e: BaseException) -> bool:
    """Whether ``e`` says another rank is gone or a collective timed out."""
    if isinstance(e, dist.DistError):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and any(
        word in text for word in ("gloo", "nccl", "connection closed", "connection reset")
    )
