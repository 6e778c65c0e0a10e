"""Resumable, shuffled, sharded batches for training.

The data position of a run is one number, the count of micro-batches consumed: epoch ``e`` is a
permutation drawn from ``(seed, e)``, cut into global batches of ``batch_size * num_processes``
rows (process ``r`` takes rows ``r * batch_size ...``), so resuming at micro-batch ``k`` means
rebuilding epoch ``k // batches_per_epoch`` and starting at batch ``k % batches_per_epoch``. The
dataset's augmentation draw depends only on ``(seed, epoch, index)`` (see
:class:`~idm_vton.data.datasets.TryOnDataset`), so a resumed run sees exactly the batches the
uninterrupted run would have seen, whatever the number of loader workers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..data.datasets import collate

__all__ = ["DataPosition", "EpochShardSampler", "batch_stream", "batches_per_epoch"]


def batches_per_epoch(dataset_size: int, batch_size: int, num_processes: int) -> int:
    """Micro-batches per process and epoch (at least 1: a tiny dataset is wrapped around)."""
    if dataset_size < 1:
        raise ValueError("the training dataset is empty")
    return max(1, dataset_size // (batch_size * num_processes))


@dataclass(frozen=True)
class DataPosition:
    """Where the stream is: ``epoch`` and micro-batch ``batch`` within it."""

    epoch: int
    batch: int

    @classmethod
    def of(cls, consumed: int, per_epoch: int) -> DataPosition:
        return cls(consumed // per_epoch, consumed % per_epoch)


class EpochShardSampler(Sampler[int]):
    """The indices one process loads in one epoch, from micro-batch ``start_batch`` on."""

    def __init__(
        self,
        dataset_size: int,
        batch_size: int,
        num_processes: int,
        rank: int,
        seed: int,
        epoch: int,
        start_batch: int = 0,
    ) -> None:
        self.dataset_size = dataset_size
        self.batch_size = batch_size
        self.num_processes = num_processes
        self.rank = rank
        self.seed = seed
        self.epoch = epoch
        self.per_epoch = batches_per_epoch(dataset_size, batch_size, num_processes)
        if not 0 <= start_batch <= self.per_epoch:
            raise ValueError(f"start_batch {start_batch} outside 0..{self.per_epoch}")
        self.start_batch = start_batch

    def permutation(self) -> torch.Tensor:
        """This epoch's global order (identical on every process), wrapped to whole batches."""
        seed = np.random.SeedSequence([self.seed, self.epoch]).generate_state(1, np.uint64)[0]
        gen = torch.Generator().manual_seed(int(seed) & ((1 << 63) - 1))
        perm = torch.randperm(self.dataset_size, generator=gen)
        total = self.per_epoch * self.batch_size * self.num_processes
        if total > self.dataset_size:
            perm = perm.repeat(math.ceil(total / self.dataset_size))
        return perm[:total]

    def __iter__(self) -> Iterator[int]:
        global_batch = self.batch_size * self.num_processes
        rows = self.permutation().view(self.per_epoch, global_batch)
        mine = rows[
            self.start_batch :, self.rank * self.batch_size : (self.rank + 1) * self.batch_size
        ]
        return iter(mine.flatten().tolist())

    def __len__(self) -> int:
        return (self.per_epoch - self.start_batch) * self.batch_size


def batch_stream(
    dataset: Dataset,
    batch_size: int,
    *,
    seed: int,
    start: int = 0,
    num_processes: int = 1,
    rank: int = 0,
    num_workers: int = 0,
) -> Iterator[tuple[int, dict]]:
    """Endless ``(micro-batch index, batch)`` pairs starting after ``start`` consumed micro-batches."""
    per_epoch = batches_per_epoch(len(dataset), batch_size, num_processes)
    position = DataPosition.of(start, per_epoch)
    epoch, first = position.epoch, position.batch
    index = start
    while True:
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        sampler = EpochShardSampler(
            len(dataset), batch_size, num_processes, rank, seed, epoch, start_batch=first
        )
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=collate,
            num_workers=num_workers,
            drop_last=False,
        )
        for batch in loader:
            yield index, batch
            index += 1
        epoch, first = epoch + 1, 0
