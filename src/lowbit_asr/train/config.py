"""Typed schemas of the training config; everything is validated before a step runs.

Hydra composes ``conf/train.yaml``; :func:`validate` turns each group into its dataclass (model,
dataset, quantizer, optimiser, trainer, logger) so a wrong key or value fails at start-up with
the key's name, not an hour into a run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch

from lowbit_asr.data.config import DatasetConfig
from lowbit_asr.model.config import ModelConfig
from lowbit_asr.model.rnnt import build_model
from lowbit_asr.quant import QuantPolicy
from lowbit_asr.schema import coerce
from lowbit_asr.train.optim import OptimConfig
from lowbit_asr.train.results import RESULT_FILE

INIT_MODES = ("scratch", "float_ckpt")

PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true")
"""Lightning precisions ``trainer.precision`` accepts."""
FULL_PRECISIONS = ("32-true", "32")
"""The full-precision ones: no autocast, no gradient scaler (the fused AdamW applies)."""


def _build(cls: type, data: Mapping[str, Any] | None, key: str) -> Any:
    """``cls(**data)`` with unknown keys and validation errors reported under ``key``."""
    try:
        return coerce(dict(data or {}), cls, key)
    except TypeError as err:
        raise ValueError(f"{key}: {err}") from err
    except ValueError as err:
        raise ValueError(str(err) if str(err).startswith(key) else f"{key}: {err}") from err


@dataclass
class TrainerConfig:
    """The subset of ``lightning.Trainer`` arguments the recipes set, plus CPU threads and the
    compiled fake quantization (how the process runs, not Lightning's)."""

    accelerator: str = "cpu"
    """``cpu``, ``gpu`` or ``auto``."""
    devices: int | str = 1
    """Devices per node (-1 = all)."""
    num_nodes: int = 1
    """Nodes (multi-node DDP)."""
    strategy: str = "auto"
    """``auto`` or ``ddp`` (gloo on CPU, NCCL on GPU)."""
    precision: str = "32-true"
    """``32-true``, ``bf16-mixed`` or ``16-mixed``."""
    threads: int = 0
    """torch intra-op threads per process; 0 leaves torch's default (all cores)."""
    compile_fake_quant: bool = False
    """Fuse min/max fake quantization with ``torch.compile`` (bit-identical values; one graph
    per spec, compiled at the first step — about a minute for ``conformer_tiny`` on 2 CPU
    cores: for long QAT runs, see :func:`lowbit_asr.quant.fake_quant.use_compiled_fake_quant`)."""
    max_steps: int = 3000
    """Optimiser steps to train (also the cosine schedule's length)."""
    max_epochs: int = -1
    """Epoch limit (-1 = none; ``max_steps`` decides)."""
    max_time: str | None = None
    """Wall-clock limit ``DD:HH:MM:SS``; the run stops early, the schedule is unchanged."""
    val_check_interval: int | float = 500
    """Validate every this many training batches (int) or fraction of an epoch (float)."""
    check_val_every_n_epoch: int | None = None
    """Validate every N epochs; only with a fractional ``val_check_interval`` (an integer
    interval counts batches across epochs, so this must be null with it)."""
    limit_val_batches: int | float = 1.0
    """Dev batches per validation (fraction or count)."""
    log_every_n_steps: int = 25
    """Logging interval in steps."""
    gradient_clip_val: float = 5.0
    """Clip the global gradient norm to this value (0 = off)."""
    accumulate_grad_batches: int = 1
    """Batches per optimiser step."""
    num_sanity_val_steps: int = 0
    """Validation batches run before training."""
    fast_dev_run: bool | int = False
    """Run N (or 1) batches of train/val/test as a smoke test."""
    deterministic: bool = False
    """Ask torch for deterministic kernels."""
    enable_progress_bar: bool = True
    """Lightning progress bars."""

    def __post_init__(self) -> None:
        if self.accelerator not in ("cpu", "gpu", "cuda", "auto"):
            raise ValueError(
                f"trainer.accelerator must be cpu, gpu or auto, got {self.accelerator!r}"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(f"trainer.precision: unsupported value {self.precision!r}")
        if not isinstance(self.max_steps, int) or self.max_steps < -1 or self.max_steps == 0:
            raise ValueError(
                f"trainer.max_steps must be a positive integer, got {self.max_steps!r}"
            )
        if not isinstance(self.threads, int) or self.threads < 0:
            raise ValueError(f"trainer.threads must be an integer >= 0, got {self.threads!r}")
        if not isinstance(self.compile_fake_quant, bool):
            raise ValueError("trainer.compile_fake_quant must be true or false, got"
                             f" {self.compile_fake_quant!r}")
        if isinstance(self.val_check_interval, int) and self.check_val_every_n_epoch is not None:
            raise ValueError(
                f"trainer.check_val_every_n_epoch={self.check_val_every_n_epoch} does nothing with"
                f" an integer trainer.val_check_interval={self.val_check_interval} (validation"
                " counts batches across epochs): set it to null, or give val_check_interval as a"
                " fraction of an epoch (e.g. 1.0)")

    def lightning_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``lightning.Trainer``."""
        kwargs = {f.name: getattr(self, f.name) for f in fields(self)
                  if f.name not in ("threads", "compile_fake_quant")}
        # The bucketing batch sampler shards across ranks itself.
        kwargs["use_distributed_sampler"] = False
        return kwargs


@dataclass
class WandbConfig:
    """Weights & Biases logging; offline by default so no network is ever needed."""

    MOVED_FIELDS = MappingProxyType({"enabled": "logger.wandb.mode (disabled: no W&B)"})

    project: str = "lowbit-asr"
    """W&B project."""
    entity: str | None = None
    """W&B entity (team or user)."""
    mode: str = "offline"
    """``offline`` (sync later), ``online`` (needs WANDB_API_KEY) or ``disabled`` (no W&B run:
    the one switch)."""
    tags: list[str] = field(default_factory=list)
    """Extra run tags."""

    def __post_init__(self) -> None:
        if self.mode not in ("offline", "online", "disabled"):
            raise ValueError(
                f"logger.wandb.mode must be offline, online or disabled, got {self.mode!r}"
            )


@dataclass
class CsvConfig:
    """Lightning's CSV logger (``<run>/csv/metrics.csv``)."""

    enabled: bool = True
    """Write the metrics CSV."""

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ValueError(f"logger.csv.enabled must be true or false, got {self.enabled!r}")


@dataclass
class LoggerConfig:
    """Where metrics go."""

    wandb: WandbConfig = field(default_factory=WandbConfig)
    """W&B settings."""
    csv: CsvConfig = field(default_factory=CsvConfig)
    """CSV logger."""

    def __post_init__(self) -> None:
        if not isinstance(self.wandb, WandbConfig):
            self.wandb = _build(WandbConfig, self.wandb, "logger.wandb")
        if not isinstance(self.csv, CsvConfig):
            self.csv = _build(CsvConfig, self.csv, "logger.csv")


@dataclass
class InitConfig:
    """Where the weights start from."""

    mode: str = "scratch"
    """``scratch`` or ``float_ckpt`` (fine-tune a float checkpoint; QAT's default)."""
    checkpoint: str | None = None
    """Float checkpoint for ``float_ckpt``."""
    fake_quant_after_steps: int = 0
    """Train in float for this many steps before fake quantization switches on."""

    def __post_init__(self) -> None:
        if self.mode not in INIT_MODES:
            raise ValueError(f"init.mode must be one of {INIT_MODES}, got {self.mode!r}")
        if self.mode == "float_ckpt" and not self.checkpoint:
            raise ValueError("init.checkpoint is required when init.mode=float_ckpt")
        if self.mode == "scratch" and self.checkpoint:
            raise ValueError(
                f"init.checkpoint={self.checkpoint} does nothing with init.mode=scratch: set"
                " init.mode=float_ckpt to start from it (or drop init.checkpoint)")
        if not isinstance(self.fake_quant_after_steps, int) or self.fake_quant_after_steps < 0:
            raise ValueError("init.fake_quant_after_steps must be an integer >= 0")


@dataclass
class TrainConfig:
    """The whole validated run configuration."""

    model: ModelConfig
    dataset: DatasetConfig
    quantizer: QuantPolicy
    optim: OptimConfig
    trainer: TrainerConfig
    logger: LoggerConfig
    init: InitConfig
    seed: int
    experiment_name: str


def validate(cfg: Mapping[str, Any]) -> TrainConfig:
    """Check every group of a composed (resolved, plain-container) config; errors name keys."""
    known = {"model", "dataset", "quantizer", "optim", "trainer", "logger", "init", "seed",
             "experiment_name", "output_dir"}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"unknown top-level key(s) {unknown}; allowed: {sorted(known)}")
    try:
        model = ModelConfig(**dict(cfg["model"]))
    except (TypeError, ValueError) as err:
        raise ValueError(f"model.{err}") from err
    try:
        quantizer = QuantPolicy.from_config(cfg.get("quantizer"))
    except ValueError as err:
        raise ValueError(f"quantizer: {err}") from err
    # Resolve the policy against the model's shapes now (on the meta device: no memory), so
    # a rule that matches nothing or a group size that does not divide fails before any data.
    # The vocabulary size only changes dim 0 of the embedding and output layers, never K.
    with torch.device("meta"):
        probe = build_model(model, vocab_size=2)
    try:
        quantizer.plan(probe)
    except ValueError as err:
        raise ValueError(f"quantizer: {err}") from err
    seed = cfg.get("seed", 0)
    if not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    # One seed: the run's also seeds the batch order, the perturbation and SpecAugment.
    dataset = replace(_build(DatasetConfig, cfg.get("dataset"), "dataset"), seed=seed)
    if not Path(dataset.root).is_dir():
        raise ValueError(
            f"dataset.root: no such directory {dataset.root!r} (relative paths are relative to"
            f" {Path.cwd()}; generate the embedded corpus with `make data`)"
        )
    return TrainConfig(
        model=model,
        dataset=dataset,
        quantizer=quantizer,
        optim=_build(OptimConfig, cfg.get("optim"), "optim"),
        trainer=_build(TrainerConfig, cfg.get("trainer"), "trainer"),
        logger=_build(LoggerConfig, cfg.get("logger"), "logger"),
        init=_build(InitConfig, cfg.get("init"), "init"),
        seed=seed,
        experiment_name=str(cfg.get("experiment_name", "run")),
    )


RUN_CONFIG_FILE = "run_config.json"
"""The composed config a run folder was started with (what a resume is checked against)."""
RESUME_SAFE_KEYS = (
    "output_dir", "trainer.max_time", "trainer.threads", "trainer.compile_fake_quant",
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps", "logger.", "dataset.num_workers", "dataset.cache_dir",
    "dataset.precompute_features", "model.decoding.",
)
"""Keys a resumed run may change (prefixes end in "."): where and how fast it runs, what it
logs, how it decodes the test. ``trainer.max_steps`` may grow (train on), never shrink."""


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (an empty mapping stays a leaf)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _listed(key: str, keys: tuple[str, ...]) -> bool:
    """``key`` (flattened) is one of ``keys`` or lies under one of its prefixes (ending ".")."""
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in keys)


NOT_THE_RECIPE = ("seed", "dataset.seed", "dataset.cache_dir", "dataset.num_workers",
                  "trainer.enable_progress_bar", "trainer.log_every_n_steps", "logger.")
"""Keys (as :data:`RESUME_SAFE_KEYS`) that change neither what a run trains nor how: its seed,
where features are cached, how often and where it logs. Runs that differ only in these are
trainings of one recipe (:func:`recipe_id`). The loader's ``num_workers`` is here because the
batches do not depend on it (one seeded sampler builds them; tests/data cover it). Thread
counts are not: another round-off, another recipe (conservative)."""


def init_source(checkpoint: str) -> str:
    """What a fine-tune starts from, as its recipe sees it: a checkpoint inside a finished run
    folder of this project (``<run>/checkpoints/<name>``, ``<run>/results.json`` with a
    ``recipe``) is *that recipe's* ``<name>`` — so fine-tunes of two float trainings of one
    recipe (``reproduce --float-seeds``) are trainings of one recipe too; any other checkpoint
    is its path (conservative: two paths, two recipes)."""
    path = Path(checkpoint)
    try:
        row = json.loads((path.parent.parent / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return checkpoint
    if path.parent.name != "checkpoints" or not isinstance(row, dict) or not row.get("recipe"):
        return checkpoint
    return f"recipe {row['recipe']}: {path.name}"


def recipe_id(cfg: TrainConfig) -> str:
    """A short fingerprint of what a run trains, its seed left out: two runs with the same id
    are two trainings of one recipe (e.g. ``seed=0,1,2``), which the frontier tests as one.
    The init checkpoint counts by :func:`init_source`."""
    init = asdict(cfg.init)
    if cfg.init.checkpoint:
        init["checkpoint"] = init_source(cfg.init.checkpoint)
    doc = {"model": asdict(cfg.model), "dataset": asdict(cfg.dataset),
           "quantizer": cfg.quantizer.to_config(), "optim": asdict(cfg.optim),
           "trainer": asdict(cfg.trainer), "init": init,
           "experiment_name": cfg.experiment_name}
    kept = {k: v for k, v in flatten(doc).items() if not _listed(k, NOT_THE_RECIPE)}
    text = json.dumps(kept, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def resume_differences(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """What differs between the config a run folder was started with and this one, other than
    :data:`RESUME_SAFE_KEYS`: ``key: saved -> now`` lines (empty: the same experiment)."""
    old, new = flatten(saved), flatten(now)
    lines = []
    for key in sorted(set(old) | set(new)):
        if _listed(key, RESUME_SAFE_KEYS):
            continue
        a, b = old.get(key, "<unset>"), new.get(key, "<unset>")
        if key == "trainer.max_steps" and isinstance(a, int) and isinstance(b, int) and b >= a:
            continue
        if a != b:
            lines.append(f"{key}: {a!r} -> {b!r}")
    return lines
