"""A training run SIGKILLed mid-epoch and started again with the same command resumes from its
last checkpoint and ends bit-identical to a run that was never interrupted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from test_train_e2e import LOWBIT_ASR, SMALL_MODEL, _dataset_args

# Runs `lowbit-asr train` with a callback that SIGKILLs the process at a given step: no
# exception, no clean-up, no checkpoint on the way out, as when a cluster pre-empts a job.
KILLER = """
import os, signal, sys
import lightning as L
from lowbit_asr.cli import main

class KillAt(L.Callback):
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == int(os.environ["KILL_AT_STEP"]):
            os.kill(os.getpid(), signal.SIGKILL)

init = L.Trainer.__init__
def patched(self, *args, callbacks=None, **kwargs):
    init(self, *args, callbacks=[*(callbacks or []), KillAt()], **kwargs)
L.Trainer.__init__ = patched
main(["train", *sys.argv[1:]])
"""


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=True)
    assert ckpt["global_step"] == 9
    return ckpt["state_dict"]


def test_sigkill_mid_epoch_then_same_command_resumes_identically(tiny_corpus, tmp_path):
    # Dropout and SpecAugment on (the defaults): the resumed run must restore the random state
    # and the position in the shuffled epoch, not only the weights and the optimiser.
    args = [*_dataset_args(tiny_corpus.root, tmp_path / "cache"), *SMALL_MODEL, "logger=csv",
            "dataset.max_batch_seconds=12", "dataset.max_utterance_seconds=12",
            "trainer.max_steps=9", "trainer.val_check_interval=3", "trainer.limit_val_batches=1",
            "trainer.enable_progress_bar=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def train(run_dir: Path, *extra: str, kill_at: int | None = None) -> int:
        command = ([sys.executable, "-c", KILLER] if kill_at else [LOWBIT_ASR, "train"])
        proc = subprocess.run([*command, *args, *extra, f"hydra.run.dir={run_dir}"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=600,
                              env={**env, "KILL_AT_STEP": str(kill_at or 0)})
        if kill_at is None:
            assert proc.returncode == 0, proc.stderr[-4000:]
        return proc.returncode

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    train(straight)
    # Killed at step 5: its last checkpoint is from step 3, in the middle of the first epoch.
    assert train(killed, kill_at=5) == -9
    assert not (killed / "results.json").exists()
    first = torch.load(killed / "checkpoints" / "last.ckpt", map_location="cpu",
                       weights_only=True)
    assert first["global_step"] == 3
    position = first["AsrDataModule"]["train_position"]
    assert position["epoch"] == 0 and position["batches"] == 3
    train(killed)  # the very same command: resumes by itself

    a, b = _weights(straight), _weights(killed)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"resumed run differs in {different[:5]}"
    row_a = json.loads((straight / "results.json").read_text())
    row_b = json.loads((killed / "results.json").read_text())
    assert row_a["wer"] == row_b["wer"] and row_b["steps"] == 9
    log = (killed / "train.log").read_text()
    assert "resuming from" in log


def test_last_checkpoint_is_the_last_validation_even_without_improvement(tiny_corpus, tmp_path):
    # A learning rate of 1e-12 leaves the dev WER where it was, so best.ckpt stays at the first
    # validation; last.ckpt, which a killed run resumes from, must still follow every validation.
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [LOWBIT_ASR, "train", *_dataset_args(tiny_corpus.root, tmp_path / "cache"), *SMALL_MODEL,
         "logger=csv", "trainer.max_steps=4", "trainer.val_check_interval=2",
         "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false", "optim.lr=1e-12",
         f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    steps = {name: torch.load(run_dir / "checkpoints" / f"{name}.ckpt", map_location="cpu",
                              weights_only=True)["global_step"] for name in ("best", "last")}
    assert steps == {"best": 2, "last": 4}
    assert json.loads((run_dir / "results.json").read_text())["best_checkpoint"].endswith(
        "best.ckpt")
