"""Reading training checkpoints safely, and starting QAT from a float one."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lowbit_asr.data.features import FeatureStats
from lowbit_asr.data.tokenizer import Tokenizer
from lowbit_asr.model.config import ModelConfig
from lowbit_asr.model.frontend import STATE_KEYS as FRONTEND_KEYS
from lowbit_asr.quant import load_float_state_dict
from lowbit_asr.quant.container import is_packed_file
from lowbit_asr.train.averaging import CURRENT_WEIGHTS_KEY
from lowbit_asr.train.config import flatten
from lowbit_asr.train.module import RNNTModule

REQUIRED_KEYS = ("hyper_parameters", "state_dict")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file in their own folder, flushed, then renamed.

    Lightning's default goes through an fsspec transaction that writes to the system temporary
    folder and moves the file across filesystems: a full disk left a truncated ``last.ckpt``
    that the automatic resume then died on."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Any | None = None) -> None:
        """``torch.save`` into ``.<name>.tmp<pid>`` beside ``path``, fsync, rename."""
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            with open(tmp, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def resumable_checkpoint(folder: Path, set_aside: bool = True) -> tuple[Path, int] | None:
    """The checkpoint a rerun in ``folder`` resumes from: ``last.ckpt``, or, when that cannot be
    read (truncated, empty), ``best.ckpt``; an unreadable file is named and (``set_aside``: the
    run's first process only) renamed ``<name>.unreadable`` so that nothing resumes from it.
    Returns the checkpoint and its global step (read to check it), or None."""
    for name in ("last.ckpt", "best.ckpt"):
        path = folder / name
        if not path.is_file():
            continue
        try:
            step = int(torch.load(path, map_location="cpu", weights_only=True,
                                  mmap=True)["global_step"])
        except Exception as err:  # noqa: BLE001 - any failure to read it means: not this one
            if set_aside:
                aside = path.with_name(f"{path.name}.unreadable")
                os.replace(path, aside)
                log.error("%s cannot be read (%s): set aside as %s", path, err, aside.name)
            continue
        return path, step
    return None
log = logging.getLogger(__name__)


def upgrade_frontend_state(state: dict[str, Any], hparams: dict[str, Any],
                           old_stats: dict[str, Any] | None, prefix: str, source: str) -> bool:
    """Bring a model saved before the front end moved into it up to date, in place.

    Such files keep the feature statistics (and how to apply them) beside the model
    (``AsrDataModule.feature_stats`` in a checkpoint, ``extra.feature_stats`` in a packed file);
    they become the front end's buffers ``<prefix>frontend.{mean,std,stats_count}`` and its
    config ``model.frontend``. Returns whether anything changed; a file with neither is an
    error naming what is missing, never a model that normalises with zeros and ones.
    """
    names = [f"{prefix}frontend.{key}" for key in FRONTEND_KEYS]
    if all(name in state for name in names):
        return False
    if old_stats is None:
        missing = [name for name in names if name not in state]
        raise ValueError(f"{source}: no feature statistics: the model state lacks {missing}"
                         " and the file has no (older) feature_stats entry either")
    stats = FeatureStats.from_dict(old_stats)
    state[names[0]], state[names[1]] = stats.mean, stats.std
    state[names[2]] = torch.tensor([stats.utterances, stats.frames], dtype=torch.int64)
    model = dict(hparams["model"])
    model["frontend"] = {"normalisation": str(old_stats.get("normalisation", "global")),
                         "cepstral_lifter": int(old_stats.get("lifter", 0))}
    hparams["model"] = model
    log.warning("%s: written before the front end moved into the model; its feature statistics"
                " were converted in memory (model.frontend=%s)", source, model["frontend"])
    return True


def read_checkpoint(path: str | Path, trained_weights: bool = False) -> dict[str, Any]:
    """Load a lowbit-asr Lightning checkpoint with ``weights_only=True`` (never runs code).

    A run that kept a weight average (``optim.ema_decay``) saves the average as ``state_dict``
    and its trained weights beside it; ``trained_weights=True`` puts the trained ones in
    ``state_dict`` instead (for a checkpoint without an average both are the same weights)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no such file {path}")
    if is_packed_file(path):
        raise ValueError(f"{path} is a packed .lbq file, not a training checkpoint: use it with"
                         " lowbit-asr evaluate or transcribe (training starts from a .ckpt)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated file, pickle with code, not a torch file
        raise ValueError(f"{path}: cannot be read as a weights-only checkpoint ({err})") from err
    missing = [key for key in REQUIRED_KEYS if key not in ckpt]
    if missing:
        raise ValueError(f"{path}: not a lowbit-asr training checkpoint (no {missing})")
    if trained_weights and CURRENT_WEIGHTS_KEY in ckpt:
        ckpt["state_dict"] = ckpt.pop(CURRENT_WEIGHTS_KEY)
    old = (ckpt.get("AsrDataModule") or {}).get("feature_stats")
    upgrade_frontend_state(ckpt["state_dict"], ckpt["hyper_parameters"], old, "model.", str(path))
    return ckpt


def restore(ckpt: dict[str, Any]) -> tuple[RNNTModule, Tokenizer]:
    """The eval-mode module (its quantizer applied while building, its front end's statistics
    loaded with the weights) and tokenizer of a checkpoint read by :func:`read_checkpoint`."""
    module = RNNTModule(**ckpt["hyper_parameters"])
    module.load_state_dict(ckpt["state_dict"])
    return module.eval(), module.tokenizer


def checkpoint_tokenizer(ckpt: dict[str, Any]) -> Tokenizer:
    """The tokenizer a checkpoint was trained with."""
    return Tokenizer.from_state(ckpt["hyper_parameters"]["tokenizer"])


def init_from_float(module: RNNTModule, ckpt: dict[str, Any], path: str | Path) -> None:
    """Copy a float checkpoint's weights into ``module`` (prepared or not) before training.

    The architectures must agree (decoding settings may differ); errors name the checkpoint.
    """
    # Compared as complete configs (defaults filled in): a key left to its default on one side
    # and written out on the other is no difference.
    theirs = flatten(asdict(ModelConfig(**ckpt["hyper_parameters"]["model"])))
    ours = flatten(asdict(ModelConfig(**module.hparams["model"])))
    differing = [f"model.{k}: checkpoint {theirs.get(k)!r}, this run {ours.get(k)!r}"
                 for k in sorted(set(theirs) | set(ours))
                 if not k.startswith("decoding.") and theirs.get(k) != ours.get(k)]
    if differing:
        raise ValueError(
            f"init.checkpoint {path}: model config differs from this run's: "
            + "; ".join(differing))
    state = {key.removeprefix("model."): value for key, value in ckpt["state_dict"].items()
             if key.startswith("model.")}
    try:
        load_float_state_dict(module.model, state)
    except ValueError as err:
        raise ValueError(f"init.checkpoint {path}: {err}") from err
