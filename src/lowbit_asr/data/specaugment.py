"""SpecAugment: frequency and time masks whose count and width adapt to each utterance's length
(Park et al. 2020), drawn from a generator seeded by ``(seed, epoch, utterance id)``: the same
masks whatever the workers, ranks or batch mates. The DataModule applies it to training batches
only, after the speed/VTLP perturbation (``perturb.py``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lowbit_asr.data.audio import N_MELS


@dataclass
class SpecAugmentConfig:
    """Adaptive SpecAugment (Park et al. 2020); zero masks on both axes turns it off."""

    freq_masks: int = 2
    """Frequency masks per utterance."""
    freq_mask_width: int = 27
    """Largest frequency mask, in mel bins (the width is uniform in 0..this)."""
    time_masks: int = 10
    """Most time masks per utterance (Conformer: 10)."""
    time_mask_multiplicity: float = 0.04
    """Adaptive count: ``min(time_masks, floor(this * frames))`` masks (p_M; 0.04 = 4 per s)."""
    time_mask_ratio: float = 0.05
    """Largest time mask as a fraction of the utterance's frames (p_S; Conformer: 0.05)."""

    def __post_init__(self) -> None:
        p = "specaugment"
        for name in ("freq_masks", "freq_mask_width", "time_masks"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{p}.{name} must be an integer >= 0, got {value!r}")
        for name in ("time_mask_multiplicity", "time_mask_ratio"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{p}.{name} must be in [0, 1], got {value!r}")

    @property
    def active(self) -> bool:
        """Whether any mask can be drawn."""
        return self.freq_masks > 0 or self.time_masks > 0


class SpecAugment:
    """Masks normalised features (masked values become 0, the mean) of a padded batch."""

    def __init__(self, cfg: SpecAugmentConfig, seed: int = 0) -> None:
        self.cfg = cfg
        self.seed = seed

    def masks(self, frames: int, key: str, epoch: int) -> tuple[list[range], list[range]]:
        """(time intervals, frequency intervals) for an utterance of ``frames`` frames.

        ``key`` names the utterance (its id); the same (seed, epoch, key) gives the same masks.
        """
        cfg = self.cfg
        # A str seed is hashed with SHA-512 by `random`: stable across runs and machines.
        rng = random.Random(f"{self.seed}:{epoch}:{key}")
        freq = []
        for _ in range(cfg.freq_masks):
            width = rng.randint(0, min(cfg.freq_mask_width, N_MELS))
            start = rng.randint(0, N_MELS - width)
            freq.append(range(start, start + width))
        time_ = []
        count = min(cfg.time_masks, int(cfg.time_mask_multiplicity * frames))
        max_width = int(cfg.time_mask_ratio * frames)
        for _ in range(count):
            width = rng.randint(0, max_width)
            start = rng.randint(0, frames - width)
            time_.append(range(start, start + width))
        return time_, freq

    def __call__(self, feats: Tensor, feat_lens: Tensor, keys: Sequence[str], epoch: int) -> Tensor:
        """Masked copy of ``feats`` (N, T, F); masks adapt to each ``feat_lens[i]``."""
        n, t, f = feats.shape
        time_mask = torch.zeros(n, t, dtype=torch.bool)  # (N, T)
        freq_mask = torch.zeros(n, f, dtype=torch.bool)  # (N, F)
        for i, (length, key) in enumerate(zip(feat_lens.tolist(), keys, strict=True)):
            times, freqs = self.masks(int(length), key, epoch)
            for r in times:
                time_mask[i, r.start : r.stop] = True
            for r in freqs:
                freq_mask[i, r.start : r.stop] = True
        # Drawn on the CPU; only the two small masks travel to the batch's device.
        time_mask, freq_mask = time_mask.to(feats.device), freq_mask.to(feats.device)
        mask = time_mask[:, :, None] | freq_mask[:, None, :]  # (N, T, F)
        return feats.masked_fill(mask, 0.0)
