"""Seeded CPU runs are repeatable: the same config gives the same losses, step for step."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch
from test_train_e2e import SMALL_MODEL

from lowbit_asr import cli
from lowbit_asr.data.datamodule import AsrDataModule
from lowbit_asr.train.module import RNNTModule

STEPS = 6
MODEL = {
    "encoder": {"d_model": 48, "num_layers": 1, "num_heads": 2, "conv_kernel": 5,
                "subsampling_channels": 16},
    "predictor": {"embed_dim": 32, "hidden_dim": 32},
    "joiner": {"dim": 32},
    "rnnt_loss_impl": "torch",
    "ctc_weight": 0.3,
}


class LossRecorder(L.Callback):
    """Keeps every training loss as a Python float."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def _losses(corpus_root, cache, quantizer) -> list[float]:
    L.seed_everything(0, workers=True)
    data = AsrDataModule({"root": str(corpus_root), "cache_dir": str(cache), "num_workers": 0,
                          "tokenizer": {"units": "char"}, "max_batch_seconds": 20.0,
                          "max_utterance_seconds": 20.0})
    data.setup("fit")
    module = RNNTModule(model=MODEL, tokenizer=data.tokenizer.state_dict(), quantizer=quantizer,
                        optim={"lr": 2e-3, "warmup_steps": 2})
    recorder = LossRecorder()
    trainer = L.Trainer(accelerator="cpu", max_steps=STEPS, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        limit_val_batches=0, callbacks=[recorder], use_distributed_sampler=False,
                        enable_model_summary=False)
    trainer.fit(module, datamodule=data)
    return recorder.losses


def test_two_seeded_runs_give_identical_losses(tiny_corpus, tmp_path):
    int2 = {"name": "int2", "default": {"bits": 2, "symmetric": False}}
    first = _losses(tiny_corpus.root, tmp_path / "cache", int2)
    second = _losses(tiny_corpus.root, tmp_path / "cache", int2)
    assert len(first) == STEPS
    assert first == second  # bit-identical, not merely close
    assert torch.isfinite(torch.tensor(first)).all()


def _cli_train(corpus_root: Path, cache: Path, run_dir: Path) -> dict[str, torch.Tensor]:
    """`lowbit-asr train` (in this process) of the 1-block float model, 3 steps with the feature
    cache on; the weights of its last checkpoint."""
    argv = list(sys.argv)  # cli.main rewrites it
    try:
        cli.main(["train", "dataset=embedded_tiny", f"dataset.root={corpus_root}",
                  f"dataset.cache_dir={cache}", "dataset.num_workers=0",
                  "dataset.tokenizer.units=char", "dataset.precompute_features=true",
                  "dataset.test_splits=[test-clean]", *SMALL_MODEL, "logger=csv",
                  "trainer.max_steps=3", "trainer.val_check_interval=3",
                  "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false",
                  f"hydra.run.dir={run_dir}"])
    finally:
        sys.argv = argv
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def test_a_cold_and_a_warm_feature_cache_train_the_same_model(tiny_corpus, tmp_path):
    # The first run extracts every split's features (one DataLoader per split: each draws from
    # torch's global generator); the second finds them cached and extracts nothing.
    cold = _cli_train(tiny_corpus.root, tmp_path / "cache", tmp_path / "cold")
    assert any((tmp_path / "cache" / "features").rglob("*.npy"))
    warm = _cli_train(tiny_corpus.root, tmp_path / "cache", tmp_path / "warm")
    assert cold.keys() == warm.keys()
    for name in cold:
        assert torch.equal(cold[name], warm[name]), name  # bit-identical weights after 3 steps
