"""``lowbit-asr train [overrides]``: config -> data -> model (+ quantizer) -> fit -> test.

    lowbit-asr train experiment=float_mini
    lowbit-asr train dataset=librispeech dataset.root=/data/LibriSpeech model=conformer_l \\
        trainer=ddp
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from lowbit_asr.data.datamodule import AsrDataModule
from lowbit_asr.train.checkpoint import data_state, init_from_float, read_checkpoint
from lowbit_asr.train.config import TrainConfig, validate
from lowbit_asr.train.module import RNNTModule

CONF_DIR = str(Path(__file__).resolve().parents[3] / "conf")
log = logging.getLogger("lowbit_asr.train")


def build_loggers(cfg: TrainConfig, run_dir: Path, plain: dict[str, Any]) -> list[Any]:
    """CSV and (offline by default) W&B loggers, as configured."""
    loggers: list[Any] = []
    if cfg.logger.csv.get("enabled", True):
        loggers.append(L.pytorch.loggers.CSVLogger(run_dir, name="csv", version=""))
    if cfg.logger.wandb.enabled and cfg.logger.wandb.mode != "disabled":
        loggers.append(L.pytorch.loggers.WandbLogger(
            project=cfg.logger.wandb.project, entity=cfg.logger.wandb.entity,
            mode=cfg.logger.wandb.mode, save_dir=str(run_dir), name=cfg.experiment_name,
            tags=list(cfg.logger.wandb.tags), config=plain,
        ))
    return loggers


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(dict_cfg: DictConfig) -> dict[str, Any]:
    """Train, then evaluate every test split; writes ``results.json`` in the run directory."""
    plain = OmegaConf.to_container(dict_cfg, resolve=True)
    assert isinstance(plain, dict)
    cfg = validate(plain)  # fails here, before any data is read, on a wrong key or value
    run_dir = Path(plain.get("output_dir") or Path.cwd())
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    L.seed_everything(cfg.seed, workers=True)

    init = read_checkpoint(cfg.init.checkpoint) if cfg.init.mode == "float_ckpt" else None
    # QAT from a float checkpoint keeps its tokenizer and feature statistics.
    tokenizer, stats = data_state(init) if init else (None, None)
    data = AsrDataModule(cfg.dataset, tokenizer=tokenizer, stats=stats)
    data.prepare_data()
    data.setup("fit")
    module = RNNTModule(
        model=plain["model"], tokenizer=data.tokenizer.state_dict(), quantizer=plain["quantizer"],
        optim=plain.get("optim"), fake_quant_after_steps=cfg.init.fake_quant_after_steps,
        test_split_names=list(data.test_split_names),
    )
    if init:
        init_from_float(module, init, cfg.init.checkpoint)
        log.info("initialised from float checkpoint %s", cfg.init.checkpoint)
    log.info("%s", module.describe())

    checkpoints = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="best", monitor="val/wer", mode="min",
        save_last=True, auto_insert_metric_name=False,
    )
    trainer = L.Trainer(
        **cfg.trainer.lightning_kwargs(), default_root_dir=str(run_dir),
        logger=build_loggers(cfg, run_dir, plain) or False,
        callbacks=[checkpoints, LearningRateMonitor(logging_interval="step")],
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    train_seconds = time.perf_counter() - start

    best = checkpoints.best_model_path or None
    test_metrics = trainer.test(module, datamodule=data, ckpt_path=best, weights_only=True)
    results = {
        "experiment": cfg.experiment_name,
        "train_seconds": train_seconds,
        "steps": trainer.global_step,
        "best_checkpoint": best,
        "metrics": {k: v for d in test_metrics for k, v in d.items()},
    }
    (run_dir / "results.json").write_text(json.dumps(results, indent=1))
    log.info("results: %s", json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
