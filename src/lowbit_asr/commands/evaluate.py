"""``lowbit-asr evaluate checkpoint=… [dataset=…] [splits=[…]] [out=…]``: WER, CER and NLL with
95% confidence intervals, per-utterance results, real-time factor.

    lowbit-asr evaluate checkpoint=runs/float_mini/checkpoints/best.ckpt
    lowbit-asr evaluate checkpoint=best.ckpt dataset=librispeech dataset.root=/data/LibriSpeech \
        splits=[dev-clean,dev-other,test-clean,test-other]
    lowbit-asr evaluate checkpoint=best.ckpt dataset.root=/any/folder splits=[my-split]
    lowbit-asr evaluate checkpoint=model.lbq            # a packed file (lowbit-asr export)

The checkpoint (or packed file, recognised by its first bytes) carries the model config,
quantizer policy, tokenizer and feature statistics, so only the audio comes from ``dataset``.
Writes an evaluation folder (``out``, default ``<checkpoint>.eval/`` beside it): per split
``ref.trn``/``hyp.trn`` (NIST trn, for sclite) and ``utterances.tsv``, and ``evaluation.json``;
``lowbit-asr compare`` tests two such folders against each other.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from lowbit_asr.cli import CONF_DIR, hydra_overrides
from lowbit_asr.commands import apply_threads
from lowbit_asr.data.config import DatasetConfig
from lowbit_asr.data.datamodule import AsrDataModule
from lowbit_asr.packed import load_for_evaluation
from lowbit_asr.train.results import git_commit
from lowbit_asr.train.scoring import evaluate_to, print_summary


def default_out(checkpoint: str | Path) -> Path:
    """``<folder>/<checkpoint name without suffix>.eval``."""
    path = Path(checkpoint)
    return path.with_name(f"{path.stem}.eval")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="evaluate")
def main(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate a checkpoint or packed file on every requested split."""
    apply_threads(cfg.threads)
    out = Path(cfg.out) if cfg.out else default_out(cfg.checkpoint)
    if out.resolve() == Path(cfg.checkpoint).resolve():
        raise ValueError(f"out={out} is the checkpoint itself: an evaluation is a folder")
    if out.is_file():
        raise ValueError(f"out={out} is a file: an evaluation is written to a folder")
    if not isinstance(cfg.trained_weights, bool):
        raise ValueError(f"trained_weights must be true or false, got {cfg.trained_weights!r}")
    module, quantizer = load_for_evaluation(cfg.checkpoint, trained_weights=cfg.trained_weights)
    overrides = {k: v for k, v in OmegaConf.to_container(cfg.decoding).items() if v is not None}
    module.model.cfg.decoding = replace(module.model.cfg.decoding, **overrides)
    dataset = DatasetConfig(**OmegaConf.to_container(cfg.dataset, resolve=True))
    data = AsrDataModule(dataset, tokenizer=module.tokenizer, frontend=module.model.frontend)
    splits = list(cfg.splits) if cfg.splits else list(dataset.test_splits)
    info = {"model": str(cfg.checkpoint), "trained_weights": cfg.trained_weights,
            "root": str(dataset.root), "quantizer": quantizer,
            "decoding": asdict(module.model.cfg.decoding),
            "eval_batch_seconds": dataset.eval_batch_seconds, "commit": git_commit(),
            "command": "lowbit-asr evaluate " + " ".join(hydra_overrides())}
    loaders = {s: data.eval_dataloader(dataset.root, s) for s in splits}
    summary = evaluate_to(out, module, loaders, info)
    print_summary(summary, out)
    return summary


if __name__ == "__main__":
    main()
