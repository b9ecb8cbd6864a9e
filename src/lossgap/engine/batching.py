"""`--batch-size auto`: the most rows per batch that fit in memory, measured on this model and plan, up to the
batch size past which throughput stops growing.

One full row (a single document of seq-len tokens: the most attention work a row can hold) is scored on random
tokens while its peak working memory is measured: the CUDA allocator's peak on GPUs, sampled RSS on the CPU.
Working memory grows linearly with the rows of a batch (activations, logits chunks, a dense mask (B,1,T,T)), so
the batch is what fits into the free memory with headroom. On CUDA an out-of-memory batch is still split in halves.
"""

from __future__ import annotations

import gc
import os
import threading
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..data.layout import synthetic_row
from .allocator import trim_heap
from .devices import available_ram, free_on
from .forward import score_batch
from .head import OutputHead

AUTO = "auto"
HEADROOM = 0.8  # of the free memory: allocator fragmentation, the prefetch thread, variance between rows
# Past these, bigger batches stop paying: docs-plan tokens/s was flat from 2k to 16k tokens per batch on a 2-core
# CPU (benchmarks/RESULTS.md); 64k tokens per batch is where an 8B model saturates an H100 (the figure).
TOKENS_CAP = {"cpu": 8192, "cuda": 65536}


@dataclass(frozen=True)
class BatchSizing:
    """What --batch-size auto chose and why (reported in summary.json)."""

    rows: int
    row_bytes: int  # measured peak working memory of one full row
    free_bytes: int  # free memory when measured
    fit_rows: int  # rows that fit into HEADROOM x free_bytes
    cap_rows: int  # rows at the throughput cap for this device

    def to_dict(self) -> dict:
        return asdict(self)


def cap_rows(device: torch.device, seq_len: int) -> int:
    return max(1, TOKENS_CAP.get(device.type, TOKENS_CAP["cuda"]) // seq_len)


def auto_batch_size(plan, head: OutputHead, seq_len: int, vocab_size: int) -> BatchSizing:
    """Measure one full row on this plan and choose the rows per batch."""
    ids = np.random.default_rng(0).integers(0, vocab_size, seq_len)
    batch = plan.collate(synthetic_row([ids], plan.k, "batch-size probe"))
    devices = _devices(plan.model)
    with PeakMemory(devices) as peak:
        score_batch(plan, head, batch)
    row_bytes = max(peak.bytes, 1)
    free = _free_bytes(devices)
    fit = max(1, int(HEADROOM * free) // row_bytes)
    cap = cap_rows(plan.device, seq_len)
    return BatchSizing(min(fit, cap), row_bytes, free, fit, cap)


def _devices(model: torch.nn.Module) -> list[torch.device]:
    """The devices holding the model's weights (several with --device-map or tensor parallelism)."""
    return sorted({p.device for p in model.parameters()}, key=str)


class PeakMemory:
    """Memory in use before a block (`base`) and its peak while the block runs (`peak`), in bytes; `bytes` is the
    block's working memory, peak - base. CUDA: the allocator's figures (the largest on any of the devices);
    CPU: sampled RSS, after handing freed heap back to the OS so an earlier peak does not count, and again after the
    block so that free memory measured next counts what the block freed."""

    def __init__(self, devices: list[torch.device]):
        self.cuda = [d for d in devices if d.type == "cuda"]

    def __enter__(self):
        gc.collect()
        if self.cuda:
            for d in self.cuda:
                torch.cuda.synchronize(d)
                torch.cuda.reset_peak_memory_stats(d)
            self.base_by_device = {d: torch.cuda.memory_allocated(d) for d in self.cuda}
        else:
            trim_heap()
            self.base = self.peak = rss()
            self.stop = threading.Event()
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while not self.stop.wait(0.002):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc):
        if self.cuda:
            for d in self.cuda:
                torch.cuda.synchronize(d)
            worst = max(self.cuda, key=lambda d: torch.cuda.max_memory_allocated(d) - self.base_by_device[d])
            self.base, self.peak = self.base_by_device[worst], torch.cuda.max_memory_allocated(worst)
        else:
            self.stop.set()
            self.thread.join()
            self.peak = max(self.peak, rss())
            trim_heap()  # the block's freed memory, kept in the heap (engine/allocator.py), is not in use
        self.bytes = self.peak - self.base


def _free_bytes(devices: list[torch.device]) -> int:
    """Memory a batch may still take: the least free on any of the model's GPUs, else the host's available RAM."""
    cuda = [d for d in devices if d.type == "cuda"]
    return min(free_on(d) for d in cuda) if cuda else available_ram()


def rss() -> int:
    """This process's resident memory in bytes."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: resource's peak is the best there is
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

