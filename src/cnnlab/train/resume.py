"""Continuing an interrupted run: what a checkpoint holds, and putting it back.

At an epoch boundary a run is fully described by the model weights, the optimizer state
(Adam's moments and step; the learning rate is a function of the global step), the EMA
weights (if any), the epoch number, the best-model tracking (best validation loss, its
epoch, epochs without improvement), the history rows and torch's global random states (CPU,
CUDA); batch order and augmentation come from generators seeded by (seed, epoch) and need no
saving. All of it goes into `last.safetensors` after every epoch; `train(..., resume=True)`
(the CLI's `cnnlab train --resume RUN_DIR`) restores it and runs the remaining epochs, so on
the CPU a run killed mid-epoch ends bit-identical to one never interrupted.

A damaged `last.safetensors` (checksum mismatch, truncated) is reported and the previous
checkpoint (`previous.safetensors`, one epoch older) is used; if neither is intact, resuming
is refused. `CNNLAB_FAULT_KILL_AT_STEP=N` makes a training process SIGKILL itself after its
N-th optimizer step, so tests can interrupt a real run at a known point.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.train.checkpoint import (
    LAST_FILE,
    OPTIM_KEY,
    PREVIOUS_FILE,
    load_optimizer_state,
    read_safetensors,
    save_last,
)

STATE_KEY = "cnnlab_train_state"  # checkpoint metadata key holding RunState as JSON
KILL_ENV = "CNNLAB_FAULT_KILL_AT_STEP"  # fault injection for tests: SIGKILL after step N
# settings a resumed run may change: they extend the run or say where it runs, not what it is
RESUMABLE = ("epochs", "patience", "device", "threads")


@dataclass
class RunState:
    """Where a run stands after `epoch` finished epochs: best-model tracking and history."""

    epoch: int = 0
    best_epoch: int = 0  # 0 = none yet; its scores are in `history`
    bad_epochs: int = 0  # epochs since the last improvement (for --patience)
    history: list[dict[str, Any]] = field(default_factory=list)
    data_sha256: str = ""  # fingerprint of the training images and labels

    def to_json(self) -> str:
        """JSON text of every field."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RunState:
        """Inverse of `to_json`; unknown keys (such as older checkpoints' best_loss) are ignored."""
        d = json.loads(text)
        return cls(**{k: v for k, v in d.items() if k in {f.name for f in fields(cls)}})


def data_fingerprint(images: torch.Tensor, labels: torch.Tensor) -> str:
    """sha256 of the training images and labels in split order (catches changed data)."""
    h = hashlib.sha256()
    for t in (images, labels):
        h.update(memoryview(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def _rng_tensors() -> dict[str, torch.Tensor]:
    out = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng.cuda.{i}"] = s
    return out


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    meta: dict[str, Any],
    state: RunState,
    *,
    ema: nn.Module | None = None,
) -> Path:
    """Write the full training state after `state.epoch` epochs to `path` (last.safetensors)."""
    extra = _rng_tensors()
    if ema is not None:
        extra.update(
            {f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.state_dict().items()}
        )
    return save_last(
        path,
        model,
        optimizer,
        {**meta, "epoch": state.epoch},
        epoch=state.epoch,
        extra_tensors=extra,
        extra_meta={STATE_KEY: state.to_json()},
    )


@contextlib.contextmanager
def guarded_writes(run_dir: str | Path) -> Iterator[None]:
    """A failed write in the block (disk full, folder gone read-only) becomes one clear error.

    Every write is atomic, so what was written before is intact; the message says so and
    how to continue once the cause is fixed.
    """
    try:
        yield
    except OSError as e:
        raise CnnlabError(
            f"cannot write the run folder ({e.strerror or e}); {_RESUME_HINT}{run_dir}", run_dir
        ) from None
    except CnnlabError as e:
        raise CnnlabError(f"{e}; {_RESUME_HINT}{run_dir}") from None


_RESUME_HINT = "files written before are intact; fix this, then: cnnlab train --resume "


@dataclass
class Checkpoint:
    """A verified checkpoint read back from a run folder."""

    path: Path
    tensors: dict[str, torch.Tensor]
    meta: dict[str, str]
    state: RunState


def load_checkpoint(
    run_dir: str | Path, *, log: Callable[[str], None] = print
) -> Checkpoint | None:
    """The newest intact checkpoint in `run_dir`: last, else previous; None when there is none.

    A damaged file is reported through `log` and skipped; when files exist but none is
    intact, resuming is refused (never silently restarted from scratch).
    """
    run_dir = Path(run_dir)
    problems: list[str] = []
    for name in (LAST_FILE, PREVIOUS_FILE):
        path = run_dir / name
        if not path.exists():
            continue
        try:
            tensors, meta = read_safetensors(path)
            if STATE_KEY not in meta or OPTIM_KEY not in meta:
                raise CnnlabError("checkpoint without training state (older cnnlab?)", path)
            state = RunState.from_json(meta[STATE_KEY])
        except (CnnlabError, ValueError, KeyError, TypeError) as e:
            problems.append(str(e))
            log(f"warning: cannot resume from {name}: {e}")
            continue
        if problems:
            log(f"resuming from {name} (epoch {state.epoch}) instead")
        return Checkpoint(path, tensors, meta, state)
    if problems:
        raise CnnlabError(f"no intact checkpoint to resume from: {'; '.join(problems)}", run_dir)
    return None


def restore(
    ckpt: Checkpoint,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    ema: nn.Module | None = None,
) -> RunState:
    """Load weights, optimizer, EMA and random states from `ckpt`; returns where the run was."""
    t = ckpt.tensors
    try:
        model.load_state_dict({k[6:]: v for k, v in t.items() if k.startswith("model.")})
        load_optimizer_state(optimizer, t, ckpt.meta[OPTIM_KEY])
        if ema is not None:
            ema.load_state_dict({k[4:]: v for k, v in t.items() if k.startswith("ema.")})
    except (RuntimeError, ValueError, KeyError) as e:
        first = str(e).splitlines()[0]
        raise CnnlabError(f"checkpoint does not fit this run ({first})", ckpt.path) from None
    torch.set_rng_state(t["rng.torch"])
    cuda = [t[f"rng.cuda.{i}"] for i in range(torch.cuda.device_count()) if f"rng.cuda.{i}" in t]
    if cuda:
        torch.cuda.set_rng_state_all(cuda)
    return ckpt.state


def given_settings(config: Any) -> dict[str, Any]:
    """The fields of a TrainConfig that differ from their defaults (what a user asked for)."""
    out = {}
    for f in fields(config):
        value = getattr(config, f.name)
        if value is not None and (f.default is MISSING or value != f.default):
            out[f.name] = value
    return out


def resume_config(run_dir: str | Path, **changes: Any) -> Any:
    """The TrainConfig recorded in `run_dir/config.json`, with allowed `changes` applied.

    Only RESUMABLE settings may differ (e.g. a larger `epochs` extends a run); any other
    value that differs from the recorded one is refused with the flag's name.
    """
    from cnnlab.train.run import TrainConfig

    run_dir = Path(run_dir)
    path = run_dir / "config.json"
    if not path.is_file():
        raise CnnlabError("no config.json: not a cnnlab run folder, nothing to resume", run_dir)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))["config"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CnnlabError(f"unreadable config.json ({e})", path) from None
    known = {f.name for f in fields(TrainConfig)}
    record = {k: v for k, v in record.items() if k in known}
    if record.get("image_size") is not None:
        record["image_size"] = tuple(record["image_size"])
    # runs recorded before the clock mode kept their budget by planning (or had none), even
    # where their preset now runs on the clock (`fast`)
    record.setdefault("budget_mode", "plan")
    for name, value in changes.items():
        if value is None or name == "out":
            continue
        if isinstance(value, list):
            value = tuple(value)
        if name in RESUMABLE:
            record[name] = value
        elif value != record.get(name):
            flag = "--" + name.replace("_", "-")
            raise CnnlabError(
                f"{flag} {value} differs from the run's {record.get(name)}: a resumed run keeps "
                f"its settings (only {', '.join('--' + r for r in RESUMABLE)} may change); "
                "start a new run for other settings",
                run_dir,
            )
    record["out"] = str(run_dir)
    return TrainConfig(**record)


def check_resumable(state: RunState, *, epochs: int, patience: int | None, run_dir: Path) -> None:
    """Refuse to resume a run that has nothing left to do, saying how to extend it."""
    if patience is not None and state.bad_epochs >= patience:
        raise CnnlabError(
            f"the run stopped early at epoch {state.epoch} (no improvement for {patience} "
            "epoch(s)); pass a larger --patience to continue it",
            run_dir,
        )
    if state.epoch >= epochs and (run_dir / "metrics.json").is_file():
        raise CnnlabError(
            f"the run already finished its {state.epoch} epoch(s); pass --epochs N with "
            f"N > {state.epoch} to train it further",
            run_dir,
        )


def install_kill_hook(optimizer: torch.optim.Optimizer) -> None:
    """With CNNLAB_FAULT_KILL_AT_STEP=N set, SIGKILL this process after optimizer step N.

    A real, uncatchable kill mid-epoch (no cleanup runs), for the resume tests; no-op unset.
    """
    at = int(os.environ.get(KILL_ENV, "0") or 0)
    if at <= 0:
        return
    steps = [0]

    def hook(*_args: Any) -> None:
        steps[0] += 1
        if steps[0] >= at:
            os.kill(os.getpid(), signal.SIGKILL)

    optimizer.register_step_post_hook(hook)
