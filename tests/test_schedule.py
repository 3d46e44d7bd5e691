"""The scheduler's pure decision: table-driven cases and hypothesis invariants."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ringd.schedule import ConfigView, JobView, Policy, backoff_until, decide

NOW = 10_000.0
POLICY = Policy(min_interval_s=300, backoff_base_s=60, backoff_cap_s=600)


def view(name: str, new: int, threshold: int | None = 100, **kw: object) -> ConfigView:
    return ConfigView(name, new, threshold, **kw)  # type: ignore[arg-type]


def test_below_threshold_nothing_starts() -> None:
    d = decide([view("a", 99)], [], ["gpu0"], POLICY, NOW)
    assert d.start == [] and d.states == {"a": "idle"}


def test_at_threshold_a_job_starts_on_a_free_slot() -> None:
    d = decide([view("a", 100)], [], ["gpu0"], POLICY, NOW)
    assert d.start == [("a", "gpu0")] and d.states["a"] == "ready"


def test_the_higher_new_over_threshold_ratio_goes_first_with_one_slot() -> None:
    d = decide(
        [view("a", 150, 100), view("b", 40, 20), view("c", 500, 1000)], [], ["gpu0"], POLICY, NOW
    )
    assert d.start == [("b", "gpu0")]
    assert d.states == {"a": "ready", "b": "ready", "c": "idle"}


def test_equal_ratios_go_to_the_longest_untrained_first() -> None:
    configs = [
        view("a", 100, last_success=NOW - 10),
        view("b", 100, last_success=NOW - 500),
        view("c", 100, last_success=NOW - 50),
    ]
    d = decide(configs, [], ["s0", "s1"], POLICY, NOW)
    assert d.start == [("b", "s0"), ("c", "s1")]


def test_never_trained_counts_as_longest_untrained() -> None:
    d = decide([view("a", 100, last_success=NOW - 9e6), view("b", 100)], [], ["s0"], POLICY, NOW)
    assert d.start == [("b", "s0")]


def test_one_job_per_config_and_one_per_slot() -> None:
    running = [JobView("j1", "a", "gpu0")]
    d = decide([view("a", 900), view("b", 200)], running, ["gpu0", "gpu1"], POLICY, NOW)
    assert d.start == [("b", "gpu1")] and d.states["a"] == "training"
    d = decide([view("a", 900), view("b", 200)], running, ["gpu0"], POLICY, NOW)
    assert d.start == []


def test_min_interval_between_starts_of_a_config() -> None:
    assert decide([view("a", 200, last_start=NOW - 100)], [], ["s"], POLICY, NOW).start == []
    assert decide([view("a", 200, last_start=NOW - 300)], [], ["s"], POLICY, NOW).start == [
        ("a", "s")
    ]


def test_failures_back_off_exponentially_up_to_the_cap() -> None:
    assert backoff_until(view("a", 1, failures=1, last_failure=NOW), POLICY) == NOW + 60
    assert backoff_until(view("a", 1, failures=3, last_failure=NOW), POLICY) == NOW + 240
    assert backoff_until(view("a", 1, failures=30, last_failure=NOW), POLICY) == NOW + 600
    failing = view("a", 500, failures=2, last_failure=NOW - 100)
    d = decide([failing], [], ["s"], POLICY, NOW)
    assert d.start == [] and d.states["a"] == "backoff" and d.backoff_until["a"] == NOW + 20
    assert decide([failing], [], ["s"], POLICY, NOW + 21).start == [("a", "s")]


def test_paused_configs_never_start_even_when_triggered() -> None:
    d = decide([view("a", 500, paused=True, triggered=True)], [], ["s"], POLICY, NOW)
    assert d.start == [] and d.states["a"] == "paused"


def test_a_trigger_starts_below_threshold_and_skips_interval_and_backoff() -> None:
    configs = [
        view("a", 3, triggered=True, last_start=NOW - 1, failures=4, last_failure=NOW - 1),
        view("b", 900),
    ]
    d = decide(configs, [], ["s"], POLICY, NOW)
    assert d.start == [("a", "s")]


def test_a_trigger_with_no_new_games_starts_nothing() -> None:
    assert decide([view("a", 0, triggered=True)], [], ["s"], POLICY, NOW).start == []


def test_unconfigured_configs_never_train_and_their_jobs_are_cancelled() -> None:
    d = decide([view("x", 10_000, None)], [JobView("j", "x", "s")], ["s"], POLICY, NOW)
    assert d.start == [] and d.cancel == ["j"] and d.states["x"] == "unconfigured"
    d = decide([], [JobView("gone", "y", "s")], ["s"], POLICY, NOW)
    assert d.cancel == ["gone"]


def test_jobs_on_slots_that_are_gone_are_cancelled() -> None:
    d = decide([view("a", 900)], [JobView("j", "a", "gpu3")], ["gpu0"], POLICY, NOW)
    assert d.cancel == ["j"] and d.start == [("a", "gpu0")]


def test_training_disabled_counts_but_never_starts() -> None:
    d = decide([view("a", 900, triggered=True)], [], ["s"], Policy(enabled=False), NOW)
    assert d.start == [] and d.states["a"] == "ready"


configs_strategy = st.lists(
    st.builds(
        ConfigView,
        name=st.sampled_from(["a", "b", "c", "d", "e"]),
        new_games=st.integers(0, 2000),
        threshold=st.one_of(st.none(), st.integers(1, 1000)),
        paused=st.booleans(),
        triggered=st.booleans(),
        last_start=st.one_of(st.none(), st.floats(NOW - 1000, NOW)),
        last_success=st.one_of(st.none(), st.floats(NOW - 1000, NOW)),
        failures=st.integers(0, 6),
        last_failure=st.one_of(st.none(), st.floats(NOW - 5000, NOW)),
    ),
    unique_by=lambda v: v.name,
)


@settings(max_examples=400)
@given(
    configs=configs_strategy,
    slots=st.lists(st.sampled_from(["s0", "s1", "s2"]), unique=True),
    running_configs=st.lists(
        st.sampled_from(["a", "b", "c", "d", "e", "zz"]), unique=True, max_size=3
    ),
)
def test_invariants(
    configs: list[ConfigView], slots: list[str], running_configs: list[str]
) -> None:
    running = [
        JobView(f"j{i}", c, s) for i, (c, s) in enumerate(zip(running_configs, slots, strict=False))
    ]
    d = decide(configs, running, slots, POLICY, NOW)
    by_name = {c.name: c for c in configs}
    kept = [j for j in running if j.job_id not in d.cancel]
    started_configs = [c for c, _ in d.start]
    started_slots = [s for _, s in d.start]
    # One job per config and per slot, counting the jobs that keep running.
    assert len(set(started_configs)) == len(started_configs)
    assert not set(started_configs) & {j.config for j in kept}
    assert len(set(started_slots)) == len(started_slots) and set(started_slots) <= set(slots)
    assert not set(started_slots) & {j.slot for j in kept}
    for name in started_configs:
        v = by_name[name]
        assert v.threshold is not None and not v.paused
        assert v.new_games >= v.threshold or (v.triggered and v.new_games > 0)
        if not v.triggered:
            until = backoff_until(v, POLICY)
            assert until is None or until <= NOW
            assert v.last_start is None or NOW - v.last_start >= POLICY.min_interval_s
    # Work-conserving: a free slot stays free only if nothing could start.
    free = set(slots) - {j.slot for j in kept} - set(started_slots)
    waiting = [
        n
        for n, s in d.states.items()
        if s == "ready" and n not in started_configs and n not in {j.config for j in kept}
    ]
    assert not (free and waiting and all(by_name[n].last_start is None for n in waiting))


def test_every_failed_attempt_counts_towards_the_backoff_even_on_one_range(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from ringd.ledger import Ledger

    with Ledger(tmp_path / "ledger.sqlite") as db:
        db.create_job("a-1-9", "a", 1, 9, 9, triggered=False)
        for _ in range(3):  # the same range, retried
            db.job_started("a-1-9", "cpu")
            db.finish_job("a-1-9", "failed", exit_code=1, error="boom")
        history = db.job_history()["a"]
        assert (
            history.failures == 3 and history.last_error == "boom" and history.last_success is None
        )
        db.create_job("a-1-12", "a", 1, 12, 12, triggered=False)
        db.job_started("a-1-12", "cpu")
        db.finish_job("a-1-12", "succeeded")
        history = db.job_history()["a"]
        assert (
            history.failures == 0
            and history.last_success is not None
            and history.last_start is not None
        )
        assert db.trained_through("a") == 12
