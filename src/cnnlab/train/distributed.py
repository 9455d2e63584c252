"""Data-parallel training over several processes, as launched by `torchrun`.

`torchrun --nproc-per-node N -m cnnlab train ...` starts N copies of cnnlab with RANK,
WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT in their environment.
Each copy joins one process group (gloo on the CPU, NCCL on CUDA, one GPU per local rank),
loads the whole dataset into memory and takes its share of every global batch: rank r trains
on images r, r+N, r+2N, ... of the batch, so `--batch-size` stays the global batch and the
averaged gradients equal one process's (up to float summation order). Only rank 0 writes
files, logs and draws progress bars; every rank reaches the same decisions (early stopping,
best epoch) because the metrics they act on are all-reduced or identical.

Without torchrun's variables nothing here does anything: `process_group()` yields None.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.runtime import physical_cores, resolve_device

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place in the process group."""

    rank: int
    size: int
    local_rank: int  # index on this machine: picks the GPU
    local_size: int  # processes on this machine: shares the CPU cores
    backend: str  # "gloo" | "nccl"

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and talks to the user."""
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        """(rank, size): take every size-th image of a batch, starting at rank."""
        return self.rank, self.size

    def device(self) -> torch.device:
        """Where collective tensors live: this rank's GPU for NCCL, else the CPU."""
        return (
            torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")
        )

    def default_threads(self) -> int:
        """CPU threads per process: $CNNLAB_THREADS, else this machine's cores shared out."""
        return int(os.environ.get("CNNLAB_THREADS", 0)) or max(
            1, physical_cores() // self.local_size
        )

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum of `t` over all ranks (every rank gets the same result)."""
        buf = t.to(self.device())
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        return buf.to(t.device)

    def any_true(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on at least one."""
        return bool(self.all_reduce_sum(torch.tensor([int(flag)])).item() > 0)

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        dist.barrier()


def launched() -> bool:
    """True when this process was started by torchrun (or another launcher setting its env)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def current() -> World | None:
    """The World of an initialised process group, or None (a plain single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    return World(
        rank=dist.get_rank(),
        size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        local_size=int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size())),
        backend=str(dist.get_backend()),
    )


def init(device: str = "auto") -> World | None:
    """Join the process group described by torchrun's environment; None when not launched.

    gloo when the device is the CPU, NCCL on CUDA (this rank's GPU = LOCAL_RANK).
    """
    if not launched():
        return None
    if not dist.is_available():
        raise CnnlabError("this torch build has no torch.distributed: cannot train under torchrun")
    if dist.is_initialized():
        return current()
    dev = resolve_device(device)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if backend == "nccl":
        if local_rank >= torch.cuda.device_count():
            raise CnnlabError(
                f"local rank {local_rank} has no GPU: this machine has "
                f"{torch.cuda.device_count()}; lower --nproc-per-node"
            )
        torch.cuda.set_device(local_rank)
    try:
        dist.init_process_group(backend=backend)
    except (RuntimeError, ValueError) as e:
        first = str(e).splitlines()[0]
        raise CnnlabError(f"cannot join the torchrun process group ({first})") from None
    return current()


@contextlib.contextmanager
def process_group(device: str = "auto") -> Iterator[World | None]:
    """`init()` for the block, then wait for every rank and leave the group."""
    world = init(device)
    try:
        yield world
        if world is not None:
            world.barrier()
    finally:
        if world is not None and dist.is_initialized():
            dist.destroy_process_group()


def on_main(world: World | None, fn: Callable[[], T]) -> T | None:
    """Run `fn` on rank 0 only; if it fails, every rank raises (none waits forever).

    Returns fn's result on rank 0 and None elsewhere (or fn's result without a group).
    """
    if world is None:
        return fn()
    result: T | None = None
    error: BaseException | None = None
    if world.is_main:
        try:
            result = fn()
        except BaseException as e:  # re-raised below, after telling the other ranks
            error = e
    if world.any_true(error is not None):
        if error is not None:
            raise error
        raise CnnlabError("rank 0 failed (its error is above); stopping this rank too")
    return result


def wrap(model: nn.Module, world: World | None) -> nn.Module:
    """The model DistributedDataParallel-wrapped for training, or itself without a group.

    Parameters are broadcast from rank 0 at wrapping, so every rank starts identical.
    """
    if world is None:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [world.local_rank] if world.backend == "nccl" else None
    return DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a DDP wrapper (what checkpoints and evaluation use)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model
