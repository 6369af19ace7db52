"""The loss a bit allocator probes: exact RNN-T negative log-likelihood per token over fixed
batches, recomputing only what a changed weight affects.

:func:`lowbit_asr.quant.allocate.probe_costs` quantizes one weight at a time and asks for the
loss; most of the network is unchanged by that. :class:`ProbeLoss` keeps, per batch, the input of
every encoder block, the encoder output and the predictor output of the float model, and starts
from the first stage the changed weight feeds:

- ``encoder.subsampling.*``: the whole encoder; ``encoder.blocks.<i>.*``: blocks i, i+1 …;
- ``predictor.*``: the predictor only (the encoder output is reused);
- ``joiner.*``: the joint network and the lattice only;
- weights the transducer's likelihood never reads (``ctc_head``, ``simple_joiner``: training
  heads): nothing, the loss is the float one;
- any other name: the whole model (never a wrong cache).

The likelihood is the full lattice's (:meth:`RNNT.full_loss`), whatever loss the model trained
with: the pruned loss is an upper bound whose band depends on the weights.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import Tensor

from lowbit_asr.data.tokenizer import BLANK_ID
from lowbit_asr.model.rnnt import RNNT

UNUSED_BY_LIKELIHOOD = ("ctc_head.", "simple_joiner.")
"""Prefixes of weights the transducer's likelihood (and search) never reads."""


@dataclass
class _Cached:
    feats: Tensor
    feat_lens: Tensor
    targets: Tensor
    target_lens: Tensor
    block_inputs: list[Tensor]  # input of block i; [-1] is the encoder output
    enc_lens: Tensor
    pos_emb: Tensor
    mask: Tensor
    pred: Tensor


class ProbeLoss:
    """Callable ``loss(changed_name) -> float``: mean NLL per target token (nats) of the model
    as it currently is, over ``batches`` (dicts with ``feats``, ``feat_lens``, ``targets``,
    ``target_lens``); the model must equal the float model in everything but ``changed_name``.

    The cache is taken at construction, so build it from the float weights. ``backward()``
    computes the same loss from scratch with gradients (for Hessian estimates).
    """

    def __init__(self, model: RNNT, batches: list[dict[str, Tensor]]) -> None:
        if not batches:
            raise ValueError("ProbeLoss: no batches")
        self.model = model.eval()
        self.tokens = int(sum(int(b["target_lens"].sum()) for b in batches))
        if self.tokens == 0:
            raise ValueError("ProbeLoss: the probe batches have no target tokens")
        self.cached = [self._cache(b) for b in batches]
        with torch.no_grad():
            self.float_loss = self._total(None) / self.tokens
        self.evaluations = 0

    @torch.no_grad()
    def _cache(self, batch: dict[str, Tensor]) -> _Cached:
        encoder = self.model.encoder
        x, lens, pos_emb, mask = encoder.embed(batch["feats"], batch["feat_lens"])
        inputs = [x]
        for block in encoder.blocks:
            inputs.append(block(inputs[-1], pos_emb, mask))
        return _Cached(batch["feats"], batch["feat_lens"], batch["targets"], batch["target_lens"],
                       inputs, lens, pos_emb, mask, self._predict(batch["targets"]))

    def _predict(self, targets: Tensor) -> Tensor:
        sos = targets.new_full((targets.size(0), 1), BLANK_ID)
        return self.model.predictor(torch.cat([sos, targets], dim=1))[0]

    def stage(self, name: str) -> tuple[str, int]:
        """Where a change of weight ``name`` enters: ``("none", 0)``, ``("subsampling", 0)``,
        ``("encoder", its block)``, ``("predictor", 0)``, ``("joiner", 0)`` or ``("all", 0)``."""
        if not name:
            return "none", 0
        if name.startswith(UNUSED_BY_LIKELIHOOD):
            return "none", 0
        if name.startswith("encoder.subsampling."):
            return "subsampling", 0
        block = re.match(r"encoder\.blocks\.(\d+)\.", name)
        if block:
            return "encoder", int(block.group(1))
        if name.startswith("predictor."):
            return "predictor", 0
        if name.startswith("joiner."):
            return "joiner", 0
        return "all", 0

    def _total(self, changed: str | None) -> float:
        """Summed NLL over the batches; ``changed`` None = every stage from its cache."""
        kind, start = self.stage(changed or "")
        total = 0.0
        for c in self.cached:
            if kind == "all":
                enc, enc_lens = self.model.encode(c.feats, c.feat_lens)
                pred = self._predict(c.targets)
            else:
                enc_lens, pred = c.enc_lens, c.pred
                if kind == "subsampling":
                    x, _, _, _ = self.model.encoder.embed(c.feats, c.feat_lens)
                    enc = self.model.encoder.run_blocks(x, c.pos_emb, c.mask)
                elif kind == "encoder":
                    enc = self.model.encoder.run_blocks(c.block_inputs[start], c.pos_emb, c.mask,
                                                        start=start)
                else:
                    enc = c.block_inputs[-1]
                if kind == "predictor":
                    pred = self._predict(c.targets)
            n = enc.size(0)
            total += float(self.model.full_loss(enc, enc_lens, pred, c.targets, c.target_lens)) * n
        return total

    @torch.no_grad()
    def __call__(self, changed: str = "") -> float:
        """Mean NLL per token with the model's current weights (only ``changed`` differs from
        the float weights the cache holds)."""
        self.evaluations += 1
        if self.stage(changed)[0] == "none":
            return self.float_loss
        return self._total(changed) / self.tokens

    def backward(self) -> None:
        """The loss from scratch with gradients, ``.backward()`` called on it."""
        for c in self.cached:
            enc, enc_lens = self.model.encode(c.feats, c.feat_lens)
            pred = self._predict(c.targets)
            loss = self.model.full_loss(enc, enc_lens, pred, c.targets, c.target_lens)
            (loss * enc.size(0) / self.tokens).backward()
