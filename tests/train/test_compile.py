"""hyper.compile: auto compiles on CUDA only; a compile that fails falls back and says why."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from trainkit import SpecFactory, run_in_process

from ringd.train import step as step_module
from ringd.train.grid import GridEncoder
from ringd.train.loader import PackedBatch
from ringd.train.model import NetShape, build_model
from ringd.train.protocol import ExitCode
from ringd.train.step import StepSettings, TrainStep, make_optimizer


def failing_compile(forward: Any, mode: str = "default") -> Any:
    def compiled(*args: Any) -> Any:
        raise RuntimeError("inductor: no C++ compiler here\nmore lines")

    return compiled


def test_auto_runs_the_model_uncompiled_on_a_cpu(
    square8_corpus: list[dict[str, Any]], make_spec: SpecFactory
) -> None:
    code, run = run_in_process(make_spec(square8_corpus, hyper={"steps": 4}))
    assert code == ExitCode.OK
    start, done = run.one("start"), run.one("done")
    assert start["compile"] == {
        "enabled": False,
        "why": "hyper.compile is auto: a CPU device runs the model uncompiled",
        "seconds": None,
    }
    assert start["distributed"] is None
    assert done["compile"]["enabled"] is False and done["compile"]["seconds"] is not None
    assert all(p["compiled"] is False for p in run.of("progress"))


def test_a_failed_compile_trains_uncompiled_and_says_why(
    square8_corpus: list[dict[str, Any]],
    make_spec: SpecFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(step_module, "compile_forward", failing_compile)
    code, run = run_in_process(make_spec(square8_corpus, hyper={"steps": 8, "compile": True}))
    assert code == ExitCode.OK
    start, done = run.one("start"), run.one("done")
    assert start["compile"]["enabled"] is True and "inductor" in start["compile"]["why"]
    assert done["compile"]["enabled"] is False
    assert done["compile"]["why"] == (
        "compiling failed, running the model uncompiled: RuntimeError: inductor: no C++ "
        "compiler here"
    )
    assert [p["compiled"] for p in run.of("progress")] == [False, False]
    assert done["steps"] == 8


def test_the_fallback_step_is_the_step_an_uncompiled_run_takes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    geometry = GridEncoder().geometry("square8", 2)
    settings = StepSettings(geometry, None, True)
    batch = PackedBatch(
        torch.randint(0, 256, (16, geometry.packed_bytes), dtype=torch.uint8),
        torch.randint(0, 65, (16,), dtype=torch.int32),
        torch.rand(16) * 2 - 1,
    )
    cpu = torch.device("cpu")
    results = []
    for compile in (False, True):
        if compile:
            monkeypatch.setattr(step_module, "compile_forward", failing_compile)
        model = build_model(NetShape(geometry.planes, 8, 8, 8, 1), seed=3)
        optimizer = make_optimizer(model, lr=1e-3, weight_decay=0, device=cpu, for_graph=False)
        step = TrainStep(
            model, optimizer, settings, batch_size=16, device=cpu, graph=False, why="",
            compile=compile,
        )  # fmt: skip
        for _ in range(3):
            step(batch, 1e-3)
        results.append((step.read_losses(), [p.detach().clone() for p in model.parameters()]))
    (plain_losses, plain), (fallback_losses, fallback) = results
    assert plain_losses == fallback_losses
    for a, b in zip(plain, fallback, strict=True):
        torch.testing.assert_close(a, b)
