"""``lowbit-asr train [overrides]``: config -> data -> model (+ quantizer) -> fit -> test.

    lowbit-asr train experiment=float_mini
    lowbit-asr train dataset=librispeech dataset.root=/data/LibriSpeech model=conformer_l \\
        trainer=ddp
"""

from __future__ import annotations

import csv
import json
import logging
import os
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from lowbit_asr.cli import CONF_DIR
from lowbit_asr.data.datamodule import AsrDataModule
from lowbit_asr.files import FolderLock, write_text_atomic
from lowbit_asr.quant.fake_quant import use_compiled_fake_quant
from lowbit_asr.train.averaging import EmaWeights
from lowbit_asr.train.checkpoint import (
    AtomicCheckpointIO,
    checkpoint_tokenizer,
    init_from_float,
    read_checkpoint,
    resumable_checkpoint,
)
from lowbit_asr.train.config import (
    RUN_CONFIG_FILE,
    TrainConfig,
    recipe_id,
    resume_differences,
    validate,
)
from lowbit_asr.train.module import RNNTModule
from lowbit_asr.train.results import RESULT_FILE, failed_row, git_commit, result_row
from lowbit_asr.train.scoring import EVALUATION_FILE, RUN_EVAL_DIR, evaluate_to

log = logging.getLogger("lowbit_asr.train")
WANDB_ID_FILE = "wandb_id"
"""The W&B run id of a run folder (every attempt at the run logs into it)."""


def build_loggers(cfg: TrainConfig, run_dir: Path, plain: dict[str, Any]) -> list[Any]:
    """CSV and (offline by default) W&B loggers, as configured."""
    loggers: list[Any] = []
    if cfg.logger.csv.enabled:
        loggers.append(L.pytorch.loggers.CSVLogger(run_dir, name="csv", version=""))
    if cfg.logger.wandb.mode != "disabled":
        # One W&B run per run folder: a resumed attempt logs into the same run id (resume=allow),
        # so its history continues the killed one's instead of starting a new run.
        id_file = run_dir / WANDB_ID_FILE
        run_id = id_file.read_text().strip() if id_file.is_file() else None
        if run_id is None and _first_process():  # the other ranks log nothing to W&B
            run_id = uuid.uuid4().hex[:12]
            write_text_atomic(id_file, run_id + "\n")
        loggers.append(L.pytorch.loggers.WandbLogger(
            project=cfg.logger.wandb.project, entity=cfg.logger.wandb.entity,
            mode=cfg.logger.wandb.mode, save_dir=str(run_dir), name=cfg.experiment_name,
            tags=list(cfg.logger.wandb.tags), config=plain, id=run_id, resume="allow",
        ))
    return loggers


def keep_csv_history(loggers: list[Any], step: int) -> None:
    """A resumed run keeps the metrics rows logged before its checkpoint: Lightning's CSV logger
    would start ``metrics.csv`` afresh. Rows after the checkpoint's step are dropped (the resumed
    run logs them again)."""
    csv_loggers = [lg for lg in loggers if isinstance(lg, L.pytorch.loggers.CSVLogger)]
    if not csv_loggers:
        return
    path = Path(csv_loggers[0].log_dir) / "metrics.csv"
    if not path.is_file():
        return
    with path.open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("step") and int(r["step"]) < step]
    path.unlink()
    for row in rows:  # logged again through the logger, so the file is its own
        values = {k: float(v) for k, v in row.items() if k != "step" and v not in ("", None)}
        csv_loggers[0].log_metrics(values, step=int(row["step"]))
    csv_loggers[0].save()
    log.info("kept %d metrics rows logged before step %d in %s", len(rows), step, path)


def command_line() -> str:
    """The command that reproduces this run: ``lowbit-asr train`` + its Hydra overrides."""
    try:
        overrides = list(HydraConfig.get().overrides.task)
    except ValueError:  # not inside a Hydra app (e.g. called from Python)
        overrides = []
    return " ".join(["lowbit-asr train", *overrides])


def test_stage(module: RNNTModule, data: AsrDataModule, best: str | None, run_dir: Path,
               device: torch.device, commit: str) -> dict[str, Any]:
    """The best checkpoint (else the last weights) on every test split, through the same
    scoring and files as ``lowbit-asr evaluate``: ``<run dir>/eval/``."""
    if best:
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
    module.to(device)
    info = {"model": best or "last weights of the run", "root": str(data.cfg.root),
            "quantizer": module.policy.name or "none",
            "decoding": asdict(module.model.cfg.decoding),
            "eval_batch_seconds": data.cfg.eval_batch_seconds, "commit": commit,
            "command": command_line()}
    # The loaders ``evaluate`` uses (features computed from the audio, not the float16 cache):
    # the same model gives the same hypotheses here and there.
    loaders = {s: data.eval_dataloader(data.cfg.root, s) for s in data.test_split_names}
    return evaluate_to(run_dir / RUN_EVAL_DIR, module, loaders, info)


class RunInterrupted(RuntimeError):
    """Training was stopped by SIGTERM after saving a checkpoint."""


class SaveOnSigterm(L.Callback):
    """On SIGTERM, save ``last.ckpt`` after the batch in flight (Lightning then stops)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        """Save once the step that was running when the signal came has finished."""
        if trainer.received_sigterm:
            trainer.save_checkpoint(self.path)
            log.warning("SIGTERM: checkpoint of step %d saved to %s", trainer.global_step,
                        self.path)


class RunFolderConflict(ValueError):
    """The run folder belongs to another experiment: refused, and its files left as they are."""


def check_resume(run_dir: Path, plain: dict[str, Any]) -> None:
    """A run folder holding a checkpoint is resumed only by the experiment that wrote it; a new
    folder records this run's config (``run_config.json``) for that check."""
    saved_path = run_dir / RUN_CONFIG_FILE
    resuming = (run_dir / "checkpoints" / "last.ckpt").is_file()
    if resuming and saved_path.is_file():
        differing = resume_differences(json.loads(saved_path.read_text()), plain)
        if differing:
            raise RunFolderConflict(
                f"{run_dir} holds a run of another experiment; resuming it with this config would"
                " continue its optimiser under new settings. Differing keys: "
                + "; ".join(differing)
                + ". Use another hydra.run.dir, or remove the folder to start again.")
    if not resuming or not saved_path.is_file():
        write_text_atomic(saved_path, json.dumps(plain, indent=1, sort_keys=True))


def seed_all(seed: int) -> None:
    """Seed torch's, numpy's and Python's global generators (and the loader workers').

    Called before each step whose randomness must not depend on what ran before it: data
    preparation draws from torch's global generator only when it has work to do (every
    DataLoader iterator draws a base seed, and feature extraction runs one per split with
    features still to compute), so with one seed at the start a cold feature cache and a warm
    one started the model from different weights (100 float_mini steps of one commit: other
    losses from the first logged step on, cold against warm; each repeatable). The data
    pipeline's own draws (batch order, perturbation, SpecAugment) come from generators seeded
    by (seed, epoch, utterance) and need no reseeding.
    """
    L.seed_everything(seed, workers=True, verbose=False)


def run(plain: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Train, then evaluate every test split; returns the result row."""
    cfg = validate(plain)  # fails here, before any data is read, on a wrong key or value
    check_resume(run_dir, plain)
    commit = git_commit()  # now: the checkout may change while a long run trains
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    use_compiled_fake_quant(cfg.trainer.compile_fake_quant)
    seed_all(cfg.seed)

    init = read_checkpoint(cfg.init.checkpoint) if cfg.init.mode == "float_ckpt" else None
    # QAT from a float checkpoint keeps its tokenizer and (with its weights) the statistics of
    # its front end; a float run gives its front end the train statistics.
    data = AsrDataModule(cfg.dataset, tokenizer=checkpoint_tokenizer(init) if init else None)
    if init is None:
        data.prepare_data()  # builds the tokenizer the model's output size depends on
    seed_all(cfg.seed)  # the initial weights, whatever data preparation drew (see seed_all)
    module = RNNTModule(
        model=plain["model"], tokenizer=data.tokenizer.state_dict(), quantizer=plain["quantizer"],
        optim=plain.get("optim"), fake_quant_after_steps=cfg.init.fake_quant_after_steps,
        test_split_names=list(data.test_split_names), loss_warmup=init is None,
    )
    if init:
        init_from_float(module, init, cfg.init.checkpoint)
        log.info("initialised from float checkpoint %s", cfg.init.checkpoint)
    # The data path normalises with the model's own front end: the float checkpoint's
    # statistics, or (a float run) the train statistics prepare_data computed.
    data.use_frontend(module.model.frontend)
    if init is not None:
        data.prepare_data()
    data.setup("fit")
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
    # Same command, same run directory => resume where a killed run stopped (from last.ckpt, or
    # best.ckpt when last.ckpt is unreadable).
    found = resumable_checkpoint(run_dir / "checkpoints", set_aside=_first_process())
    resume = str(found[0]) if found else None
    loggers = build_loggers(cfg, run_dir, plain)
    if found and _first_process():  # the other DDP ranks log nothing and must not touch it
        keep_csv_history(loggers, found[1])
    callbacks = [checkpoints, last_checkpoint, LearningRateMonitor(logging_interval="step"),
                 SaveOnSigterm(run_dir / "checkpoints" / "last.ckpt")]
    if cfg.optim.ema_decay:
        callbacks.append(EmaWeights(cfg.optim.ema_decay, cfg.optim.ema_start_step))
    trainer = L.Trainer(
        **cfg.trainer.lightning_kwargs(), default_root_dir=str(run_dir),
        logger=loggers or False, plugins=[AtomicCheckpointIO()], callbacks=callbacks,
    )
    if resume:
        log.info("resuming from %s", resume)
    seed_all(cfg.seed)  # dropout and the loader's worker seeds: not after the data preparation
    try:
        trainer.fit(module, datamodule=data, ckpt_path=resume, weights_only=True)
    except SIGTERMException as stop:
        # What SLURM and most schedulers send before killing a job: the checkpoint is saved
        # (SaveOnSigterm), the row says so, and the exit code is not 0, so `train && export`
        # stops. Rerunning the command resumes.
        raise RunInterrupted(f"SIGTERM at step {trainer.global_step}: checkpoint saved to"
                             f" {run_dir / 'checkpoints' / 'last.ckpt'}; rerun the same command"
                             " to resume") from stop
    train_seconds = module.train_seconds  # every attempt's

    # A step budget is the recipe; trainer.max_time is only a guard. When the guard (or anything
    # else) ends training before max_steps, the row says so instead of shipping another model.
    wanted = int(cfg.trainer.max_steps or 0)
    truncated = (f"training stopped at step {trainer.global_step} of trainer.max_steps={wanted}"
                 f" (trainer.max_time={cfg.trainer.max_time} reached?)"
                 if wanted > 0 and trainer.global_step < wanted else None)
    best = checkpoints.best_model_path or None
    if not trainer.is_global_zero:  # one process decodes every test utterance (rank 0)
        return {"status": "ok", "rank": trainer.global_rank}
    summary = test_stage(module, data, best, run_dir, trainer.strategy.root_device, commit)
    splits = summary["splits"]
    wer = {split: float(splits[split]["wer"]) for split in data.test_split_names}
    row = result_row(
        run_id=run_dir.name, experiment=cfg.experiment_name, model=module.model,
        policy=module.policy, wer=wer, train_seconds=train_seconds, steps=trainer.global_step,
        command=command_line(), commit=commit,
        extra={**({"status": "truncated", "error": truncated} if truncated else {}),
               "attempts": module.attempt,
               "seed": cfg.seed, "recipe": recipe_id(cfg),
               "best_checkpoint": best,
               "wer_ci": {s: splits[s]["wer_ci"] for s in wer},
               "evaluation": f"{RUN_EVAL_DIR}/{EVALUATION_FILE}",
               "rtf": {s: float(splits[s]["rtf"]) for s in wer}},
    )
    for logger in loggers:
        if isinstance(logger, L.pytorch.loggers.WandbLogger):
            logger.experiment.summary.update({
                "model/size_mb": row["size_mb"], "quant/bits": row["quant_bits"],
                "quant/granularity": row["quant_granularity"],
                **{f"test/{s}/wer": w for s, w in wer.items()},
                **{f"test/{s}/wer_ci_low": splits[s]["wer_ci"][0] for s in wer},
                **{f"test/{s}/wer_ci_high": splits[s]["wer_ci"][1] for s in wer},
                **{f"test/{s}/cer": splits[s]["cer"] for s in wer},
                **{f"test/{s}/nll_per_token": splits[s]["nll_per_token"] for s in wer},
            })
    return row


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(dict_cfg: DictConfig) -> dict[str, Any]:
    """Run and write ``results.json``; in a multirun sweep a failing point is recorded as
    failed (with its error) and the sweep goes on."""
    plain = OmegaConf.to_container(dict_cfg, resolve=True)
    assert isinstance(plain, dict)
    run_dir = Path(plain.get("output_dir") or Path.cwd())
    run_dir.mkdir(parents=True, exist_ok=True)
    # One writer per run folder: the first process of a run holds the lock (the other DDP ranks
    # are its own children, or started by the scheduler beside it).
    lock = FolderLock(run_dir, f"lowbit-asr train ({command_line()})")
    if _first_process():
        lock.acquire()
    try:
        return _run_and_record(plain, run_dir)
    finally:
        lock.release()


def _first_process() -> bool:
    """Whether this is the first process of the run (rank 0 of node 0, or not distributed)."""
    return all(int(os.environ.get(name, "0")) == 0
               for name in ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID"))


def _run_and_record(plain: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    try:
        row = run(plain, run_dir)
    except RunFolderConflict:
        raise  # the folder is another run's: its result row must stay as it is
    except RunInterrupted as err:
        row = failed_row(run_id=run_dir.name, experiment=str(plain.get("experiment_name")),
                         quantizer=str((plain.get("quantizer") or {}).get("name", "none")),
                         error=str(err), command=command_line(), status="interrupted")
        if _first_process():
            write_text_atomic(run_dir / RESULT_FILE, json.dumps(row, indent=1))
        log.error("run interrupted: %s", err)
        raise SystemExit(1) from err
    except Exception as err:
        row = failed_row(run_id=run_dir.name, experiment=str(plain.get("experiment_name")),
                         quantizer=str((plain.get("quantizer") or {}).get("name", "none")),
                         error=f"{type(err).__name__}: {err}", command=command_line())
        write_text_atomic(run_dir / RESULT_FILE, json.dumps(row, indent=1))
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            raise
        log.exception("grid point failed; recorded in %s", run_dir / RESULT_FILE)
        return row
    if _first_process():
        write_text_atomic(run_dir / RESULT_FILE, json.dumps(row, indent=1))
    log.info("result: %s", json.dumps(row, indent=1))
    if row.get("status", "ok") != "ok":
        log.error("run %s: %s", row["status"], row.get("error"))
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            raise SystemExit(1)
    return row


if __name__ == "__main__":
    main()
