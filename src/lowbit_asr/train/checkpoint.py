"""Reading training checkpoints safely, and starting QAT from a float one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lowbit_asr.data.features import FeatureStats
from lowbit_asr.data.tokenizer import Tokenizer
from lowbit_asr.quant import load_float_state_dict
from lowbit_asr.train.module import RNNTModule

REQUIRED_KEYS = ("hyper_parameters", "state_dict", "AsrDataModule")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a lowbit-asr Lightning checkpoint with ``weights_only=True`` (never runs code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no such file {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated file, pickle with code, not a torch file
        raise ValueError(f"{path}: cannot be read as a weights-only checkpoint ({err})") from err
    missing = [key for key in REQUIRED_KEYS if key not in ckpt]
    if missing:
        raise ValueError(f"{path}: not a lowbit-asr training checkpoint (no {missing})")
    return ckpt


def restore(ckpt: dict[str, Any]) -> tuple[RNNTModule, Tokenizer, FeatureStats]:
    """The module (its quantizer applied while building), tokenizer and feature statistics."""
    module = RNNTModule(**ckpt["hyper_parameters"])
    module.load_state_dict(ckpt["state_dict"])
    stats = FeatureStats.from_dict(ckpt["AsrDataModule"]["feature_stats"])
    return module.eval(), module.tokenizer, stats


def data_state(ckpt: dict[str, Any]) -> tuple[Tokenizer, FeatureStats]:
    """The tokenizer and feature statistics a checkpoint was trained with."""
    return (Tokenizer.from_state(ckpt["hyper_parameters"]["tokenizer"]),
            FeatureStats.from_dict(ckpt["AsrDataModule"]["feature_stats"]))


def init_from_float(module: RNNTModule, ckpt: dict[str, Any], path: str | Path) -> None:
    """Copy a float checkpoint's weights into ``module`` (prepared or not) before training.

    The architectures must agree (decoding settings may differ); errors name the checkpoint.
    """
    theirs = dict(ckpt["hyper_parameters"]["model"])
    ours = dict(module.hparams["model"])
    theirs.pop("decoding", None)
    ours.pop("decoding", None)
    differing = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
    if differing:
        raise ValueError(
            f"init.checkpoint {path}: model config differs from this run's in {differing}"
        )
    state = {key.removeprefix("model."): value for key, value in ckpt["state_dict"].items()
             if key.startswith("model.")}
    try:
        load_float_state_dict(module.model, state)
    except ValueError as err:
        raise ValueError(f"init.checkpoint {path}: {err}") from err
