"""The policy/value network: a residual tower over the board grid (AlphaZero-shaped).

Input (batch, planes, height, width); output policy logits over every grid cell plus
one pass logit (batch, height * width + 1), and a value in [-1, 1] (batch,). The
policy head is convolutional (one logit per cell) so its size does not grow with
the channels, and the pass logit comes from the pooled trunk.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

HEAD_CHANNELS = 32
VALUE_HIDDEN = 64


@dataclass(frozen=True)
class NetShape:
    """Everything that fixes the network's tensor shapes (kept in checkpoints)."""

    planes: int
    height: int
    width: int
    channels: int
    blocks: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _conv_bn(cin: int, cout: int, kernel: int) -> nn.Sequential:
    # No conv bias: the batch norm right after it has its own.
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout)
    )


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.a = _conv_bn(channels, channels, 3)
        self.b = _conv_bn(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.b(F.relu(self.a(x))))


class PolicyValueNet(nn.Module):
    def __init__(self, shape: NetShape) -> None:
        super().__init__()
        self.shape = shape
        self.stem = _conv_bn(shape.planes, shape.channels, 3)
        self.tower = nn.Sequential(*(ResidualBlock(shape.channels) for _ in range(shape.blocks)))
        self.policy_conv = _conv_bn(shape.channels, HEAD_CHANNELS, 1)
        self.policy_cell = nn.Conv2d(HEAD_CHANNELS, 1, 1)
        self.policy_pass = nn.Linear(HEAD_CHANNELS, 1)
        self.value_conv = _conv_bn(shape.channels, HEAD_CHANNELS, 1)
        self.value_fc = nn.Linear(HEAD_CHANNELS, VALUE_HIDDEN)
        self.value_out = nn.Linear(VALUE_HIDDEN, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.tower(F.relu(self.stem(x)))
        p = F.relu(self.policy_conv(h))
        policy = torch.cat([self.policy_cell(p).flatten(1), self.policy_pass(p.mean((2, 3)))], 1)
        v = F.relu(self.value_conv(h)).mean((2, 3))
        value = torch.tanh(self.value_out(F.relu(self.value_fc(v)))).squeeze(1)
        return policy, value


def build_model(shape: NetShape, *, seed: int) -> PolicyValueNet:
    """A freshly initialised network; the same seed gives the same weights on any device."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return PolicyValueNet(shape)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
