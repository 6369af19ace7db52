"""The model's front end: audio -> the normalised log-mel frames the encoder reads.

    waveform (any rate, any channels) -> 16 kHz mono (data.audio.to_model_audio)
        -> log-mel (data.features.LogMel) -> normalise with the train statistics -> lifter

The statistics are model state: ``mean`` and ``std`` (80,) and ``stats_count`` (utterances,
frames they came from) are persistent buffers, so a training checkpoint and a packed file
carry them like any weight (1-D: never quantized; counted by the size accounting). How they
are applied is the model config (``model.frontend``). The data path normalises every training,
validation and test utterance with this module (the DataModule is handed it), so training,
evaluation and ``lowbit-asr transcribe`` cannot disagree. (NeMo keeps its preprocessor inside
the model for the same reason.)
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor, nn

from lowbit_asr.data.audio import N_MELS, to_model_audio
from lowbit_asr.data.features import FeatureStats, LogMel
from lowbit_asr.model.config import UTTERANCE_STD_FLOOR, FrontEndConfig
from lowbit_asr.schema import coerce

STATE_KEYS = ("mean", "std", "stats_count")
"""The front end's persistent buffers (what a checkpoint from before it lacks)."""


@functools.lru_cache(maxsize=8)
def lifter_matrix(bins: int, keep: int) -> Tensor:
    """``(bins, bins)`` projection ``x @ P``: orthonormal DCT-II, zero every coefficient from
    ``keep`` on, inverse DCT. Low coefficients are the spectral envelope (formants); high ones
    the fine structure, chiefly pitch harmonics, which differ most between voices. It is the
    classic MFCC truncation, kept in the log-mel domain so the model's input stays
    ``(T, bins)``."""
    n = torch.arange(bins, dtype=torch.float64)
    dct = torch.cos(math.pi / bins * (n[None, :] + 0.5) * n[:, None])  # (k, n)
    dct[0] *= math.sqrt(1.0 / bins)
    dct[1:] *= math.sqrt(2.0 / bins)
    kept = dct[:keep]  # (keep, bins)
    return (kept.T @ kept).to(torch.float32)  # symmetric: x @ P = x @ D_k^T D_k


class FrontEnd(nn.Module):
    """Waveform -> normalised log-mel ``(frames, 80)``; the train statistics are its buffers."""

    def __init__(self, cfg: FrontEndConfig | dict | None = None) -> None:
        super().__init__()
        self.cfg: FrontEndConfig = coerce(cfg if cfg is not None else {}, FrontEndConfig,
                                          "frontend")
        self.logmel = LogMel()
        self.register_buffer("mean", torch.zeros(N_MELS))  # (80,)
        self.register_buffer("std", torch.ones(N_MELS))  # (80,)
        # (utterances, frames) the statistics were computed on; 0 frames: not set yet.
        self.register_buffer("stats_count", torch.zeros(2, dtype=torch.int64))

    # ---- statistics -----------------------------------------------------------------------
    @property
    def has_stats(self) -> bool:
        """Whether the train statistics were set (a freshly built model has none)."""
        return int(self.stats_count[1]) > 0

    def set_stats(self, stats: FeatureStats) -> None:
        """Take the train statistics (as the DataModule computed them)."""
        if tuple(stats.mean.shape) != (N_MELS,) or tuple(stats.std.shape) != (N_MELS,):
            raise ValueError(f"feature statistics must be ({N_MELS},) per bin, got mean "
                             f"{tuple(stats.mean.shape)} and std {tuple(stats.std.shape)}")
        if stats.frames <= 0:
            raise ValueError("feature statistics computed on no frames")
        with torch.no_grad():
            self.mean.copy_(stats.mean)
            self.std.copy_(stats.std)
            self.stats_count.copy_(torch.tensor([stats.utterances, stats.frames]))

    def stats(self) -> FeatureStats:
        """The statistics as a :class:`FeatureStats` (CPU copies)."""
        self.require_stats()
        utterances, frames = (int(v) for v in self.stats_count)
        return FeatureStats(self.mean.detach().cpu().clone(), self.std.detach().cpu().clone(),
                            utterances=utterances, frames=frames)

    def require_stats(self) -> None:
        """Raise unless the statistics were set: a model never fitted to data must not
        normalise with zeros and ones and look as if it worked."""
        if not self.has_stats:
            raise RuntimeError(
                "the model's front end has no feature statistics (frontend.stats_count is 0):"
                " it was built, not trained or loaded from a checkpoint")

    # ---- features -------------------------------------------------------------------------
    def normalise(self, feats: Tensor) -> Tensor:
        """Normalise one utterance ``(frames, 80)`` (or any ``(..., frames, 80)`` of whole,
        unpadded utterances): ``(feats - mean) / std``, the mean being the train one
        (``global``) or the utterance's own (``utterance``), or the utterance's own mean and std
        (``utterance_mvn``); then the cepstral lifter, if any."""
        self.require_stats()
        std = self.std.to(feats.device)
        if self.cfg.normalisation == "utterance_mvn" and feats.shape[-2] > 0:
            own_std = feats.std(dim=-2, unbiased=False, keepdim=True)
            feats = (feats - feats.mean(dim=-2, keepdim=True)) / own_std.clamp_min(
                UTTERANCE_STD_FLOOR)
        elif self.cfg.normalisation == "utterance" and feats.shape[-2] > 0:
            feats = (feats - feats.mean(dim=-2, keepdim=True)) / std
        else:
            feats = (feats - self.mean.to(feats.device)) / std
        if self.cfg.cepstral_lifter:
            lifter = lifter_matrix(feats.shape[-1], self.cfg.cepstral_lifter)
            feats = feats @ lifter.to(feats.device)
        return feats

    def forward(self, waveform: Tensor, sample_rate: int) -> Tensor:
        """``(T,)`` or ``(channels, T)`` audio at ``sample_rate`` -> normalised ``(frames, 80)``
        on this module's device (resampled to 16 kHz and mixed to mono first)."""
        audio = to_model_audio(waveform, sample_rate).to(self.mean.device)  # (T',)
        with torch.no_grad():
            return self.normalise(self.logmel(audio))
