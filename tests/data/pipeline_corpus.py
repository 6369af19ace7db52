"""A small synthetic corpus in LibriSpeech's layout for the tokenizer/feature/DataModule tests.

Tones and noise instead of speech: it takes well under a second to write and needs no TTS
engine. Imported explicitly by the tests that use it (pytest puts this folder on the path).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

RATE = 16000
WORDS = (
    "THE A OF AND TO IN HER WAS SHE HE IT NOT I YOU BE HAD FOR AS HIS WITH ELIZABETH DARCY "
    "EMMA'S COULD WOULD MISTER MISS VERY SUCH KNOW DON'T THINK SISTER MOTHER LETTER QUITE "
    "JANE ZEAL EXQUISITE VEX JOY"
).split()
SPLITS = {"train": 24, "dev": 6, "test-clean": 5, "test-other": 5}


def sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` upper-case sentences of 2-12 words drawn from WORDS (every letter occurs)."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 13)))) for _ in range(n)]


def tone_noise(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """(T,) float32: three tones and some noise under a slow envelope, never exactly silent."""
    t = np.arange(int(seconds * RATE)) / RATE
    audio = 0.02 * rng.standard_normal(t.size)
    for freq in rng.uniform(100, 6000, size=3):
        audio += rng.uniform(0.05, 0.2) * np.sin(2 * np.pi * freq * t + rng.uniform(0, 6))
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t)
    return (audio * envelope).astype(np.float32)


def write_utterances(
    root: Path,
    split: str,
    speaker: int,
    texts: list[str],
    seconds: list[float],
    seed: int = 0,
) -> list[str]:
    """Write one chapter (``speaker * 10``) of utterances; returns their ids."""
    rng = np.random.default_rng([seed, speaker])
    chapter = speaker * 10
    folder = root / split / str(speaker) / str(chapter)
    folder.mkdir(parents=True, exist_ok=True)
    ids, lines = [], []
    for i, (text, secs) in enumerate(zip(texts, seconds, strict=True)):
        uid = f"{speaker}-{chapter}-{i:04d}"
        sf.write(folder / f"{uid}.flac", tone_noise(secs, rng), RATE, subtype="PCM_16")
        ids.append(uid)
        lines.append(f"{uid} {text}\n")
    (folder / f"{speaker}-{chapter}.trans.txt").write_text("".join(lines))
    return ids


def write_corpus(root: Path, splits: dict[str, int] = SPLITS, seed: int = 0) -> Path:
    """A corpus with ``splits[name]`` utterances per split (0.5-3.5 s, two speakers each)."""
    rng = np.random.default_rng(seed)
    for s, (split, count) in enumerate(splits.items()):
        texts = sentences(count, seed=seed * 100 + s)
        seconds = [float(x) for x in rng.uniform(0.5, 3.5, size=count)]
        half = count // 2
        write_utterances(root, split, 100 + 10 * s, texts[:half], seconds[:half], seed)
        write_utterances(root, split, 101 + 10 * s, texts[half:], seconds[half:], seed)
    return root
