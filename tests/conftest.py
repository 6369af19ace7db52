"""Shared fixtures: the tiny generated corpus, made once per session; one torch thread."""

from __future__ import annotations

import fcntl
import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from lowbit_asr.data.corpus import CorpusManifest, generate_corpus

# pytest-xdist runs two workers on two cores: more torch threads only oversubscribe them (tiny
# ops then wait milliseconds for a descheduled OpenMP thread). Subprocesses inherit the variable.
torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"

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


def _row(run_id, quantizer, bits, gran, size, wer_clean, wer_other, symmetric=False):
    return {"status": "ok", "run_id": run_id, "experiment": "grid", "quantizer": quantizer,
            "quant_bits": bits, "quant_symmetric": symmetric, "quant_granularity": gran,
            "quant_group": "g16" if gran == "sub_channel" else gran, "quant_clip": "none",
            "size_bytes": int(size * 1e6), "size_mb": size, "bits_per_quantized_weight": 2.0,
            "wer": {"test-clean": wer_clean, "test-other": wer_other}, "commit": "abc",
            "command": f"lowbit-asr train quantizer={quantizer}"}


def _sweep(root: Path) -> Path:
    """Six finished runs (float, int8, int4, three int2) and two failed ones."""
    rows = [
        _row("0", "none", 32, "float", 16.0, 0.10, 0.20, symmetric=None),
        _row("1", "int8_sym", 8, "per_channel", 4.1, 0.10, 0.21, symmetric=True),
        _row("2", "int4_asym", 4, "per_channel", 2.2, 0.11, 0.22),
        _row("3", "int2_sym", 2, "per_channel", 1.2, 0.40, 0.60, symmetric=True),
        _row("4", "int2_asym_g16", 2, "sub_channel", 2.3, 0.12, 0.23),
        _row("5", "int2_asym", 2, "per_channel", 1.2, 0.20, 0.35),
    ]
    for i, row in enumerate(rows):
        (root / str(i)).mkdir(parents=True)
        (root / str(i) / "results.json").write_text(json.dumps(row))
    (root / "6").mkdir()
    (root / "6" / "results.json").write_text(json.dumps({
        "status": "failed", "run_id": "6", "quantizer": "int2_asym_g7",
        "error": "ValueError: group_size=7 does not divide K=144"}))
    (root / "7").mkdir()
    (root / "7" / "results.json").write_text("{truncated")
    return root



@pytest.fixture
def make_sweep() -> Callable[[Path], Path]:
    """Writes a synthetic sweep folder of result rows (no training) and returns it."""
    return _sweep


def _evaluated_sweep(root, drop_every):
    """A float reference (experiment grid) and quantized points whose hypotheses drop every
    n-th utterance's last word (0: identical to the reference), each with its per-utterance
    evaluation, as a training run writes them."""
    from lowbit_asr.train.scoring import score_utterance, write_evaluation

    rng = random.Random(0)
    words = "the cat sat on a mat and then it ran far away from home".split()
    refs = {f"{1000 + i // 4}-{2000 + i // 4}-{i % 4:04d}":
            " ".join(rng.choice(words) for _ in range(rng.randint(8, 16))) for i in range(240)}
    # Errors every system shares (about one word in five substituted), as a real model makes.
    base = {uid: [w if rng.random() > 0.2 else "x" for w in ref.split()]
            for uid, ref in refs.items()}
    for name, (quantizer, bits, size, bpw, every) in drop_every.items():
        run = root / name
        splits = {}
        for split in ("test-clean", "test-other"):
            scores = []
            for k, (uid, ref) in enumerate(sorted(refs.items())):
                hyp = base[uid][:-1] if every and k % every == 0 else base[uid]
                if split == "test-other" and k % 3 == 0:  # some errors everyone shares
                    hyp = hyp[1:]
                scores.append(score_utterance(uid, ref, " ".join(hyp), nll=1.0, ref_tokens=5))
            splits[split] = scores
        summary = write_evaluation(run / "eval", splits, {"model": name})
        row = {"status": "ok", "run_id": name, "experiment": "grid", "quantizer": quantizer,
               "quant_bits": bits, "quant_symmetric": False,
               "quant_granularity": "float" if bits == 32 else "per_channel",
               "quant_group": "", "quant_clip": "none", "size_bytes": int(size * 1e6),
               "size_mb": size, "bits_per_quantized_weight": bpw,
               "wer": {s: summary["splits"][s]["wer"] for s in splits},
               "wer_ci": {s: summary["splits"][s]["wer_ci"] for s in splits},
               "evaluation": "eval/evaluation.json", "commit": "abc", "command": "x"}
        (run / "results.json").write_text(json.dumps(row))
    return root


EVALUATED_POINTS = {
    "ref": ("none", 32, 16.0, 32.0, 0),
    "int4": ("int4_asym", 4, 2.2, 4.1, 0),  # identical to the reference: lossless
    "int2": ("int2_asym", 2, 1.2, 2.1, 120),  # 2 dropped words in 240 utterances: lossless
    "int2_bad": ("int2_sym", 2, 1.1, 2.1, 2),  # every second utterance loses a word
}
"""run folder -> (quantizer, bits, size MB, bits per weight, drop every n-th utterance's word)."""


@pytest.fixture
def make_evaluated_sweep() -> Callable[..., Path]:
    """Writes a synthetic sweep whose rows carry per-utterance evaluations."""
    return lambda root, points=None: _evaluated_sweep(root, points or EVALUATED_POINTS)
