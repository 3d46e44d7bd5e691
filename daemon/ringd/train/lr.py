"""The learning-rate schedule: linear warmup, then cosine decay (a pure function of the step)."""

from __future__ import annotations

import math

# The cosine ends at this fraction of the peak rather than at zero: the last steps of a
# job still learn from the newest games, and the next job warms up from a trained net.
FINAL_LR_FRACTION = 0.1
# Warmup takes at most this fraction of a job, so that short jobs still reach the peak.
MAX_WARMUP_FRACTION = 0.2


def warmup_steps(requested: int, total_steps: int) -> int:
    """The warmup actually used: ``requested``, capped at a fifth of the job."""
    return max(0, min(requested, int(total_steps * MAX_WARMUP_FRACTION)))


def lr_at(step: int, *, total_steps: int, peak: float, warmup: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based) of ``total_steps``.

    ``warmup`` is the value of :func:`warmup_steps`. Being a pure function of the step,
    a resumed job continues the same schedule from its checkpoint.
    """
    if step < warmup:
        return peak * (step + 1) / warmup
    decay_steps = max(1, total_steps - warmup)
    progress = min(1.0, (step - warmup) / decay_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return peak * (FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * cosine)
