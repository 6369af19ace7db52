"""Greedy WER of a checkpoint per split and per TTS engine/voice of the generated corpus.

    python benchmarks/wer_by_voice.py runs/float_mini/<date>/checkpoints/best.ckpt
    python benchmarks/wer_by_voice.py best.ckpt --splits train dev test-clean --utterances 120
    python benchmarks/wer_by_voice.py best.ckpt --splits test-clean --freq-warp 1.0 0.9 0.83
    python benchmarks/wer_by_voice.py --evaluation runs/a runs/b --splits test-clean

Tells under-fitting from poor generalisation: WER on (a subsample of) the TRAIN split next to
dev/test, and which engines or voices fail. Reads the corpus manifest for each speaker's engine
and voice (espeak-ng variants are pooled as ``espeak-ng:*``). Prints a markdown table and one
reference/hypothesis pair per row.

``--freq-warp a b ...`` repeats the evaluation with every utterance's spectrum warped by each
factor (``lowbit_asr.data.perturb``: frequencies times ``a``, duration kept): if a held-out
voice improves a lot at ``a < 1``, its formants sit above anything the model learned from.

``--evaluation A B ...`` decodes nothing: it groups the per-utterance scores that ``lowbit-asr
evaluate`` or a training run's test stage already wrote (run folders, ``eval/`` folders or
``evaluation.json`` files) by voice, one WER column per evaluation, so runs compared with
``lowbit-asr compare`` can be compared voice by voice at no cost.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import torch

from lowbit_asr.data.config import DatasetConfig
from lowbit_asr.data.corpus import MANIFEST, CorpusManifest
from lowbit_asr.data.datamodule import AsrDataModule, AsrDataset
from lowbit_asr.data.perturb import Perturb, PerturbConfig
from lowbit_asr.train.checkpoint import read_checkpoint, restore
from lowbit_asr.train.module import word_errors
from lowbit_asr.train.scoring import load_evaluation, totals


def voice_key(voice: dict) -> str:
    """The row a speaker's utterances go to: espeak-ng variants pooled, other voices by name."""
    return (f"{voice['engine']}:*" if voice["engine"] == "espeak-ng"
            else f"{voice['engine']}:{voice['voice']}")


def by_voice_from_evaluations(paths: list[str], corpus: str, splits: list[str]) -> None:
    """Per-voice WER of existing evaluations (no decoding), one column per evaluation."""
    speakers = CorpusManifest.load(Path(corpus)).speakers
    loaded = [load_evaluation(p)[1] for p in paths]
    print("| split | engine:voice | utterances | words | "
          + " | ".join(f"WER % {p}" for p in paths) + " |")
    print("|---|---|---:|---:|" + "---:|" * len(paths))
    for split in splits:
        missing = [p for p, ev in zip(paths, loaded, strict=True) if split not in ev]
        if missing:
            raise SystemExit(f"{', '.join(missing)}: no {split!r} split in the evaluation")
        ids = [sorted(u.id for u in ev[split]) for ev in loaded]
        if any(i != ids[0] for i in ids):
            raise SystemExit(f"{split}: the evaluations scored different utterances")
        groups: list[dict[str, list]] = [defaultdict(list) for _ in paths]  # per evaluation
        for column, ev in enumerate(loaded):
            for u in ev[split]:
                if u.speaker not in speakers:
                    raise SystemExit(f"{split}: speaker {u.speaker} is not in {corpus}'s manifest")
                groups[column][voice_key(speakers[u.speaker])].append(u)
                groups[column]["all"].append(u)
        for key in ["all", *sorted(k for k in groups[0] if k != "all")]:
            counts = [totals(g[key]) for g in groups]
            words, n = counts[0]["words"], counts[0]["utterances"]
            wers = " | ".join(f"{100 * c['errors'] / max(c['words'], 1):.1f}" for c in counts)
            print(f"| {split} | {key} | {n} | {words} | {wers} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", nargs="?")
    parser.add_argument("--evaluation", nargs="+", metavar="EVAL",
                        help="group these evaluations' per-utterance scores by voice instead of"
                             " decoding a checkpoint")
    parser.add_argument("--corpus", default="data/embedded-mini")
    parser.add_argument("--splits", nargs="+", default=["train", "dev", "test-clean"])
    parser.add_argument("--utterances", type=int, default=120,
                        help="evenly spaced utterances per split")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--freq-warp", type=float, nargs="+", default=[1.0],
                        help="evaluate with the spectrum warped by each factor (1 = as is)")
    args = parser.parse_args()
    if (args.checkpoint is None) == (args.evaluation is None):
        parser.error("give either a checkpoint or --evaluation (exactly one of them)")
    if not (Path(args.corpus) / MANIFEST).is_file():
        raise SystemExit(f"{args.corpus}: not a generated corpus (no {MANIFEST} with voices)")
    if args.evaluation:
        by_voice_from_evaluations(args.evaluation, args.corpus, args.splits)
        return
    torch.set_num_threads(args.threads)
    module, tokenizer = restore(read_checkpoint(args.checkpoint))
    speakers = CorpusManifest.load(Path(args.corpus)).speakers
    data = AsrDataModule(DatasetConfig(root=args.corpus, precompute_features=True),
                         tokenizer=tokenizer, frontend=module.model.frontend)
    print(f"checkpoint {args.checkpoint}, greedy decoding, up to {args.utterances} utterances"
          " per split\n")
    print("| split | freq. warp | engine:voice | utterances | words | WER % |"
          " example (ref -> hyp) |")
    print("|---|---:|---|---:|---:|---:|---|")
    perturb = Perturb(PerturbConfig())
    for split, warp in [(s, w) for s in args.splits for w in args.freq_warp]:
        utterances = data.manifest(split).utterances
        step = max(1, len(utterances) // args.utterances)
        chosen = utterances[::step][: args.utterances]
        dataset = AsrDataset(chosen, tokenizer, module.model.frontend.normalise, data.features)
        counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        example: dict[str, str] = {}
        for start in range(0, len(chosen), args.batch):
            batch = dataset[list(range(start, min(start + args.batch, len(chosen))))]
            if warp != 1.0:
                feats = [perturb.utterance(batch["feats"][i, :n], speed=1.0, warp=warp)
                         for i, n in enumerate(batch["feat_lens"].tolist())]
                batch["feats"] = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)
            hyps = module.transcribe(batch)
            for u, ref, hyp in zip(chosen[start:start + args.batch], batch["texts"], hyps,
                                   strict=True):
                key = voice_key(speakers[u.id.split("-")[0]])
                errors, words = word_errors([ref], [hyp])
                for k in (key, "all"):
                    counts[k][0] += errors
                    counts[k][1] += words
                    counts[k][2] += 1
                example.setdefault(key, f"{ref[:40]} -> {hyp[:40]}")
        for key in ["all", *sorted(k for k in counts if k != "all")]:
            errors, words, n = counts[key]
            print(f"| {split} | {warp:g} | {key} | {n} | {words} |"
                  f" {100 * errors / max(words, 1):.1f} |"
                  f" {example.get(key, '')} |")


if __name__ == "__main__":
    main()
