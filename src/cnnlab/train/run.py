"""A training run: dataset -> model -> epochs -> a run folder users pass around.

Run folder contents: model.safetensors (best weights, self-contained MODEL), model.json,
last.safetensors (the full training state after the last epoch, for --resume) and
previous.safetensors (the one before), config.json (exact configuration,
runtime, dataset summary), split.json (splits by file name), history.csv, curves.png and
metrics.json (test metrics of the best model).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import torch

from cnnlab import __version__
from cnnlab.atomic import write_json, write_text
from cnnlab.data.augment import AUGMENTS, get_augment, symmetry_of
from cnnlab.data.dataset import ImageDataset
from cnnlab.errors import CnnlabError
from cnnlab.models import create_model, model_info, model_kwargs, nchw_wgrad, winograd
from cnnlab.models.pool_relu import fuse_on_cpu
from cnnlab.runtime import DEVICE_CHOICES, Runtime, setup
from cnnlab.train import distributed
from cnnlab.train.budget import (
    BUDGET_MODES,
    Clock,
    Timeline,
    budget_line,
    budget_record,
    clock_line,
    clock_record,
    epochs_that_fit,
    epochs_to_extend,
    final_epochs,
    planned_epochs,
    recorded,
    replan_line,
    replay,
    seconds_per_epoch,
)
from cnnlab.train.checkpoint import (
    LAST_FILE,
    MODEL_FILE,
    check_free_space,
    disk_bytes_needed,
    model_meta,
    save_model,
    write_model_json,
)
from cnnlab.train.engine import evaluate, train_one_epoch
from cnnlab.train.presets import best_for_data, goal_line, preset_values
from cnnlab.train.resume import (
    RunState,
    check_resumable,
    data_fingerprint,
    guarded_writes,
    install_kill_hook,
    load_checkpoint,
    restore,
    save_checkpoint,
)
from cnnlab.train.schedule import SCHEDULES, lr_at

ADAM_EPS = 1e-7  # Keras' Adam epsilon (PyTorch's default is 1e-8)
SGD_MOMENTUM = 0.9  # Nesterov
OPTIMIZERS = ("adam", "sgd")
SELECTIONS = ("loss", "accuracy", "last")  # what picks the checkpoint on the validation split
_SELECT_WORDS = {
    "loss": "checkpoint with the lowest loss",
    "accuracy": "checkpoint with the highest accuracy (ties: the later epoch)",
    "last": "last epoch (the schedule's end) kept, scored and calibrated",
}
HISTORY_FIELDS = (
    "epoch",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "lr",
    "seconds",
    "images_per_s",
)


@dataclass
class TrainConfig:
    """Everything that decides a run; None = from the preset, else the model's recipe.

    Precedence: explicit values > `preset` > the model's recipe (the notes' defaults for the
    seed models) > the global defaults (Adam, constant lr, no augmentation).
    """

    data: str
    model: str | None = None  # may come from the preset
    preset: str | None = None  # lecture | best | fast (cnnlab.train.presets)
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None  # peak learning rate
    optimizer: str | None = None  # adam (the notes') | sgd (Nesterov momentum 0.9)
    weight_decay: float | None = None  # L2 penalty (SGD) / decoupled (Adam -> AdamW)
    schedule: str | None = None  # constant | onecycle | cosine (cnnlab.train.schedule)
    label_smoothing: float | None = None  # share of the target spread over all classes
    augment: str | None = None  # none | digits | flips | texture (cnnlab.data.augment)
    ema: float | None = None  # decay of the weight average used for eval / the model file
    tta: bool | None = None  # test-time augmentation over the training's symmetries
    width: str | None = None  # model width option (s | m | l) for models that take one
    seed: int = 0
    val_split: float | None = None  # None = the preset's (0 without one)
    test_split: float = 0.2  # only for data without its own test split (MNIST has one)
    patience: int | None = None  # epochs without val improvement (see select) before stopping
    time_budget: float | None = None  # seconds of training: fewer epochs if needed; 0 = none
    budget_mode: str | None = None  # "plan" (whole epochs, from a probe) | "clock" (budget.py)
    select: str | None = None  # checkpoint chosen on the val split by "loss" | "accuracy"
    class_weights: str | None = None  # "none" | "auto" (n / (k * count), sklearn's "balanced")
    device: str = "auto"
    channels_last: bool | None = None  # None = the runtime's measured default
    bf16: bool | None = None  # None = only where native (CUDA, AVX512-BF16/AMX CPUs)
    threads: int | None = None  # None = physical cores
    image_size: tuple[int, int] | None = None  # resize data to (H, W); None = data's own size
    channels: int | None = None  # convert data to 1 or 3 channels; None = data's own
    out: str | None = None

    def with_preset(self, values: dict[str, Any]) -> TrainConfig:
        """A copy whose unset (None) fields take the preset's values."""
        c = TrainConfig(**asdict(self))
        for key, value in values.items():
            if getattr(c, key) is None:
                setattr(c, key, value)
        return c

    def resolved(self) -> TrainConfig:
        """A copy with the preset and recipe filled in and every value checked."""
        c = TrainConfig(**asdict(self))
        if c.preset is not None:
            try:
                values = preset_values(c.preset, c.data)
            except ValueError as e:
                raise CnnlabError(f"--preset: {e}") from None
            if values is not None:
                c = c.with_preset(values)
        if c.model is None:
            raise CnnlabError("--model is required without a --preset")
        recipe = model_info(c.model).recipe
        c = c.with_preset(
            {
                "epochs": int(recipe.get("epochs", 10)),
                "batch_size": int(recipe.get("batch_size", 50)),
                "lr": float(recipe.get("lr", 1e-3)),
                "optimizer": recipe.get("optimizer", "adam"),
                "weight_decay": 0.0,
                "schedule": "constant",
                "label_smoothing": 0.0,
                "augment": "none",
                "tta": False,
                "val_split": 0.0,
                "class_weights": "none",
                "select": "loss",
                "budget_mode": "plan",
            }
        )
        if c.epochs <= 0:
            raise CnnlabError(f"--epochs must be a positive integer, got {c.epochs}")
        if c.batch_size <= 0:
            raise CnnlabError(f"--batch-size must be a positive integer, got {c.batch_size}")
        if not (c.lr > 0 and math.isfinite(c.lr)):
            raise CnnlabError(f"--lr must be a positive number, got {c.lr}")
        if c.optimizer not in OPTIMIZERS:
            raise CnnlabError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}")
        if not (c.weight_decay >= 0 and math.isfinite(c.weight_decay)):
            raise CnnlabError(f"--weight-decay must be >= 0, got {c.weight_decay}")
        if c.schedule not in SCHEDULES:
            raise CnnlabError(f"--schedule must be one of {', '.join(SCHEDULES)}")
        if not 0.0 <= c.label_smoothing < 1.0:
            raise CnnlabError(f"--label-smoothing must be in [0, 1), got {c.label_smoothing}")
        if c.augment not in AUGMENTS:
            raise CnnlabError(f"--augment must be one of {', '.join(AUGMENTS)}")
        if c.ema is not None and not 0.0 < c.ema < 1.0:
            raise CnnlabError(f"--ema must be in (0, 1), got {c.ema}")
        if not 0.0 <= c.val_split < 1.0:
            raise CnnlabError(f"--val-split must be in [0, 1), got {c.val_split}")
        if not 0.0 < c.test_split < 1.0:
            raise CnnlabError(f"--test-split must be in (0, 1), got {c.test_split}")
        if c.val_split + c.test_split >= 1.0:
            raise CnnlabError("--val-split plus --test-split must leave images for training")
        if c.time_budget is not None and not (c.time_budget >= 0 and math.isfinite(c.time_budget)):
            raise CnnlabError(f"--time-budget must be a duration >= 0, got {c.time_budget}")
        if c.budget_mode not in BUDGET_MODES:
            raise CnnlabError(f"--budget-mode must be one of {', '.join(BUDGET_MODES)}")
        if self.budget_mode == "clock" and self.time_budget is None and not c.time_budget:
            # asked for with no budget given or from the preset: it would change nothing
            raise CnnlabError("--budget-mode clock needs a --time-budget (a duration > 0)")
        if c.patience is not None:
            if c.patience <= 0:
                raise CnnlabError(f"--patience must be a positive integer, got {c.patience}")
            if c.val_split == 0:
                raise CnnlabError("--patience needs a validation split: add --val-split")
        if c.select not in SELECTIONS:
            raise CnnlabError(f"--select must be one of {', '.join(SELECTIONS)}")
        if c.class_weights not in ("none", "auto"):
            raise CnnlabError(f"--class-weights must be 'none' or 'auto', got {c.class_weights}")
        if c.device not in DEVICE_CHOICES:
            raise CnnlabError(f"--device must be one of {', '.join(DEVICE_CHOICES)}")
        if c.threads is not None and c.threads <= 0:
            raise CnnlabError(f"--threads must be a positive integer, got {c.threads}")
        if c.channels not in (None, 1, 3):
            raise CnnlabError(f"--channels must be 1 or 3, got {c.channels}")
        if c.image_size is not None:
            c.image_size = (int(c.image_size[0]), int(c.image_size[1]))
        if c.out is None:
            c.out = str(Path("runs") / f"{c.model}-{datetime.now():%Y%m%d-%H%M%S}")
        return c


@dataclass
class TrainResult:
    """What a finished run returns: its folder, per-epoch history and test metrics."""

    run_dir: Path
    history: list[dict[str, Any]]
    test: dict[str, Any]
    best_epoch: int
    stopped_early: bool
    config: dict[str, Any]


def balanced_class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """n / (k * count_c) per class (sklearn's 'balanced'); absent classes get weight 0."""
    counts = torch.bincount(labels.cpu(), minlength=num_classes).double()
    w = torch.where(counts > 0, labels.numel() / (num_classes * counts.clamp(min=1)), 0.0)
    return w.float()


def prepare_run_dir(out: str | Path) -> Path:
    """Create the run folder and check that it can be written, before any training."""
    run_dir = Path(out)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".cnnlab-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise CnnlabError(f"cannot write the run folder ({e.strerror or e})", run_dir) from None
    return run_dir


def load_training_data(config: TrainConfig, *, progress: bool = True) -> ImageDataset:
    """The dataset named by `config.data`, split as the config says (import is lazy)."""
    from cnnlab.data import load_dataset  # the data package's loader

    return load_dataset(
        config.data,
        channels=config.channels,
        size=config.image_size,
        seed=config.seed,
        test_split=config.test_split,
        val_split=config.val_split,
        progress=progress,
    )


def history_csv(history: list[dict[str, Any]]) -> str:
    """The per-epoch history as CSV text (empty cells where there is no validation)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in history:
        w.writerow({k: ("" if row.get(k) is None else row[k]) for k in HISTORY_FIELDS})
    return buf.getvalue()


def train(
    config: TrainConfig,
    dataset: ImageDataset | None = None,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
    resume: bool = False,
) -> TrainResult:
    """Train `config.model` on `config.data` (or on `dataset`) and write the run folder.

    Parameters
    ----------
    config : TrainConfig
        The run's settings; None fields take the model's recipe (Adam, lr 1e-3, batch 50).
    dataset : ImageDataset, optional
        Use these images instead of loading `config.data`; it needs a "train" split, and
        "test" / "val" splits are used when present.
    progress : bool
        Progress bars on stderr (only when it is a terminal).
    log : callable
        Where one-line messages go (epoch summaries, notes).
    resume : bool
        Continue the run in `config.out` from its last checkpoint (cnnlab.train.resume;
        `resume_config(run_dir)` gives its config).

    Under torchrun (a process group from cnnlab.train.distributed) every process runs this
    with the same arguments: each trains on its share of every batch, rank 0 writes.

    Examples
    --------
    >>> from cnnlab.train import TrainConfig, train
    >>> result = train(TrainConfig(data="mnist", model="seed-mnist", out="runs/mnist"))
    ... # doctest: +SKIP
    >>> result.test["accuracy"]  # doctest: +SKIP
    0.9912
    """
    world = distributed.current()
    if world is not None and not world.is_main:
        log, progress = (lambda _m: None), False
    is_main = world is None or world.is_main
    cfg = _resolve_with_data(config, dataset, progress=progress, log=log)
    threads = cfg.threads or (world.default_threads() if world else None)
    rt = setup(cfg.device, threads=threads, channels_last=cfg.channels_last, bf16=cfg.bf16)
    if world is not None:
        if rt.device.type == "cuda":
            rt = dataclasses.replace(rt, device=torch.device("cuda", world.local_rank))
        if cfg.batch_size % world.size:
            raise CnnlabError(
                f"--batch-size {cfg.batch_size} must be a multiple of the {world.size} processes"
            )
    run_dir = Path(cfg.out)
    created = not run_dir.exists()
    if resume and created:
        raise CnnlabError("no such run folder to resume", run_dir)
    distributed.on_main(world, lambda: prepare_run_dir(run_dir))
    try:
        if dataset is None:
            dataset = load_training_data(cfg, progress=progress)
        if "train" not in dataset.splits or len(dataset.splits["train"]) == 0:
            raise CnnlabError("dataset has no training images", dataset.root or cfg.data)
        if cfg.val_split > 0 and "val" not in dataset.splits:
            raise CnnlabError("--val-split given but the dataset has no 'val' split", cfg.data)
    except BaseException:
        if is_main and created and not any(run_dir.iterdir()):
            run_dir.rmdir()  # leave no empty run folder behind for bad input
        raise
    for note in dataset.notes:
        log(f"note: {note}")

    kwargs = model_kwargs(
        cfg.model,
        in_channels=dataset.channels,
        num_classes=dataset.num_classes,
        image_size=dataset.image_size,
        width=cfg.width,
    )
    torch.manual_seed(cfg.seed)  # the model's initial weights
    try:
        model = create_model(cfg.model, **{**kwargs, "image_size": tuple(kwargs["image_size"])})
    except ValueError as e:
        raise CnnlabError(str(e), cfg.data) from None
    model = rt.place(model)
    pool_relu = fuse_on_cpu(model, rt.device)
    weight_grads = nchw_wgrad.use_on_cpu(
        model, rt.device, rt.amp_dtype, (dataset.channels, *dataset.image_size)
    )
    conv_grads = winograd.grads_on_cpu(model, rt.device, rt.amp_dtype)  # the convs left
    if world is not None and rt.device.type == "cuda":  # BN statistics over the global batch
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    opt = build_optimizer(model, cfg)
    install_kill_hook(opt)  # fault injection for tests; a no-op unless its env var is set
    ema = None if cfg.ema is None else _averaged(model, cfg.ema)
    eval_model = model if ema is None else ema.module
    aug = get_augment(cfg.augment)
    # test-time augmentation averages over the symmetries the training drew from
    tta = symmetry_of(aug) if cfg.tta else None
    aug = None if aug.is_identity else aug  # nothing to draw: skip the augmentation call

    def on_device(name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        if name not in dataset.splits:
            return None
        idx = dataset.splits[name]
        return dataset.images[idx].to(rt.device), dataset.labels[idx].to(rt.device)

    train_xy, val_xy, test_xy = on_device("train"), on_device("val"), on_device("test")
    weights = None
    if cfg.class_weights == "auto":
        weights = balanced_class_weights(train_xy[1], dataset.num_classes).to(rt.device)

    steps_per_epoch = len(train_xy[1]) // min(cfg.batch_size, len(train_xy[1]))
    budget, clock = None, None
    if cfg.time_budget and cfg.budget_mode == "clock":
        if resume or world is not None:
            why = "--resume" if resume else "torchrun"
            raise CnnlabError(
                f"--budget-mode clock cannot be used with {why}: the schedule follows one "
                "process's clock from the first step"
            )
        clock = Clock(cfg.time_budget)
        budget = clock_record(cfg.time_budget, cfg.epochs, None, steps_per_epoch)
    elif cfg.time_budget and not resume:  # a resumed run keeps the epochs it chose
        timing = seconds_per_epoch(
            model,
            train_xy,
            val_xy,
            make_optimizer=partial(build_optimizer, cfg=cfg),
            batch_size=cfg.batch_size // (world.size if world else 1),
            runtime=rt,
            aug=aug,
            label_smoothing=cfg.label_smoothing,
            class_weights=weights,
            tta=tta,
            steps_per_epoch=steps_per_epoch,
            make_ema=None if ema is None else partial(_averaged, decay=cfg.ema),
        )
        if world is not None:  # every rank must choose the same epochs: the mean timing
            both = torch.tensor([timing["epoch_s"], timing["step_s"]], dtype=torch.float64)
            timing["epoch_s"], timing["step_s"] = (world.all_reduce_sum(both) / world.size).tolist()
        chosen = planned_epochs(cfg.time_budget, timing, cfg.epochs)
        budget = budget_record(cfg.time_budget, timing, cfg.epochs, chosen)
        log(budget_line(budget))
        cfg = dataclasses.replace(cfg, epochs=chosen)

    state = RunState(data_sha256=data_fingerprint(*train_xy))
    if resume:
        state = _restore(run_dir, cfg, state, model, opt, ema, log)
    existing = sum(f.stat().st_size for f in run_dir.glob("*.safetensors"))  # to be replaced
    distributed.on_main(
        world, lambda: check_free_space(run_dir, disk_bytes_needed(model) - existing)
    )
    config_record = _config_record(cfg, rt, dataset, kwargs, weights)
    config_record["runtime"]["pool_relu"] = pool_relu
    config_record["runtime"]["weight_grads"] = weight_grads
    config_record["runtime"]["conv_grads"] = conv_grads
    if resume:  # keep the measurement that chose the epochs
        budget = _recorded_budget(run_dir)
    if budget is not None:
        config_record["time_budget"] = budget
    meta = model_meta(
        cfg.model,
        kwargs,
        dataset.class_names,
        tta=tta or False,
        trained={
            "data": cfg.data,
            "seed": cfg.seed,
            "preset": cfg.preset,
            "cnnlab_version": __version__,
        },
    )
    distributed.on_main(
        world, partial(_write_start, run_dir, config_record, dataset.split_manifest(), meta)
    )
    net, model = model, distributed.wrap(model, world)  # net: the plain module, for saving

    total_steps = steps_per_epoch * cfg.epochs
    # a planned budget is checked after every epoch and may cut or lengthen the run (budget.py);
    # not when a resumed run was given other epochs than the plan's (--epochs N, on purpose)
    guard = clock is None and budget is not None and final_epochs(budget) == cfg.epochs
    timeline = replay(budget, steps_per_epoch) if guard else Timeline(total_steps)

    def schedule(step: int) -> float:
        if clock is None:
            return lr_at(timeline.position(step), timeline.total, cfg.lr, cfg.schedule)
        return lr_at(clock.position(step, total_steps), total_steps, cfg.lr, cfg.schedule)

    log(
        f"training {cfg.model} on {len(train_xy[1])} images ({dataset.num_classes} classes, "
        f"{dataset.channels}x{dataset.image_size[0]}x{dataset.image_size[1]}) for {cfg.epochs} "
        f"epochs, batch {cfg.batch_size}, {cfg.optimizer} lr {cfg.lr:g} ({cfg.schedule}), "
        f"augment {cfg.augment}, {rt.device}, {rt.threads} threads"
        + (f", {world.size} processes ({world.backend})" if world else "")
        + (f"; {rt.amp_reason}" if rt.amp_reason else "")
        + (f"; max-pool + ReLU: {pool_relu}" if pool_relu else "")
        + (f"; weight gradients: {weight_grads}" if weight_grads else "")
        + (f"; convolution gradients: {conv_grads}" if conv_grads else "")
    )
    history = state.history
    best_epoch, bad_epochs = state.best_epoch, state.bad_epochs
    stopped = False
    steps_run = 0
    epoch = state.epoch
    while epoch < cfg.epochs:  # a budget's re-plan may change cfg.epochs on the way
        epoch += 1
        if clock is not None and clock.up():  # spent in the last epoch's validation pass
            break
        t0 = time.perf_counter()
        tr = train_one_epoch(
            model,
            *train_xy,
            optimizer=opt,
            batch_size=cfg.batch_size,
            generator=epoch_generator(cfg.seed, epoch, "order"),
            runtime=rt,
            class_weights=weights,
            label_smoothing=cfg.label_smoothing,
            aug=aug,
            aug_generator=epoch_generator(cfg.seed, epoch, "augment"),
            lr_at=None if cfg.schedule == "constant" else schedule,
            step_offset=(epoch - 1) * steps_per_epoch,
            ema=ema,
            progress=progress,
            desc=f"epoch {epoch}/{cfg.epochs}",
            shard=world.shard if world else None,
            stop=None if clock is None else clock.up,
        )
        steps_run += tr["steps"]
        row: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": round(tr["loss"], 6),
            "train_accuracy": round(tr["accuracy"], 6),
            "val_loss": None,
            "val_accuracy": None,
            "lr": opt.param_groups[0]["lr"],
            "images_per_s": round(tr["images_per_s"], 1),
        }
        if val_xy is not None:
            va = evaluate(eval_model, *val_xy, runtime=rt, class_weights=weights, tta=tta)
            row["val_loss"], row["val_accuracy"] = round(va["loss"], 6), round(va["accuracy"], 6)
        row["seconds"] = round(time.perf_counter() - t0, 3)
        history.append(row)
        msg = (
            f"epoch {epoch}/{cfg.epochs}: loss {tr['loss']:.4f} acc {tr['accuracy']:.4f}"
            f" ({tr['images_per_s']:.0f} img/s)"
        )
        if val_xy is not None:
            msg += f" | val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f}"
        log(msg)

        # without validation, best = last: the model file is written once, after the loop;
        # a NaN validation loss never counts as an improvement
        best_row = next((r for r in history if r["epoch"] == best_epoch), None)
        improved = val_xy is None or improves(row, best_row, cfg.select)
        if improved:
            best_epoch, bad_epochs = epoch, 0
        else:
            bad_epochs += 1
        state = RunState(epoch, best_epoch, bad_epochs, history, state.data_sha256)

        best = eval_model if improved and val_xy is not None else None
        write = partial(_write_epoch, run_dir, net, best, opt, meta, state, ema)
        distributed.on_main(world, write)  # a failed write stops every rank
        if cfg.patience is not None and bad_epochs >= cfg.patience:
            log(
                f"early stop: val {cfg.select} has not improved for {cfg.patience} epoch(s); "
                f"best epoch {best_epoch}"
            )
            stopped = True
            break
        if guard:
            cfg = _check_budget(cfg, budget, history, timeline, steps_per_epoch, world, log)
            if cfg.epochs != config_record["config"]["epochs"]:
                config_record["config"]["epochs"] = cfg.epochs
                config_record["time_budget"] = budget
                cuts = [r for r in budget["replans"] if r["epochs"] < r["planned"]]
                first_cut = cuts == budget["replans"][-1:] and len(cuts) == 1  # this re-plan
                if first_cut and rt.threads > 1 and rt.device.type == "cpu":
                    log(
                        f"note: if other programs keep this machine's cores busy, --threads 1 "
                        f"trains faster beside them than {rt.threads} threads (README, "
                        '"Export and serve")'
                    )
                distributed.on_main(world, partial(_write_config, run_dir, config_record))

    if clock is not None:
        budget = clock_record(cfg.time_budget, cfg.epochs, steps_run, steps_per_epoch)
        log(clock_line(budget, steps_per_epoch))
    if val_xy is None or best_epoch == 0:  # best = last (no validation, or never a finite loss)
        best_epoch = history[-1]["epoch"]
        if is_main:
            with guarded_writes(run_dir):
                save_model(run_dir / MODEL_FILE, eval_model, {**meta, "epoch": best_epoch})
    test: dict[str, Any] = {}
    train_seconds = round(sum(r["seconds"] for r in history), 3)
    if not is_main:  # rank 0 evaluates on the test images and writes the rest
        return TrainResult(run_dir, history, test, best_epoch, stopped, config_record)
    # the test pass and the temperature in float32, as predict / serve / the exported models
    # compute (bf16 logits move a borderline image's class; README, "Accuracy")
    fp32 = dataclasses.replace(rt, amp_dtype=None)
    if test_xy is not None:
        if best_epoch != history[-1]["epoch"]:
            from cnnlab.train.checkpoint import load_model

            eval_model = rt.place(load_model(run_dir / MODEL_FILE)[0])
        te = evaluate(eval_model, *test_xy, runtime=fp32, tta=tta)
        test = {"split": "test", "loss": te["loss"], "accuracy": te["accuracy"], "n": te["n"]}
        log(f"test accuracy {te['accuracy']:.4f} on {te['n']} images (best epoch {best_epoch})")
        goal = goal_line(cfg.preset, cfg.data, te["accuracy"], train_seconds)
        if goal:
            log(goal)
    with guarded_writes(run_dir):
        if val_xy is not None:  # temperature scaling on the val split, stored with the best model
            from cnnlab.calibration import calibrate_saved_model, calibration_line

            record = calibrate_saved_model(run_dir / MODEL_FILE, *val_xy, runtime=fp32)
            log(calibration_line(record))
        _save_curves(run_dir, history)
        write_json(
            run_dir / "metrics.json",
            {
                "best_epoch": best_epoch,
                "stopped_early": stopped,
                "epochs_run": len(history),
                "train_seconds": train_seconds,
                **({"time_budget": budget} if clock is not None else {}),
                "final": history[-1],
                "test": test,
            },
        )
    return TrainResult(run_dir, history, test, best_epoch, stopped, config_record)


def _recorded_budget(run_dir: Path) -> dict[str, Any] | None:
    """The "time_budget" entry of a run's config.json, if it has one."""
    try:
        entry = json.loads((run_dir / "config.json").read_text(encoding="utf-8")).get("time_budget")
    except (OSError, ValueError, AttributeError):
        return None
    return recorded(entry) if isinstance(entry, dict) else None


def _write_start(
    run_dir: Path, record: dict[str, Any], split: dict[str, Any], meta: dict[str, Any]
) -> None:
    """Before the first epoch: config.json, split.json, model.json."""
    with guarded_writes(run_dir):
        write_json(run_dir / "config.json", record)
        write_json(run_dir / "split.json", split)
        write_model_json(run_dir, meta)


def _check_budget(
    cfg: TrainConfig,
    budget: dict[str, Any],
    history: list[dict[str, Any]],
    timeline: Timeline,
    steps_per_epoch: int,
    world: Any,
    log: Callable[[str], None],
) -> TrainConfig:
    """After an epoch: cfg, with `timeline` and `budget` re-planned to fewer epochs when the
    epochs left would overrun the budget at the last epoch's pace (budget.epochs_that_fit), or
    to more of the recipe's when they fit at the mean pace so far (budget.epochs_to_extend)."""
    elapsed = sum(r["seconds"] for r in history)
    last = history[-1]["seconds"]
    if world is not None:  # every rank must re-plan alike: the mean of their clocks
        both = torch.tensor([elapsed, last], dtype=torch.float64)
        elapsed, last = (world.all_reduce_sum(both) / world.size).tolist()
    epoch = history[-1]["epoch"]
    n = epochs_that_fit(cfg.time_budget, elapsed, last, epoch, cfg.epochs)
    mean = elapsed / len(history)
    if n == cfg.epochs:
        n = epochs_to_extend(
            cfg.time_budget, elapsed, mean, epoch, cfg.epochs, budget["epochs_asked"]
        )
    if n == cfg.epochs:
        return cfg
    timeline.replan(epoch * steps_per_epoch, n * steps_per_epoch)
    entry = {
        "after_epoch": epoch,
        "elapsed_s": round(elapsed, 3),
        "last_epoch_s": round(last, 3),
        "mean_epoch_s": round(mean, 3),
        "planned": cfg.epochs,
        "epochs": n,
    }
    budget.setdefault("replans", []).append(entry)
    log(replan_line(budget, entry))
    return dataclasses.replace(cfg, epochs=n)


def _write_config(run_dir: Path, record: dict[str, Any]) -> None:
    """config.json again, after a budget's re-plan (the epochs and the re-plan recorded)."""
    with guarded_writes(run_dir):
        write_json(run_dir / "config.json", record)


def _write_epoch(
    run_dir: Path,
    model: torch.nn.Module,
    best: torch.nn.Module | None,
    optimizer: torch.optim.Optimizer,
    meta: dict[str, Any],
    state: RunState,
    ema: torch.nn.Module | None,
) -> None:
    """After an epoch: the best model (when it improved), the checkpoint, history.csv."""
    with guarded_writes(run_dir):
        if best is not None:
            save_model(run_dir / MODEL_FILE, best, {**meta, "epoch": state.epoch})
        save_checkpoint(run_dir / LAST_FILE, model, optimizer, meta, state, ema=ema)
        write_text(run_dir / "history.csv", history_csv(state.history))


def _restore(
    run_dir: Path,
    cfg: TrainConfig,
    fresh: RunState,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    ema: torch.nn.Module | None,
    log: Callable[[str], None],
) -> RunState:
    """The state of the run being resumed (checked against this data), or `fresh`."""
    ckpt = load_checkpoint(run_dir, log=log)
    if ckpt is None:
        log(f"{run_dir}: no checkpoint yet (stopped during epoch 1?): starting from epoch 1")
        return fresh
    if ckpt.state.data_sha256 not in ("", fresh.data_sha256):
        raise CnnlabError(
            "the training images differ from those this run started with; resume needs "
            "the same data",
            cfg.data,
        )
    state = restore(ckpt, model, opt, ema=ema)
    check_resumable(state, epochs=cfg.epochs, patience=cfg.patience, run_dir=run_dir)
    log(f"resuming {run_dir} after epoch {state.epoch} of {cfg.epochs}")
    return state


def improves(row: dict[str, Any], best: dict[str, Any] | None, select: str) -> bool:
    """Whether epoch `row` is a better checkpoint than `best` on the validation split.

    "loss": lower loss. "accuracy": higher accuracy, a tie going to the later epoch (with
    label smoothing the loss keeps rising late in a run while the accuracy still improves).
    "last": every finite epoch (a one-cycle schedule ends where it is meant to be best; the
    maximum over many epochs of a small split's accuracy is mostly noise).
    A NaN loss never counts as an improvement.
    """
    if not math.isfinite(row["val_loss"]):
        return False
    if best is None or select == "last":
        return True
    if select == "accuracy":
        return row["val_accuracy"] >= best["val_accuracy"]
    return row["val_loss"] < best["val_loss"]


def epoch_generator(seed: int, epoch: int, stream: str) -> torch.Generator:
    """The generator of one epoch's batch order ("order") or augmentation ("augment").

    Seeded from (seed, epoch, stream) alone, so epoch e draws the same numbers whether the run
    started at epoch 1 or resumed at e, and the two streams never share draws.
    """
    offset = {"order": 0, "augment": 1}[stream]
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 2 + offset)


def ema_update(decay: float) -> Callable[[list, list, Any], None]:
    """EMA step for AveragedModel: decay min(decay, (1 + n) / (10 + n)) after n updates.

    The warm-up (as in timm's ModelEmaV2 / TensorFlow's ExponentialMovingAverage) keeps a short
    run from averaging in its random initial weights: 0.999 alone would still hold 88 % of
    the initial weights after 124 steps.
    """

    seen: list[int] = []  # updates so far, read from AveragedModel's counter once (a resume
    # restores that counter); afterwards counted here, so no step waits on a device sync

    def update(averaged: list, current: list, n: Any) -> None:
        if not seen:
            seen.append(int(n))
        d = min(decay, (1.0 + seen[0]) / (10.0 + seen[0]))
        seen[0] += 1
        floats = [(a, c) for a, c in zip(averaged, current, strict=True) if a.is_floating_point()]
        if floats:
            torch._foreach_lerp_([a for a, _ in floats], [c for _, c in floats], 1.0 - d)
        for a, c in zip(averaged, current, strict=True):
            if not a.is_floating_point():  # BN's num_batches_tracked: a counter, copied
                a.copy_(c)

    return update


def _averaged(model: torch.nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """The EMA of `model`'s weights; BN statistics are averaged too (use_buffers)."""
    return torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=ema_update(decay), use_buffers=True
    )


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam with Keras' epsilon (AdamW when weight decay is set), or SGD with Nesterov momentum.

    Fused kernels: one kernel for all parameters (seed-neu's Adam step 66 -> 9.7 ms here).
    """
    params = model.parameters()
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=SGD_MOMENTUM,
            nesterov=True,
            weight_decay=cfg.weight_decay,
            fused=True,
        )
    if cfg.weight_decay:
        return torch.optim.AdamW(
            params, lr=cfg.lr, eps=ADAM_EPS, weight_decay=cfg.weight_decay, fused=True
        )
    return torch.optim.Adam(params, lr=cfg.lr, eps=ADAM_EPS, fused=True)


def _resolve_with_data(
    config: TrainConfig,
    dataset: ImageDataset | None,
    *,
    progress: bool,
    log: Callable[[str], None],
) -> TrainConfig:
    """config.resolved(), first deriving `--preset best` from the images for unknown data."""
    if config.preset == "best" and preset_values("best", config.data) is None:
        probe = dataset
        if probe is None:
            from cnnlab.data import load_dataset

            probe = load_dataset(
                config.data,
                channels=config.channels,
                seed=config.seed,
                test_split=config.test_split,
                progress=progress,
            )
        n_train = len(probe.splits.get("train", probe.labels))
        values = best_for_data(n_train, probe.channels, probe.image_size, probe.num_classes)
        if dataset is not None:
            values["image_size"] = None  # a given dataset is used as it is
        log(
            "preset best for this data: "
            + ", ".join(f"{k} {v}" for k, v in values.items() if k not in _BEST_QUIET)
        )
        config = config.with_preset(values)
    return config.resolved()


_BEST_QUIET = ("optimizer", "schedule", "weight_decay", "ema", "val_split")


def _save_curves(run_dir: Path, history: list[dict[str, Any]]) -> None:
    from cnnlab.plots import save_figure, training_curves

    save_figure(training_curves(history), run_dir / "curves.png")


def _config_record(
    cfg: TrainConfig,
    rt: Runtime,
    dataset: ImageDataset,
    kwargs: dict[str, Any],
    weights: torch.Tensor | None,
) -> dict[str, Any]:
    record = asdict(cfg)
    record["image_size"] = list(cfg.image_size) if cfg.image_size else None
    return {
        "config": record,
        "model_kwargs": kwargs,
        "optimizer": {
            "name": cfg.optimizer,
            "lr": cfg.lr,
            "schedule": cfg.schedule,
            "weight_decay": cfg.weight_decay,
            **(
                {"momentum": SGD_MOMENTUM, "nesterov": True}
                if cfg.optimizer == "sgd"
                else {"betas": [0.9, 0.999], "eps": ADAM_EPS}
            ),
        },
        "loss": "cross_entropy"
        + (" (class-weighted)" if weights is not None else "")
        + (f" (label smoothing {cfg.label_smoothing})" if cfg.label_smoothing else ""),
        "augment": get_augment(cfg.augment).to_dict(),
        "selection": (
            f"{_SELECT_WORDS[cfg.select]} on the validation split "
            f"({cfg.val_split:.0%} of "
            "the training images, carved before training); the test split is never used to "
            "choose anything"
            if cfg.val_split
            else "last epoch (no validation split)"
        ),
        "class_weights": None if weights is None else [round(float(w), 6) for w in weights],
        "runtime": rt.describe(),
        "dataset": dataset.summary(),
        "versions": {
            "cnnlab": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }
