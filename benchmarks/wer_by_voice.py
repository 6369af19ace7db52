"""Greedy WER of a checkpoint per split and per TTS engine/voice of the generated corpus.

    python benchmarks/wer_by_voice.py runs/float_mini/<date>/checkpoints/best.ckpt
    python benchmarks/wer_by_voice.py best.ckpt --splits train dev test-clean --utterances 120

Tells under-fitting from poor generalisation: WER on (a subsample of) the TRAIN split next to
dev/test, and which engines or voices fail. Reads the corpus manifest for each speaker's engine
and voice (espeak-ng variants are pooled as ``espeak-ng:*``). Prints a markdown table and one
reference/hypothesis pair per row.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch

from lowbit_asr.data.datamodule import AsrDataModule, AsrDataset, DatasetConfig
from lowbit_asr.train.checkpoint import read_checkpoint, restore
from lowbit_asr.train.module import word_errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--corpus", default="data/embedded-mini")
    parser.add_argument("--splits", nargs="+", default=["train", "dev", "test-clean"])
    parser.add_argument("--utterances", type=int, default=120,
                        help="evenly spaced utterances per split")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    module, tokenizer, stats = restore(read_checkpoint(args.checkpoint))
    manifest = Path(args.corpus) / "manifest.json"
    if not manifest.is_file():
        raise SystemExit(f"{manifest}: not a generated corpus (no manifest with voices)")
    speakers = json.loads(manifest.read_text())["speakers"]
    data = AsrDataModule(DatasetConfig(root=args.corpus, precompute_features=True),
                         tokenizer=tokenizer, stats=stats)
    print(f"checkpoint {args.checkpoint}, greedy decoding, up to {args.utterances} utterances"
          " per split\n")
    print("| split | engine:voice | utterances | words | WER % | example (ref -> hyp) |")
    print("|---|---|---:|---:|---:|---|")
    for split in args.splits:
        utterances = data.manifest(split).utterances
        step = max(1, len(utterances) // args.utterances)
        chosen = utterances[::step][: args.utterances]
        dataset = AsrDataset(chosen, tokenizer, stats, data.features)
        counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        example: dict[str, str] = {}
        for start in range(0, len(chosen), args.batch):
            batch = dataset[list(range(start, min(start + args.batch, len(chosen))))]
            hyps = module.transcribe(batch)
            for u, ref, hyp in zip(chosen[start:start + args.batch], batch["texts"], hyps,
                                   strict=True):
                voice = speakers[u.id.split("-")[0]]
                key = (f"{voice['engine']}:*" if voice["engine"] == "espeak-ng"
                       else f"{voice['engine']}:{voice['voice']}")
                errors, words = word_errors([ref], [hyp])
                for k in (key, "all"):
                    counts[k][0] += errors
                    counts[k][1] += words
                    counts[k][2] += 1
                example.setdefault(key, f"{ref[:40]} -> {hyp[:40]}")
        for key in ["all", *sorted(k for k in counts if k != "all")]:
            errors, words, n = counts[key]
            print(f"| {split} | {key} | {n} | {words} | {100 * errors / max(words, 1):.1f} |"
                  f" {example.get(key, '')} |")


if __name__ == "__main__":
    main()
