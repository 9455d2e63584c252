"""Fit a run into a time budget, by planning whole epochs or by running the schedule on a clock.

The accuracy targets are "in at most 10 minutes of training" on whatever CPU a run gets, and
the same recipe takes 6 minutes on one 2-core box and over 10 on another (README). With
`--time-budget` (the `best` presets set 9 minutes) the epochs are chosen before the first
step, from a few steps on a copy of the model: the recipe's epochs are the most, and the
one-cycle schedule is laid out over the epochs chosen. The run itself is then exactly the
run `--epochs N` gives (the copy draws no random numbers from the run's generators), and
`config.json` records N and the measurement.

The plan is also checked after every epoch, both ways. When the epochs left, at the pace of
the one just run, would overrun the budget (a machine that slowed down, another job on the
cores), the run is cut to the epochs that still fit (`epochs_that_fit`). When the probe read
slow and more of the recipe's epochs now fit at EXTEND_FACTOR x the mean epoch so far, the run
is lengthened to them (`epochs_to_extend`). Either way the rest of the one-cycle schedule is
laid over the new epochs (`Timeline`), so the learning rate carries on from its value and
anneals to zero at the new last step. A run whose plan matches its pace is never re-planned
(then it is exactly the `--epochs N` run); config.json records each re-plan.

`--budget-mode clock` (the `fast` preset: 99% in 10 s) skips the probe, whose seconds and
safety factor a budget of a few seconds cannot afford: the learning rate follows the larger
of the step share and the time share of the budget (`Clock`), and training stops when the
time is up, mid-epoch if need be, with the rate annealed to zero. A slow machine trains
fewer steps; a fast one trains the recipe's epochs exactly. Not reproducible across
machines: metrics.json records the steps that ran.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from cnnlab.data.augment import AugmentSpec
from cnnlab.runtime import Runtime
from cnnlab.train.engine import evaluate, train_one_epoch

WARMUP_STEPS = 2  # untimed: the first steps allocate memory and pick kernels
PROBE_SECONDS = 2.0  # then steps are timed, 4 at a time, until this much time has passed
MAX_TIMED_STEPS = 64
# On a shared 2-core VM this probe read from 25% under to 9% over the mean epoch that
# followed (6 `best` runs, README): runs are planned at 1.25 x the reading, so a limit like the
# issue's 10 minutes holds; the price is fewer epochs when the probe reads slow.
PLAN_FACTOR = 1.25
# After real epochs the pace is known better than the probe's: a run lengthens to the epochs
# that fit at 1.1 x the mean epoch so far (the per-epoch check still cuts it if it slows).
EXTEND_FACTOR = 1.1
VAL_PROBE = 256  # validation images timed (scaled up to the split's size)
BUDGET_MODES = ("plan", "clock")


class Clock:
    """Wall time since training began, as a share of the budget (cnnlab's clock mode)."""

    def __init__(self, budget_s: float, now: Callable[[], float] = time.perf_counter) -> None:
        self.budget_s, self.now = budget_s, now
        self.start: float | None = None

    def share(self) -> float:
        """0 before the first call, then (seconds since that call) / budget."""
        if self.start is None:
            self.start = self.now()
        return (self.now() - self.start) / self.budget_s

    def up(self) -> bool:
        """True once the budget is spent: the next step does not start."""
        return self.share() >= 1.0

    def position(self, step: int, total_steps: int) -> float:
        """Where the schedule stands: at `step`, or further on where the time share is ahead
        of the step share; at most `total_steps`."""
        return min(float(total_steps), max(float(step), self.share() * total_steps))


def clock_record(budget_s: float, asked: int, steps: int | None, steps_per_epoch: int) -> dict:
    """The "time_budget" entry of a clock-mode run (steps: those that ran, None before)."""
    record: dict[str, Any] = {"seconds": budget_s, "mode": "clock", "epochs_asked": asked}
    if steps is not None:
        record["steps"] = steps
        record["epochs"] = round(steps / max(steps_per_epoch, 1), 3)
    return record


def clock_line(record: dict[str, Any], steps_per_epoch: int) -> str:
    """One line for the log: how much of the recipe the clock let run."""
    asked, steps = record["epochs_asked"], record["steps"]
    if steps >= asked * steps_per_epoch:
        return f"time budget {record['seconds']:g} s (clock): all {asked} epochs ran"
    return (
        f"time budget {record['seconds']:g} s (clock): stopped after {steps} steps, "
        f"{record['epochs']:.2f} of the recipe's {asked} epochs, the learning rate annealed "
        "on the clock; --time-budget 0 trains them all"
    )


def epochs_within(budget_s: float, epoch_s: float, max_epochs: int) -> int:
    """The most epochs, 1 to `max_epochs`, whose estimated time `epoch_s` each fits `budget_s`."""
    if not epoch_s > 0 or not math.isfinite(epoch_s):
        return max_epochs
    return max(1, min(max_epochs, _how_many(budget_s, epoch_s)))


def _how_many(seconds: float, each_s: float) -> int:
    """How many `each_s` fit in `seconds`: floor division, but where it rounds one short
    (1.0 // 0.05 is 19.0, while 20 * 0.05 == 1.0) the one that fits counts."""
    n = int(seconds // each_s)
    return n + 1 if (n + 1) * each_s <= seconds else n


def epochs_that_fit(
    budget_s: float, elapsed_s: float, epoch_s: float, epoch: int, epochs: int
) -> int:
    """The run's epochs after `epoch` of `epochs` took `elapsed_s` in all, the last `epoch_s`:
    `epochs` while the rest fit `budget_s` at that pace; else as many more as fit, at least
    one (to anneal the learning rate) unless the budget is already spent."""
    if epoch >= epochs or elapsed_s + (epochs - epoch) * epoch_s <= budget_s:
        return epochs
    if elapsed_s >= budget_s:
        return epoch
    more = _how_many(budget_s - elapsed_s, epoch_s) if epoch_s > 0 else epochs - epoch
    return epoch + max(1, min(epochs - epoch, more))


def epochs_to_extend(
    budget_s: float, elapsed_s: float, mean_epoch_s: float, epoch: int, epochs: int, most: int
) -> int:
    """The run's epochs after `epoch` of `epochs` took `elapsed_s` (`mean_epoch_s` each): more,
    up to `most` (the recipe's), when they fit `budget_s` at EXTEND_FACTOR x that mean, i.e. the
    probe read slow; else `epochs`. Not after the last epoch: its schedule has ended."""
    if epoch >= epochs or epochs >= most or not mean_epoch_s > 0:
        return epochs
    fit = epoch + _how_many(max(budget_s - elapsed_s, 0.0), EXTEND_FACTOR * mean_epoch_s)
    return max(epochs, min(most, fit))


@dataclass
class Timeline:
    """Where in the planned schedule a step stands, after re-plans to fewer or more epochs.

    The schedule is laid out over `total` steps. A re-plan at step `at` to a new last step
    `end` maps the steps from `at` to `end` linearly onto the rest of the schedule, from
    wherever `at` stood to `total`: the learning rate carries on from its value and reaches the
    schedule's end (zero, for one-cycle) at `end`. With no re-plan, a step stands at itself.
    """

    total: int
    replans: list[tuple[int, float, int]] = field(default_factory=list)  # (at, position, end)

    def position(self, step: float) -> float:
        """The schedule position of `step` (a float step of `total`)."""
        if not self.replans:
            return float(step)
        at, pos, end = self.replans[-1]
        if step < at:  # before the last re-plan: as the earlier ones placed it
            return Timeline(self.total, self.replans[:-1]).position(step)
        return min(float(self.total), pos + (step - at) * (self.total - pos) / max(end - at, 1))

    def replan(self, at: int, end: int) -> None:
        """From step `at` on, finish the schedule at step `end` instead."""
        self.replans.append((at, self.position(at), end))


def recorded(record: dict[str, Any]) -> dict[str, Any]:
    """A budget as config.json recorded it, in today's terms: runs recorded before a run could
    lengthen kept their re-plans as "cuts", without the epochs each one replaced."""
    if "cuts" not in record:
        return record
    record, planned = dict(record), record["epochs"]
    record["replans"] = []
    for c in record.pop("cuts"):
        record["replans"].append({**c, "planned": planned})
        planned = c["epochs"]
    return record


def replay(record: dict[str, Any], steps_per_epoch: int) -> Timeline:
    """The Timeline of a recorded budget ("epochs" planned, then its "replans")."""
    line = Timeline(record["epochs"] * steps_per_epoch)
    for c in record.get("replans", []):
        line.replan(c["after_epoch"] * steps_per_epoch, c["epochs"] * steps_per_epoch)
    return line


def final_epochs(record: dict[str, Any]) -> int:
    """The epochs a planned budget ends with: the last re-plan's, or the plan's."""
    return int((record.get("replans") or [record])[-1]["epochs"])


def replan_line(record: dict[str, Any], entry: dict[str, Any]) -> str:
    """One line for the log: why the run was cut or lengthened, and to how many epochs."""
    head = f"time budget {record['seconds']:g} s: {entry['elapsed_s']:.0f} s spent after epoch "
    if entry["epochs"] > entry["planned"]:
        return (
            head + f"{entry['after_epoch']} ({entry['mean_epoch_s']:.1f} s an epoch), so "
            f"{entry['epochs']} epochs in all fit where {entry['planned']} were planned (at "
            f"{EXTEND_FACTOR:g}x that pace), the learning rate laid out over them"
        )
    head += f"{entry['after_epoch']} ({entry['last_epoch_s']:.1f} s the last); "
    if entry["epochs"] <= entry["after_epoch"]:
        return head + "the budget is spent, so training stops here (the rate not annealed)"
    return (
        head + f"at that pace the plan would overrun, so {entry['epochs']} epochs in all, the "
        "learning rate annealed over them"
    )


def _timed(runtime: Runtime, fn: Callable[[], Any]) -> float:
    """Wall seconds of fn(), with the device's queued work finished at both ends."""
    cuda = runtime.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(runtime.device)
    t0 = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize(runtime.device)
    return time.perf_counter() - t0


def seconds_per_epoch(
    model: nn.Module,
    train_xy: tuple[torch.Tensor, torch.Tensor],
    val_xy: tuple[torch.Tensor, torch.Tensor] | None,
    *,
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
    batch_size: int,
    runtime: Runtime,
    aug: AugmentSpec | None = None,
    label_smoothing: float = 0.0,
    class_weights: torch.Tensor | None = None,
    tta: str | None = None,
    steps_per_epoch: int | None = None,
    make_ema: Callable[[nn.Module], Any] | None = None,
) -> dict[str, float]:
    """Estimated seconds of one epoch (its training steps plus the validation pass), timed on
    a deep copy of `model` with its own optimizer (and weight average, `make_ema`), so the
    run's model, optimizer and random states are untouched.

    Returns {"epoch_s", "step_s", "timed_steps"} (the chunks' median step time).
    """
    images, labels = train_xy
    bs = min(batch_size, len(labels))
    steps = steps_per_epoch or len(labels) // bs
    probe = copy.deepcopy(model)
    opt = make_optimizer(probe)
    ema = make_ema(probe) if make_ema is not None else None
    cuda = [runtime.device.index or 0] if runtime.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):

        def run_steps(k: int) -> float:
            n = min(k, steps) * bs
            return _timed(
                runtime,
                lambda: train_one_epoch(
                    probe,
                    images[:n],
                    labels[:n],
                    optimizer=opt,
                    batch_size=bs,
                    generator=torch.Generator().manual_seed(0),
                    runtime=runtime,
                    class_weights=class_weights,
                    label_smoothing=label_smoothing,
                    aug=aug,
                    aug_generator=torch.Generator().manual_seed(1),
                    ema=ema,
                ),
            )

        run_steps(WARMUP_STEPS)
        per_step: list[float] = []  # of each chunk of 4 steps: the median shrugs off a burst
        k = min(4, steps)  # of other work on a shared machine
        while len(per_step) * k < MAX_TIMED_STEPS and (
            len(per_step) < 2 or sum(per_step) * k < PROBE_SECONDS
        ):
            per_step.append(run_steps(k) / k)
        timed = len(per_step) * k
        step_s = statistics.median(per_step)
        val_s = 0.0
        if val_xy is not None and len(val_xy[1]):
            m = min(VAL_PROBE, len(val_xy[1]))
            vx, vy = val_xy[0][:m], val_xy[1][:m]

            def run_val(n: int) -> float:
                return _timed(
                    runtime,
                    lambda: evaluate(
                        probe, vx[:n], vy[:n], runtime=runtime, class_weights=class_weights, tta=tta
                    ),
                )

            run_val(8)  # warm-up
            val_s = run_val(m) / m * len(val_xy[1])
    return {"epoch_s": step_s * steps + val_s, "step_s": step_s, "timed_steps": timed}


def planned_epochs(budget_s: float, timing: dict[str, float], max_epochs: int) -> int:
    """Epochs to train: as many as fit `budget_s` at PLAN_FACTOR x the measured epoch."""
    return epochs_within(budget_s, PLAN_FACTOR * timing["epoch_s"], max_epochs)


def budget_record(budget_s: float, timing: dict[str, float], asked: int, chosen: int) -> dict:
    """What config.json keeps under "time_budget": the budget, the measurement, the choice."""
    return {
        "seconds": budget_s,
        "measured_epoch_s": round(timing["epoch_s"], 3),
        "plan_factor": PLAN_FACTOR,
        "measured_step_s": round(timing["step_s"], 5),
        "timed_steps": int(timing["timed_steps"]),
        "epochs_asked": asked,
        "epochs": chosen,
    }


def budget_line(record: dict[str, Any]) -> str:
    """One line for the log: the measurement and how many epochs it allows."""
    b, e, n, asked = (
        record["seconds"],
        record["measured_epoch_s"],
        record["epochs"],
        record["epochs_asked"],
    )
    f = record["plan_factor"]
    head = (
        f"time budget {b:g} s: about {e:.1f} s an epoch measured here (planned as {f * e:.1f}), so "
    )
    if n < asked:
        return (
            head + f"{n} of the recipe's {asked} epochs (about {n * f * e:.0f} s planned); "
            "--time-budget 0 trains them all"
        )
    return head + f"all {asked} epochs fit (about {n * f * e:.0f} s planned)"
