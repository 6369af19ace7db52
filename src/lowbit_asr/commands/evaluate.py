"""``lowbit-asr evaluate checkpoint=… [dataset=…] [splits=[…]]``: WER and real-time factor.

    lowbit-asr evaluate checkpoint=runs/float_mini/checkpoints/best.ckpt
    lowbit-asr evaluate checkpoint=best.ckpt dataset=librispeech dataset.root=/data/LibriSpeech \
        splits=[dev-clean,dev-other,test-clean,test-other]
    lowbit-asr evaluate checkpoint=best.ckpt dataset.root=/any/folder splits=[my-split]
    lowbit-asr evaluate checkpoint=model.lbq            # a packed file (lowbit-asr export)

The checkpoint (or packed file, recognised by its first bytes) carries the model config,
quantizer policy, tokenizer and feature statistics, so only the audio comes from ``dataset``.
Writes JSON (``out``, default beside the checkpoint) and prints a table.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from lowbit_asr.data.datamodule import AsrDataModule, DatasetConfig
from lowbit_asr.packed import load_for_evaluation
from lowbit_asr.train.module import RNNTModule

CONF_DIR = str(Path(__file__).resolve().parents[3] / "conf")


@torch.no_grad()
def evaluate_split(module: RNNTModule, loader: Any) -> dict[str, float]:
    """Corpus WER, counts and real-time factor of one split."""
    errors = words = utterances = 0
    audio = decode = 0.0
    for batch in loader:
        e, w, d, a = module.score_batch(batch)
        errors, words, decode, audio = errors + e, words + w, decode + d, audio + a
        utterances += len(batch["texts"])
    return {"wer": errors / max(words, 1), "errors": errors, "words": words,
            "utterances": utterances, "audio_seconds": audio, "decode_seconds": decode,
            "rtf": decode / max(audio, 1e-9)}


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="evaluate")
def main(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate a checkpoint or packed file on every requested split."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    module, tokenizer, stats, quantizer = load_for_evaluation(cfg.checkpoint)
    overrides = {k: v for k, v in OmegaConf.to_container(cfg.decoding).items() if v is not None}
    module.model.cfg.decoding = replace(module.model.cfg.decoding, **overrides)
    dataset = DatasetConfig(**OmegaConf.to_container(cfg.dataset, resolve=True))
    data = AsrDataModule(dataset, tokenizer=tokenizer, stats=stats)
    splits = list(cfg.splits) if cfg.splits else list(dataset.test_splits)
    results: dict[str, Any] = {
        "checkpoint": str(cfg.checkpoint), "root": str(dataset.root),
        "decoding": asdict(module.model.cfg.decoding), "quantizer": quantizer,
        "splits": {},
    }
    for split in splits:
        results["splits"][split] = evaluate_split(module, data.eval_dataloader(dataset.root, split))

    out = Path(cfg.out) if cfg.out else Path(cfg.checkpoint).with_suffix(".eval.json")
    out.write_text(json.dumps(results, indent=1))
    print("| split | utterances | words | WER % | RTF |\n|---|---:|---:|---:|---:|")
    for split, r in results["splits"].items():
        print(f"| {split} | {r['utterances']} | {r['words']} | {100 * r['wer']:.2f} |"
              f" {r['rtf']:.3f} |")
    print(f"\nwritten to {out}")
    return results


if __name__ == "__main__":
    main()
