"""End to end through the real CLI (Hydra + Lightning): train, checkpoint, evaluate, DDP on CPU."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import torch

from lowbit_asr.train.checkpoint import read_checkpoint
from lowbit_asr.train.scoring import load_evaluation

LOWBIT_ASR = str(Path(sys.executable).parent / "lowbit-asr")
# A 1-block model keeps each run to seconds on 2 cores.
SMALL_MODEL = [
    "model.encoder.num_layers=1", "model.encoder.d_model=48", "model.encoder.num_heads=2",
    "model.encoder.conv_kernel=5", "model.encoder.subsampling_channels=16",
    "model.predictor.embed_dim=32", "model.predictor.hidden_dim=32", "model.joiner.dim=32",
    "model.rnnt_loss_impl=torch",
]


def _run(args: list[str], cwd: Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([LOWBIT_ASR, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)
    if ok:
        assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _dataset_args(corpus_root: Path, cache: Path) -> list[str]:
    return ["dataset=embedded_tiny", f"dataset.root={corpus_root}", f"dataset.cache_dir={cache}",
            "dataset.tokenizer.units=char", "dataset.num_workers=0"]


def test_train_checkpoint_and_evaluate(tiny_corpus, tmp_path):
    run_dir = tmp_path / "run"
    _run(["train", *_dataset_args(tiny_corpus.root, tmp_path / "cache"), *SMALL_MODEL,
          "logger=default", "trainer.max_steps=3", "trainer.val_check_interval=3",
          "trainer.log_every_n_steps=1",
          "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false",
          "quantizer=int2_asym_g16", f"hydra.run.dir={run_dir}"], cwd=tmp_path)

    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "ok" and results["steps"] == 3
    assert set(results["wer"]) == {"test-clean", "test-other"}
    assert results["quantizer"] == "int2_asym_g16" and results["quant_bits"] == 2
    assert results["quant_symmetric"] is False
    assert results["size_bytes"] > 0 and results["command"].startswith("lowbit-asr train ")
    assert "quantizer=int2_asym_g16" in results["command"]
    # the row names what decides its round-off besides the code (threads, kernel width, CPU)
    numerics = results["numerics"]
    assert numerics["torch"] == torch.__version__
    assert numerics["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert numerics["threads"] >= 1 and numerics["cpu"] and "gpu" not in numerics
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    rows = list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert losses and all(loss > 0 for loss in losses)
    assert any(r.get("val/wer") for r in rows)
    # W&B ran offline (no network here): its run folder holds the synced-later history.
    assert list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))

    # The test stage wrote the per-utterance files: trn pairs sclite reads, the table.
    stage = load_evaluation(run_dir)
    assert set(stage[1]) == {"test-clean", "test-other"}
    for split in ("test-clean", "test-other"):
        ref = (run_dir / "eval" / split / "ref.trn").read_text().splitlines()
        assert len(ref) == tiny_corpus.splits[split].utterances
        assert all(line.endswith(")") and " (" in f" {line}" for line in ref)
    assert results["evaluation"] == "eval/evaluation.json"
    assert results["wer"]["test-clean"] == stage[0]["splits"]["test-clean"]["wer"]
    assert all(math.isfinite(s.nll) and s.nll > 0 and s.ref_tokens > 0
               for s in stage[1]["test-clean"])

    out = tmp_path / "eval"
    best = run_dir / "checkpoints" / "best.ckpt"
    proc = _run(["evaluate", f"checkpoint={best}",
                 *_dataset_args(tiny_corpus.root, tmp_path / "cache"),
                 "splits=[dev,test-clean]", "dataset.max_batch_seconds=20",
                 f"out={out}"], cwd=tmp_path)
    summary, splits = load_evaluation(out)
    assert summary["quantizer"] == "int2_asym_g16"  # the checkpoint rebuilt its quantizer
    assert {s: r["utterances"] for s, r in summary["splits"].items()} == {
        "dev": tiny_corpus.splits["dev"].utterances,
        "test-clean": tiny_corpus.splits["test-clean"].utterances,
    }
    for r in summary["splits"].values():
        assert r["wer"] >= 0 and r["rtf"] > 0 and r["wer_ci"][0] <= r["wer"] <= r["wer_ci"][1]
    assert "| test-clean |" in proc.stdout
    # One scoring path: evaluate (another training batch size) gives the test stage's
    # utterances exactly, hypotheses, counts and NLL.
    assert splits["test-clean"] == stage[1]["test-clean"]
    # The output may not overwrite the model.
    bad = _run(["evaluate", f"checkpoint={best}", f"out={best}",
                *_dataset_args(tiny_corpus.root, tmp_path / "cache")], cwd=tmp_path, ok=False)
    assert bad.returncode != 0 and "is the checkpoint itself" in bad.stderr


def test_ddp_cpu_two_processes(tiny_corpus, tmp_path):
    run_dir = tmp_path / "run"
    proc = _run(["train", *_dataset_args(tiny_corpus.root, tmp_path / "cache"), *SMALL_MODEL,
                 "trainer=ddp_cpu", "logger=csv", "trainer.max_steps=2",
                 "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
                 "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert "distributed_backend=gloo" in proc.stdout + proc.stderr
    assert "All distributed processes registered. Starting with 2 processes" in (
        proc.stdout + proc.stderr)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["steps"] == 2


def test_ddp_qat_with_compiled_fake_quant_trains_the_eager_model(tiny_corpus, tmp_path):
    # Two gloo processes, int2 fake quantization batched per forward (the training step's
    # batched_fake_quant), eager and then through torch.compile: the same weights, bit for bit.
    states = []
    for compiled in ("false", "true"):
        run_dir = tmp_path / f"run_{compiled}"
        _run(["train", *_dataset_args(tiny_corpus.root, tmp_path / "cache"), *SMALL_MODEL,
              "trainer=ddp_cpu", "logger=csv", "trainer.max_steps=2", "quantizer=int2_asym_g16",
              f"trainer.compile_fake_quant={compiled}", "trainer.val_check_interval=2",
              "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false",
              "dataset.test_splits=[]", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
        states.append(read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["state_dict"])
    eager, compiled_state = states
    assert eager.keys() == compiled_state.keys()
    assert any(".parametrizations." in name for name in eager)  # the model was prepared
    for name, tensor in eager.items():
        assert torch.equal(tensor, compiled_state[name]), name


def test_bad_config_fails_before_any_data_is_read(tmp_path):
    # Every key is checked in-process by tests/test_configs.py; this checks the CLI path.
    proc = _run(["train", "quantizer=int2_asym_g16", "quantizer.indivisible=error",
                 "logger=csv", f"hydra.run.dir={tmp_path}"], cwd=tmp_path, ok=False)
    assert proc.returncode != 0
    assert "does not divide" in proc.stderr and "quantizer" in proc.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_tiny_sweep_writes_the_frontier_and_survives_a_failing_point(tiny_corpus, tmp_path):
    sweep = tmp_path / "sweep"
    # int2_sym_g16 with indivisible=error fails on the 3x3 subsampling conv (K = 9): the sweep
    # must go on, and the frontier must list it as failed.
    _run(["train", "-m", *_dataset_args(tiny_corpus.root, tmp_path / "cache"), *SMALL_MODEL,
          "logger=csv", "trainer.max_steps=2", "trainer.val_check_interval=2",
          "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false",
          "quantizer=none,int2_asym,int2_sym_g16", "quantizer.indivisible=error",
          f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    rows = list(csv.DictReader((sweep / "frontier.csv").open()))
    assert sorted((r["quantizer"], r["status"]) for r in rows) == [
        ("int2_asym", "ok"), ("int2_sym_g16", "failed"), ("none", "ok")]
    failed = next(r for r in rows if r["status"] == "failed")
    assert "does not divide" in failed["error"]
    assert (sweep / "frontier.png").is_file()
    assert "Failed runs (1)" in (sweep / "frontier.md").read_text()


def test_a_run_the_time_guard_stops_is_truncated_not_ok(tiny_corpus, tmp_path):
    run_dir = tmp_path / "run"
    proc = _run(["train", *_dataset_args(tiny_corpus.root, tmp_path / "cache"), *SMALL_MODEL,
                 "logger=csv", "trainer.max_steps=100000", "trainer.max_time=00:00:00:02",
                 "trainer.val_check_interval=1", "trainer.limit_val_batches=1",
                 "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}"],
                cwd=tmp_path, ok=False)
    assert proc.returncode != 0
    row = json.loads((run_dir / "results.json").read_text())
    assert row["status"] == "truncated" and 0 < row["steps"] < 100000
    assert "trainer.max_steps=100000" in row["error"] and "max_time" in row["error"]


def test_bf16_mixed_on_the_cpu_trains_a_qat_model(tiny_corpus, tmp_path):
    """``trainer.precision=bf16-mixed`` works on the CPU as on the GPU (AMX/AVX512-BF16 here)."""
    run_dir = tmp_path / "run"
    _run(["train", *_dataset_args(tiny_corpus.root, tmp_path / "cache"), *SMALL_MODEL,
          "logger=csv", "trainer.precision=bf16-mixed", "trainer.max_steps=2",
          "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
          "trainer.enable_progress_bar=false", "quantizer=int2_asym",
          "dataset.test_splits=[test-clean]", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    row = json.loads((run_dir / "results.json").read_text())
    assert row["status"] == "ok" and row["steps"] == 2 and math.isfinite(row["wer"]["test-clean"])
    rows = list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))
    losses = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    assert losses and all(math.isfinite(v) for v in losses)
