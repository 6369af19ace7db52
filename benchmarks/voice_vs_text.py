"""Is it the voice or the text? Greedy WER of a checkpoint on freshly synthesised audio that
crosses the generated corpus's training and held-out voices with its training and test texts.

    python benchmarks/voice_vs_text.py runs/float_mini/<date>/checkpoints/last.ckpt
    python benchmarks/voice_vs_text.py best.ckpt --sentences 60 --voices train:flite:awb

The held-out splits change two things at once: unseen voices *and* unseen books. Each voice
named by ``--voices`` (``split:engine:voice``; the first speaker of that split with that
engine voice, with its recorded rate/pitch/stretch/warp) reads ``--sentences`` evenly spaced
transcripts of the train split and as many of test-clean, through the corpus's own TTS wrapper
(the Debian engines must be installed: ``make install``). The row of a training voice on test
text isolates the text; the row of a held-out voice on training text isolates the voice.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import fields
from pathlib import Path

import torch

from lowbit_asr.data.corpus import MANIFEST, CorpusManifest
from lowbit_asr.data.datamodule import Example, collate
from lowbit_asr.data.features import LogMel
from lowbit_asr.data.librispeech import read_split
from lowbit_asr.data.tokenizer import normalise_text
from lowbit_asr.data.tts import Voice, synthesize
from lowbit_asr.train.checkpoint import read_checkpoint, restore
from lowbit_asr.train.module import word_errors

DEFAULT_VOICES = [
    "train:flite:awb",
    "train:flite:kal16",
    "train:festival:kal_diphone",
    "test-clean:flite:slt",
    "test-clean:festival:cmu_us_slt_arctic_hts",
    "test-clean:festival:ked_diphone",
]


def find_voice(speakers: dict[str, dict[str, object]], spec: str) -> Voice:
    """The recorded settings of the first speaker matching ``split:engine:voice``."""
    split, engine, name = spec.split(":")
    keys = {f.name for f in fields(Voice)}
    for speaker in sorted(speakers):
        v = speakers[speaker]
        if (v["split"], v["engine"], v["voice"]) == (split, engine, name):
            return Voice(**{k: v[k] for k in keys if k in v})  # type: ignore[arg-type]
    raise SystemExit(f"--voices {spec}: no speaker of split {split!r} uses {engine}:{name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--corpus", default="data/embedded-mini")
    parser.add_argument("--sentences", type=int, default=40, help="per text set")
    parser.add_argument("--voices", nargs="+", default=DEFAULT_VOICES)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    module, tokenizer = restore(read_checkpoint(args.checkpoint))
    frontend = module.model.frontend
    if not (Path(args.corpus) / MANIFEST).is_file():
        raise SystemExit(f"{args.corpus}: not a generated corpus (no {MANIFEST} with voices)")
    speakers = CorpusManifest.load(Path(args.corpus)).speakers

    def texts(split: str) -> list[str]:
        utterances = read_split(args.corpus, split).utterances
        step = max(1, len(utterances) // args.sentences)
        return [u.text for u in utterances[::step][: args.sentences]]

    text_sets = {"train text": texts("train"), "test-clean text": texts("test-clean")}
    logmel = LogMel()

    def wer(voice: Voice, sentences: list[str]) -> float:
        with tempfile.TemporaryDirectory() as tmp:
            audio = synthesize(voice, sentences, Path(tmp))
        examples = [
            Example(
                feats=frontend.normalise(logmel(torch.from_numpy(a).float())),
                targets=torch.tensor(tokenizer.encode(s, "synth"), dtype=torch.int64),
                text=normalise_text(s),
                id=f"synth-{i}",
            )
            for i, (a, s) in enumerate(zip(audio, sentences, strict=True))
        ]
        errors = words = 0
        for start in range(0, len(examples), args.batch):
            batch = collate(examples[start : start + args.batch])
            e, w = word_errors(batch["texts"], module.transcribe(batch))
            errors, words = errors + e, words + w
        return 100.0 * errors / max(words, 1)

    print(f"checkpoint {args.checkpoint}, greedy decoding, {args.sentences} sentences per text"
          " set, synthesised afresh\n")
    print("| voice (split:engine:voice) | " + " | ".join(f"WER % on {t}" for t in text_sets)
          + " |")
    print("|---|" + "---:|" * len(text_sets))
    for spec in args.voices:
        voice = find_voice(speakers, spec)
        cells = [f"{wer(voice, sentences):.1f}" for sentences in text_sets.values()]
        print(f"| {spec} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
