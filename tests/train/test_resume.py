"""A training run SIGKILLed mid-epoch and started again with the same command resumes from its
last checkpoint and ends bit-identical to a run that was never interrupted."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from test_train_e2e import LOWBIT_ASR, SMALL_MODEL, _dataset_args

# Runs `lowbit-asr train` with a callback that sends itself a signal at a given step: SIGKILL at
# the end of a step (no exception, no clean-up, no checkpoint on the way out, as when a cluster
# pre-empts a job), or SIGTERM at the start of one (mid-step, as a scheduler sends it).
SIGNALLER = """
import os, signal, sys
import lightning as L
from lowbit_asr.cli import main

class SignalAt(L.Callback):
    def __init__(self, hook, sig):
        setattr(self, hook, self.fire)
        self.sig = sig
    def fire(self, trainer, *args):
        if trainer.global_step == int(os.environ["SIGNAL_AT_STEP"]):
            os.kill(os.getpid(), self.sig)

callback = (SignalAt("on_train_batch_end", signal.SIGKILL) if os.environ["SIGNAL"] == "KILL"
            else SignalAt("on_train_batch_start", signal.SIGTERM))
init = L.Trainer.__init__
def patched(self, *args, callbacks=None, **kwargs):
    init(self, *args, callbacks=[*(callbacks or []), callback], **kwargs)
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
        command = ([sys.executable, "-c", SIGNALLER] if kill_at else [LOWBIT_ASR, "train"])
        proc = subprocess.run([*command, *args, *extra, f"hydra.run.dir={run_dir}"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=600,
                              env={**env, "SIGNAL": "KILL", "SIGNAL_AT_STEP": str(kill_at or 0)})
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
    # The metrics history survives the kill: the resumed run's CSV holds the rows logged before
    # it (here the validation at step 3), the same as the uninterrupted run's.
    def rows(run_dir: Path) -> dict[tuple[str, str], str]:
        with (run_dir / "csv" / "metrics.csv").open() as handle:
            return {(r["step"], k): v for r in csv.DictReader(handle) for k, v in r.items()
                    if v not in ("", None) and k.startswith(("val/", "train/loss"))}
    history_a, history_b = rows(straight), rows(killed)
    assert ("2", "val/wer") in history_a and history_b == history_a
    assert row_b["train_seconds"] > 0 and row_b.get("attempts") == 2


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


def test_resume_only_into_the_same_experiment(tiny_corpus, tmp_path):
    """A rerun in a folder holding a checkpoint with other settings is refused, naming each
    differing key, before anything is read or written; safe keys (more steps, logging) pass."""
    run_dir = tmp_path / "run"
    base = [*_dataset_args(tiny_corpus.root, tmp_path / "cache"), *SMALL_MODEL, "logger=csv",
            "trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
            "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def train(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([LOWBIT_ASR, "train", *base, *extra], cwd=tmp_path,
                              capture_output=True, text=True, timeout=600, env=env)

    first = train()
    assert first.returncode == 0, first.stderr[-4000:]
    row = (run_dir / "results.json").read_text()
    refused = train("optim.lr=1e-4", "seed=3", "quantizer=int4_asym")
    assert refused.returncode != 0
    message = refused.stderr
    assert "holds a run of another experiment" in message
    for key in ("optim.lr: 0.002 -> 0.0001", "seed: 0 -> 3",
                "quantizer.name: 'none' -> 'int4_asym'"):
        assert key in message, message[-3000:]
    assert (run_dir / "results.json").read_text() == row  # nothing rewritten
    fewer = train("trainer.max_steps=1")
    assert fewer.returncode != 0 and "trainer.max_steps: 2 -> 1" in fewer.stderr


def test_resume_differences_ignore_the_safe_keys():
    from lowbit_asr.train.config import resume_differences

    saved = {"optim": {"lr": 1e-3}, "trainer": {"max_steps": 100, "threads": 2},
             "logger": {"wandb": {"mode": "offline"}}, "model": {"decoding": {"beam_size": 4}}}
    later = {"optim": {"lr": 1e-3}, "trainer": {"max_steps": 200, "threads": 1},
             "logger": {"wandb": {"mode": "disabled"}}, "model": {"decoding": {"beam_size": 8}}}
    assert resume_differences(saved, later) == []
    assert resume_differences(saved, {**later, "optim": {"lr": 2e-3}}) == [
        "optim.lr: 0.001 -> 0.002"]



def test_sigterm_saves_a_checkpoint_writes_interrupted_and_exits_non_zero(tiny_corpus, tmp_path):
    run_dir = tmp_path / "run"
    args = [*_dataset_args(tiny_corpus.root, tmp_path / "cache"), *SMALL_MODEL, "logger=csv",
            "trainer.max_steps=6", "trainer.val_check_interval=3", "trainer.limit_val_batches=1",
            "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SIGNAL": "TERM", "SIGNAL_AT_STEP": "4"}
    proc = subprocess.run([sys.executable, "-c", SIGNALLER, *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 1, proc.stderr[-3000:]
    row = json.loads((run_dir / "results.json").read_text())
    assert row["status"] == "interrupted" and "SIGTERM at step 5" in row["error"]
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=True)
    assert ckpt["global_step"] == 5  # the step in flight finished, then saved
    again = subprocess.run([LOWBIT_ASR, "train", *args], cwd=tmp_path, capture_output=True,
                           text=True, timeout=600, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    row = json.loads((run_dir / "results.json").read_text())
    assert row["status"] == "ok" and row["steps"] == 6 and row["attempts"] == 2


def test_an_unreadable_last_checkpoint_is_named_and_set_aside(tiny_corpus, tmp_path):
    run_dir = tmp_path / "run"
    args = [*_dataset_args(tiny_corpus.root, tmp_path / "cache"), *SMALL_MODEL, "logger=csv",
            "trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
            "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def train() -> subprocess.CompletedProcess:
        return subprocess.run([LOWBIT_ASR, "train", *args], cwd=tmp_path, capture_output=True,
                              text=True, timeout=600, env=env)

    assert train().returncode == 0
    last = run_dir / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # a full disk's truncated file
    proc = train()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run_dir / "checkpoints" / "last.ckpt.unreadable").is_file()
    log = (run_dir / "train.log").read_text()
    assert "last.ckpt cannot be read" in log and "resuming from" in log and "best.ckpt" in log
    assert not list((run_dir / "checkpoints").glob(".*.tmp*"))  # no temporary files left


def test_a_resumed_run_logs_into_the_same_wandb_run(tiny_corpus, tmp_path):
    run_dir = tmp_path / "run"
    args = [*_dataset_args(tiny_corpus.root, tmp_path / "cache"), *SMALL_MODEL,
            "logger=default", "trainer.max_steps=6", "trainer.val_check_interval=3",
            "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false",
            f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SIGNAL": "TERM", "SIGNAL_AT_STEP": "4",
           "WANDB_SILENT": "true"}
    first = subprocess.run([sys.executable, "-c", SIGNALLER, *args], cwd=tmp_path,
                           capture_output=True, text=True, timeout=600, env=env)
    assert first.returncode == 1, first.stderr[-3000:]
    again = subprocess.run([LOWBIT_ASR, "train", *args], cwd=tmp_path, capture_output=True,
                           text=True, timeout=600, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    run_id = (run_dir / "wandb_id").read_text().strip()
    attempts = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(attempts) == 2 and all(p.name.endswith(f"-{run_id}") for p in attempts)
