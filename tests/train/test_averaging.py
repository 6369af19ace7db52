"""The weight average (``optim.ema_decay``): its update rule, that it leaves training alone, and
that a killed run resumes it exactly."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_resume import SIGNALLER
from test_train_e2e import LOWBIT_ASR, SMALL_MODEL, _dataset_args
from torch import nn
from torch.optim.swa_utils import AveragedModel

from lowbit_asr.train.averaging import CURRENT_WEIGHTS_KEY, EmaWeights, ema_update
from lowbit_asr.train.checkpoint import read_checkpoint
from lowbit_asr.train.optim import OptimConfig


def test_ema_update_follows_the_formula_and_copies_integer_buffers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    average = AveragedModel(model, multi_avg_fn=ema_update(0.75), use_buffers=True)
    expected = None
    for _ in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.train()(torch.randn(5, 3))  # BatchNorm: running stats and num_batches_tracked move
        state = {k: v.clone() for k, v in model.state_dict().items()}
        average.update_parameters(model)
        if expected is None:  # the first update copies
            expected = state
        else:
            expected = {k: (0.75 * expected[k] + 0.25 * v if v.is_floating_point() else v)
                        for k, v in state.items()}
        got = average.module.state_dict()
        for key, value in expected.items():
            if value.is_floating_point():
                torch.testing.assert_close(got[key], value, rtol=1e-6, atol=1e-7)
            else:  # torch's own EMA function would round 0.75 * n + 0.25 * n down to n - 1
                assert torch.equal(got[key], value), (key, got[key], value)
    assert int(average.module[1].num_batches_tracked) == 4


def test_ema_update_keeps_a_constant_exactly():
    frozen = torch.tensor([0.1, 1 / 3, 2.0e-7, 123.456])  # e.g. the front end's statistics
    averaged = [frozen.clone()]
    for _ in range(100):
        ema_update(0.999)(averaged, [frozen.clone()], torch.tensor(1))
    assert torch.equal(averaged[0], frozen)


def test_ema_settings_are_validated_and_a_resumed_average_must_match_them():
    with pytest.raises(ValueError, match="optim.ema_decay"):
        OptimConfig(ema_decay=1.0)
    with pytest.raises(ValueError, match="optim.ema_start_step"):
        OptimConfig(ema_decay=0.9, ema_start_step=-1)
    callback = EmaWeights(0.99, start_step=10)
    assert not callback.should_update(step_idx=9) and callback.should_update(step_idx=10)
    assert not callback.should_update(epoch_idx=3)
    saved = callback.state_dict()
    EmaWeights(0.99, start_step=10).load_state_dict(saved)
    with pytest.raises(ValueError, match="ema_decay=0.99"):
        EmaWeights(0.9, start_step=10).load_state_dict(saved)


def test_a_run_with_an_average_trains_the_same_weights_and_resumes_the_average(
        tiny_corpus, tmp_path):
    args = [*_dataset_args(tiny_corpus.root, tmp_path / "cache"), *SMALL_MODEL, "logger=csv",
            "dataset.max_batch_seconds=12", "dataset.max_utterance_seconds=12",
            "trainer.max_steps=9", "trainer.val_check_interval=3", "trainer.limit_val_batches=1",
            "trainer.enable_progress_bar=false", "dataset.test_splits=[]"]
    # The average starts after step 4 (0-based index 3): the validation at step 3 comes before.
    ema = ["optim.ema_decay=0.5", "optim.ema_start_step=3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SIGNAL": "KILL"}

    def train(run_dir: Path, *extra: str, kill_at: int | None = None) -> None:
        command = [sys.executable, "-c", SIGNALLER] if kill_at else [LOWBIT_ASR, "train"]
        proc = subprocess.run([*command, *args, *extra, f"hydra.run.dir={run_dir}"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=600,
                              env={**env, "SIGNAL_AT_STEP": str(kill_at or 0)})
        assert proc.returncode == (-9 if kill_at else 0), proc.stderr[-4000:]

    plain, averaged, killed = tmp_path / "plain", tmp_path / "averaged", tmp_path / "killed"
    train(plain)
    train(averaged, *ema)
    train(killed, *ema, kill_at=7)  # its last checkpoint is from step 6: 3 steps averaged
    train(killed, *ema)

    def last(run_dir: Path, **kwargs) -> dict[str, torch.Tensor]:
        ckpt = read_checkpoint(run_dir / "checkpoints" / "last.ckpt", **kwargs)
        assert ckpt["global_step"] == 9
        return ckpt["state_dict"]

    reference = last(plain)
    trained, average = last(averaged, trained_weights=True), last(averaged)
    assert trained.keys() == reference.keys() == average.keys()
    # The average rides along: the trained weights are bit for bit those of the plain run.
    assert not [k for k in reference if not torch.equal(trained[k], reference[k])]
    floating = [k for k in average if average[k].is_floating_point()
                and not k.startswith("model.frontend.")]
    assert all(not torch.equal(average[k], trained[k]) for k in floating if "weight" in k)
    assert all(torch.equal(average[k], trained[k]) for k in average
               if not average[k].is_floating_point() or k.startswith("model.frontend."))
    # Killed and resumed: the same trained weights and the same average.
    resumed, resumed_average = last(killed, trained_weights=True), last(killed)
    assert not [k for k in reference if not torch.equal(resumed[k], reference[k])]
    assert not [k for k in average if not torch.equal(resumed_average[k], average[k])]
    # Validation sees the average once it has started, and the trained weights before.
    def val_losses(run_dir: Path) -> dict[str, float]:
        with (run_dir / "csv" / "metrics.csv").open() as handle:
            return {r["step"]: float(r["val/loss"]) for r in csv.DictReader(handle)
                    if r.get("val/loss")}
    losses_plain, losses_averaged = val_losses(plain), val_losses(averaged)
    assert sorted(losses_plain, key=int) == sorted(losses_averaged, key=int) == ["2", "5", "8"]
    assert losses_averaged["2"] == losses_plain["2"]
    assert losses_averaged["5"] != losses_plain["5"] and losses_averaged["8"] != losses_plain["8"]
    assert val_losses(killed) == losses_averaged
    # A checkpoint without an average has one set of weights, whichever is asked for.
    assert CURRENT_WEIGHTS_KEY not in torch.load(plain / "checkpoints" / "last.ckpt",
                                                 weights_only=True)
    assert all(torch.equal(v, last(plain, trained_weights=True)[k]) for k, v in reference.items())
