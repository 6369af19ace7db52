"""Typed configuration of a dataset: which corpus and how it becomes batches (mirrored by
``conf/dataset/*.yaml``), as ``model/config.py`` is for the model. Validation happens in
``__post_init__``; every error names the key."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from lowbit_asr.data.librispeech import BAD_UTTERANCE_MODES
from lowbit_asr.data.perturb import PerturbConfig
from lowbit_asr.data.specaugment import SpecAugmentConfig
from lowbit_asr.data.tokenizer import TokenizerConfig
from lowbit_asr.schema import coerce


def _split_list(value: Any, name: str, allow_empty: bool) -> list[str]:
    """A str or a sequence of non-empty str (OmegaConf ListConfig included) as a list."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, Sequence) or not all(isinstance(s, str) and s for s in items):
        raise ValueError(f"{name} must be a split name or a list of them, got {value!r}")
    if not items and not allow_empty:
        raise ValueError(f"{name} must name at least one split")
    if len(set(items)) != len(items):
        raise ValueError(f"{name} names a split twice: {list(items)}")
    return [str(s) for s in items]


def _positive(value: Any, name: str, integer: bool, minimum: float = 1) -> None:
    """Raise naming ``name`` unless ``value`` is a number (an int if ``integer``) >= minimum."""
    kinds = int if integer else int | float
    if not isinstance(value, kinds) or isinstance(value, bool) or value < minimum:
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name} must be {kind} >= {minimum}, got {value!r}")


@dataclass
class DatasetConfig:
    """Which corpus, how it becomes batches (mirrored by ``conf/dataset/*.yaml``)."""

    # Not annotated: a class attribute, not a field.
    MOVED_FIELDS = MappingProxyType({
        "normalisation": "model.frontend.normalisation",
        "cepstral_lifter": "model.frontend.cepstral_lifter",
        "seed": "seed (the run's one seed: it also seeds the batch order and augmentation)",
    })
    """Keys that left this config (the model's front end owns them now)."""

    root: str
    """Corpus folder in LibriSpeech's layout (relative to the working directory); required."""
    train_splits: list[str] = field(default_factory=lambda: ["train"])
    """Training splits, concatenated (a single name is accepted)."""
    dev_split: str = "dev"
    """Validation split."""
    test_splits: list[str] = field(default_factory=lambda: ["test-clean", "test-other"])
    """Test splits, in the order of ``test_dataloader`` and ``test_split_names``."""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    """Units the RNN-T predicts."""
    max_batch_seconds: float = 60.0
    """Padded audio per batch (utterances x the longest), in seconds, per rank."""
    eval_batch_seconds: float = 60.0
    """Padded audio per batch when testing and evaluating (``lowbit-asr train``'s test stage,
    ``evaluate``, ``transcribe``): its own key, so that a training recipe's batch size does not
    change the test WER (batching changes float rounding in the encoder, which can flip a
    word of the search). Validation batches as training does (``max_batch_seconds``)."""
    max_utterance_seconds: float = 20.0
    """Longer TRAIN utterances are bad (stop or skip); at most ``max_batch_seconds``."""
    num_buckets: int = 30
    """Duration buckets (equal utterance counts); more buckets pad less but shuffle less."""
    num_workers: int = 1
    """DataLoader worker processes (0: load in the training process)."""
    on_bad_utterance: str = "stop"
    """``stop``: raise at the first bad utterance; ``skip``: leave it out with a warning."""
    cache_dir: str | None = None
    """Where manifests, tokenizer, statistics and features are cached; None: beside the data."""
    precompute_features: bool = False
    """Write every split's log-mel to the cache once (4-8 s per hour of audio on one core;
    float16, ~58 MB per hour), instead of decoding and computing them in every epoch."""
    stats_utterances: int = 500
    """Train utterances (evenly spaced) the normalisation statistics are computed on."""
    seed: int = 0
    """Seed of the batch shuffle, the perturbation and SpecAugment (with the epoch). Not a
    config key: ``lowbit-asr train`` sets it to the run's ``seed``."""
    curriculum_epochs: int = 0
    """Epochs at the start of training whose batches go from the shortest utterances to the
    longest (SortaGrad, Amodei et al. 2016; batches still shuffled inside each bucket); 0 =
    every epoch in shuffled order."""
    perturb: PerturbConfig = field(default_factory=PerturbConfig)
    """Training-time speed and vocal-tract-length perturbation (before SpecAugment)."""
    specaugment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)
    """Training-time masking."""

    def __post_init__(self) -> None:
        if not isinstance(self.root, str | Path) or str(self.root) in ("", "???"):
            raise ValueError(f"root is required: the corpus folder, got {self.root!r}")
        self.root = str(self.root)
        self.train_splits = _split_list(self.train_splits, "train_splits", allow_empty=False)
        if not isinstance(self.dev_split, str) or not self.dev_split:
            raise ValueError(f"dev_split must be a split name, got {self.dev_split!r}")
        self.test_splits = _split_list(self.test_splits, "test_splits", allow_empty=True)
        self.tokenizer = coerce(self.tokenizer, TokenizerConfig, "tokenizer")
        self.perturb = coerce(self.perturb, PerturbConfig, "perturb")
        self.specaugment = coerce(self.specaugment, SpecAugmentConfig, "specaugment")
        _positive(self.max_batch_seconds, "max_batch_seconds", integer=False, minimum=1e-9)
        _positive(self.eval_batch_seconds, "eval_batch_seconds", integer=False, minimum=1e-9)
        _positive(self.max_utterance_seconds, "max_utterance_seconds", integer=False, minimum=1e-9)
        if self.max_utterance_seconds > self.max_batch_seconds:
            raise ValueError(
                f"max_utterance_seconds={self.max_utterance_seconds} must be <= "
                f"max_batch_seconds={self.max_batch_seconds}: a batch holds at least one utterance"
            )
        _positive(self.num_buckets, "num_buckets", integer=True)
        _positive(self.num_workers, "num_workers", integer=True, minimum=0)
        if self.on_bad_utterance not in BAD_UTTERANCE_MODES:
            raise ValueError(
                f"on_bad_utterance must be one of {BAD_UTTERANCE_MODES}, "
                f"got {self.on_bad_utterance!r}"
            )
        if self.cache_dir is not None and (
            not isinstance(self.cache_dir, str) or not self.cache_dir
        ):
            raise ValueError(f"cache_dir must be a folder or null, got {self.cache_dir!r}")
        if not isinstance(self.precompute_features, bool):
            raise ValueError(
                f"precompute_features must be true or false, got {self.precompute_features!r}"
            )
        _positive(self.stats_utterances, "stats_utterances", integer=True)
        _positive(self.seed, "seed", integer=True, minimum=0)
        _positive(self.curriculum_epochs, "curriculum_epochs", integer=True, minimum=0)
