"""Audio in, the way every path reads it: one sample rate, one frame grid, one decoder.

Training (the data path and the feature cache), evaluation, ``lowbit-asr transcribe`` and the
corpus generator all go through these: :func:`load_audio` decodes any file soundfile reads,
:func:`to_model_audio` turns any waveform (any rate, any channel count) into the model's
16 kHz mono float32, and the log-mel frame grid is the one below.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from scipy.signal import resample_poly

SAMPLE_RATE = 16000
"""The model's sample rate: every input is resampled to it."""
N_MELS = 80
"""Mel bins per frame."""
WIN_LENGTH = 400
"""Analysis window: 25 ms at 16 kHz."""
HOP_LENGTH = 160
"""Frame shift: 10 ms at 16 kHz."""
N_FFT = 512
"""FFT size (the next power of two above the window)."""
FRAME_SHIFT_SECONDS = HOP_LENGTH / SAMPLE_RATE
"""Seconds of audio per log-mel frame (frames -> seconds, e.g. for the real-time factor)."""


class BadUtteranceError(ValueError):
    """An utterance (or an audio file) that cannot be used: names the file and the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def resample(audio: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """Polyphase resampling (``scipy.signal.resample_poly``, exact ratio) of ``(T,)`` audio
    from ``rate`` to ``target_rate`` Hz; float64 out (the input itself when the rates agree)."""
    if rate == target_rate:
        return audio
    ratio = Fraction(target_rate, rate)  # e.g. 22050 -> 16000 is 320/441
    return resample_poly(audio, ratio.numerator, ratio.denominator)


def to_model_audio(
    waveform: np.ndarray | torch.Tensor, sample_rate: int, target_rate: int = SAMPLE_RATE
) -> torch.Tensor:
    """``(T,)`` or ``(channels, T)`` audio at ``sample_rate`` -> ``(T',)`` float32 mono at
    ``target_rate``: channels averaged, then resampled."""
    if not isinstance(sample_rate, int) or isinstance(sample_rate, bool) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer (Hz), got {sample_rate!r}")
    audio = (waveform.detach().cpu().numpy() if isinstance(waveform, torch.Tensor)
             else np.asarray(waveform))
    if audio.ndim not in (1, 2):
        raise ValueError(f"audio must be (samples,) or (channels, samples), got {audio.shape}")
    audio = audio.astype(np.float32, copy=False)
    mono = audio if audio.ndim == 1 else (audio.mean(axis=0) if audio.shape[0] > 1 else audio[0])
    if mono.shape[0] == 0:
        raise ValueError("zero-length audio")
    if not np.isfinite(mono).all():
        raise ValueError("audio holds non-finite samples (NaN or inf)")
    if sample_rate != target_rate:
        mono = resample(mono, sample_rate, target_rate).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(mono))


def load_audio(path: str | Path, target_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Decode an audio file to a ``(T,)`` float32 mono tensor at ``target_rate``
    (:func:`to_model_audio`). Unreadable, empty or non-finite audio raises BadUtteranceError
    naming the file."""
    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)  # (T, C)
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        raise BadUtteranceError(path, f"unreadable audio ({err})") from err
    try:
        return to_model_audio(audio.T, int(rate), target_rate)
    except ValueError as err:
        raise BadUtteranceError(path, str(err)) from err
