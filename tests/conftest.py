"""Shared fixtures: the tiny generated corpus, made once per session; one torch thread."""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

import pytest
import torch

from lowbit_asr.data.corpus import CorpusManifest, generate_corpus

# pytest-xdist runs two workers on two cores: more torch threads only oversubscribe them.
torch.set_num_threads(1)

ENGINES = ("espeak-ng", "flite", "festival")
R_DATA = Path("/usr/lib/R/site-library/janeaustenr/data/Rdata.rdx")


def have_engines() -> bool:
    """Whether the Debian TTS engines and the Austen texts are installed."""
    return all(shutil.which(e) for e in ENGINES) and R_DATA.exists()


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> CorpusManifest:
    """The ``tiny`` corpus for seed 0. Read it, never write into it (other tests hash it)."""
    if not have_engines():
        # `make test` installs them (make debs); a missing engine is a broken set-up, not a skip.
        pytest.fail("the tiny corpus needs the Debian TTS engines and texts: run `make debs`")
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return generate_corpus(tmp_path_factory.mktemp("tiny") / "corpus", size="tiny", seed=0)
    # Under pytest-xdist, the workers share this run's base folder: the first to take the lock
    # generates, the others find the manifest and return at once (generation is idempotent).
    shared = tmp_path_factory.getbasetemp().parent
    with open(shared / "tiny-corpus.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return generate_corpus(shared / "tiny-corpus", size="tiny", seed=0)
