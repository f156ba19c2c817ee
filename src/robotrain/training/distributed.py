"""Data-parallel training on torch.distributed, started by torchrun (one process per device, any number of nodes).

    torchrun --nproc_per_node=N -m robotrain train ...            one machine, N processes
    torchrun --nnodes=M --node_rank=i --rdzv_backend=c10d --rdzv_endpoint=HOST:PORT --nproc_per_node=N -m robotrain ...

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; without them robotrain trains in one
process, as before. The backend is NCCL on CUDA and gloo on CPU. Each process loads `--batch_size` samples per
step (per device, as LeRobot); the global batch is batch_size x world_size x gradient_accumulation_steps.

How the ranks split the work so that N processes with batch b equal one process with batch N*b:
- The episode-aware sample stream is the same in every process (seeded); rank r takes its positions r, r+N, ...
  (ShardedSampler), so step i of the N ranks together draws global samples [i*N*b, (i+1)*N*b), the batch a single
  process with batch N*b draws at step i. DDP averages the gradients: the update of the mean loss over N*b.
- A checkpoint stores the global number of samples drawn, so a run saved with N processes resumes with M.
- Only rank 0 writes (checkpoints, metrics, plots, W&B) and evaluates; the others wait at a barrier.
- A stop (SIGINT/SIGTERM on any rank) is agreed on every step with one all-reduce: all ranks stop after the same
  step, and rank 0 saves once.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist

from robotrain.errors import UserError

logger = logging.getLogger(__name__)

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Topology:
    """This process's place in the job: rank among world_size, and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def start(device: torch.device) -> Topology:
    """Join the process group torchrun set up (a single process when not launched by it); returns the topology."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return Topology()
    missing = [v for v in TORCHRUN_VARIABLES if v not in os.environ]
    if missing:
        raise UserError(f"RANK and WORLD_SIZE are set but {', '.join(missing)} are not. Fix: start multi-process "
                        "training with `torchrun --nproc_per_node=N -m robotrain train ...`")
    topology = Topology(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(topology.local_rank)
    # A killed peer breaks the connections and ends the job at once; a stalled one is given up on after an hour
    # (rank 0 may evaluate in simulation for many minutes while the others wait).
    torch_dist.init_process_group(backend, timeout=dt.timedelta(hours=1))
    logger.debug("rank %d of %d joined the %s process group", topology.rank, topology.world_size, backend)
    return topology


def device_for(device: torch.device, topology: Topology) -> torch.device:
    """Each process of a multi-GPU job trains on its own GPU (LOCAL_RANK); CPU processes share the CPU."""
    if device.type == "cuda" and topology.distributed:
        return torch.device("cuda", topology.local_rank)
    return device


def stop() -> None:
    """Leave the process group (a no-op for a single process)."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def barrier(topology: Topology) -> None:
    if topology.distributed:
        torch_dist.barrier()


def any_rank(flag: bool, topology: Topology) -> bool:
    """True on every rank when `flag` is true on at least one (one small all-reduce)."""
    if not topology.distributed:
        return flag
    value = torch.tensor([1.0 if flag else 0.0])
    torch_dist.all_reduce(value, op=torch_dist.ReduceOp.MAX)
    return bool(value.item())


def mean_over_ranks(values: dict[str, float], topology: Topology) -> dict[str, float]:
    """Each logged number averaged over the ranks (so rank 0 logs the whole batch's loss, not its shard's)."""
    if not topology.distributed or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    torch_dist.all_reduce(tensor)
    return dict(zip(keys, (tensor / topology.world_size).tolist(), strict=True))


def wrap(policy: torch.nn.Module, topology: Topology) -> torch.nn.Module:
    """The module training steps call: the policy, or a DDP wrapper that averages its gradients across ranks."""
    if not topology.distributed:
        return policy
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [topology.local_rank] if next(policy.parameters()).device.type == "cuda" else None
    # Channels-last convolution weights get channels-last gradients, which DDP copies into its flat buckets: a
    # copy per step, which it warns about every step. The copy is cheap next to the convolution itself.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    return DistributedDataParallel(policy, device_ids=device_ids,
                                   find_unused_parameters=policy.config.leaves_parameters_out)


def sync_gradients(model: torch.nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """DDP averages gradients on every backward unless told not to: accumulation syncs only on its last batch."""
    if sync or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()


def gather_objects(obj: Any, topology: Topology) -> list[Any]:
    """`obj` of every rank, in rank order (on every rank)."""
    if not topology.distributed:
        return [obj]
    gathered: list[Any] = [None] * topology.world_size
    torch_dist.all_gather_object(gathered, obj)
    return gathered


class ShardedSampler(torch.utils.data.Sampler[int]):
    """Rank r's part of an endless sample stream: its positions r, r + world_size, r + 2 * world_size, ..."""

    def __init__(self, stream: torch.utils.data.Sampler[int], topology: Topology):
        self.stream, self.topology = stream, topology

    def __len__(self) -> int:
        return len(self.stream) // self.topology.world_size

    def __iter__(self) -> Iterator[int]:
        rank, world = self.topology.rank, self.topology.world_size
        for position, index in enumerate(self.stream):
            if position % world == rank:
                yield index
