"""--time-budget: a few steps timed on a copy, then the epochs fitted (cnnlab.train.budget).

The run a budget shapes must be exactly the run `--epochs N` gives: the timing copy may not
draw from the run's random generators or touch its model and optimizer. In clock mode the
learning rate follows the time spent and training stops when it is up: tested with a fake
clock, so the tests do not depend on this machine's speed.
"""

from __future__ import annotations

import argparse
import csv
import functools
import itertools
import json
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file
from test_train_helpers import bars_dataset, train_tiny_run

from cnnlab.cli.common import parse_duration
from cnnlab.errors import CnnlabError
from cnnlab.train import train
from cnnlab.train.budget import (
    EXTEND_FACTOR,
    PLAN_FACTOR,
    Clock,
    Timeline,
    budget_line,
    clock_line,
    clock_record,
    epochs_that_fit,
    epochs_to_extend,
    epochs_within,
    final_epochs,
    planned_epochs,
    recorded,
    replan_line,
    replay,
)
from cnnlab.train.presets import BEST_TIME_BUDGET, FAST_TIME_BUDGET, GOALS, preset_values
from cnnlab.train.resume import resume_config
from cnnlab.train.schedule import lr_at


@given(
    budget=st.floats(0.0, 1e5, allow_subnormal=False),  # other tests set flush-to-zero
    epoch_s=st.floats(1e-3, 1e4, allow_subnormal=False),
    max_epochs=st.integers(1, 500),
)
def test_epochs_within_is_the_most_that_fit(budget: float, epoch_s: float, max_epochs: int):
    n = epochs_within(budget, epoch_s, max_epochs)
    assert 1 <= n <= max_epochs
    assert n == 1 or n * epoch_s <= budget * (1 + 1e-12)  # fits (one epoch at the least)
    assert n == max_epochs or (n + 1) * epoch_s > budget  # one more would not


def test_runs_are_planned_with_headroom_for_a_fast_reading_probe() -> None:
    """The probe has read up to 21% fast on a shared VM: 100 s at 10 s an epoch plans 8."""
    assert PLAN_FACTOR == 1.25
    assert planned_epochs(100.0, {"epoch_s": 10.0}, 30) == 8
    assert planned_epochs(100.0, {"epoch_s": 10.0}, 5) == 5


def test_epochs_within_without_a_measurement_keeps_the_recipe() -> None:
    assert epochs_within(60.0, 0.0, 30) == 30
    assert epochs_within(60.0, float("nan"), 30) == 30


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("600", 600.0), ("600s", 600.0), ("10m", 600.0), ("1.5h", 5400.0), (" 9M ", 540.0), ("0", 0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["ten minutes", "5d", "-1m", "inf", ""])
def test_parse_duration_refuses_nonsense(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="duration"):
        parse_duration(text)


def test_best_presets_for_mnist_and_neu_carry_the_budget() -> None:
    assert BEST_TIME_BUDGET < 600  # the 10 minutes, with headroom
    for data in ("mnist", "neu"):
        assert preset_values("best", data)["time_budget"] == BEST_TIME_BUDGET
    assert "time_budget" not in preset_values("lecture", "mnist")


def _run(out: Path, **kw) -> tuple[Path, list[str]]:
    """A fresh tiny run (test_train_helpers) and the lines it logged."""
    lines: list[str] = []
    return train_tiny_run(out, log=lines.append, **kw), lines


def test_a_tight_budget_cuts_the_epochs_and_the_run_is_the_same_as_with_those_epochs(
    tmp_path: Path,
) -> None:
    cut, lines = _run(tmp_path / "cut", epochs=3, time_budget=1e-6, schedule="onecycle")
    record = json.loads((cut / "config.json").read_text())
    assert record["config"]["epochs"] == 1 and record["config"]["time_budget"] == 1e-6
    entry = record["time_budget"]
    assert entry["epochs_asked"] == 3 and entry["epochs"] == 1
    assert entry["measured_epoch_s"] > 0 and entry["measured_step_s"] > 0
    assert any(
        line.startswith("time budget 1e-06 s:") and "1 of the recipe's 3" in line for line in lines
    )
    assert json.loads((cut / "metrics.json").read_text())["epochs_run"] == 1
    plain, _ = _run(tmp_path / "plain", epochs=1, schedule="onecycle")
    a, b = load_file(cut / "model.safetensors"), load_file(plain / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bit for bit: the timing copy changed nothing
    # resuming to 2 epochs neither re-times nor drops the measurement that chose the 1
    lines.clear()
    cfg = resume_config(cut, epochs=2)
    train(cfg, bars_dataset(), progress=False, log=lines.append, resume=True)
    record = json.loads((cut / "config.json").read_text())
    assert record["config"]["epochs"] == 2 and record["time_budget"] == entry
    assert not any(line.startswith("time budget") for line in lines)
    assert json.loads((cut / "metrics.json").read_text())["epochs_run"] == 2


def test_a_generous_budget_keeps_the_recipe(tmp_path: Path) -> None:
    run, lines = _run(tmp_path / "r", epochs=2, time_budget=1e6)
    entry = json.loads((run / "config.json").read_text())["time_budget"]
    assert entry["epochs"] == entry["epochs_asked"] == 2
    # the reading against the epochs that then ran (history.csv): the same order of magnitude
    with open(run / "history.csv") as f:
        ran = [float(r["seconds"]) for r in csv.DictReader(f)]
    assert 0.1 < entry["measured_epoch_s"] / (sum(ran) / len(ran)) < 10
    assert any("all 2 epochs fit" in line for line in lines)
    assert budget_line({**entry, "epochs": 1}).endswith("--time-budget 0 trains them all")


def test_zero_means_no_budget_and_negative_is_refused(tmp_path: Path) -> None:
    run, lines = _run(tmp_path / "r", epochs=1, time_budget=0.0)
    assert "time_budget" not in json.loads((run / "config.json").read_text())
    assert not any(line.startswith("time budget") for line in lines)
    with pytest.raises(CnnlabError, match="--time-budget must be a duration >= 0"):
        _run(tmp_path / "bad", epochs=1, time_budget=-5.0)


@given(
    budget=st.floats(1.0, 1e4, allow_subnormal=False),  # other tests set flush-to-zero
    elapsed=st.floats(0.0, 1e4, allow_subnormal=False),
    epoch_s=st.floats(1e-2, 1e3, allow_subnormal=False),
    epoch=st.integers(1, 100),
    more=st.integers(0, 100),
)
def test_epochs_that_fit_cuts_only_a_run_that_would_overrun(
    budget: float, elapsed: float, epoch_s: float, epoch: int, more: int
) -> None:
    epochs = epoch + more
    n = epochs_that_fit(budget, elapsed, epoch_s, epoch, epochs)
    assert epoch <= n <= epochs
    if elapsed + more * epoch_s <= budget:
        assert n == epochs  # on pace: never cut
    elif elapsed >= budget:
        assert n == epoch  # spent: stop now
    else:  # as many more as fit at that pace, one at the least (the rate still anneals)
        assert n < epochs or n == epoch + 1  # one epoch left: that one is the least
        assert n == epoch + 1 or elapsed + (n - epoch) * epoch_s <= budget * (1 + 1e-12)
        assert elapsed + (n + 1 - epoch) * epoch_s > budget


def test_a_replanned_timeline_carries_the_rate_on_and_anneals_it_at_the_new_end() -> None:
    line = Timeline(600)  # 6 epochs of 100 steps planned
    assert [line.position(s) for s in (0, 250, 600)] == [0.0, 250.0, 600.0]
    line.replan(100, 300)  # after epoch 1: 3 epochs in all
    assert line.position(100) == 100.0 and line.position(50) == 50.0  # the past unchanged
    assert line.position(200) == pytest.approx(350.0) and line.position(300) == 600.0
    line.replan(200, 250)  # after step 200 again: to end at 250
    assert line.position(150) == pytest.approx(225.0)  # as the first cut laid it
    assert line.position(200) == pytest.approx(350.0) and line.position(250) == 600.0
    rates = [lr_at(line.position(s), line.total, 0.1, "onecycle") for s in range(251)]
    assert rates[-1] == 0.0 and max(rates) == pytest.approx(0.1, rel=1e-3)
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(rates[120:]))
    longer = Timeline(200)  # 2 epochs planned, lengthened to 6 after the first
    longer.replan(100, 600)
    assert longer.position(350) == pytest.approx(150.0) and longer.position(600) == 200.0
    # what config.json records replays to the same timeline (here: epochs of 50 steps)
    record = {
        "epochs": 12,
        "replans": [{"after_epoch": 2, "epochs": 6}, {"after_epoch": 4, "epochs": 5}],
    }
    assert replay(record, 50) == line and final_epochs(record) == 5
    assert final_epochs({"epochs": 12}) == 12
    # a run recorded before runs could lengthen kept "cuts", without the epochs each replaced
    old = {"epochs": 12, "cuts": [{"after_epoch": 2, "epochs": 6}, {"after_epoch": 4, "epochs": 5}]}
    assert [r["planned"] for r in recorded(old)["replans"]] == [12, 6]
    assert replay(recorded(old), 50) == line and "cuts" not in recorded(old)
    cut = {"after_epoch": 7, "elapsed_s": 106.1, "last_epoch_s": 38.5, "planned": 30, "epochs": 18}
    assert replan_line({"seconds": 540.0}, cut) == (
        "time budget 540 s: 106 s spent after epoch 7 (38.5 s the last); at that pace the plan "
        "would overrun, so 18 epochs in all, the learning rate annealed over them"
    )
    spent = replan_line({"seconds": 540.0}, {**cut, "elapsed_s": 541.0, "epochs": 7})
    assert spent.endswith("the budget is spent, so training stops here (the rate not annealed)")
    more = {**cut, "elapsed_s": 72.4, "after_epoch": 2, "mean_epoch_s": 36.2, "planned": 10}
    assert replan_line({"seconds": 540.0}, {**more, "epochs": 13}) == (
        "time budget 540 s: 72 s spent after epoch 2 (36.2 s an epoch), so 13 epochs in all fit "
        "where 10 were planned (at 1.1x that pace), the learning rate laid out over them"
    )


@given(
    budget=st.floats(1.0, 1e4, allow_subnormal=False),  # other tests set flush-to-zero
    elapsed=st.floats(0.0, 1e4, allow_subnormal=False),
    mean_s=st.floats(1e-2, 1e3, allow_subnormal=False),
    epoch=st.integers(1, 100),
    left=st.integers(0, 100),
    room=st.integers(0, 100),
)
def test_epochs_to_extend_lengthens_only_into_time_left_over(
    budget: float, elapsed: float, mean_s: float, epoch: int, left: int, room: int
) -> None:
    epochs, most, close = epoch + left, epoch + left + room, 1 - 1e-12
    n = epochs_to_extend(budget, elapsed, mean_s, epoch, epochs, most)
    assert epochs <= n <= most
    if left == 0 or room == 0:
        assert n == epochs  # the schedule has ended, or the recipe's epochs are all planned
    elif n > epochs:  # the added epochs fit at the margin; one more would not (or the recipe's)
        assert elapsed + (n - epoch) * EXTEND_FACTOR * mean_s <= budget * (1 + 1e-12)
        assert n == most or elapsed + (n + 1 - epoch) * EXTEND_FACTOR * mean_s > budget * close
    else:  # not one more fits (`close`: the sums round differently from the code's division)
        assert elapsed + (epochs + 1 - epoch) * EXTEND_FACTOR * mean_s > budget * close


class _TenSecondEpochs:
    """cnnlab.train.run's clock, faked: read twice an epoch, 10 s apart; `restart()` starts it
    afresh, as a resumed process's clock does."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.restart()
        monkeypatch.setattr("cnnlab.train.run.time", self)

    def restart(self) -> None:
        self.counter = itertools.count()

    def perf_counter(self) -> float:
        return next(self.counter) * 10.0


def _interrupted_and_resumed_alike(
    tmp_path: Path, clock: _TenSecondEpochs, run: Path, stop_at: str, **kw
) -> None:
    """The run of `kw` stopped by an error at the log line `stop_at`, then resumed: the same
    epochs, re-plans and weights as the uninterrupted `run`."""

    def stop(line: str) -> None:
        if line.startswith(stop_at):
            raise KeyboardInterrupt

    clock.restart()
    part = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):
        train_tiny_run(part, log=stop, **kw)
    clock.restart()
    train(resume_config(part), bars_dataset(), progress=False, log=lambda _m: None, resume=True)
    whole, resumed = (json.loads((d / "config.json").read_text()) for d in (run, part))
    assert resumed["config"]["epochs"] == whole["config"]["epochs"]
    assert resumed["time_budget"]["replans"] == whole["time_budget"]["replans"]
    a, b = load_file(run / "model.safetensors"), load_file(part / "model.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_a_run_planned_short_of_its_budget_is_lengthened_and_resumes_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every epoch takes 10 s on a fake clock; the plan (forced) is 2 of 6 epochs in 75 s, as a
    probe that read slow would plan: after epoch 1 the run lengthens to 6 (1 + 65 // 11)."""
    clock = _TenSecondEpochs(monkeypatch)
    monkeypatch.setattr("cnnlab.train.run.planned_epochs", lambda _b, _t, most: 2)
    kw = {"epochs": 6, "time_budget": 75.0, "schedule": "onecycle", "lr": 0.01}
    run, lines = _run(tmp_path / "r", **kw)
    record = json.loads((run / "config.json").read_text())
    assert record["config"]["epochs"] == 6
    entry = record["time_budget"]
    assert entry["epochs"] == 2 and entry["epochs_asked"] == 6  # the plan, then its re-plan
    assert entry["replans"] == [
        {
            "after_epoch": 1,
            "elapsed_s": 10.0,
            "last_epoch_s": 10.0,
            "mean_epoch_s": 10.0,
            "planned": 2,
            "epochs": 6,
        }
    ]
    assert sum("so 6 epochs in all fit where 2 were planned" in line for line in lines) == 1
    assert not any("--threads 1" in line for line in lines)  # no cut, no hint
    with open(run / "history.csv") as f:
        rates = [float(r["lr"]) for r in csv.DictReader(f)]
    steps = 144 // 20  # bars: 144 training images, batch 20
    ref = Timeline(2 * steps)
    ref.replan(steps, 6 * steps)
    assert len(rates) == 6
    assert rates[-1] == pytest.approx(
        lr_at(ref.position(6 * steps - 1), 2 * steps, 0.01, "onecycle")
    )
    assert rates[-1] < 0.05 * 0.01 and max(rates) > 0.5 * 0.01  # annealed at the new end

    _interrupted_and_resumed_alike(tmp_path, clock, run, "epoch 3/6", **kw)


def test_a_run_that_falls_behind_its_plan_is_cut_and_resumes_on_the_cut_schedule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every epoch takes 10 s on a fake clock; the plan (forced) is 6 epochs in 35 s: after
    epoch 1 the run is cut to 3, and the rate reaches ~0 at the end of epoch 3."""
    clock = _TenSecondEpochs(monkeypatch)
    monkeypatch.setattr("cnnlab.train.run.planned_epochs", lambda _b, _t, most: most)
    kw = {"epochs": 6, "time_budget": 35.0, "schedule": "onecycle", "lr": 0.01}
    run, lines = _run(tmp_path / "r", **kw)
    record = json.loads((run / "config.json").read_text())
    assert record["config"]["epochs"] == 3
    entry = record["time_budget"]
    assert entry["epochs"] == entry["epochs_asked"] == 6  # the plan, then its cut
    assert entry["replans"] == [
        {
            "after_epoch": 1,
            "elapsed_s": 10.0,
            "last_epoch_s": 10.0,
            "mean_epoch_s": 10.0,
            "planned": 6,
            "epochs": 3,
        }
    ]
    assert sum("so 3 epochs in all" in line for line in lines) == 1
    if torch.get_num_threads() > 1:  # the hint for a machine whose cores are taken
        assert sum("--threads 1 trains faster" in line for line in lines) == 1
    with open(run / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    steps = 144 // 20  # bars: 144 training images, batch 20
    ref = Timeline(6 * steps)
    ref.replan(steps, 3 * steps)
    assert float(rows[-1]["lr"]) == pytest.approx(
        lr_at(ref.position(3 * steps - 1), 6 * steps, 0.01, "onecycle")
    )
    assert float(rows[-1]["lr"]) < 0.05 * 0.01 < lr_at(3 * steps - 1, 6 * steps, 0.01, "onecycle")

    # the same run stopped after epoch 1 (an error in epoch 2) and resumed: the same weights
    _interrupted_and_resumed_alike(tmp_path, clock, run, "epoch 2/3", **kw)


def test_a_run_whose_budget_is_spent_stops_after_the_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _TenSecondEpochs(monkeypatch)  # 10 s an epoch, 5 s of budget
    monkeypatch.setattr("cnnlab.train.run.planned_epochs", lambda _b, _t, most: most)
    run, lines = _run(tmp_path / "r", epochs=3, time_budget=5.0, schedule="onecycle")
    record = json.loads((run / "config.json").read_text())
    assert record["config"]["epochs"] == 1 and record["time_budget"]["replans"][0]["epochs"] == 1
    assert json.loads((run / "metrics.json").read_text())["epochs_run"] == 1
    assert any("the budget is spent, so training stops here" in line for line in lines)
    assert (run / "model.safetensors").is_file()


def _fake_clock(monkeypatch: pytest.MonkeyPatch, tick: float) -> None:
    """The run's Clock reads a counter that advances `tick` seconds at every reading."""
    counter = itertools.count()
    monkeypatch.setattr(
        "cnnlab.train.run.Clock", functools.partial(Clock, now=lambda: next(counter) * tick)
    )


def test_the_clock_schedule_follows_the_step_or_the_time_whichever_is_ahead() -> None:
    t = [0.0]
    clock = Clock(10.0, now=lambda: t[0])
    assert clock.share() == 0.0 and not clock.up()  # the first reading starts it
    t[0] = 2.0
    assert clock.share() == pytest.approx(0.2)
    assert clock.position(5, 100) == pytest.approx(20.0)  # time ahead of the steps
    assert clock.position(50, 100) == 50.0  # steps ahead of the time: exactly the step
    t[0] = 10.0
    assert clock.up() and clock.position(50, 100) == 100.0  # never past the schedule's end
    record = clock_record(10.0, 2, 150, 100)
    assert record == {
        "seconds": 10.0,
        "mode": "clock",
        "epochs_asked": 2,
        "steps": 150,
        "epochs": 1.5,
    }
    assert "stopped after 150 steps, 1.50 of the recipe's 2 epochs" in clock_line(record, 100)
    assert clock_line(clock_record(10.0, 2, 200, 100), 100).endswith("all 2 epochs ran")


def test_clock_mode_stops_mid_epoch_with_the_rate_annealed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_clock(monkeypatch, tick=0.01)  # about 0.02 s a step (two readings): 50 steps a second
    run, lines = _run(
        tmp_path / "r",
        epochs=4,
        time_budget=0.25,
        budget_mode="clock",
        schedule="onecycle",
        lr=0.01,
    )
    metrics = json.loads((run / "metrics.json").read_text())
    entry = metrics["time_budget"]
    steps_per_epoch = 144 // 20  # bars: 144 training images, batch 20
    assert entry["mode"] == "clock" and entry["epochs_asked"] == 4
    assert steps_per_epoch < entry["steps"] < 3 * steps_per_epoch  # stopped inside epoch 2 or 3
    assert entry["epochs"] == round(entry["steps"] / steps_per_epoch, 3)
    with open(run / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == metrics["epochs_run"] < 4
    assert float(rows[-1]["lr"]) < 0.1 * 0.01  # annealed on the clock, not by the steps
    assert json.loads((run / "config.json").read_text())["time_budget"] == {
        "seconds": 0.25,
        "mode": "clock",
        "epochs_asked": 4,
    }
    assert any("(clock): stopped after" in line for line in lines)
    # a clock run cannot be resumed: its schedule followed this process's clock
    with pytest.raises(CnnlabError, match="--budget-mode clock cannot be used with --resume"):
        train(
            resume_config(run, epochs=5),
            bars_dataset(),
            progress=False,
            log=lambda _m: None,
            resume=True,
        )


def test_a_clock_that_never_moves_gives_the_step_schedules_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Time share 0 throughout: the progress is the step share, so the run is the plain one."""
    _fake_clock(monkeypatch, tick=0.0)
    clocked, lines = _run(
        tmp_path / "c", epochs=2, time_budget=1.0, budget_mode="clock", schedule="onecycle"
    )
    assert any(line.endswith("all 2 epochs ran") for line in lines)
    plain, _ = _run(tmp_path / "p", epochs=2, schedule="onecycle")
    a, b = load_file(clocked / "model.safetensors"), load_file(plain / "model.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_fast_preset_keeps_its_goal_on_the_clock() -> None:
    values = preset_values("fast", "mnist")
    assert values["budget_mode"] == "clock" and values["time_budget"] == FAST_TIME_BUDGET
    assert values["model"] == "resnet-tiny-pool"
    assert FAST_TIME_BUDGET < GOALS[("fast", "mnist")][1]  # stops inside the goal's seconds
    from cnnlab.train import TrainConfig

    with pytest.raises(CnnlabError, match="--budget-mode must be one of plan, clock"):
        TrainConfig(data="mnist", model="seed-mnist", budget_mode="wall", out="x").resolved()
    # asked for without a budget it would change nothing: refused; from the preset it is fine
    with pytest.raises(CnnlabError, match="--budget-mode clock needs a --time-budget"):
        TrainConfig(data="mnist", model="seed-mnist", budget_mode="clock", out="x").resolved()
    cfg = TrainConfig(data="mnist", preset="fast", time_budget=0.0, out="x").resolved()
    assert cfg.budget_mode == "clock" and cfg.time_budget == 0.0  # `fast`'s 2 whole epochs
    assert cfg.resolved() == cfg  # as recorded (a resumed run): still fine


def test_a_run_recorded_before_the_clock_mode_resumes_by_plan(tmp_path: Path) -> None:
    """An older `fast` run's config.json has no budget_mode: it resumes, not on the clock."""
    config = {
        "data": "mnist",
        "preset": "fast",
        "model": "resnet-tiny",
        "epochs": 2,
        "time_budget": None,
    }
    (tmp_path / "config.json").write_text(json.dumps({"config": config}))
    cfg = resume_config(tmp_path, epochs=3).resolved()
    assert cfg.budget_mode == "plan" and cfg.epochs == 3 and cfg.model == "resnet-tiny"
