"""The processes of a run: one, or the group ``torchrun`` describes (NCCL on GPUs, gloo on CPU).

Everything else in training asks a ``Processes`` for its rank, world size and device, so the
single-process and the DDP paths differ only here and in the trainer's DDP wrapper.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Processes:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def init_processes(device: str | None = None) -> Processes:
    """One process, or the process group ``torchrun`` describes (NCCL on GPUs, gloo on CPU)."""
    kind = device or ("cuda" if torch.cuda.is_available() else "cpu")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Processes(device=torch.device(kind))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dist.init_process_group(backend="nccl" if kind == "cuda" else "gloo")
    if kind == "cuda":
        torch.cuda.set_device(local)
        return Processes(dist.get_rank(), world, torch.device("cuda", local))
    return Processes(dist.get_rank(), world, torch.device("cpu"))


def barrier(processes: Processes) -> None:
    if processes.distributed:
        dist.barrier()


def end_processes(processes: Processes) -> None:
    """Leave the process group ``init_processes`` joined (nothing to do for one process)."""
    if processes.distributed:
        dist.destroy_process_group()
