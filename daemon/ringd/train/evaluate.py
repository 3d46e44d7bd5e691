"""Held-out evaluation: is training working?

Each job measures, on its configuration's held-out games (``spec.holdout.games``,
never trained on: ``ringd.train.holdout``), the network it started from (before the
first step) and the network it trains (at each periodic checkpoint and at the end):
policy loss (cross-entropy), policy top-1 accuracy, value MSE, and their sum, the
loss training minimises. The numbers go into the checkpoint's sidecar (``meta.eval``),
its ``checkpoint`` and ``done`` events, and TensorBoard (``holdout/*``; step 0 of a
job that was not resumed is the network it started from). The daemon's promotion
gate compares the two.

The training loop calls :meth:`Evaluator.begin` once and :meth:`Evaluator.evaluate`
when a checkpoint is due; a checkpoint saved on a stop takes :meth:`Evaluator.unevaluated`.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ringd.train.encode import Geometry
from ringd.train.loader import PackedBatch, unpack_planes
from ringd.train.prepare import HeldOutSamples
from ringd.train.protocol import HeldOutEval, HeldOutMetrics
from ringd.train.tb import Scalars

log = logging.getLogger(__name__)

CHUNK = 1024  # held-out samples per forward pass


class Evaluator:
    """The held-out samples on the training device, and the metrics measured on them."""

    def __init__(
        self,
        held_out: HeldOutSamples | None,
        geometry: Geometry,
        *,
        device: torch.device,
        amp: torch.dtype | None,
        channels_last: bool,
        scalars: Scalars,
    ) -> None:
        self.games = held_out.games if held_out is not None else 0
        self.size = held_out.size if held_out is not None else 0
        self._batch = (
            PackedBatch.from_host(held_out.samples) if held_out is not None and self.size else None
        )
        if self._batch is not None and device.type != "cpu":
            self._batch = PackedBatch(
                self._batch.planes.to(device),
                self._batch.policy.to(device),
                self._batch.value.to(device),
            )
        self._geometry = geometry
        self._device = device
        self._amp = amp
        self._channels_last = channels_last
        self._scalars = scalars
        self.start: HeldOutMetrics | None = None
        self.start_checkpoint: str | None = None
        self.last: HeldOutEval | None = None

    def begin(
        self,
        model: nn.Module,
        *,
        init_checkpoint: str | None,
        step: int,
        resumed_meta: dict[str, Any] | None,
    ) -> None:
        """Measure the network the job starts from (``model`` before its first step).

        A resumed run takes those numbers from its checkpoint's ``meta.eval`` instead:
        ``model`` holds the interrupted run's weights by then.
        """
        self.start_checkpoint = init_checkpoint
        if resumed_meta is not None:
            saved = resumed_meta.get("eval") or {}
            start = saved.get("start")
            self.start = HeldOutMetrics.model_validate(start) if start else None
            return
        if self._batch is None:
            log.info("no held-out samples: checkpoints are not evaluated")
            return
        self.start = self.measure(model)
        self._scalars_at(self.start, step)
        what = init_checkpoint or "the untrained network"
        log.info("held-out %s on %d samples: %s", what, self.size, _text(self.start))

    def evaluate(self, model: nn.Module, step: int) -> HeldOutEval:
        """``model``'s held-out metrics at ``step``, beside the start's; kept as ``last``."""
        began = time.monotonic()
        metrics = self.measure(model) if self._batch is not None else None
        seconds = round(time.monotonic() - began, 3)
        if metrics is not None:
            self._scalars_at(metrics, step)
            log.info(
                "held-out at step %d: %s (started at %s)",
                step,
                _text(metrics),
                _text(self.start) if self.start else "-",
            )
        self.last = self._eval(step, metrics, seconds)
        return self.last

    def unevaluated(self, step: int) -> HeldOutEval:
        """For a checkpoint saved on a stop: the start's metrics, the model not measured."""
        return self._eval(step, None, None)

    def measure(self, model: nn.Module) -> HeldOutMetrics:
        """``model`` on every held-out sample (eval mode, no gradients), in chunks."""
        assert self._batch is not None
        batch = self._batch
        was_training = model.training
        model.eval()
        sums = torch.zeros(3, dtype=torch.float64, device=self._device)
        try:
            with torch.no_grad():
                for a in range(0, self.size, CHUNK):
                    b = min(self.size, a + CHUNK)
                    x = unpack_planes(batch.planes[a:b], self._geometry, self._amp or torch.float32)
                    if self._channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    with torch.autocast(
                        x.device.type,
                        dtype=self._amp or torch.float32,
                        enabled=self._amp is not None,
                    ):
                        policy, value = model(x)
                    policy, value = policy.float(), value.float()
                    target = batch.policy[a:b].long()
                    sums += torch.stack(
                        [
                            F.cross_entropy(policy, target, reduction="sum"),
                            (policy.argmax(1) == target).sum().float(),
                            F.mse_loss(value, batch.value[a:b], reduction="sum"),
                        ]
                    ).double()
        finally:
            model.train(was_training)
        policy_loss, correct, squared = (sums / self.size).tolist()
        return HeldOutMetrics(
            loss=_finite(policy_loss + squared),
            policy_loss=_finite(policy_loss),
            policy_acc=_finite(correct),
            value_mse=_finite(squared),
        )

    def _eval(
        self, step: int, metrics: HeldOutMetrics | None, seconds: float | None
    ) -> HeldOutEval:
        return HeldOutEval(
            step=step,
            games=self.games,
            samples=self.size,
            model=metrics,
            start=self.start,
            start_checkpoint=self.start_checkpoint,
            seconds=seconds,
        )

    def _scalars_at(self, metrics: HeldOutMetrics, step: int) -> None:
        for name, value in metrics.model_dump().items():
            if value is not None:
                self._scalars.add(f"holdout/{name}", value, step)


def _finite(value: float) -> float | None:
    return round(value, 6) if math.isfinite(value) else None


def _text(metrics: HeldOutMetrics | None) -> str:
    if metrics is None:
        return "-"
    parts = [
        f"{name} {value:.4f}" if value is not None else f"{name} not finite"
        for name, value in metrics.model_dump().items()
    ]
    return ", ".join(parts)
