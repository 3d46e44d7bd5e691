"""One training step (unpack, forward, losses, backward, AdamW), eager or as one CUDA graph.

Small nets on small boards are launch-bound: at batch 256 on square8 an H200 spends
most of an eager step waiting for the CPU to launch a few hundred kernels. Captured
once as a CUDA graph, the whole step (unpacking the planes included) is one launch.
Capturing needs fixed addresses, so the graph reads its batch from static buffers
that each step copies the loader's batch into (a device-to-device copy of the packed
batch: a few hundred KB), and its learning rate from a device tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ringd.train.encode import Geometry
from ringd.train.loader import PackedBatch, cuda_stream, unpack_planes

# Eager steps before the capture (on a side stream, as PyTorch's whole-network capture
# recipe does): they let the autograd engine, cuDNN and the optimizer allocate their
# state, which must exist before capture. They are real steps on real batches.
GRAPH_WARMUP_STEPS = 3

Forward = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class StepSettings:
    geometry: Geometry
    amp: torch.dtype | None  # autocast dtype (bf16 on CUDA), None for float32
    channels_last: bool


@dataclass(frozen=True)
class Losses:
    loss: torch.Tensor
    policy_loss: torch.Tensor
    value_loss: torch.Tensor
    policy_acc: torch.Tensor


@dataclass(frozen=True)
class LossAverages:
    """Loss terms averaged over the steps since the last read."""

    loss: float
    policy_loss: float
    value_loss: float
    policy_acc: float

    def as_dict(self) -> dict[str, float]:
        return {
            "loss": self.loss,
            "policy_loss": self.policy_loss,
            "value_loss": self.value_loss,
            "policy_acc": self.policy_acc,
        }


def compute_losses(forward: Forward, batch: PackedBatch, settings: StepSettings) -> Losses:
    """Policy cross-entropy + value MSE (and policy accuracy) of ``forward`` on a batch."""
    x = unpack_planes(batch.planes, settings.geometry, settings.amp or torch.float32)
    if settings.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    # cache_enabled=False: autocast's weight cache does not survive CUDA graph capture.
    with torch.autocast(
        x.device.type,
        dtype=settings.amp or torch.float32,
        enabled=settings.amp is not None,
        cache_enabled=False,
    ):
        policy, value = forward(x)
    policy, value = policy.float(), value.float()
    target = batch.policy.long()
    policy_loss = F.cross_entropy(policy, target)
    value_loss = F.mse_loss(value, batch.value)
    accuracy = (policy.argmax(1) == target).float().mean()
    return Losses(policy_loss + value_loss, policy_loss, value_loss, accuracy)


def make_optimizer(
    model: nn.Module, *, lr: float, weight_decay: float, device: torch.device, for_graph: bool
) -> torch.optim.AdamW:
    """AdamW; weight decay on conv and linear weights only (not norms or biases).

    On CUDA the fused kernel; for a CUDA graph also ``capturable`` with the learning
    rate in a device tensor (a Python float would be frozen into the graph).
    """
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups: list[dict[str, Any]] = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if device.type == "cuda":
        rate: float | torch.Tensor = torch.tensor(lr, device=device) if for_graph else lr
        return torch.optim.AdamW(groups, lr=rate, fused=True, capturable=for_graph)
    return torch.optim.AdamW(groups, lr=lr)


def restore_optimizer(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a saved optimizer state, keeping this run's settings (device lr, fused, ...).

    ``load_state_dict`` would bring back the saved run's group settings, which may come
    from another device (a float lr where a graph needs a tensor, capturable off).
    """
    mine = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, settings in zip(optimizer.param_groups, mine, strict=True):
        group.update(settings)
        if settings.get("capturable") or settings.get("fused"):
            for p in group["params"]:
                step = optimizer.state.get(p, {}).get("step")
                if isinstance(step, torch.Tensor):
                    optimizer.state[p]["step"] = step.to(device=p.device, dtype=torch.float32)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)  # in place: a captured graph reads this memory
        else:
            group["lr"] = lr


class TrainStep:
    """Runs training steps: eagerly, or by replaying one captured CUDA graph.

    Loss terms are summed on the device (inside the graph too) and read only when
    the loop logs, so a step never waits for the device.
    """

    def __init__(
        self,
        forward: Forward,
        optimizer: torch.optim.Optimizer,
        settings: StepSettings,
        *,
        batch_size: int,
        device: torch.device,
        graph: bool,
        why: str,
    ) -> None:
        self._forward = forward
        self._optimizer = optimizer
        self._settings = settings
        self._device = device
        self.graph_enabled = graph
        self.graph_why = why
        self._sums = torch.zeros(4, device=device)
        self._count = 0
        self._graph: torch.cuda.CUDAGraph | None = None
        self._warmups_left = GRAPH_WARMUP_STEPS
        self._static = PackedBatch.empty(batch_size, settings.geometry, device) if graph else None

    def __call__(self, batch: PackedBatch, lr: float) -> None:
        set_lr(self._optimizer, lr)
        self._count += 1
        if self._static is None:
            self._eager(batch)
            return
        self._static.copy_(batch)
        if self._graph is not None:
            self._graph.replay()
        elif self._warmups_left > 0:
            self._warmup(self._static)
        else:
            self._capture_and_run(self._static)

    def replay_static(self) -> None:
        """Replay the captured step on whatever the static buffers hold (benchmarks)."""
        if self._graph is None:
            raise RuntimeError("no captured graph")
        self._count += 1
        self._graph.replay()

    def read_losses(self) -> LossAverages | None:
        """Averages since the last call (waits for the device), or None if no step ran."""
        if self._count == 0:
            return None
        loss, policy_loss, value_loss, acc = (self._sums / self._count).tolist()
        self._count = 0
        self._sums.zero_()
        return LossAverages(loss, policy_loss, value_loss, acc)

    def _body(self, batch: PackedBatch) -> None:
        losses = compute_losses(self._forward, batch, self._settings)
        losses.loss.backward()  # type: ignore[no-untyped-call]
        self._optimizer.step()
        terms = (losses.loss, losses.policy_loss, losses.value_loss, losses.policy_acc)
        self._sums.add_(torch.stack([t.detach() for t in terms]))

    def _eager(self, batch: PackedBatch) -> None:
        self._optimizer.zero_grad(set_to_none=True)
        self._body(batch)

    def _warmup(self, batch: PackedBatch) -> None:
        side = cuda_stream(self._device)
        side.wait_stream(torch.cuda.current_stream(self._device))
        with torch.cuda.stream(side):
            self._eager(batch)
        torch.cuda.current_stream(self._device).wait_stream(side)
        self._warmups_left -= 1

    def _capture_and_run(self, batch: PackedBatch) -> None:
        # Gradients set to None before capture are allocated by the captured backward
        # in the graph's private pool; every replay writes them again at those addresses.
        self._optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: the loader's thread keeps copying and syncing on its own stream
            # during the capture; "global" mode would count its calls against the capture.
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self._body(batch)
        except torch.OutOfMemoryError:
            raise
        except Exception as e:  # an op that cannot be captured: carry on eagerly, say why
            self.graph_enabled = False
            self.graph_why = f"capture failed, running eagerly: {type(e).__name__}: {e}"
            self._static = None
            torch.cuda.synchronize(self._device)
            self._eager(batch)
            return
        self._graph = graph
        graph.replay()  # capturing records the step; this runs it
