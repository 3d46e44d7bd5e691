"""One training step (unpack, forward, losses, backward, AdamW), eager or as one CUDA graph.

Small nets on small boards are launch-bound: at batch 256 on square8 an H200 spends
most of an eager step waiting for the CPU to launch a few hundred kernels. Captured
once as a CUDA graph, the whole step (unpacking the planes included) is one launch.
Capturing needs fixed addresses, so the graph reads its batch from static buffers
that each step copies the loader's batch into (a device-to-device copy of the packed
batch: a few hundred KB), and its learning rate from a device tensor.

Compiled (``torch.compile``, inductor's default mode), the model's elementwise work
(batch norm, ReLU, the residual adds, in both directions) runs fused in generated
kernels, and the whole step is still captured as one graph around them: the compile
happens in the first warmup step, the capture records the compiled kernels. If
compiling fails, the step runs the plain model and says why.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ringd.train.encode import Geometry
from ringd.train.loader import PackedBatch, cuda_stream, unpack_planes

log = logging.getLogger(__name__)

# Eager steps before the capture (on a side stream, as PyTorch's whole-network capture
# recipe does): they let the autograd engine, cuDNN and the optimizer allocate their
# state, which must exist before capture. They are real steps on real batches.
GRAPH_WARMUP_STEPS = 3
# Under DDP, PyTorch's CUDA graph notes ask for 11 DDP-enabled eager iterations before
# capture (DDP, built on a side stream, settles its buckets and hooks during them).
DDP_GRAPH_WARMUP_STEPS = 11

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
    terms = loss_terms(forward, batch.planes, batch.policy, batch.value, settings)
    return Losses(*terms)


Terms = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def loss_terms(
    forward: Forward,
    planes: torch.Tensor,
    policy_target: torch.Tensor,
    value_target: torch.Tensor,
    settings: StepSettings,
) -> Terms:
    """(loss, policy loss, value loss, policy accuracy) from the packed batch's tensors."""
    x = unpack_planes(planes, settings.geometry, settings.amp or torch.float32)
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
    target = policy_target.long()
    policy_loss = F.cross_entropy(policy, target)
    value_loss = F.mse_loss(value, value_target)
    accuracy = (policy.argmax(1) == target).float().mean()
    return policy_loss + value_loss, policy_loss, value_loss, accuracy


class _LossModule(nn.Module):
    """:func:`loss_terms` of a network as a module: what torch.compile takes whole, so
    that unpacking the planes and the losses fuse with the network's own kernels."""

    def __init__(self, net: Forward, settings: StepSettings) -> None:
        super().__init__()
        self.net = net
        self.settings = settings

    def forward(self, planes: torch.Tensor, policy: torch.Tensor, value: torch.Tensor) -> Terms:
        return loss_terms(self.net, planes, policy, value, self.settings)


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


def compile_forward(forward: Callable[..., Any], mode: str = "default") -> Callable[..., Any]:
    """``forward`` through torch.compile (inductor, static shapes) in ``mode``.

    ``default`` or ``max-autotune-no-cudagraphs`` (which also times Triton templates
    against cuDNN/cuBLAS for the convolutions and matmuls: slower to compile); never
    ``reduce-overhead``: that mode captures CUDA graphs of its own, and the step is
    captured whole already. Compiling happens at the first call.
    """
    return torch.compile(forward, mode=mode, dynamic=False)


class TrainStep:
    """Runs training steps: eagerly, or by replaying one captured CUDA graph.

    Loss terms are summed on the device (inside the graph too) and read only when
    the loop logs, so a step never waits for the device. ``compile``: run ``forward``
    through ``torch.compile`` (``compile_why`` says why or why not; after the first
    step ``compile_seconds`` is that step's wall time, compiling included).
    ``reduce``: averages the loss sums over the ranks of a distributed job in place
    (every rank reads its losses at the same steps). ``whole``: compile the losses with
    the model (unpacking and losses fuse too); under DDP only the DDP module is compiled,
    the way torch.compile's DDP support expects it.
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
        compile: bool = False,
        compile_why: str = "",
        compile_mode: str = "default",
        whole: bool = True,
        warmup_steps: int = GRAPH_WARMUP_STEPS,
        reduce: Callable[[torch.Tensor], None] | None = None,
    ) -> None:
        self._plain: Callable[..., Terms] = _LossModule(forward, settings)
        self._terms: Callable[..., Terms] = self._plain
        if compile and whole:
            self._terms = compile_forward(self._plain, compile_mode)
        elif compile:
            self._terms = _LossModule(compile_forward(forward, compile_mode), settings)
        self._optimizer = optimizer
        self._settings = settings
        self._device = device
        self.graph_enabled = graph
        self.graph_why = why
        self.compile_enabled = compile
        self.compile_why = compile_why
        self.compile_seconds: float | None = None
        self._first = True
        self._reduce = reduce
        self._sums = torch.zeros(4, device=device)
        self._count = 0
        self._graph: torch.cuda.CUDAGraph | None = None
        self._warmups_left = warmup_steps
        self._static = PackedBatch.empty(batch_size, settings.geometry, device) if graph else None

    def __call__(self, batch: PackedBatch, lr: float) -> None:
        set_lr(self._optimizer, lr)
        self._count += 1
        if self._first:
            self._first_step(batch)
        else:
            self._step(batch)

    def _first_step(self, batch: PackedBatch) -> None:
        """The first step compiles (when asked to); if compiling fails, the plain model runs."""
        started = time.perf_counter()
        try:
            self._step(batch)
            self._sync()
        except torch.OutOfMemoryError:
            raise
        except Exception as e:
            if not self.compile_enabled:
                raise
            first_line = (str(e).strip().splitlines() or [""])[0][:500]
            self.compile_enabled = False
            self.compile_why = (
                f"compiling failed, running the model uncompiled: {type(e).__name__}: {first_line}"
            )
            log.warning("%s", self.compile_why)
            self._terms = self._plain
            self._optimizer.zero_grad(set_to_none=True)
            self._sync()
            self._step(batch)  # the same step again, uncompiled
            self._sync()
        self.compile_seconds = round(time.perf_counter() - started, 3)
        self._first = False

    def _sync(self) -> None:
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)

    def _step(self, batch: PackedBatch) -> None:
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
        if self._reduce is not None:
            self._reduce(self._sums)
        loss, policy_loss, value_loss, acc = (self._sums / self._count).tolist()
        self._count = 0
        self._sums.zero_()
        return LossAverages(loss, policy_loss, value_loss, acc)

    def _body(self, batch: PackedBatch) -> None:
        terms = self._terms(batch.planes, batch.policy, batch.value)
        terms[0].backward()  # type: ignore[no-untyped-call]
        self._optimizer.step()
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
