"""Wrappers around the Debian text-to-speech engines (espeak-ng, flite, festival).

A :class:`Voice` fixes everything that makes a speaker: engine, voice, accent and the
rate/pitch/stretch settings, plus a "warp" (resampling the output, which scales pitch, formants
and tempo together, as a longer or shorter vocal tract would). :func:`synthesize` turns a list
of sentences into 16 kHz float audio, one array per sentence.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from lowbit_asr.data.audio import SAMPLE_RATE, resample

ENGINES = ("espeak-ng", "flite", "festival")

# Festival voice name -> the scheme function that selects it.
_FESTIVAL_VOICES = {
    "kal_diphone": "voice_kal_diphone",
    "ked_diphone": "voice_ked_diphone",
    "cmu_us_slt_arctic_hts": "voice_cmu_us_slt_arctic_hts",
}


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker: an engine voice with fixed settings."""

    engine: str  #: "espeak-ng", "flite" or "festival"
    voice: str  #: espeak-ng variant (e.g. "m3"), flite voice ("awb") or festival voice
    accent: str = ""  #: espeak-ng language (e.g. "en-gb-x-rp"); empty for other engines
    speed: int = 0  #: espeak-ng words per minute (-s); 0 for other engines
    pitch: int = 0  #: espeak-ng pitch 0-99 (-p), else target mean F0 in Hz (0: voice default)
    stretch: float = 1.0  #: flite/festival duration stretch (>1 is slower)
    warp: float = 1.0  #: output resampling factor (>1 raises pitch and formants, speeds up)
    gain: float = 0.7  #: peak level of every utterance, as a fraction of full scale

    def to_dict(self) -> dict[str, object]:
        """Plain dict for the corpus manifest."""
        return asdict(self)


def synthesize(voice: Voice, sentences: list[str], workdir: Path) -> list[np.ndarray]:
    """Read ``sentences`` aloud with ``voice``.

    Returns one float32 array (T,) per sentence at 16 kHz, peak-normalised to ``voice.gain``.
    ``workdir`` holds the engines' temporary WAV files.
    """
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        tmpdir = Path(tmp)
        if voice.engine == "espeak-ng":
            paths = _espeak(voice, sentences, tmpdir)
        elif voice.engine == "flite":
            paths = _flite(voice, sentences, tmpdir)
        elif voice.engine == "festival":
            paths = _festival(voice, sentences, tmpdir)
        else:
            raise ValueError(f"unknown engine {voice.engine!r}; expected one of {ENGINES}")
        out = []
        for path in paths:
            audio, rate = sf.read(path, dtype="float64", always_2d=True)
            out.append(_finish(audio.mean(axis=1), rate, voice))
    return out


def _finish(audio: np.ndarray, rate: int, voice: Voice) -> np.ndarray:
    """Resample to 16 kHz, apply the warp and the speaker's peak level; (T,) float32."""
    audio = resample(audio, rate, SAMPLE_RATE)
    if voice.warp != 1.0:
        # Keep the 16 kHz label but take fewer (warp > 1) samples: pitch and formants rise.
        ratio = Fraction(voice.warp).limit_denominator(200)
        audio = resample_poly(audio, ratio.denominator, ratio.numerator)
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak == 0.0:
        raise RuntimeError(f"{voice} produced silence")
    return (audio * (voice.gain / peak)).astype(np.float32)


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr.strip()[:500]}")


def _espeak(voice: Voice, sentences: list[str], tmpdir: Path) -> list[Path]:
    # "en-gb+m3" silently ignores the variant; "<accent>+<variant>" with a full accent works.
    name = f"{voice.accent}+{voice.voice}" if voice.voice else voice.accent
    paths = []
    for i, text in enumerate(sentences):
        path = tmpdir / f"{i:04d}.wav"
        _run(
            [
                "espeak-ng",
                "-v",
                name,
                "-s",
                str(voice.speed),
                "-p",
                str(voice.pitch),
                "-w",
                str(path),
                text,
            ]
        )
        paths.append(path)
    return paths


def _flite(voice: Voice, sentences: list[str], tmpdir: Path) -> list[Path]:
    settings = ["--setf", f"duration_stretch={voice.stretch:.4f}"]
    if voice.pitch:
        settings += ["--setf", f"int_f0_target_mean={voice.pitch}"]
    paths = []
    for i, text in enumerate(sentences):
        path = tmpdir / f"{i:04d}.wav"
        _run(["flite", "-voice", voice.voice, *settings, "-t", text, "-o", str(path)])
        paths.append(path)
    return paths


def _festival(voice: Voice, sentences: list[str], tmpdir: Path) -> list[Path]:
    # One festival process per chapter: its start-up (~0.2 s, more for HTS) dominates otherwise.
    lines = [f"({_FESTIVAL_VOICES[voice.voice]})"]
    if voice.pitch:
        # The diphone voices' linear-regression intonation maps its model F0 onto this target.
        lines.append(
            f"(set! int_lr_params '((target_f0_mean {voice.pitch}) (target_f0_std "
            f"{max(voice.pitch // 6, 10)}) (model_f0_mean 170) (model_f0_std 34)))"
        )
    lines.append(f"(Parameter.set 'Duration_Stretch {voice.stretch:.4f})")
    paths = []
    for i, text in enumerate(sentences):
        path = tmpdir / f"{i:04d}.wav"
        escaped = text.replace("\\", "\\\\").replace('"', '\\"')
        lines.append(f'(utt.save.wave (SynthText "{escaped}") "{path}" \'riff)')
        paths.append(path)
    script = tmpdir / "chapter.scm"
    script.write_text("\n".join(lines) + "\n")
    _run(["festival", "-b", str(script)])
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise RuntimeError(f"festival wrote no audio for {len(missing)} sentences ({voice})")
    return paths
