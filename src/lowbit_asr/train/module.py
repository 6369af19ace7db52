"""LightningModule for Conformer RNN-T training and QAT: loss, WER and optimisation only.

The module is handed *configs* (plain dicts), never built modules, so a checkpoint rebuilds
itself: the tokenizer state, model config and quantizer policy are hyper-parameters. The
quantization policy is applied while the model is built, so a reloaded QAT checkpoint is never
silently float.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any

import lightning as L
import torch
from torch import Tensor

from lowbit_asr.data.audio import FRAME_SHIFT_SECONDS
from lowbit_asr.data.tokenizer import Tokenizer
from lowbit_asr.model.rnnt import build_model, count_parameters
from lowbit_asr.quant import (
    QuantPolicy,
    batched_fake_quant,
    prepare,
    set_fake_quant_enabled,
    size_report,
)
from lowbit_asr.train.config import FULL_PRECISIONS
from lowbit_asr.train.optim import OptimConfig, build_optimizer, lr_factor
from lowbit_asr.train.scoring import UtteranceScore, score_utterance, word_errors

log = logging.getLogger(__name__)

__all__ = ["RNNTModule", "word_errors"]


class RNNTModule(L.LightningModule):
    """Conformer RNN-T with optional fake quantization; logs loss, learning rate and WER."""

    def __init__(
        self,
        model: dict[str, Any],
        tokenizer: dict[str, Any],
        quantizer: dict[str, Any] | None = None,
        optim: dict[str, Any] | None = None,
        fake_quant_after_steps: int = 0,
        test_split_names: list[str] | None = None,
        loss_warmup: bool = True,
    ) -> None:
        super().__init__()
        # Plain containers only, so checkpoints load with torch.load(weights_only=True).
        self.save_hyperparameters()
        self.tokenizer = Tokenizer.from_state(tokenizer)
        self.model = build_model(model, self.tokenizer.vocab_size)
        self.policy = QuantPolicy.from_config(quantizer)
        prepare(self.model, self.policy)
        self.optim_cfg = OptimConfig(**(optim or {}))
        self.fake_quant_after_steps = fake_quant_after_steps
        self.test_split_names = list(test_split_names or [])
        self.loss_warmup = loss_warmup
        """Whether the loss-scale warm-up of ``model.pruned`` runs (from scratch); a run
        initialised from a float checkpoint starts with a trained simple joiner and skips it."""
        self._counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        self._train_start: float | None = None
        self._seconds_before = 0.0  # training seconds of earlier attempts (from a checkpoint)
        self.attempt = 1
        """Which attempt at this run this process is (a resumed run is the 2nd, ...)."""
        self._last_batch: tuple[list[str], Tensor | None] = ([], None)  # last step's ids, loss
        self._skipped_steps = 0
        self._restored_rng: dict[str, Any] | None = None  # from a checkpoint, for the next batch
        self._consecutive_nonfinite = 0

    # ---- information ----------------------------------------------------------------------
    def describe(self) -> str:
        """Model summary and accounted size under the policy."""
        size = size_report(self.model, self.policy).summary()
        return (
            f"{self.model.summary()}\n"
            f"quantizer {self.policy.name or 'none'}: {size['total_mb']:.3f} MB"
            f" ({size['bits_per_quantized_weight']:.2f} bits/quantized weight,"
            f" float32 {size['float32_bytes'] / 1e6:.3f} MB); {count_parameters(self.model):,}"
            " parameters"
        )

    # ---- training -------------------------------------------------------------------------
    @property
    def train_seconds(self) -> float:
        """Seconds of training over every attempt at this run: the earlier ones up to their last
        checkpoint (the work a kill lost is counted where it was redone), and this one."""
        now = time.perf_counter() - self._train_start if self._train_start is not None else 0.0
        return self._seconds_before + now

    def on_train_start(self) -> None:
        """Start the wall clock behind ``time/train_minutes`` (for minutes -> WER curves)."""
        self._train_start = time.perf_counter()

    def on_train_batch_start(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Resumed: the checkpoint's random state. Float warm-up: fake quantization switches on
        after ``fake_quant_after_steps``."""
        if self._restored_rng is not None:
            if "torch" in self._restored_rng:
                torch.set_rng_state(self._restored_rng["torch"])
            if "cuda" in self._restored_rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(self._restored_rng["cuda"])
            self._restored_rng = None
        if self.fake_quant_after_steps and not self.policy.is_float:
            set_fake_quant_enabled(self.model, self.global_step >= self.fake_quant_after_steps)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """RNN-T (+ auxiliary CTC) loss of one batch."""
        step = self.global_step if self.loss_warmup else None
        with batched_fake_quant(self.model):  # all fake-quantized weights at once (see there)
            out = self.model(batch["feats"], batch["feat_lens"], batch["targets"],
                             batch["target_lens"], step=step)
        n = batch["feats"].size(0)
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=n)
        self.log("train/rnnt_loss", out["rnnt_loss"], batch_size=n)
        if "simple_loss" in out:
            self.log("train/simple_loss", out["simple_loss"], batch_size=n)
        if self.model.ctc_head is not None:
            self.log("train/ctc_loss", out["ctc_loss"], batch_size=n)
        self._last_batch = (list(batch["ids"]), out["loss"].detach())  # no device sync here
        return out["loss"]

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Non-finite loss or gradients (after DDP's all-reduce, so every rank agrees): skip the
        update (gradients dropped: AdamW leaves parameters and moments untouched) or stop."""
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if not grads or bool(torch.stack(torch._foreach_norm(grads)).isfinite().all()):
            self._consecutive_nonfinite = 0
            return
        ids, loss = self._last_batch
        what = ("gradients" if loss is None or bool(loss.isfinite())
                else f"loss {float(loss)}")
        where = (f"step {self.global_step}: non-finite {what} on the batch of {len(ids)}"
                 f" utterances {ids[:3]}{' …' if len(ids) > 3 else ''}")
        if self.optim_cfg.on_nonfinite == "stop":
            raise FloatingPointError(
                f"{where}; stopping (optim.on_nonfinite=stop). No checkpoint holds this update:"
                " checkpoints/last.ckpt is the last good state; optim.on_nonfinite=skip skips"
                " such steps instead.")
        for p in self.parameters():
            p.grad = None
        self._skipped_steps += 1
        self._consecutive_nonfinite += 1
        self.log("train/skipped_steps", float(self._skipped_steps))
        log.warning("%s; update skipped (%d so far)", where, self._skipped_steps)
        if self._consecutive_nonfinite >= self.optim_cfg.max_consecutive_nonfinite:
            raise FloatingPointError(
                f"{where}; {self._consecutive_nonfinite} non-finite steps in a row"
                f" (optim.max_consecutive_nonfinite): the run has diverged. checkpoints/last.ckpt"
                " is the last good state; lower optim.lr or look at the batches named above.")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the random state (dropout masks) so that a resumed run continues identically."""
        checkpoint["rng_state"] = {"torch": torch.get_rng_state()}
        checkpoint["train_seconds"] = self.train_seconds
        checkpoint["attempt"] = self.attempt
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            checkpoint["rng_state"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep what :meth:`on_save_checkpoint` saved until the first resumed training batch:
        creating the epoch's DataLoader iterator draws from the global generator, which the
        uninterrupted run did long before (checkpoints without a random state load as well)."""
        self._restored_rng = checkpoint.get("rng_state") or None
        self._seconds_before = float(checkpoint.get("train_seconds", 0.0))
        self.attempt = int(checkpoint.get("attempt", 1)) + 1

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW + per-step warm-up/decay schedule."""
        # Fused AdamW where Lightning allows it with gradient clipping: full precision.
        full_precision = str(self.trainer.precision) in FULL_PRECISIONS
        optimizer = build_optimizer(
            self.model.named_parameters(), self.optim_cfg, fused=full_precision)
        total = self.optim_cfg.total_steps or max(int(self.trainer.max_steps), 0)
        if self.optim_cfg.schedule == "cosine" and total <= 0:
            total = int(self.trainer.estimated_stepping_batches)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, self.optim_cfg, total)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler,
                                                         "interval": "step"}}

    # ---- evaluation -----------------------------------------------------------------------
    def transcribe(self, batch: dict[str, Any]) -> list[str]:
        """Decoded transcripts of a batch (the model's configured search)."""
        ids = self.model.decode(batch["feats"], batch["feat_lens"])  # caches quantized weights
        return [self.tokenizer.decode(seq) for seq in ids]

    def score_batch(self, batch: dict[str, Any], nll: bool = True,
                    ) -> tuple[list[UtteranceScore], float, float]:
        """Decode a batch and score every utterance (with ``nll``: also the reference's
        teacher-forced negative log-likelihood, from the same encoder pass):
        (scores, decode seconds, audio seconds)."""
        feats, feat_lens = batch["feats"], batch["feat_lens"]
        if nll:
            ids, nlls, seconds = self.model.decode_and_score(
                feats, feat_lens, batch["targets"], batch["target_lens"])
            values = nlls.double().tolist()
        else:
            start = time.perf_counter()
            ids = self.model.decode(feats, feat_lens)
            seconds = time.perf_counter() - start
            values = [float("nan")] * len(ids)
        lens = batch["target_lens"].tolist()
        scores = [score_utterance(uid, ref, self.tokenizer.decode(seq), nll=v, ref_tokens=n)
                  for uid, ref, seq, v, n in zip(batch["ids"], batch["texts"], ids, values, lens,
                                                 strict=True)]
        audio_seconds = float(feat_lens.sum()) * FRAME_SHIFT_SECONDS
        return scores, seconds, audio_seconds

    @torch.no_grad()
    def evaluate_loader(self, loader: Any, nll: bool = True,
                        ) -> tuple[list[UtteranceScore], dict[str, float]]:
        """Every utterance of a split, scored (eval mode, on this module's device), and the
        split's timing: ``audio_seconds``, ``decode_seconds``."""
        was_training = self.training
        self.eval()
        scores: list[UtteranceScore] = []
        audio = decode = 0.0
        try:
            for batch in loader:
                batch = {k: v.to(self.device) if isinstance(v, Tensor) else v
                         for k, v in batch.items()}
                part, d, a = self.score_batch(batch, nll=nll)
                scores += part
                decode, audio = decode + d, audio + a
        finally:
            self.train(was_training)
        return scores, {"audio_seconds": audio, "decode_seconds": decode}

    def _evaluate(self, batch: dict[str, Any], key: str) -> None:
        scores, _, _ = self.score_batch(batch, nll=False)
        self._counts[key][0] += sum(s.word_errors for s in scores)
        self._counts[key][1] += sum(s.ref_words for s in scores)

    def _wer(self, key: str) -> float:
        errors, words = self._counts.pop(key, [0, 0])
        totals = torch.tensor([errors, words], dtype=torch.float64, device=self.device)
        totals = self.trainer.strategy.reduce(totals, reduce_op="sum")
        return float(totals[0] / totals[1].clamp_min(1))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Loss and decoded WER counts on the dev split, in float32 whatever
        ``trainer.precision`` trains in (as the test stage, ``lowbit-asr evaluate`` and packed
        files decode), so that the dev curve measures the model the run ships."""
        with torch.autocast(self.device.type, enabled=False), batched_fake_quant(self.model):
            out = self.model(batch["feats"], batch["feat_lens"], batch["targets"],
                             batch["target_lens"])
            self.log("val/loss", out["loss"], batch_size=batch["feats"].size(0), sync_dist=True)
            self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        """Log ``val/wer`` (corpus-level, summed over ranks)."""
        self.log("val/wer", self._wer("val"), prog_bar=True, sync_dist=False)
        if self._train_start is not None:
            self.log("time/train_minutes", self.train_seconds / 60, sync_dist=False)
