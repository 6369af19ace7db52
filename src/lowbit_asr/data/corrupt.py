"""Reverberation and additive noise for the ``test-other`` split.

Everything is drawn from a generator seeded per utterance, so the corrupted copy of an
utterance does not depend on which worker makes it or in what order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import butter, fftconvolve, sosfilt

SNR_DB = (5.0, 20.0)
RT60_S = (0.2, 0.8)
DRR_DB = (-3.0, 9.0)  # direct-to-reverberant energy ratio
# Spectral exponent: 0 white, 1 pink; browner noise would put its power below speech.
NOISE_COLOUR = (0.0, 1.5)
CROSSOVER_HZ = 2000.0


@dataclass(frozen=True)
class Corruption:
    """The random draws that turned one clean utterance into its ``test-other`` copy."""

    rt60: float  #: reverberation time (s) of the synthetic room
    drr_db: float  #: direct-to-reverberant ratio (dB)
    snr_db: float  #: speech-to-noise ratio (dB) after reverberation
    colour: float  #: noise spectral exponent (power ~ 1/f**colour)


def synthetic_rir(rt60: float, drr_db: float, rng: np.random.Generator, rate: int) -> np.ndarray:
    """A room impulse response (T,): a direct path, then exponentially decaying noise.

    The tail decays by 60 dB over ``rt60`` seconds below 2 kHz and twice as fast above (air and
    walls absorb the highs first); its energy sits ``drr_db`` below the direct path's.
    """
    n = int(rt60 * rate)
    t = np.arange(n) / rate
    decay = np.log(1000.0) * t / rt60  # natural-log amplitude decay: -60 dB at t = rt60
    lowpass = butter(2, CROSSOVER_HZ, "lowpass", fs=rate, output="sos")
    highpass = butter(2, CROSSOVER_HZ, "highpass", fs=rate, output="sos")
    low = sosfilt(lowpass, rng.standard_normal(n)) * np.exp(-decay)
    high = sosfilt(highpass, rng.standard_normal(n)) * np.exp(-2 * decay)
    tail = low + high
    gap = int(rng.uniform(0.002, 0.010) * rate)  # first reflections arrive a few ms late
    rir = np.zeros(n + gap + 1)
    rir[0] = 1.0
    rir[gap + 1 :] = tail * np.sqrt(10 ** (-drr_db / 10) / np.sum(tail**2))
    return rir


def coloured_noise(n: int, colour: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise (n,) of unit power whose power spectrum falls as 1/f**colour."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n)
    freqs[0] = freqs[1] if n > 1 else 1.0
    noise = np.fft.irfft(spectrum * freqs ** (-colour / 2), n)
    return noise / np.sqrt(np.mean(noise**2))


def draw_corruption(rng: np.random.Generator) -> Corruption:
    """Draw the room and noise settings for one utterance."""
    return Corruption(
        rt60=float(rng.uniform(*RT60_S)),
        drr_db=float(rng.uniform(*DRR_DB)),
        snr_db=float(rng.uniform(*SNR_DB)),
        colour=float(rng.uniform(*NOISE_COLOUR)),
    )


def corrupt(audio: np.ndarray, seed: int, rate: int = 16000) -> tuple[np.ndarray, Corruption]:
    """Reverberate and add noise to clean (T,) audio; returns (T,) float32 and the draws.

    The output keeps the input's length (the reverberant tail past the end is cut, as in a
    segmented recording) and its peak level.
    """
    rng = np.random.default_rng(seed)
    c = draw_corruption(rng)
    rir = synthetic_rir(c.rt60, c.drr_db, rng, rate)
    wet = fftconvolve(audio.astype(np.float64), rir)[: audio.size]
    speech_power = np.mean(wet**2)
    noise = coloured_noise(audio.size, c.colour, rng) * np.sqrt(
        speech_power / 10 ** (c.snr_db / 10)
    )
    mixed = wet + noise
    peak_in = float(np.max(np.abs(audio)))
    return (mixed * (peak_in / np.max(np.abs(mixed)))).astype(np.float32), c
