"""NaN/inf losses or gradients: skipped (nothing changes) or a clear stop, never a NaN update."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from test_determinism import MODEL

from lowbit_asr.data.datamodule import AsrDataModule
from lowbit_asr.train.module import RNNTModule
from lowbit_asr.train.optim import OptimConfig

STEPS = 5


class Snapshots(L.Callback):
    """Parameters and optimiser step counts after every training batch."""

    def __init__(self) -> None:
        self.params: list[dict[str, torch.Tensor]] = []
        self.adam_steps: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.params.append({k: v.detach().clone() for k, v in pl_module.named_parameters()})
        state = trainer.optimizers[0].state
        self.adam_steps.append(max((float(s["step"]) for s in state.values()), default=0.0))


class PoisonedModule(RNNTModule):
    """Its model's loss is NaN (or +inf) at the listed 0-based optimiser steps."""

    def __init__(self, *args, poison: dict[int, float], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        forward = self.model.forward

        def poisoned(*inputs, **kw):
            out = forward(*inputs, **kw)
            if self.model.training and self.global_step in poison:
                # NaN or inf, with the model's graph behind it (its gradients are NaN too).
                out = {**out, "loss": out["loss"] * poison[self.global_step]}
            return out

        self.model.forward = poisoned


def _train(corpus_root, cache, poison, **optim) -> tuple[PoisonedModule, Snapshots]:
    L.seed_everything(0, workers=True)
    data = AsrDataModule({"root": str(corpus_root), "cache_dir": str(cache), "num_workers": 0,
                          "tokenizer": {"units": "char"}, "max_batch_seconds": 20.0,
                          "max_utterance_seconds": 20.0})
    data.setup("fit")
    module = PoisonedModule(model=MODEL, tokenizer=data.tokenizer.state_dict(),
                            optim={"lr": 2e-3, "warmup_steps": 1, **optim}, poison=poison)
    snapshots = Snapshots()
    trainer = L.Trainer(accelerator="cpu", max_steps=STEPS, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        limit_val_batches=0, callbacks=[snapshots], use_distributed_sampler=False,
                        enable_model_summary=False, gradient_clip_val=5.0)
    trainer.fit(module, datamodule=data)
    return module, snapshots


def test_nonfinite_steps_are_skipped_without_touching_weights(tiny_corpus, tmp_path):
    module, snap = _train(tiny_corpus.root, tmp_path, {1: float("nan"), 3: float("inf")})
    assert module._skipped_steps == 2
    assert len(snap.params) == STEPS
    for step in (1, 3):  # a skipped step leaves every parameter and AdamW's count as they were
        assert all(torch.equal(snap.params[step][k], snap.params[step - 1][k])
                   for k in snap.params[step])
        assert snap.adam_steps[step] == snap.adam_steps[step - 1]
    for step in (2, 4):  # the steps around them train
        assert not all(torch.equal(snap.params[step][k], snap.params[step - 1][k])
                       for k in snap.params[step])
    assert snap.adam_steps == [1.0, 1.0, 2.0, 2.0, 3.0]
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_nonfinite_stop_names_the_step_and_batch(tiny_corpus, tmp_path):
    with pytest.raises(FloatingPointError, match=r"step 2: non-finite loss nan .*utterances"):
        _train(tiny_corpus.root, tmp_path, {2: float("nan")}, on_nonfinite="stop")


def test_too_many_consecutive_nonfinite_steps_stop(tiny_corpus, tmp_path):
    with pytest.raises(FloatingPointError, match="2 non-finite steps in a row"):
        _train(tiny_corpus.root, tmp_path, {1: float("nan"), 2: float("nan")},
               max_consecutive_nonfinite=2)


@pytest.mark.parametrize(("field", "value"), [("on_nonfinite", "ignore"),
                                              ("max_consecutive_nonfinite", 0)])
def test_nonfinite_config_errors_name_the_key(field, value):
    with pytest.raises(ValueError, match=f"optim.{field}"):
        OptimConfig(**{field: value})
