"""torch.distributed under torchrun: which rank this process is, and the few collectives a run needs.

Every rank reads and lays out the whole corpus (deterministic and cheap next to the model) and scores the windows
w with w % world == rank, so a run on N processes scores exactly the batches a one-process run scores.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def owns(self, window: int) -> bool:
        return window % self.world == self.rank

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def any(self, flag: bool) -> bool:
        """True on every rank if flag is true on any rank (a failure on one rank stops all of them cleanly)."""
        return self._reduce(1.0 if flag else 0.0, torch.distributed.ReduceOp.MAX) > 0 if self.world > 1 else flag

    def min(self, value: float) -> float:
        return self._reduce(value, torch.distributed.ReduceOp.MIN) if self.world > 1 else value

    def sum(self, value: float) -> float:
        return self._reduce(value, torch.distributed.ReduceOp.SUM) if self.world > 1 else value

    def _reduce(self, value: float, op) -> float:
        backend = torch.distributed.get_backend()
        device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        t = torch.tensor([value], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t, op=op)
        return float(t.item())


def init_distributed(device: str = "auto") -> Dist:
    """A Dist for this process; starts the process group under torchrun (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    dist = torch.distributed
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        use_cuda = device != "cpu" and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank)
