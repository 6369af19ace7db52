"""``lowbit-asr ptq checkpoint=<float ckpt> quantizer=<name> out=<folder>``: post-training
quantization, the baseline QAT is measured against.

    lowbit-asr ptq checkpoint=runs/float_mini/checkpoints/best.ckpt quantizer=int2_asym \\
        out=runs/ptq/int2_asym

The float weights are quantized once, as they are (round-to-nearest on the config's grid; with
``clip_search`` the clipping is searched as in training), with no training step. The result is an
ordinary checkpoint (``<out>/checkpoints/ptq.ckpt``: ``lowbit-asr evaluate``, ``export`` and
``transcribe`` take it), evaluated on the test splits exactly as a training run's test stage
(``<out>/eval``), and a result row (``<out>/results.json``, ``method: ptq``, ``steps: 0``) that
``lowbit-asr frontier`` draws beside the QAT points.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from lowbit_asr.cli import CONF_DIR, hydra_overrides
from lowbit_asr.commands import apply_threads
from lowbit_asr.files import write_text_atomic
from lowbit_asr.train.results import RESULT_FILE, git_commit, result_row
from lowbit_asr.train.scoring import EVALUATION_FILE, RUN_EVAL_DIR, evaluate_to, print_summary

PTQ_EXPERIMENT = "ptq"
"""The ``experiment`` (and ``method``) of a PTQ result row."""


def quantize_checkpoint(checkpoint: str | Path, quantizer: dict[str, Any]) -> tuple[Any, dict]:
    """The eval-mode module of a float checkpoint under ``quantizer`` (fake-quant attached to the
    float weights), and the checkpoint dict that saves it."""
    from lowbit_asr.quant import QuantPolicy
    from lowbit_asr.train.checkpoint import init_from_float, read_checkpoint
    from lowbit_asr.train.module import RNNTModule

    ckpt = read_checkpoint(checkpoint)
    hparams = dict(ckpt["hyper_parameters"])
    trained_with = QuantPolicy.from_config(hparams.get("quantizer"))
    if not trained_with.is_float:
        raise ValueError(f"checkpoint={checkpoint} is already quantized"
                         f" ({trained_with.name or 'unnamed quantizer'}): ptq starts from a float"
                         " checkpoint")
    hparams["quantizer"] = quantizer
    module = RNNTModule(**hparams)
    init_from_float(module, ckpt, checkpoint)
    module.eval()
    saved = {"state_dict": module.state_dict(),
             "hyper_parameters": json.loads(json.dumps(dict(module.hparams))),
             "global_step": 0, "epoch": 0, "ptq_source": str(checkpoint)}
    return module, saved


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="ptq")
def main(cfg: DictConfig) -> dict[str, Any]:
    """Quantize, save, evaluate, write the result row."""
    from lowbit_asr.data.config import DatasetConfig
    from lowbit_asr.data.datamodule import AsrDataModule
    from lowbit_asr.train.checkpoint import AtomicCheckpointIO

    apply_threads(cfg.threads)
    commit = git_commit()
    quantizer = OmegaConf.to_container(cfg.quantizer, resolve=True)
    module, saved = quantize_checkpoint(cfg.checkpoint, quantizer)
    out = Path(cfg.out)
    ckpt_path = out / "checkpoints" / "ptq.ckpt"
    AtomicCheckpointIO().save_checkpoint(saved, ckpt_path)
    dataset = DatasetConfig(**OmegaConf.to_container(cfg.dataset, resolve=True))
    data = AsrDataModule(dataset, tokenizer=module.tokenizer, frontend=module.model.frontend)
    command = "lowbit-asr ptq " + " ".join(hydra_overrides())
    info = {"model": str(ckpt_path), "root": str(dataset.root),
            "quantizer": module.policy.name or "none",
            "decoding": asdict(module.model.cfg.decoding),
            "eval_batch_seconds": dataset.eval_batch_seconds, "commit": commit,
            "command": command}
    loaders = {s: data.eval_dataloader(dataset.root, s) for s in dataset.test_splits}
    summary = evaluate_to(out / RUN_EVAL_DIR, module, loaders, info)
    print_summary(summary, out / RUN_EVAL_DIR)
    splits = summary["splits"]
    wer = {s: float(splits[s]["wer"]) for s in dataset.test_splits}
    row = result_row(
        run_id=out.name, experiment=PTQ_EXPERIMENT, model=module.model, policy=module.policy,
        wer=wer, train_seconds=0.0, steps=0, command=command, commit=commit,
        extra={"method": PTQ_EXPERIMENT, "source_checkpoint": str(cfg.checkpoint),
               "best_checkpoint": str(ckpt_path),
               "wer_ci": {s: splits[s]["wer_ci"] for s in wer},
               "evaluation": f"{RUN_EVAL_DIR}/{EVALUATION_FILE}",
               "rtf": {s: float(splits[s]["rtf"]) for s in wer}})
    write_text_atomic(out / RESULT_FILE, json.dumps(row, indent=1))
    print(f"{out / RESULT_FILE}: {row['size_mb']:.4f} MB, WER "
          + ", ".join(f"{s} {100 * w:.2f}%" for s, w in wer.items()))
    return row


if __name__ == "__main__":
    main()
