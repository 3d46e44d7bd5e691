"""The scheduler's decision: (state, policy, now) -> jobs to start and jobs to cancel.

A pure function, no clock and no I/O: the daemon gathers the state from the
ledger and its runner, calls `decide`, and carries the decision out.

Rules:
- at most one job per config, at most one job per slot;
- a config starts when its new games reach its threshold, or when an operator
  triggered it (any number of new games above zero);
- never while paused, unconfigured, or with training disabled;
- `min_interval_s` between two starts of a config (a trigger skips it);
- after a failure, exponential backoff: base * 2^(failures - 1), capped
  (a trigger skips it too: the operator asked);
- the most deserving first: new/threshold, then the longest since training;
- jobs of configs that left the YAML, and jobs on slots that are gone, are cancelled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

ConfigStateName = Literal["unconfigured", "idle", "ready", "training", "backoff", "paused"]


@dataclass(frozen=True, slots=True)
class Policy:
    enabled: bool = True
    min_interval_s: float = 0.0
    backoff_base_s: float = 60.0
    backoff_cap_s: float = 3600.0


@dataclass(frozen=True, slots=True)
class ConfigView:
    """What the scheduler knows of one config."""

    name: str
    new_games: int
    threshold: int | None  # None: not in the YAML (counted, never trained)
    paused: bool = False
    triggered: bool = False
    last_start: float | None = None
    last_success: float | None = None
    failures: int = 0  # consecutive failures since the last success
    last_failure: float | None = None


@dataclass(frozen=True, slots=True)
class JobView:
    job_id: str
    config: str
    slot: str


@dataclass(frozen=True, slots=True)
class Decision:
    start: list[tuple[str, str]] = field(default_factory=list)  # (config, slot)
    cancel: list[str] = field(default_factory=list)  # job ids
    states: dict[str, ConfigStateName] = field(default_factory=dict)
    backoff_until: dict[str, float] = field(default_factory=dict)


def backoff_delay(failures: int, base_s: float, cap_s: float) -> float:
    """Exponential backoff after `failures` failures in a row: base * 2^(failures - 1), capped."""
    # The exponent stops growing long before a float would overflow (a host down for weeks).
    return float(min(cap_s, base_s * 2.0 ** (min(max(1, failures), 64) - 1)))


def backoff_until(view: ConfigView, policy: Policy) -> float | None:
    """When a failing config may start again (None: it is not failing)."""
    if view.failures <= 0 or view.last_failure is None:
        return None
    return view.last_failure + backoff_delay(
        view.failures, policy.backoff_base_s, policy.backoff_cap_s
    )


def decide(
    configs: Sequence[ConfigView],
    running: Sequence[JobView],
    slots: Sequence[str],
    policy: Policy,
    now: float,
) -> Decision:
    """Which configs start on which free slots now, and which jobs to cancel."""
    decision = Decision()
    by_name: Mapping[str, ConfigView] = {c.name: c for c in configs}
    busy_configs: set[str] = set()
    busy_slots: set[str] = set()
    for job in running:
        view = by_name.get(job.config)
        if view is None or view.threshold is None or job.slot not in slots:
            decision.cancel.append(job.job_id)
            continue
        busy_configs.add(job.config)
        busy_slots.add(job.slot)

    candidates: list[ConfigView] = []
    for view in configs:
        until = backoff_until(view, policy)
        if until is not None and until > now:
            decision.backoff_until[view.name] = until
        state = _state(view, policy, now, view.name in busy_configs, until)
        decision.states[view.name] = state
        if policy.enabled and _may_start(view, state, policy, now):
            candidates.append(view)

    candidates.sort(key=lambda v: _priority(v, now))
    free = [s for s in slots if s not in busy_slots]
    for view, slot in zip(candidates, free, strict=False):
        decision.start.append((view.name, slot))
    return decision


def _state(
    view: ConfigView, policy: Policy, now: float, running: bool, until: float | None
) -> ConfigStateName:
    if view.threshold is None:
        return "unconfigured"
    if running:
        return "training"
    if view.paused:
        return "paused"
    if until is not None and until > now:
        return "backoff"
    if view.new_games >= view.threshold:
        return "ready"  # with training disabled too: counted and reported, never started
    return "idle"


def _may_start(view: ConfigView, state: ConfigStateName, policy: Policy, now: float) -> bool:
    if view.triggered:
        return state in ("idle", "ready", "backoff") and view.new_games > 0
    interval_passed = view.last_start is None or now - view.last_start >= policy.min_interval_s
    return state == "ready" and interval_passed


def _priority(view: ConfigView, now: float) -> tuple[bool, float, float, str]:
    # Triggered first (an operator is waiting), then the fullest, then the
    # longest without training (never trained counts as longest).
    ratio = view.new_games / view.threshold if view.threshold else 0.0
    since = now - view.last_success if view.last_success is not None else float("inf")
    return (not view.triggered, -ratio, -since, view.name)
