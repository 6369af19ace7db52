"""Duration-bucketed batches of utterance indices, sharded across DDP ranks by the sampler itself.

Utterances are sorted by duration and cut into ``num_buckets`` buckets of equal count. Each
bucket has one batch size, ``floor(max_batch_seconds / longest utterance of the bucket)``, so
every batch's PADDED audio (utterances x longest) stays within ``max_batch_seconds``: the padded
size is what the encoder's memory pays for. The remainders of consecutive buckets are merged
while they fit (judged by the longer bucket's longest utterance). When shuffling, every epoch
reshuffles the utterances inside each bucket and the order of all batches, from a generator
seeded by ``(seed, epoch)``. Batch sizes depend on the buckets only, so the number of batches is
the same in every epoch (Lightning reads it once, and an epoch that yielded more would be cut
short silently). The first ``sorted_epochs`` epochs order the batches by their longest
utterance, shortest first (a curriculum), still shuffling the utterances inside each bucket.
An utterance longer than ``max_batch_seconds`` gets a batch of its own.

DDP: every rank builds the same global list and takes every ``world_size``-th batch from its
rank on. To give every rank the same number of batches without repeating or dropping an
utterance, the largest batches are halved until the count divides ``world_size``; only a split
too small for that (fewer utterances than ranks) falls back to repeating batches, with a
warning. So every utterance is seen exactly once per epoch over all ranks.

The sampler yields whole batches (a list of indices); the DataLoader takes it as ``sampler=``
with ``batch_size=None``, so Lightning calls its ``set_epoch`` every epoch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

log = logging.getLogger(__name__)


class BucketingBatchSampler(Sampler[list[int]]):
    """Batches of indices into ``durations``, bucketed by duration, limited by padded seconds."""

    def __init__(
        self,
        durations: Sequence[float],
        max_batch_seconds: float,
        num_buckets: int = 30,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        sorted_epochs: int = 0,
    ) -> None:
        """``durations``: seconds per utterance (the dataset's order). ``rank``/``world_size``:
        this process's shard (0/1 without DDP). ``sorted_epochs``: leading epochs whose batches
        go from short to long."""
        if max_batch_seconds <= 0:
            raise ValueError(f"max_batch_seconds must be > 0, got {max_batch_seconds}")
        if num_buckets < 1:
            raise ValueError(f"num_buckets must be >= 1, got {num_buckets}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world={world_size}")
        self.durations = np.asarray(durations, dtype=np.float64)  # (U,)
        self.max_batch_seconds = float(max_batch_seconds)
        self.num_buckets = num_buckets
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.sorted_epochs = sorted_epochs
        self.epoch = 0
        self._resume: tuple[int, int] | None = None  # (epoch, batches of it already trained)
        # Stable sort: ties keep the dataset's (id) order, so the buckets are reproducible.
        order = np.argsort(self.durations, kind="stable")
        self._buckets = [
            b for b in np.array_split(order, max(1, min(num_buckets, len(order)))) if len(b)
        ]
        self._longest = [float(self.durations[b].max()) for b in self._buckets]
        self._sizes = [max(1, math.floor(self.max_batch_seconds / d)) for d in self._longest]
        self._len: int | None = None

    def resume_at(self, epoch: int, batches: int) -> None:
        """Make the next iteration of ``epoch`` skip this rank's first ``batches`` batches (those
        trained before a checkpoint), so a resumed run sees exactly the batches an uninterrupted
        one would. One-shot: later epochs, and iterations of other epochs, are whole."""
        if epoch < 0 or batches < 0:
            raise ValueError(f"resume_at needs epoch, batches >= 0, got {epoch}, {batches}")
        self._resume = (epoch, batches)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's shuffle (Lightning calls this before every epoch)."""
        self.epoch = epoch

    def global_batches(self, epoch: int | None = None) -> list[list[int]]:
        """The batches of all ranks for ``epoch`` (default: the current one), rank-interleaved."""
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.default_rng([self.seed, epoch])
        batches: list[list[int]] = []
        carry: list[int] = []  # the partial batches of shorter buckets, merged while they fit
        for bucket, size, longest in zip(self._buckets, self._sizes, self._longest, strict=True):
            members = (rng.permutation(bucket) if self.shuffle else bucket).tolist()
            full = len(members) - len(members) % size
            batches += [members[i : i + size] for i in range(0, full, size)]
            rest = members[full:]
            # Judged by the bucket's longest utterance, not by the members drawn: the batch
            # count then never depends on the shuffle.
            if carry and (len(carry) + len(rest)) * longest > self.max_batch_seconds:
                batches.append(carry)
                carry = []
            carry += rest
        if carry:
            batches.append(carry)
        if self.shuffle and epoch < self.sorted_epochs:
            batches.sort(key=lambda b: float(self.durations[b].max()))  # stable: ties keep order
        elif self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return self._divisible(batches)

    def _divisible(self, batches: list[list[int]]) -> list[list[int]]:
        """Make the count a multiple of world_size: halve the largest batches, else repeat."""
        while len(batches) % self.world_size:
            i = max(range(len(batches)), key=lambda j: len(batches[j]))
            if len(batches[i]) < 2:
                missing = self.world_size - len(batches) % self.world_size
                if self.rank == 0:
                    log.warning(
                        "%d utterances cannot fill %d ranks: repeating %d batch(es)",
                        len(self.durations),
                        self.world_size,
                        missing,
                    )
                batches += batches[:missing]
                break
            half = len(batches[i]) // 2
            batches[i : i + 1] = [batches[i][:half], batches[i][half:]]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        """This rank's batches of the current epoch."""
        batches = self.global_batches()[self.rank :: self.world_size]
        if self._resume is not None and self._resume[0] == self.epoch:
            batches = batches[self._resume[1] :]
            self._resume = None
        yield from batches

    def __len__(self) -> int:
        """Batches per epoch on this rank (the same in every epoch and on every rank)."""
        if self._len is None:
            self._len = len(self.global_batches(0)) // self.world_size
        return self._len
