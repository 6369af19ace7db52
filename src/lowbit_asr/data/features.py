"""Acoustic features: 80-dim log-mel, the train statistics, an on-disk cache (SpecAugment:
``data/specaugment.py``, beside the other augmentation, ``data/perturb.py``).

* :class:`LogMel`: 16 kHz audio -> ``(1 + T // 160, 80)`` log-mel frames (25 ms Hann window,
  10 ms hop, 512-point FFT, centred frames zero-padded at the ends, power spectrum,
  ``log(max(mel, 1e-6))``). The model's front end (``model/frontend.py``) owns one, and the
  cache is written with the same class, so training, evaluation and transcription agree.
* :class:`FeatureStats`: per-bin mean and standard deviation over TRAIN frames, computed on an
  evenly spaced subsample of utterances (:func:`compute_stats`, ``stats_utterances`` of them,
  500 by default) and cached as JSON beside the manifests (:func:`load_or_compute_stats`). They
  become buffers of the model's front end, which normalises with them (how: its config).
* :class:`FeatureSource`: log-mel of an utterance from the cache when :func:`precompute_features`
  has written it (one float16 ``.npy`` per utterance under ``<cache>/features/logmel-<settings>``,
  un-normalised, so new statistics never invalidate it), else from the audio.

Measured on one core of the development machine (mini corpus, 3.0 h train): decoding FLAC and
computing the log-mel take 4-8 s per hour of audio (decode ~3 s, mel ~5 s when the files are not
in the page cache; noisy audio decodes slower); reading the cache ~0.5 s per hour.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchaudio
from torch import Tensor, nn

from lowbit_asr.data.audio import (
    HOP_LENGTH,
    N_FFT,
    N_MELS,
    SAMPLE_RATE,
    WIN_LENGTH,
    BadUtteranceError,
    load_audio,
)
from lowbit_asr.data.librispeech import Utterance

log = logging.getLogger(__name__)

LOG_FLOOR = 1e-6
"""Floor of the mel power before the log. TTS audio holds stretches of digital silence (mel
power exactly 0); a floor near 16-bit quantisation noise keeps them from becoming -inf or
dominating the statistics (1e-10 would put them 9 units below the real noise floor)."""
STD_FLOOR = 1e-3
"""Smallest standard deviation used to normalise a bin (a constant bin must not divide by 0)."""
FEATURE_VERSION = 1
"""Bump when the features change: every cache keyed by it is recomputed."""


def num_frames(num_samples: int) -> int:
    """Frames of LogMel for ``num_samples`` samples (centred frames: ``1 + T // hop``)."""
    return 1 + num_samples // HOP_LENGTH


def _settings() -> list[Any]:
    """What a cached feature or statistic depends on besides the audio."""
    return [FEATURE_VERSION, SAMPLE_RATE, N_MELS, WIN_LENGTH, HOP_LENGTH, N_FFT, LOG_FLOOR]


class LogMel(nn.Module):
    """Log-mel filterbank: audio ``(T,)`` / ``(N, T)`` -> ``(frames, 80)`` / ``(N, frames, 80)``."""

    def __init__(self) -> None:
        super().__init__()
        # Built on the CPU even when a model is built on the meta device (size accounting of
        # large configs): the filterbank is computed from the constants, not learned.
        with torch.device("cpu"):
            self.mel = torchaudio.transforms.MelSpectrogram(
                sample_rate=SAMPLE_RATE,
                n_fft=N_FFT,
                win_length=WIN_LENGTH,
                hop_length=HOP_LENGTH,
                n_mels=N_MELS,
                power=2.0,
                # Zero padding of the centred edge frames: reflect padding fails below 257
                # samples.
                pad_mode="constant",
            )
        # The window and the filterbank follow from the constants above: rebuilt, never stored,
        # so that a checkpoint or a packed file holds only what was learned or measured.
        for module in self.mel.modules():
            for name, buf in list(module.named_buffers(recurse=False)):
                module.register_buffer(name, buf, persistent=False)

    def forward(self, audio: Tensor) -> Tensor:
        """Log-mel frames, time first (the RNN-T's ``(N, T, 80)`` layout)."""
        mel = self.mel(audio)  # (..., 80, frames)
        return torch.log(mel.clamp_min(LOG_FLOOR)).transpose(-1, -2)  # (..., frames, 80)


# ------------------------------------------------------------------------ feature cache


def _audio_tag(utterance: Utterance) -> str:
    """Identity of an utterance's audio file: changes when the file is replaced or moved."""
    st = os.stat(utterance.path)
    return f"{utterance.id}\t{utterance.path}\t{st.st_size}\t{st.st_mtime_ns}"


def feature_cache_dir(cache_root: Path) -> Path:
    """The folder of cached log-mel features under ``cache_root``, keyed by the settings."""
    digest = hashlib.sha256(json.dumps(_settings()).encode()).hexdigest()[:12]
    return Path(cache_root) / "features" / f"logmel-{digest}"


class FeatureSource:
    """Un-normalised log-mel ``(frames, 80)`` of an utterance: from the cache, else from audio.

    A cached file is named by the utterance id and a hash of its audio file's path, size and
    mtime, so replaced or moved audio is never served stale features (old files stay behind).
    """

    def __init__(self, cache: Path | None = None) -> None:
        self.cache = Path(cache) if cache is not None else None
        # Built lazily so that pickling into DataLoader workers carries no torchaudio module.
        self._logmel: LogMel | None = None

    def cache_file(self, utterance: Utterance) -> Path | None:
        """Where ``utterance``'s features are (or would be) cached; None without a cache."""
        if self.cache is None:
            return None
        tag = hashlib.sha1(_audio_tag(utterance).encode()).hexdigest()[:10]
        return self.cache / f"{utterance.id}-{tag}.npy"

    def extract(self, utterance: Utterance) -> Tensor:
        """Decode the audio and compute the log-mel: ``(frames, 80)`` float32."""
        if self._logmel is None:
            self._logmel = LogMel()
        with torch.no_grad():
            return self._logmel(load_audio(utterance.path))  # (frames, 80)

    def __call__(self, utterance: Utterance) -> Tensor:
        """``(frames, 80)`` float32, read from the cache if it holds the utterance."""
        path = self.cache_file(utterance)
        if path is not None and path.exists():
            return torch.from_numpy(np.load(path).astype(np.float32))  # (frames, 80)
        return self.extract(utterance)

    def __getstate__(self) -> dict[str, Any]:
        return {"cache": self.cache, "_logmel": None}


@dataclass
class ExtractionReport:
    """What :func:`precompute_features` did."""

    utterances: int  #: utterances in the split
    extracted: int  #: utterances computed now (the rest were cached already)
    audio_seconds: float  #: audio of the extracted utterances
    wall_seconds: float  #: time spent extracting

    @property
    def seconds_per_hour(self) -> float:
        """Wall seconds per hour of extracted audio (nan if nothing was extracted)."""
        return self.wall_seconds / (self.audio_seconds / 3600) if self.audio_seconds else math.nan


class _ExtractionDataset(torch.utils.data.Dataset[tuple[str, np.ndarray]]):
    """Utterances to extract, for a DataLoader's worker processes."""

    def __init__(self, utterances: Sequence[Utterance], source: FeatureSource) -> None:
        self.utterances = list(utterances)
        self.source = source

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, i: int) -> tuple[str, np.ndarray]:
        u = self.utterances[i]
        # float16 halves the disk (log-mel spans about -14..12; float16 keeps 3 digits).
        return str(self.source.cache_file(u)), self.source.extract(u).numpy().astype(np.float16)


def precompute_features(
    utterances: Sequence[Utterance], source: FeatureSource, num_workers: int = 0
) -> ExtractionReport:
    """Write the log-mel of every utterance not yet cached into ``source.cache``.

    Resumable: files are written atomically and existing ones are kept. ``num_workers``
    processes extract in parallel (0: in this process).
    """
    if source.cache is None:
        raise ValueError("precompute_features needs a FeatureSource with a cache folder")
    source.cache.mkdir(parents=True, exist_ok=True)
    todo = [u for u in utterances if not source.cache_file(u).exists()]  # type: ignore[union-attr]
    start = time.perf_counter()
    if todo:
        loader = torch.utils.data.DataLoader(
            _ExtractionDataset(todo, source), batch_size=None, num_workers=num_workers
        )
        for name, feats in loader:
            path = Path(name)
            tmp = path.with_name(f"{path.stem}.tmp{os.getpid()}.npy")
            np.save(tmp, feats.numpy() if isinstance(feats, Tensor) else feats)
            os.replace(tmp, path)
    report = ExtractionReport(
        utterances=len(utterances),
        extracted=len(todo),
        audio_seconds=sum(u.duration for u in todo),
        wall_seconds=time.perf_counter() - start,
    )
    if todo:
        log.info(
            "features: %d utterances (%.2f h) extracted to %s in %.1f s (%.1f s per hour of "
            "audio, %d workers)",
            report.extracted,
            report.audio_seconds / 3600,
            source.cache,
            report.wall_seconds,
            report.seconds_per_hour,
            num_workers,
        )
    return report


# ------------------------------------------------------------------------ statistics


@dataclass
class FeatureStats:
    """Per-bin mean and standard deviation of the train log-mel frames."""

    mean: Tensor  #: (80,) float32
    std: Tensor  #: (80,) float32, at least STD_FLOOR
    utterances: int  #: utterances the statistics were computed on
    frames: int  #: frames the statistics were computed on

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the statistics cache)."""
        return {
            "version": FEATURE_VERSION,
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "utterances": self.utterances,
            "frames": self.frames,
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> FeatureStats:
        """Inverse of :meth:`to_dict` (older caches' ``normalisation``/``lifter`` entries are
        ignored: how to normalise is the model's front-end config now)."""
        if state.get("version") != FEATURE_VERSION:
            raise ValueError(
                f"feature statistics version {state.get('version')!r}, expected {FEATURE_VERSION}"
            )
        return cls(
            mean=torch.tensor(state["mean"], dtype=torch.float32),
            std=torch.tensor(state["std"], dtype=torch.float32),
            utterances=int(state["utterances"]),
            frames=int(state["frames"]),
        )


def stats_subsample(utterances: Sequence[Utterance], max_utterances: int) -> list[Utterance]:
    """``max_utterances`` utterances evenly spaced over the (id-sorted) list: every speaker's
    share, no random generator to seed."""
    n = len(utterances)
    if n <= max_utterances:
        return list(utterances)
    return [utterances[i * n // max_utterances] for i in range(max_utterances)]


def compute_stats(
    utterances: Sequence[Utterance], source: FeatureSource, max_utterances: int = 500,
    skip_bad: bool = False,
) -> FeatureStats:
    """Mean and standard deviation per bin over the frames of a subsample of ``utterances``.

    Audio that cannot be decoded (truncated, non-finite samples) raises BadUtteranceError naming
    the file, before anything is computed from it; with ``skip_bad`` it is left out (warned)."""
    chosen = stats_subsample(utterances, max_utterances)
    if not chosen:
        raise ValueError("cannot compute feature statistics: no utterances")
    total = torch.zeros(N_MELS, dtype=torch.float64)
    total_sq = torch.zeros(N_MELS, dtype=torch.float64)
    frames = used = 0
    for u in chosen:
        try:
            feats = source(u).double()  # (frames, 80); float64: sums over millions of frames
        except BadUtteranceError as err:
            if not skip_bad:
                raise
            log.warning("feature statistics: skipped (on_bad_utterance=skip): %s", err)
            continue
        if not torch.isfinite(feats).all():  # e.g. a cached file from a bad source
            raise BadUtteranceError(u.path, "non-finite features")
        used += 1
        total += feats.sum(0)
        total_sq += feats.square().sum(0)
        frames += feats.shape[0]
    if not frames:
        raise ValueError("cannot compute feature statistics: no readable utterance")
    mean = total / frames
    var = (total_sq / frames - mean.square()).clamp_min(0.0)
    std = var.sqrt().clamp_min(STD_FLOOR)
    return FeatureStats(mean.float(), std.float(), utterances=used, frames=frames)


def stats_cache_path(
    utterances: Sequence[Utterance], cache_root: Path, max_utterances: int
) -> Path:
    """Where the statistics of ``utterances`` are cached: keyed by the subsample's audio files
    and the settings."""
    digest = hashlib.sha256(json.dumps([*_settings(), max_utterances]).encode())
    for u in stats_subsample(utterances, max_utterances):
        digest.update(f"{_audio_tag(u)}\n".encode())
    return Path(cache_root) / f"featstats-{digest.hexdigest()[:16]}.json"


def load_or_compute_stats(
    utterances: Sequence[Utterance],
    source: FeatureSource,
    cache_root: Path,
    max_utterances: int = 500,
    skip_bad: bool = False,
) -> FeatureStats:
    """The statistics of ``utterances`` (the train split), from the cache or computed and cached
    (``skip_bad``: see :func:`compute_stats`)."""
    path = stats_cache_path(utterances, cache_root, max_utterances)
    if path.exists():
        try:
            stats = FeatureStats.from_dict(json.loads(path.read_text(encoding="utf-8")))
            log.info("feature statistics: %s (cached)", path)
            return stats
        except (OSError, ValueError, KeyError) as err:
            log.warning("unreadable feature statistics %s (%s): recomputing", path, err)
    start = time.perf_counter()
    stats = compute_stats(utterances, source, max_utterances, skip_bad)
    log.info(
        "feature statistics: %d utterances, %d frames in %.1f s -> %s",
        stats.utterances,
        stats.frames,
        time.perf_counter() - start,
        path,
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(stats.to_dict()), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as err:
        log.warning("cannot cache the feature statistics at %s (%s)", path, err)
    return stats
