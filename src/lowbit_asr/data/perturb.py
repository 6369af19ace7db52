"""Speed and vocal-tract-length perturbation, emulated on log-mel features of a padded batch.

Speaker variety is what a small TTS corpus lacks most: a model trained on a handful of male
natural voices transcribes an unseen female voice at 2-3x its training WER (see RESULTS.md,
"WER by voice"). Two classic augmentations create new voices from the old ones:

* **speed** ``s`` (Ko et al. 2015, Kaldi's 0.9/1.0/1.1 speed perturbation): the audio resampled
  to play ``s`` times faster, so it lasts ``1/s`` as long and *every* frequency, pitch and
  formants alike, is multiplied by ``s``;
* **frequency warp** ``a`` (VTLP, Jaitly & Hinton 2013): the spectrum alone stretched by ``a``,
  as a vocal tract ``1/a`` times as long would (female formants are ~15-20 % above male ones).

Both are applied here to the already computed (and normalised) log-mel frames, so the feature
cache stays valid and a 20 s batch costs about a millisecond: output frame ``t`` reads the input
at frame ``t * s`` and output bin ``m`` (centre frequency ``f_m``) reads it at frequency
``f_m / (s * a)``, both by linear interpolation; frequencies beyond the mel range repeat the edge
bin. The factors are drawn uniformly from the configured ranges by a generator seeded with
``(seed, epoch, utterance id)``: the same for every worker, rank and batch mate, and a resumed
run draws what the uninterrupted one did. A batch sped down (``s < 1``) gets longer than
``max_batch_seconds`` by up to ``1/s``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lowbit_asr.data.features import N_MELS
from lowbit_asr.data.librispeech import SAMPLE_RATE

FACTOR_LIMITS = (0.5, 2.0)
"""Allowed range of either factor: beyond it the emulation of resampling is meaningless."""


def _hz_to_mel(hz: Tensor) -> Tensor:
    """HTK mel scale, as torchaudio's MelSpectrogram uses by default."""
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: Tensor) -> Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def _range(value: object, name: str) -> tuple[float, float]:
    lo_limit, hi_limit = FACTOR_LIMITS
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or len(value) != 2
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ):
        raise ValueError(f"perturb.{name} must be a [low, high] pair of numbers, got {value!r}")
    lo, hi = float(value[0]), float(value[1])
    if not lo_limit <= lo <= hi <= hi_limit:
        raise ValueError(
            f"perturb.{name} must satisfy {lo_limit} <= low <= high <= {hi_limit}, got {value!r}"
        )
    return lo, hi


@dataclass
class PerturbConfig:
    """Ranges of the per-utterance factors; ``[1.0, 1.0]`` turns a perturbation off."""

    speed: list[float] = field(default_factory=lambda: [1.0, 1.0])
    """Speed factor ``s``: duration ``/ s``, every frequency ``* s`` (resampling)."""
    freq_warp: list[float] = field(default_factory=lambda: [1.0, 1.0])
    """Frequency warp ``a`` (VTLP): frequencies ``* a``, duration unchanged."""

    def __post_init__(self) -> None:
        self.speed = list(_range(self.speed, "speed"))
        self.freq_warp = list(_range(self.freq_warp, "freq_warp"))

    @property
    def active(self) -> bool:
        """Whether any factor can differ from 1."""
        return self.speed != [1.0, 1.0] or self.freq_warp != [1.0, 1.0]


class Perturb:
    """Applies :class:`PerturbConfig`'s factors to a padded batch of log-mel features."""

    def __init__(self, cfg: PerturbConfig, seed: int = 0) -> None:
        self.cfg = cfg
        self.seed = seed
        nyquist = torch.tensor(SAMPLE_RATE / 2.0, dtype=torch.float64)
        self._mel_top = _hz_to_mel(nyquist)
        # Centre frequency of each mel filter: N_MELS points strictly inside [0, nyquist] on the
        # mel scale (torchaudio's filter bank, f_min=0, f_max=nyquist).
        step = self._mel_top / (N_MELS + 1)
        self._centres_hz = _mel_to_hz(step * torch.arange(1, N_MELS + 1, dtype=torch.float64))

    def factors(self, key: str, epoch: int) -> tuple[float, float]:
        """(speed, frequency warp) of utterance ``key`` in ``epoch``."""
        rng = random.Random(f"perturb:{self.seed}:{epoch}:{key}")
        return rng.uniform(*self.cfg.speed), rng.uniform(*self.cfg.freq_warp)

    def _bin_positions(self, ratio: float) -> Tensor:
        """Fractional input bin read by each output bin for a spectrum scaled by ``ratio``."""
        hz = (self._centres_hz / ratio).clamp(max=SAMPLE_RATE / 2.0)
        pos = _hz_to_mel(hz) / (self._mel_top / (N_MELS + 1)) - 1.0
        return pos.clamp(0.0, N_MELS - 1.0)

    @staticmethod
    def _interpolate(x: Tensor, pos: Tensor, dim: int) -> Tensor:
        """Linear interpolation of ``x`` along ``dim`` at fractional indices ``pos``."""
        lo = pos.floor().long()
        hi = (lo + 1).clamp(max=x.shape[dim] - 1)
        w = (pos - lo).to(x.dtype)
        shape = [1] * x.dim()
        shape[dim] = -1
        w = w.view(shape)
        return x.index_select(dim, lo) * (1.0 - w) + x.index_select(dim, hi) * w

    def utterance(self, x: Tensor, speed: float, warp: float) -> Tensor:
        """Perturbed copy of one utterance's frames ``x`` (T, F) -> (round(T / speed), F)."""
        frames = x.shape[0]
        if warp * speed != 1.0:
            pos = self._bin_positions(speed * warp).to(x.device)
            x = self._interpolate(x, pos, dim=1)
        if speed != 1.0 and frames > 1:
            out_frames = max(1, round(frames / speed))
            pos = (torch.arange(out_frames, dtype=torch.float64, device=x.device) * speed).clamp(
                max=frames - 1
            )
            x = self._interpolate(x, pos, dim=0)
        return x

    def __call__(
        self, feats: Tensor, feat_lens: Tensor, keys: Sequence[str], epoch: int
    ) -> tuple[Tensor, Tensor]:
        """Perturbed ``(feats (N, T', F), feat_lens (N,))``, zero-padded like the input."""
        out = [
            self.utterance(feats[i, : int(length)], *self.factors(key, epoch))
            for i, (length, key) in enumerate(zip(feat_lens.tolist(), keys, strict=True))
        ]
        lens = torch.tensor([o.shape[0] for o in out], dtype=feat_lens.dtype)
        padded = feats.new_zeros(len(out), max(1, int(lens.max())) if out else 0, feats.shape[2])
        for i, o in enumerate(out):
            padded[i, : o.shape[0]] = o
        return padded, lens.to(feat_lens.device)


__all__ = ["FACTOR_LIMITS", "Perturb", "PerturbConfig"]
