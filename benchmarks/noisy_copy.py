"""Write a reverberant, noisy copy of a split of the generated corpus, for training probes.

    python benchmarks/noisy_copy.py data/embedded-mini --split train --fraction 0.5

writes ``<root>/<split>-noisy`` in LibriSpeech's layout: every ``1/fraction``-th chapter of
``<split>``, each utterance passed through ``lowbit_asr.data.corrupt.corrupt`` (the recipe of
``test-other``: synthetic room, coloured noise at 5-20 dB SNR) with a seed drawn from the
utterance id. Speaker and chapter ids are offset (+90,000 / +900,000) so that no id repeats one
of the clean split's. Train on it with ``'dataset.train_splits=[train,train-noisy]'``.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from lowbit_asr.data.corrupt import corrupt

SPEAKER_OFFSET, CHAPTER_OFFSET = 90_000, 900_000


def utterance_seed(uid: str) -> int:
    """A seed from the utterance id (stable across runs and machines)."""
    return int.from_bytes(hashlib.sha256(f"noisy:{uid}".encode()).digest()[:8], "little")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", type=Path, help="corpus root (LibriSpeech layout)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--fraction", type=float, default=0.5, help="share of chapters copied")
    args = parser.parse_args()
    if not 0 < args.fraction <= 1:
        parser.error(f"--fraction must be in (0, 1], got {args.fraction}")
    source, target = args.root / args.split, args.root / f"{args.split}-noisy"
    transcripts = sorted(source.glob("*/*/*.trans.txt"))
    if not transcripts:
        raise SystemExit(f"no */*/*.trans.txt under {source}")
    step = round(1 / args.fraction)
    start, seconds, count = time.perf_counter(), 0.0, 0
    for trans in transcripts[::step]:
        speaker, chapter = int(trans.parent.parent.name), int(trans.parent.name)
        new_spk, new_chp = speaker + SPEAKER_OFFSET, chapter + CHAPTER_OFFSET
        out_dir = target / str(new_spk) / str(new_chp)
        out_dir.mkdir(parents=True, exist_ok=True)
        lines = []
        for line in trans.read_text().splitlines():
            uid, text = line.split(" ", 1)
            audio, rate = sf.read(trans.parent / f"{uid}.flac", dtype="float32")
            noisy, _ = corrupt(audio, utterance_seed(uid), rate)
            new_uid = f"{new_spk}-{new_chp}-{uid.rsplit('-', 1)[1]}"
            pcm = np.clip(np.round(noisy * 32767.0), -32768, 32767).astype(np.int16)
            sf.write(out_dir / f"{new_uid}.flac", pcm, rate, format="FLAC", subtype="PCM_16")
            lines.append(f"{new_uid} {text}\n")
            seconds += audio.size / rate
            count += 1
        (out_dir / f"{new_spk}-{new_chp}.trans.txt").write_text("".join(lines))
    print(f"{count} utterances, {seconds / 3600:.2f} h -> {target} "
          f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
