"""Packed low-bit export of a trained model, and loading it back for evaluation and decoding.

    report = export_packed("runs/.../checkpoints/best.ckpt", "model.lbq")
    model, tokenizer, metadata = load_packed("model.lbq")   # eval-mode RNNT, plain weights

The file is :mod:`lowbit_asr.quant.container`'s (safetensors + JSON, no pickle): the model's
quantized weights as b-bit codes with their scales, its other tensors as floats, so that its
size is the accounted size plus a header of ~20 KB. The header also carries what a checkpoint
carries besides weights — the training hyper-parameters (model config, tokenizer state, quantizer
policy); the front end's feature statistics are tensors of the model like any other — so a packed
file is all a user needs to transcribe (``lowbit-asr transcribe``). Files written before the front
end moved into the model (statistics in ``extra.feature_stats``) are converted when read.
Loading dequantizes every weight with the function fake quantization uses: the weights, the
outputs and the WER equal the fake-quant checkpoint's exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from torch import Tensor, nn

from lowbit_asr.data.tokenizer import Tokenizer
from lowbit_asr.model.rnnt import RNNT, build_model
from lowbit_asr.quant import load_float_state_dict, size_report
from lowbit_asr.quant.container import PackedFile, is_packed_file, read_packed, write_packed
from lowbit_asr.train.checkpoint import read_checkpoint, restore, upgrade_frontend_state
from lowbit_asr.train.module import RNNTModule

SUFFIX = ".lbq"
"""Conventional file suffix; files are recognised by their first bytes whatever their name."""


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_packed` wrote, against the accounted size."""

    out: Path
    quantizer: str
    tensors: int
    quantized_tensors: int
    file_bytes: int
    accounted_bytes: int
    """``size_report(model, policy).total_bytes``: the frontier's x-axis."""
    header_bytes: int

    @property
    def ratio(self) -> float:
        """File bytes / accounted bytes (>= 1; the header and per-tensor byte rounding)."""
        return self.file_bytes / self.accounted_bytes

    def to_markdown(self) -> str:
        """One-row markdown table."""
        return (
            "| packed file | quantizer | tensors (quantized) | file bytes | accounted bytes |"
            " file / accounted | header bytes |\n|---|---|---:|---:|---:|---:|---:|\n"
            f"| {self.out} | {self.quantizer} | {self.tensors} ({self.quantized_tensors}) |"
            f" {self.file_bytes:,} | {self.accounted_bytes:,} | {self.ratio:.4f} |"
            f" {self.header_bytes:,} |"
        )


class LoadedPacked(NamedTuple):
    """What :func:`load_packed` returns."""

    model: RNNT
    """Eval-mode model with plain (dequantized) weights: no parametrization."""
    tokenizer: Tokenizer
    metadata: PackedFile
    """The file's table, quantizer policy and ``extra`` (hyper-parameters, source)."""


def export_packed(checkpoint_path: str | Path, out_path: str | Path) -> ExportReport:
    """Pack a training checkpoint (float or QAT) into ``out_path``; never unpickles code.

    ``out_path`` must not be the checkpoint itself, nor a folder, and its folder must exist: the
    file is written to a temporary file beside it and renamed, so a failure leaves no half file.
    """
    out = Path(out_path)
    if out.resolve() == Path(checkpoint_path).resolve():
        raise ValueError(f"out={out_path} is the checkpoint itself: refusing to overwrite it")
    if out.is_dir():
        raise ValueError(f"out={out_path} is a folder: a packed model is a file (e.g. model.lbq)")
    if not out.parent.is_dir():
        raise ValueError(f"out={out_path}: the folder {out.parent} does not exist")
    ckpt = read_checkpoint(checkpoint_path)
    module, _ = restore(ckpt)
    extra = {
        "hyper_parameters": dict(ckpt["hyper_parameters"]),
        "source": {
            "checkpoint": Path(checkpoint_path).name,
            "global_step": ckpt.get("global_step"),
            "epoch": ckpt.get("epoch"),
        },
    }
    try:
        described = write_packed(out_path, module.model, module.policy, extra)
    except ValueError as err:
        raise ValueError(f"{checkpoint_path}: cannot pack: {err}") from err
    return ExportReport(
        out=Path(out_path),
        quantizer=module.policy.name or "none",
        tensors=len(described.tensors),
        quantized_tensors=sum(t.spec is not None for t in described.tensors),
        file_bytes=described.file_bytes,
        accounted_bytes=size_report(module.model, module.policy).total_bytes,
        header_bytes=described.header_bytes,
    )


def _read(path: Path) -> tuple[dict[str, Tensor], PackedFile, dict[str, Any]]:
    """State dict, description and hyper-parameters of a packed model (an older file's
    feature statistics converted into the front end's tensors)."""
    state, described = read_packed(path)
    extra = described.extra
    if "hyper_parameters" not in extra:
        raise ValueError(
            f"{path}: a packed file, but not a lowbit-asr model: 'extra' lacks hyper_parameters"
        )
    hparams = extra["hyper_parameters"]
    if isinstance(hparams, dict):
        hparams = dict(hparams)  # converted below without touching the file's metadata
    try:
        if not isinstance(hparams, dict) or not {"model", "tokenizer"} <= set(hparams):
            raise ValueError("hyper_parameters need 'model' and 'tokenizer'")
        upgrade_frontend_state(state, hparams, extra.get("feature_stats"), "", str(path))
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: metadata 'extra': {err}") from err
    return state, described, hparams


def _load_weights(model: nn.Module, state: dict[str, Tensor], path: Path) -> None:
    try:
        load_float_state_dict(model, state)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err


def load_packed(path: str | Path) -> LoadedPacked:
    """The eval-mode model (dequantized plain weights, its front end's statistics included),
    tokenizer and metadata."""
    path = Path(path)
    state, described, hparams = _read(path)
    try:
        tokenizer = Tokenizer.from_state(hparams["tokenizer"])
        model = build_model(hparams["model"], tokenizer.vocab_size)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: metadata 'extra' hyper_parameters: {err}") from err
    _load_weights(model, state, path)
    return LoadedPacked(model.eval(), tokenizer, described)


def load_packed_module(path: str | Path) -> tuple[RNNTModule, PackedFile]:
    """A packed model as an eval-mode :class:`RNNTModule` (quantizer none), for ``score_batch``."""
    path = Path(path)
    state, described, hparams = _read(path)
    try:
        module = RNNTModule(**{**hparams, "quantizer": None})
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: metadata 'extra' hyper_parameters: {err}") from err
    _load_weights(module.model, state, path)
    return module.eval(), described


def load_for_evaluation(path: str | Path, trained_weights: bool = False) -> tuple[RNNTModule, str]:
    """Eval-mode module (tokenizer and front end inside) and quantizer name of a training
    checkpoint or a packed file; ``trained_weights``: a checkpoint's trained weights rather than
    its weight average (see :func:`read_checkpoint`; a packed file holds one set of weights).

    Packed files are recognised by their first bytes (a safetensors header) or the ``.lbq``
    suffix; anything else is read as a weights-only training checkpoint.
    """
    path = Path(path)
    if path.suffix == SUFFIX or is_packed_file(path):
        if trained_weights:
            raise ValueError(f"{path} is a packed file: it holds the one set of weights it was"
                             " exported with (trained_weights applies to a .ckpt)")
        module, described = load_packed_module(path)
        return module, described.policy.name or "none"
    module, _ = restore(read_checkpoint(path, trained_weights=trained_weights))
    return module, module.policy.name or "none"
