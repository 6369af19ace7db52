"""Fixtures of the export tests: a tiny QAT checkpoint trained through the CLI, and its packed
file (session-scoped: trained once, ~10 s)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from export_helpers import SMALL_MODEL, dataset_args

from lowbit_asr import cli
from lowbit_asr.packed import export_packed


def _train(corpus_root: Path, work: Path, quantizer: str) -> Path:
    """Train the 1-block model 2 steps under ``quantizer``; its ``last.ckpt``."""
    argv = list(sys.argv)  # cli.main rewrites it
    try:  # in this process: a subprocess would spend ~15 s importing Lightning again
        cli.main(
            [
                "train",
                *dataset_args(corpus_root, work / "cache"),
                *SMALL_MODEL,
                "logger=csv",
                "trainer.max_steps=2",
                "trainer.val_check_interval=2",
                "trainer.limit_val_batches=1",
                "trainer.log_every_n_steps=1",
                "trainer.enable_progress_bar=false",
                "dataset.test_splits=[test-clean]",
                f"quantizer={quantizer}",
                f"hydra.run.dir={work / 'run'}",
            ]
        )
    finally:
        sys.argv = argv
    return work / "run" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="session")
def qat_checkpoint(tiny_corpus, tmp_path_factory) -> Path:
    """A 1-block int2-asym-g16 QAT checkpoint (sentencepiece tokenizer), trained 2 steps."""
    return _train(tiny_corpus.root, tmp_path_factory.mktemp("packed-qat"), "int2_asym_g16")


@pytest.fixture(scope="session")
def float_checkpoint(tiny_corpus, tmp_path_factory) -> Path:
    """The same 1-block model trained 2 steps in float (what ptq and allocate start from)."""
    return _train(tiny_corpus.root, tmp_path_factory.mktemp("float"), "none")


@pytest.fixture(scope="session")
def packed_qat(qat_checkpoint, tmp_path_factory) -> Path:
    """``qat_checkpoint`` exported through the API."""
    out = tmp_path_factory.mktemp("packed") / "model.lbq"
    export_packed(qat_checkpoint, out)
    return out
