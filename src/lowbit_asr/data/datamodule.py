"""The LightningDataModule: LibriSpeech-layout splits -> padded, duration-bucketed batches.

    dm = AsrDataModule(DatasetConfig(root="data/embedded-mini"))   # or AsrDataModule(yaml_dict)
    dm.prepare_data(); dm.setup("fit")     # Lightning calls these itself
    vocab = dm.tokenizer.vocab_size         # blank included: the RNN-T's output size
    for batch in dm.train_dataloader(): ...

A batch (:class:`Batch`) is a dict: ``feats (N, T, 80)`` log-mel normalised by the model's
front end (``model/frontend.py``: ``AsrDataModule(cfg, frontend=model.frontend)``), zero-padded;
``feat_lens (N,)``; ``targets (N, U)`` token ids padded with the blank id 0; ``target_lens (N,)``;
``texts`` (normalised references) and ``ids``. Speed/VTLP perturbation
(:mod:`lowbit_asr.data.perturb`) and then SpecAugment are applied after the batch reached its
device, in training only (:meth:`AsrDataModule.on_after_batch_transfer`).

What ``prepare_data`` builds once (Lightning runs it on one process per node) and ``setup``
reads back on every rank, all beside the manifests (or under ``cache_dir``):

* the manifests (``read_split``), the tokenizer (trained on the train transcripts), the feature
  statistics (train subsample; given to the front end unless it has its own, e.g. from a float
  checkpoint), and with ``precompute_features`` the log-mel of every split.

Bad input follows ``on_bad_utterance``: ``stop`` raises at the first bad utterance (unreadable
audio, a transcript character the tokenizer cannot encode, a train utterance longer than
``max_utterance_seconds``); ``skip`` leaves it out, counts it and logs a warning. Only the train
split is length-filtered: dev and test keep every utterance, so WER covers the whole split.

DDP: the batch sampler shards batches itself (:mod:`lowbit_asr.data.sampler`), so the Trainer
must run with ``use_distributed_sampler=False`` (the first training batch raises otherwise).

Checkpoints: the statistics are the model's (its front end's buffers);
:meth:`AsrDataModule.state_dict` holds the tokenizer and the position in the training data.
``AsrDataModule(cfg, tokenizer=..., frontend=model.frontend)`` evaluates any LibriSpeech-layout
folder (:meth:`AsrDataModule.eval_dataloader`) without the training data.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypedDict

import lightning as L
import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset

from lowbit_asr.data.audio import BadUtteranceError
from lowbit_asr.data.config import DatasetConfig
from lowbit_asr.data.corpus import check_format
from lowbit_asr.data.features import (
    FeatureSource,
    FeatureStats,
    feature_cache_dir,
    load_or_compute_stats,
    precompute_features,
)
from lowbit_asr.data.librispeech import (
    USER_CACHE,
    SplitManifest,
    Utterance,
    read_split,
)
from lowbit_asr.data.perturb import Perturb
from lowbit_asr.data.sampler import BucketingBatchSampler
from lowbit_asr.data.specaugment import SpecAugment
from lowbit_asr.data.tokenizer import (
    BLANK_ID,
    Tokenizer,
    UnknownCharacterError,
    build_tokenizer,
    normalise_text,
)
from lowbit_asr.schema import coerce

log = logging.getLogger(__name__)


class Batch(TypedDict):
    """One batch, as the dataloaders yield it."""

    feats: Tensor  #: (N, T, 80) float32 normalised log-mel, zero-padded after feat_lens
    feat_lens: Tensor  #: (N,) int64 frames per utterance
    targets: Tensor  #: (N, U) int64 token ids, padded with BLANK_ID
    target_lens: Tensor  #: (N,) int64 tokens per utterance
    texts: list[str]  #: normalised reference transcripts
    ids: list[str]  #: utterance ids


class Example(TypedDict):
    """One utterance, before batching."""

    feats: Tensor  #: (T, 80) float32 normalised log-mel
    targets: Tensor  #: (U,) int64 token ids
    text: str  #: normalised transcript
    id: str  #: utterance id


def collate(examples: Sequence[Example]) -> Batch:
    """Pad examples into a Batch (features with 0, targets with the blank id)."""
    return Batch(
        feats=pad_sequence([e["feats"] for e in examples], batch_first=True),  # (N, T, 80)
        feat_lens=torch.tensor([e["feats"].shape[0] for e in examples], dtype=torch.int64),
        targets=pad_sequence(
            [e["targets"] for e in examples], batch_first=True, padding_value=BLANK_ID
        ),  # (N, U)
        target_lens=torch.tensor([e["targets"].shape[0] for e in examples], dtype=torch.int64),
        texts=[e["text"] for e in examples],
        ids=[e["id"] for e in examples],
    )


class FrontEndLike(Protocol):
    """What the data path needs of the model's front end (``model.frontend.FrontEnd``)."""

    @property
    def has_stats(self) -> bool: ...  # noqa: D102

    def set_stats(self, stats: FeatureStats) -> None: ...  # noqa: D102

    def stats(self) -> FeatureStats: ...  # noqa: D102

    def normalise(self, feats: Tensor) -> Tensor: ...  # noqa: D102


class AsrDataset(Dataset[Batch]):
    """The utterances of one split; indexed by a list of indices, it returns their Batch."""

    def __init__(
        self,
        utterances: Sequence[Utterance],
        tokenizer: Tokenizer,
        normalise: Callable[[Tensor], Tensor],
        source: FeatureSource | None = None,
        on_bad_utterance: str = "stop",
    ) -> None:
        """``normalise``: the model's front end's (a CPU copy of it), ``(T, 80) -> (T, 80)``.
        ``on_bad_utterance``: audio that cannot be decoded although its header read (truncated,
        non-finite samples) raises (``stop``) or is left out of its batch with a warning."""
        self.utterances = list(utterances)
        self.tokenizer = tokenizer
        self.normalise = normalise
        self.source = source if source is not None else FeatureSource()
        self.on_bad_utterance = on_bad_utterance

    def __len__(self) -> int:
        return len(self.utterances)

    @property
    def durations(self) -> list[float]:
        """Seconds per utterance, in index order (what the batch sampler sorts by)."""
        return [u.duration for u in self.utterances]

    def example(self, i: int) -> Example:
        """Utterance ``i``: normalised features and token ids."""
        u = self.utterances[i]
        return Example(
            feats=self.normalise(self.source(u)),  # (T, 80)
            targets=torch.tensor(self.tokenizer.encode(u.text, u.id), dtype=torch.int64),
            text=normalise_text(u.text),
            id=u.id,
        )

    def __getitem__(self, indices: Sequence[int]) -> Batch:  # type: ignore[override]
        examples, bad = [], []
        for i in indices:
            try:
                examples.append(self.example(i))
            except BadUtteranceError as err:
                if self.on_bad_utterance == "stop":
                    raise
                bad.append(err)
                log.warning("skipped (on_bad_utterance=skip): %s", err)
        if not examples:
            raise BadUtteranceError(bad[0].path, f"{bad[0].reason}; every utterance of its"
                                    f" batch ({len(bad)}) is unreadable")
        return collate(examples)


class AsrDataModule(L.LightningDataModule):
    """Train, dev and test dataloaders of a corpus in LibriSpeech's layout."""

    def __init__(
        self,
        cfg: DatasetConfig | Mapping[str, Any],
        tokenizer: Tokenizer | None = None,
        frontend: FrontEndLike | None = None,
    ) -> None:
        """``tokenizer``: a restored one (e.g. from a checkpoint) instead of a built one.
        ``frontend``: the model's front end, which normalises every batch (also settable later
        with :meth:`use_frontend`); if it has no statistics yet, setup gives it the train ones."""
        super().__init__()
        self.cfg: DatasetConfig = coerce(cfg, DatasetConfig, "dataset")
        self._tokenizer = tokenizer
        self._frontend = frontend
        self._stats: FeatureStats | None = None  # computed here, for a front end without any
        self._manifests: dict[str, SplitManifest] = {}
        self._features: FeatureSource | None = None
        self._resume_position: dict[str, int] | None = None  # from a checkpoint: where to go on
        # [epoch, training batches of it delivered so far]: what a checkpoint stores, counted
        # here (public hooks only) rather than read from the Trainer's loop internals.
        self._position: list[int] | None = None
        self.perturb = Perturb(self.cfg.perturb, seed=self.cfg.seed)
        self.specaugment = SpecAugment(self.cfg.specaugment, seed=self.cfg.seed)

    # ----------------------------------------------------------------- what was built

    @property
    def tokenizer(self) -> Tokenizer:
        """The tokenizer (after ``setup``, or as given)."""
        if self._tokenizer is None:
            raise RuntimeError("AsrDataModule.tokenizer: call setup() first (or pass one)")
        return self._tokenizer

    @property
    def frontend(self) -> FrontEndLike:
        """The model's front end that normalises the batches."""
        if self._frontend is None:
            raise RuntimeError(
                "AsrDataModule: no front end to normalise with: pass the model's "
                "(AsrDataModule(cfg, frontend=model.frontend) or use_frontend(model.frontend))")
        return self._frontend

    def use_frontend(self, frontend: FrontEndLike) -> None:
        """Normalise with ``frontend`` (the model's); one without statistics gets the train
        ones (computed by ``prepare_data``/``setup``). Under a Trainer, ``setup`` takes the
        fitted module's ``model.frontend`` when none was given."""
        self._frontend = frontend
        if not frontend.has_stats and self._stats is not None:
            frontend.set_stats(self._stats)

    def _normaliser(self) -> Callable[[Tensor], Tensor]:
        """The front end's ``normalise`` for the data path: a CPU copy when the model is on an
        accelerator (loader workers must not receive CUDA tensors)."""
        frontend = self.frontend
        if isinstance(frontend, torch.nn.Module) and any(
            b.device.type != "cpu" for b in frontend.buffers()
        ):
            frontend = copy.deepcopy(frontend).cpu()
        return frontend.normalise

    @property
    def test_split_names(self) -> list[str]:
        """Names of the test splits, in the order of ``test_dataloader``'s list."""
        return list(self.cfg.test_splits)

    def manifest(self, split: str) -> SplitManifest:
        """The manifest of ``split`` under ``root`` (read once, cached on disk by read_split)."""
        if split not in self._manifests:
            check_format(self.cfg.root)  # a generated corpus of an older recipe is refused
            cache_dir = Path(self.cfg.cache_dir) if self.cfg.cache_dir else None
            self._manifests[split] = read_split(
                self.cfg.root, split, self.cfg.on_bad_utterance, cache_dir
            )
        return self._manifests[split]

    @property
    def cache_root(self) -> Path:
        """Where the tokenizer, statistics and features go: ``cache_dir``, else beside the
        train manifest (the corpus root when it is writable)."""
        if self.cfg.cache_dir:
            return Path(self.cfg.cache_dir)
        cache_path = self.manifest(self.cfg.train_splits[0]).cache_path
        return Path(cache_path).parent if cache_path else USER_CACHE

    def train_utterances(self) -> list[Utterance]:
        """All utterances of the train splits (before length and text filtering)."""
        return [u for s in self.cfg.train_splits for u in self.manifest(s).utterances]

    # ----------------------------------------------------------------- Lightning hooks

    def prepare_data(self) -> None:
        """Build every cache: manifests, tokenizer, features (if asked), statistics."""
        self._build(self._splits(None), precompute=self.cfg.precompute_features)

    def setup(self, stage: str | None = None) -> None:
        """Read back what prepare_data built (building what is missing) for ``stage``."""
        trainer = self.trainer
        if self._frontend is None and trainer is not None:
            # Run by a Trainer without one given: the model being fitted or tested brings it.
            module = getattr(trainer, "lightning_module", None)
            frontend = getattr(getattr(module, "model", None), "frontend", None)
            if frontend is not None:
                self.use_frontend(frontend)
        self._build(self._splits(stage), precompute=False)

    def _splits(self, stage: str | None) -> list[str]:
        """Splits a stage reads (None: all)."""
        cfg = self.cfg
        by_stage = {
            "fit": [*cfg.train_splits, cfg.dev_split],
            "validate": [cfg.dev_split],
            "test": list(cfg.test_splits),
            "predict": [],
        }
        if stage is None:
            return list(dict.fromkeys([*by_stage["fit"], *cfg.test_splits]))
        return by_stage[stage]

    def _build(self, splits: list[str], precompute: bool) -> None:
        for split in splits:
            m = self.manifest(split)
            log.info("%s: %d utterances, %.2f h", split, len(m), m.hours)
        if self._tokenizer is None:
            texts = [u.text for u in self.train_utterances()]
            self._tokenizer = build_tokenizer(self.cfg.tokenizer, texts, self.cache_root)
        needs_stats = (self._frontend is None or not self._frontend.has_stats) and (
            self._stats is None)
        if precompute:
            # The train splits too when the statistics are still to compute: they read the cache.
            todo = [*splits, *(self.cfg.train_splits if needs_stats else [])]
            for split in dict.fromkeys(todo):
                precompute_features(
                    self.manifest(split).utterances, self.features, self.cfg.num_workers
                )
        if needs_stats:
            self._stats = load_or_compute_stats(
                self.train_utterances(), self.features, self.cache_root, self.cfg.stats_utterances,
                skip_bad=self.cfg.on_bad_utterance == "skip",
            )
        if self._frontend is not None and not self._frontend.has_stats:
            assert self._stats is not None
            self._frontend.set_stats(self._stats)

    @property
    def features(self) -> FeatureSource:
        """Where log-mel features come from: the cache folder with ``precompute_features``."""
        if self._features is None:
            cache = feature_cache_dir(self.cache_root) if self.cfg.precompute_features else None
            self._features = FeatureSource(cache)
        return self._features

    def state_dict(self) -> dict[str, Any]:
        """Tokenizer and the position in the training data, stored in Lightning checkpoints
        (the position lets a run killed mid-epoch resume at the next batch; the feature
        statistics are the model's own state)."""
        state: dict[str, Any] = {}
        if self._tokenizer is not None:
            state["tokenizer"] = self._tokenizer.state_dict()
        if self._position is not None:
            state["train_position"] = {"epoch": self._position[0], "batches": self._position[1]}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Use a checkpoint's tokenizer (dataloaders made after this use it); its statistics
        come back with the model's state."""
        if "tokenizer" in state_dict:
            restored = Tokenizer.from_state(state_dict["tokenizer"])
            if self._tokenizer is not None and restored != self._tokenizer:
                log.warning("the checkpoint's tokenizer differs from the one built: using it")
            self._tokenizer = restored
        self._resume_position = state_dict.get("train_position")

    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        """Perturbation, then SpecAugment, in training only, on the batch's device; counts the
        training batches of the epoch (the position a checkpoint stores)."""
        trainer = self.trainer
        if trainer is not None and trainer.training:
            epoch = int(trainer.current_epoch)
            if self._position is None or self._position[0] != epoch:
                self._check_sampler(trainer)
                self._position = [epoch, 0]
            self._position[1] += 1
        if trainer is not None and trainer.training and self.cfg.perturb.active:
            batch["feats"], batch["feat_lens"] = self.perturb(
                batch["feats"], batch["feat_lens"], batch["ids"], epoch=trainer.current_epoch
            )
        if trainer is not None and trainer.training and self.cfg.specaugment.active:
            batch["feats"] = self.specaugment(
                batch["feats"], batch["feat_lens"], batch["ids"], epoch=trainer.current_epoch
            )
        return batch

    # ----------------------------------------------------------------- dataloaders

    def train_dataloader(self) -> DataLoader[Batch]:
        """Shuffled duration buckets of the train splits, this rank's shard."""
        utterances = [
            u for s in self.cfg.train_splits for u in self._usable(s, self.manifest(s), train=True)
        ]
        if not utterances:
            # Else Lightning "trains" zero steps and the run would end as if it had worked.
            total = sum(len(self.manifest(s)) for s in self.cfg.train_splits)
            raise ValueError(
                f"no training utterances: all {total} of {self.cfg.train_splits} under"
                f" {self.cfg.root} were left out (on_bad_utterance={self.cfg.on_bad_utterance},"
                f" max_utterance_seconds={self.cfg.max_utterance_seconds}; the warnings above"
                " say why)")
        dataset = AsrDataset(utterances, self.tokenizer, self._normaliser(), self.features,
                             self.cfg.on_bad_utterance)
        loader = self._loader(dataset, shuffle=True)
        if self._resume_position is not None:  # resuming: skip the batches already trained
            loader.sampler.resume_at(**self._resume_position)  # type: ignore[attr-defined]
            position = self._resume_position
            self._position = [int(position["epoch"]), int(position["batches"])]
            self._resume_position = None
        return loader

    @staticmethod
    def _check_sampler(trainer: Any) -> None:
        """Under DDP the batches must come from this module's sampler, which shards them itself:
        a Trainer with ``use_distributed_sampler=True`` wraps it and every rank would see a
        fraction of its own shard."""
        if getattr(trainer, "world_size", 1) <= 1:
            return
        loader = getattr(trainer, "train_dataloader", None)
        sampler = getattr(loader, "sampler", None)
        if loader is not None and not isinstance(sampler, BucketingBatchSampler):
            raise ValueError(
                "AsrDataModule shards batches across ranks itself: build the Trainer with "
                f"use_distributed_sampler=False (its train sampler is {type(sampler).__name__})")

    def val_dataloader(self) -> DataLoader[Batch]:
        """The dev split in duration order."""
        return self._split_loader(self.cfg.dev_split)

    def test_dataloader(self) -> list[DataLoader[Batch]]:
        """One dataloader per test split, in the order of ``test_split_names``, batched by
        ``eval_batch_seconds`` (as :meth:`eval_dataloader`)."""
        return [self._split_loader(s, self.cfg.eval_batch_seconds) for s in self.cfg.test_splits]

    def eval_dataloader(self, root: str | Path, split: str) -> DataLoader[Batch]:
        """Batches of any folder ``root/split`` in LibriSpeech's layout, with this module's
        tokenizer and front end (never length-filtered; features computed on the fly)."""
        check_format(root)
        cache_dir = Path(self.cfg.cache_dir) if self.cfg.cache_dir else None
        manifest = read_split(root, split, self.cfg.on_bad_utterance, cache_dir)
        utterances = self._usable(f"{root}/{split}", manifest, train=False)
        dataset = AsrDataset(utterances, self.tokenizer, self._normaliser(),
                             on_bad_utterance=self.cfg.on_bad_utterance)
        return self._loader(dataset, shuffle=False,
                            batch_seconds=self.cfg.eval_batch_seconds, whole=True)

    def _split_loader(self, split: str, batch_seconds: float | None = None) -> DataLoader[Batch]:
        utterances = self._usable(split, self.manifest(split), train=False)
        dataset = AsrDataset(utterances, self.tokenizer, self._normaliser(), self.features,
                             self.cfg.on_bad_utterance)
        return self._loader(dataset, shuffle=False, batch_seconds=batch_seconds,
                            whole=batch_seconds is not None)

    def _loader(self, dataset: AsrDataset, shuffle: bool, batch_seconds: float | None = None,
                whole: bool = False) -> DataLoader[Batch]:
        """``whole``: every utterance on this process (tests and evaluation are run by one
        process, which writes the per-utterance files); else this rank's shard."""
        rank, world_size = (0, 1) if whole else self._rank_world()
        sampler = BucketingBatchSampler(
            dataset.durations,
            batch_seconds or self.cfg.max_batch_seconds,
            num_buckets=self.cfg.num_buckets,
            shuffle=shuffle,
            seed=self.cfg.seed,
            sorted_epochs=self.cfg.curriculum_epochs if shuffle else 0,
            rank=rank,
            world_size=world_size,
        )
        workers = self.cfg.num_workers
        # The sampler yields whole batches and the dataset collates them: batch_size=None.
        return DataLoader(
            dataset,
            sampler=sampler,
            batch_size=None,
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=workers > 0,
        )

    def _rank_world(self) -> tuple[int, int]:
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _usable(self, name: str, manifest: SplitManifest, train: bool) -> list[Utterance]:
        """The manifest's utterances without the bad ones (or an error, in ``stop`` mode)."""
        cfg, tokenizer = self.cfg, self.tokenizer
        kept: list[Utterance] = []
        too_long = unknown = 0
        for u in manifest.utterances:
            if train and u.duration > cfg.max_utterance_seconds:
                if cfg.on_bad_utterance == "stop":
                    raise BadUtteranceError(
                        u.path,
                        f"{u.duration:.2f} s is longer than max_utterance_seconds="
                        f"{cfg.max_utterance_seconds} (on_bad_utterance=skip leaves it out)",
                    )
                too_long += 1
                continue
            chars = tokenizer.unknown_characters(u.text)
            if chars:
                if cfg.on_bad_utterance == "stop":
                    raise UnknownCharacterError(chars[0], u.text, u.id)
                unknown += 1
                continue
            kept.append(u)
        if too_long:
            log.warning(
                "%s: skipped %d utterances longer than max_utterance_seconds=%s",
                name,
                too_long,
                cfg.max_utterance_seconds,
            )
        if unknown:
            log.warning(
                "%s: skipped %d utterances with characters the tokenizer cannot encode",
                name,
                unknown,
            )
        return kept
