"""``lowbit-asr train [overrides]``: config -> data -> model (+ quantizer) -> fit -> test.

    lowbit-asr train experiment=float_mini
    lowbit-asr train dataset=librispeech dataset.root=/data/LibriSpeech model=conformer_l \\
        trainer=ddp
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from lowbit_asr.data.datamodule import AsrDataModule, DatasetConfig
from lowbit_asr.data.features import FeatureStats
from lowbit_asr.train.checkpoint import data_state, init_from_float, read_checkpoint
from lowbit_asr.train.config import TrainConfig, validate
from lowbit_asr.train.module import RNNTModule
from lowbit_asr.train.results import RESULT_FILE, failed_row, git_commit, result_row

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


def command_line() -> str:
    """The command that reproduces this run: ``lowbit-asr train`` + its Hydra overrides."""
    try:
        overrides = list(HydraConfig.get().overrides.task)
    except ValueError:  # not inside a Hydra app (e.g. called from Python)
        overrides = []
    return " ".join(["lowbit-asr train", *overrides])


def feature_options(stats: FeatureStats, dataset: DatasetConfig, source: str) -> FeatureStats:
    """A checkpoint's feature statistics applied the way the config asks (``dataset.normalisation``,
    ``dataset.cepstral_lifter``); a difference from how the checkpoint was trained is logged."""
    wanted = (dataset.normalisation, dataset.cepstral_lifter)
    if (stats.normalisation, stats.lifter) == wanted:
        return stats
    log.warning(
        "%s was trained with dataset.normalisation=%s dataset.cepstral_lifter=%d; this run uses"
        " %s and %d (the config's)", source, stats.normalisation, stats.lifter, *wanted,
    )
    return stats.with_normalisation(*wanted)


def run(plain: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Train, then evaluate every test split; returns the result row."""
    cfg = validate(plain)  # fails here, before any data is read, on a wrong key or value
    commit = git_commit()  # now: the checkout may change while a long run trains
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    L.seed_everything(cfg.seed, workers=True)

    init = read_checkpoint(cfg.init.checkpoint) if cfg.init.mode == "float_ckpt" else None
    # QAT from a float checkpoint keeps its tokenizer and feature statistics.
    tokenizer, stats = data_state(init) if init else (None, None)
    if stats is not None:
        stats = feature_options(stats, cfg.dataset, str(cfg.init.checkpoint))
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
        auto_insert_metric_name=False,
    )
    # last.ckpt at every validation, improved or not: what a killed run resumes from. (Lightning's
    # own save_last writes it only when the monitored checkpoint was written, i.e. when val/wer
    # improved, so a resumed run would redo every step since the last improvement.)
    last_checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="last", monitor=None, save_top_k=1,
        enable_version_counter=False,
    )
    loggers = build_loggers(cfg, run_dir, plain)
    trainer = L.Trainer(
        **cfg.trainer.lightning_kwargs(), default_root_dir=str(run_dir),
        logger=loggers or False,
        callbacks=[checkpoints, last_checkpoint, LearningRateMonitor(logging_interval="step")],
    )
    # Same command, same run directory => resume where a killed run stopped.
    last = run_dir / "checkpoints" / "last.ckpt"
    resume = str(last) if last.is_file() else None
    if resume:
        log.info("resuming from %s", resume)
    start = time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=resume, weights_only=True)
    train_seconds = time.perf_counter() - start

    best = checkpoints.best_model_path or None
    metrics = {k: v for d in trainer.test(module, datamodule=data, ckpt_path=best,
                                          weights_only=True) for k, v in d.items()}
    wer = {split: float(metrics[f"test/{split}/wer"]) for split in data.test_split_names}
    row = result_row(
        run_id=run_dir.name, experiment=cfg.experiment_name, model=module.model,
        policy=module.policy, wer=wer, train_seconds=train_seconds, steps=trainer.global_step,
        command=command_line(), commit=commit,
        extra={"best_checkpoint": best, "rtf": {s: float(metrics[f"test/{s}/rtf"])
                                                for s in data.test_split_names}},
    )
    for logger in loggers:
        if isinstance(logger, L.pytorch.loggers.WandbLogger) and trainer.is_global_zero:
            logger.experiment.summary.update({
                "model/size_mb": row["size_mb"], "quant/bits": row["quant_bits"],
                "quant/granularity": row["quant_granularity"],
                **{f"test/{s}/wer": w for s, w in wer.items()},
            })
    return row


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(dict_cfg: DictConfig) -> dict[str, Any]:
    """Run and write ``results.json``; in a multirun sweep a failing point is recorded as
    failed (with its error) and the sweep goes on."""
    plain = OmegaConf.to_container(dict_cfg, resolve=True)
    assert isinstance(plain, dict)
    run_dir = Path(plain.get("output_dir") or Path.cwd())
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        row = run(plain, run_dir)
    except Exception as err:
        row = failed_row(run_id=run_dir.name, experiment=str(plain.get("experiment_name")),
                         quantizer=str((plain.get("quantizer") or {}).get("name", "none")),
                         error=f"{type(err).__name__}: {err}", command=command_line())
        (run_dir / RESULT_FILE).write_text(json.dumps(row, indent=1))
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            raise
        log.exception("grid point failed; recorded in %s", run_dir / RESULT_FILE)
        return row
    if int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0:
        (run_dir / RESULT_FILE).write_text(json.dumps(row, indent=1))
    log.info("result: %s", json.dumps(row, indent=1))
    return row


if __name__ == "__main__":
    main()
