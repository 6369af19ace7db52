"""DatasetConfig, the bucketing batch sampler (DDP included) and AsrDataModule's dataloaders."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import numpy as np
import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf
from pipeline_corpus import write_corpus, write_utterances

from lowbit_asr.data.audio import N_MELS, BadUtteranceError
from lowbit_asr.data.config import DatasetConfig
from lowbit_asr.data.datamodule import AsrDataModule, Batch
from lowbit_asr.data.features import num_frames
from lowbit_asr.data.sampler import BucketingBatchSampler
from lowbit_asr.data.tokenizer import CharTokenizer, UnknownCharacterError
from lowbit_asr.model.frontend import FrontEnd, lifter_matrix
from lowbit_asr.schema import coerce

CONF = Path(__file__).resolve().parents[2] / "conf" / "dataset"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic corpus: train 24, dev 6, test-clean 5, test-other 5 utterances of 0.5-3.5 s."""
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def make_dm(cfg: DatasetConfig, **frontend: Any) -> AsrDataModule:
    """A DataModule normalising with a fresh front end (``frontend``: its config)."""
    return AsrDataModule(cfg, frontend=FrontEnd(frontend))


def make_cfg(root: Path, cache: Path, **overrides: Any) -> DatasetConfig:
    """A test config: small batches and vocabulary, no workers, caches in ``cache``."""
    fields: dict[str, Any] = {
        "root": str(root),
        "cache_dir": str(cache),
        "tokenizer": {"units": "sentencepiece", "vocab_size": 40},
        "max_batch_seconds": 8.0,
        "eval_batch_seconds": 8.0,  # evaluation batches like validation, to compare them
        "max_utterance_seconds": 4.0,
        "num_buckets": 4,
        "num_workers": 0,
        **overrides,
    }
    return DatasetConfig(**fields)


@pytest.fixture(scope="module")
def dm(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> AsrDataModule:
    """A DataModule over ``corpus``, prepared and set up for fit and test."""
    module = make_dm(make_cfg(corpus, tmp_path_factory.mktemp("cache")))
    module.prepare_data()
    module.setup("fit")
    module.setup("test")
    return module


# ------------------------------------------------------------------------ config


def test_moved_keys_say_where_they_went(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"dataset.normalisation is now model.frontend"):
        coerce({"root": str(tmp_path), "normalisation": "utterance"}, DatasetConfig, "dataset")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"root": ""}, "root"),
        ({"root": "???"}, "root"),
        ({"train_splits": []}, "train_splits"),
        ({"train_splits": ["a", "a"]}, "train_splits"),
        ({"dev_split": ""}, "dev_split"),
        ({"test_splits": [3]}, "test_splits"),
        ({"max_batch_seconds": 0}, "max_batch_seconds"),
        ({"max_utterance_seconds": -1.0}, "max_utterance_seconds"),
        ({"max_utterance_seconds": 30.0, "max_batch_seconds": 20.0}, "max_utterance_seconds"),
        ({"num_buckets": 0}, "num_buckets"),
        ({"num_workers": -1}, "num_workers"),
        ({"num_workers": 1.5}, "num_workers"),
        ({"on_bad_utterance": "ignore"}, "on_bad_utterance"),
        ({"cache_dir": ""}, "cache_dir"),
        ({"precompute_features": "yes"}, "precompute_features"),
        ({"stats_utterances": 0}, "stats_utterances"),
        ({"seed": -1}, "seed"),
        ({"curriculum_epochs": -1}, "curriculum_epochs"),
        ({"tokenizer": {"units": "word"}}, "tokenizer.units"),
        ({"tokenizer": {"vocab_sise": 3}}, "tokenizer: unknown field"),
        ({"specaugment": {"time_masks": -1}}, "specaugment.time_masks"),
    ],
)
def test_config_errors_name_the_field(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        DatasetConfig(**{"root": "data/x", **overrides})


def test_config_accepts_a_single_train_split() -> None:
    assert DatasetConfig(root="x", train_splits="train-clean-100").train_splits == [
        "train-clean-100"
    ]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name", ["embedded_tiny", "embedded_mini", "embedded_small", "librispeech"]
)
def test_shipped_configs_build(name: str) -> None:
    yaml = OmegaConf.load(CONF / f"{name}.yaml")
    if name == "librispeech":
        with pytest.raises(Exception, match="root"):  # required: ???
            OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DatasetConfig), yaml))
        yaml.root = "/data/LibriSpeech"
    structured = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DatasetConfig), yaml))
    plain = DatasetConfig(**OmegaConf.to_container(yaml))  # type: ignore[arg-type]
    assert structured == plain
    # Every field is a key but the seed, which `lowbit-asr train` sets to the run's one seed.
    assert set(OmegaConf.to_container(yaml)) == set(DatasetConfig.__dataclass_fields__) - {"seed"}


# ------------------------------------------------------------------------ sampler


def durations(n: int = 200, seed: int = 0) -> list[float]:
    return [float(d) for d in np.random.default_rng(seed).uniform(0.5, 15.0, size=n)]


def padded_seconds(batch: list[int], dur: list[float]) -> float:
    return len(batch) * max(dur[i] for i in batch)


@pytest.mark.parametrize("shuffle", [True, False])
def test_batches_fit_and_cover_every_utterance_once(shuffle: bool) -> None:
    dur = durations()
    sampler = BucketingBatchSampler(dur, 40.0, num_buckets=8, shuffle=shuffle, seed=1)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        assert all(padded_seconds(b, dur) <= 40.0 for b in batches)
        assert sorted(i for b in batches for i in b) == list(range(len(dur)))
    # Bucketing pads little: most of each batch is audio.
    assert sum(dur) / sum(padded_seconds(b, dur) for b in batches) > 0.85


def test_shuffle_is_seeded_per_epoch_and_count_is_constant() -> None:
    dur = durations()
    a = BucketingBatchSampler(dur, 40.0, num_buckets=8, seed=1)
    b = BucketingBatchSampler(dur, 40.0, num_buckets=8, seed=1)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first and len(list(a)) == len(first) == len(a)
    assert list(BucketingBatchSampler(dur, 40.0, num_buckets=8, seed=2)) != first
    # Without shuffling: buckets in duration order, the same batches in every epoch.
    plain = BucketingBatchSampler(dur, 40.0, num_buckets=8, shuffle=False)
    batches = list(plain)
    assert [dur[i] for i in batches[0]] == sorted(dur)[: len(batches[0])]
    plain.set_epoch(5)
    assert list(plain) == batches


def test_sorted_epochs_go_short_to_long_then_shuffle() -> None:
    dur = durations()
    sampler = BucketingBatchSampler(dur, 40.0, num_buckets=8, seed=1, sorted_epochs=2)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        longest = [max(dur[i] for i in b) for b in batches]
        assert longest == sorted(longest)  # a curriculum: short batches first
        assert sorted(i for b in batches for i in b) == list(range(len(dur)))
    sampler.set_epoch(0)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first  # still reshuffled inside the buckets
    sampler.set_epoch(2)
    longest = [max(dur[i] for i in b) for b in sampler]
    assert longest != sorted(longest)  # then the usual shuffled order
    unsorted = BucketingBatchSampler(dur, 40.0, num_buckets=8, seed=1)
    assert list(sampler) == list(unsorted.global_batches(2))


def test_long_utterance_gets_its_own_batch() -> None:
    dur = [1.0] * 10 + [50.0]
    batches = list(BucketingBatchSampler(dur, 20.0, num_buckets=2, shuffle=False))
    assert [10] in batches and all(padded_seconds(b, dur) <= 20 for b in batches if b != [10])


@pytest.mark.parametrize(("world_size", "n"), [(2, 200), (2, 7), (3, 200), (4, 31)])
def test_ddp_shards_are_disjoint_complete_and_equal(world_size: int, n: int) -> None:
    dur = durations(n)
    for epoch in range(2):
        shards = []
        for rank in range(world_size):
            sampler = BucketingBatchSampler(
                dur, 40.0, num_buckets=8, seed=3, rank=rank, world_size=world_size
            )
            sampler.set_epoch(epoch)
            shards.append(list(sampler))
            assert len(shards[-1]) == len(sampler)
        assert len({len(s) for s in shards}) == 1  # same number of steps on every rank
        seen = [i for shard in shards for batch in shard for i in batch]
        assert sorted(seen) == list(range(n))  # disjoint and complete
        assert all(padded_seconds(b, dur) <= 40.0 for s in shards for b in s)


def test_ddp_with_fewer_utterances_than_ranks_repeats(caplog: pytest.LogCaptureFixture) -> None:
    shards = [list(BucketingBatchSampler([1.0], 10.0, rank=r, world_size=2)) for r in (0, 1)]
    assert shards == [[[0]], [[0]]]
    assert "repeating" in caplog.text


# ------------------------------------------------------------------------ dataloaders


def check_batch(batch: Batch, dm: AsrDataModule) -> None:
    """Shapes, padding and references of one batch."""
    n, t, f = batch["feats"].shape
    assert f == 80 and batch["feats"].dtype == torch.float32
    assert batch["feat_lens"].shape == (n,) and batch["feat_lens"].dtype == torch.int64
    assert int(batch["feat_lens"].max()) == t
    assert batch["targets"].dtype == torch.int64 and batch["targets"].shape[0] == n
    assert int(batch["target_lens"].max()) == batch["targets"].shape[1]
    assert len(batch["texts"]) == len(batch["ids"]) == n
    for i in range(n):
        frames, tokens = int(batch["feat_lens"][i]), int(batch["target_lens"][i])
        assert torch.all(batch["feats"][i, frames:] == 0)
        assert torch.all(batch["targets"][i, tokens:] == 0)
        assert torch.all(batch["targets"][i, :tokens] > 0)
        assert dm.tokenizer.decode(batch["targets"][i, :tokens].tolist()) == batch["texts"][i]


def test_train_batches_are_padded_and_cover_the_split(dm: AsrDataModule) -> None:
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader)
    manifest = dm.manifest("train")
    by_id = {u.id: u for u in manifest.utterances}
    for batch in batches:
        check_batch(batch, dm)
        assert len(batch["ids"]) * max(by_id[i].duration for i in batch["ids"]) <= 8.0
        for uid, frames in zip(batch["ids"], batch["feat_lens"].tolist(), strict=True):
            assert frames == num_frames(sf.info(by_id[uid].path).frames)
    assert sorted(i for b in batches for i in b["ids"]) == sorted(by_id)


def test_dev_and_test_loaders(dm: AsrDataModule) -> None:
    assert dm.test_split_names == ["test-clean", "test-other"]
    loaders = dm.test_dataloader()
    assert isinstance(loaders, list) and len(loaders) == 2
    for name, loader in zip(dm.test_split_names, loaders, strict=True):
        ids = [i for batch in loader for i in batch["ids"]]
        assert sorted(ids) == [u.id for u in dm.manifest(name).utterances]
    for batch in dm.val_dataloader():
        check_batch(batch, dm)


def test_features_are_normalised_on_train(dm: AsrDataModule) -> None:
    frames = torch.cat(
        [
            b["feats"][i, : b["feat_lens"][i]]
            for b in dm.train_dataloader()
            for i in range(len(b["ids"]))
        ]
    )  # (sum T, 80)
    # Statistics from every train utterance (24 < stats_utterances): exact up to float32.
    assert frames.mean(0).abs().max() < 1e-3
    assert (frames.std(0, unbiased=False) - 1).abs().max() < 1e-3


def test_utterance_normalisation_follows_the_front_end(
    dm: AsrDataModule, corpus: Path, tmp_path: Path
) -> None:
    per_utt = make_dm(make_cfg(corpus, tmp_path), normalisation="utterance")
    per_utt.setup("fit")
    torch.testing.assert_close(per_utt.frontend.std, dm.frontend.std)  # the same statistics
    batch = next(iter(per_utt.val_dataloader()))
    for i in range(len(batch["ids"])):
        frames = batch["feats"][i, : batch["feat_lens"][i]]  # (T, 80)
        assert frames.mean(0).abs().max() < 1e-4  # each utterance's own mean removed
    # The choice travels with the front end (model state): a module handed a copy of it (as
    # evaluate is handed the checkpoint's) normalises the same way without the training data.
    restored = FrontEnd({"normalisation": "utterance"})
    restored.load_state_dict(per_utt.frontend.state_dict())
    fresh = AsrDataModule(make_cfg(tmp_path / "nowhere", tmp_path),
                          tokenizer=per_utt.tokenizer, frontend=restored)
    again = next(iter(fresh.eval_dataloader(corpus, "dev")))
    assert again["ids"] == batch["ids"]
    torch.testing.assert_close(again["feats"], batch["feats"])


def test_spec_augment_only_when_training(dm: AsrDataModule) -> None:
    batch = next(iter(dm.train_dataloader()))
    clean = batch["feats"].clone()
    try:
        dm.trainer = SimpleNamespace(training=False, current_epoch=0)  # type: ignore[assignment]
        assert torch.equal(dm.on_after_batch_transfer(dict(batch), 0)["feats"], clean)  # type: ignore[arg-type]
        dm.trainer = SimpleNamespace(training=True, current_epoch=0)  # type: ignore[assignment]
        masked = dm.on_after_batch_transfer(dict(batch), 0)["feats"]  # type: ignore[arg-type]
        again = dm.on_after_batch_transfer(dict(batch), 0)["feats"]  # type: ignore[arg-type]
        dm.trainer = SimpleNamespace(training=True, current_epoch=1)  # type: ignore[assignment]
        other_epoch = dm.on_after_batch_transfer(dict(batch), 0)["feats"]  # type: ignore[arg-type]
    finally:
        dm.trainer = None
    assert not torch.equal(masked, clean) and torch.equal(masked, again)
    assert not torch.equal(masked, other_epoch)
    assert torch.all((masked == 0) | (masked == clean))
    assert dm.on_after_batch_transfer(dict(batch), 0)["feats"] is batch["feats"]  # no trainer


def test_precomputed_features_match(dm: AsrDataModule, corpus: Path, tmp_path: Path) -> None:
    cached = make_dm(make_cfg(corpus, tmp_path, precompute_features=True))
    cached.prepare_data()
    cached.setup("fit")
    assert cached.features.cache is not None
    assert len(list(cached.features.cache.glob("*.npy"))) == 24 + 6 + 5 + 5
    a = next(iter(cached.val_dataloader()))
    b = next(iter(dm.val_dataloader()))
    assert a["ids"] == b["ids"]
    torch.testing.assert_close(a["feats"], b["feats"], atol=5e-3, rtol=1e-3)


def test_state_dict_rebuilds_without_training_data(
    dm: AsrDataModule, corpus: Path, tmp_path: Path
) -> None:
    state = dm.state_dict()
    assert "feature_stats" not in state  # the statistics are the model's state
    restored = FrontEnd()
    restored.load_state_dict(dm.frontend.state_dict())
    fresh = AsrDataModule(make_cfg(tmp_path / "nowhere", tmp_path), frontend=restored)
    fresh.load_state_dict(state)
    assert fresh.tokenizer == dm.tokenizer
    # Any folder in LibriSpeech's layout, with the restored tokenizer and front end.
    loader = fresh.eval_dataloader(corpus, "dev")
    ids = [i for batch in loader for i in batch["ids"]]
    assert sorted(ids) == [u.id for u in dm.manifest("dev").utterances]
    torch.testing.assert_close(
        next(iter(loader))["feats"], next(iter(dm.val_dataloader()))["feats"]
    )


def test_tokenizer_and_front_end_are_required(tmp_path: Path) -> None:
    module = AsrDataModule(make_cfg(tmp_path, tmp_path))
    with pytest.raises(RuntimeError, match="setup"):
        module.tokenizer  # noqa: B018
    with pytest.raises(RuntimeError, match="no front end"):
        module.frontend  # noqa: B018


def test_front_end_with_statistics_keeps_them(dm: AsrDataModule, corpus: Path,
                                             tmp_path: Path) -> None:
    """A front end that has statistics (a float checkpoint's) is not given the train ones."""
    given = FrontEnd()
    given.load_state_dict(dm.frontend.state_dict())
    with torch.no_grad():
        given.mean += 1.0
    before = given.state_dict()
    other = AsrDataModule(make_cfg(corpus, tmp_path), frontend=given)
    other.prepare_data()
    other.setup("fit")
    assert all(torch.equal(before[k], v) for k, v in given.state_dict().items())
    empty = FrontEnd()
    other.use_frontend(empty)  # nothing computed: this module never needed the statistics
    assert not empty.has_stats
    late = make_dm(make_cfg(corpus, tmp_path))
    late.prepare_data()
    fresh = FrontEnd()
    late.use_frontend(fresh)  # computed by prepare_data, given when attached
    torch.testing.assert_close(fresh.mean, dm.frontend.mean)


def test_ddp_needs_use_distributed_sampler_off(dm: AsrDataModule) -> None:
    batch = next(iter(dm.val_dataloader()))
    try:
        # A Trainer that wrapped the sampler (use_distributed_sampler=True): the first training
        # batch says so.
        wrapped = SimpleNamespace(sampler=torch.utils.data.SequentialSampler(range(3)))
        dm.trainer = SimpleNamespace(world_size=2, global_rank=0, training=True,  # type: ignore[assignment]
                                     current_epoch=0, train_dataloader=wrapped)
        dm._position = None
        with pytest.raises(ValueError, match="use_distributed_sampler=False"):
            dm.on_after_batch_transfer(dict(batch), 0)  # type: ignore[arg-type]
        dm.trainer = SimpleNamespace(world_size=2, global_rank=1)  # type: ignore[assignment]
        dm.setup("fit")
        loader = dm.train_dataloader()
        shard = [i for b in loader for i in b["ids"]]
        dm.trainer = SimpleNamespace(world_size=2, global_rank=1, training=True,  # type: ignore[assignment]
                                     current_epoch=0, train_dataloader=loader)
        dm._position = None
        dm.on_after_batch_transfer(dict(batch), 0)  # type: ignore[arg-type]  # its own: fine
        assert dm.state_dict()["train_position"] == {"epoch": 0, "batches": 1}
        dm.trainer = SimpleNamespace(world_size=2, global_rank=0)  # type: ignore[assignment]
        other = [i for b in dm.train_dataloader() for i in b["ids"]]
    finally:
        dm.trainer = None
        dm._position = None
    assert not set(shard) & set(other) and len(shard) + len(other) == 24


# ------------------------------------------------------------------------ bad input


@pytest.fixture()
def bad_corpus(corpus: Path, tmp_path: Path) -> Path:
    """The corpus plus a 5 s train utterance and a dev transcript in lower case."""
    root = tmp_path / "bad"
    shutil.copytree(corpus, root)
    write_utterances(root, "train", 190, ["A LONG ONE"], [5.0])
    write_utterances(root, "dev", 191, ["lower case"], [1.0])
    return root


def test_bad_utterances_stop(bad_corpus: Path, tmp_path: Path) -> None:
    module = make_dm(make_cfg(bad_corpus, tmp_path / "cache", tokenizer={"units": "char"}))
    module.setup("fit")
    with pytest.raises(BadUtteranceError, match=r"190-1900-0000.*max_utterance_seconds=4.0"):
        module.train_dataloader()
    with pytest.raises(UnknownCharacterError, match=r"utterance 191-1910-0000: character 'l'"):
        module.val_dataloader()


def test_bad_utterances_skip(
    bad_corpus: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = make_cfg(
        bad_corpus, tmp_path / "cache", tokenizer={"units": "char"}, on_bad_utterance="skip"
    )
    module = make_dm(cfg)
    module.setup("fit")
    assert isinstance(module.tokenizer, CharTokenizer)
    with caplog.at_level(logging.WARNING):
        train_ids = [i for b in module.train_dataloader() for i in b["ids"]]
        dev_ids = [i for b in module.val_dataloader() for i in b["ids"]]
    assert len(train_ids) == 24 and "190-1900-0000" not in train_ids
    assert len(dev_ids) == 6 and "191-1910-0000" not in dev_ids
    assert "skipped 1 utterances longer than max_utterance_seconds=4.0" in caplog.text
    assert "skipped 1 utterances with characters the tokenizer cannot encode" in caplog.text


# ------------------------------------------------------------------------ with Lightning


class _Recorder(L.LightningModule):
    """Records the ids and whether SpecAugment masked, per epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.ids: dict[int, list[str]] = {}
        self.masked: list[bool] = []

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        self.ids.setdefault(self.current_epoch, []).extend(batch["ids"])
        self.masked.append(bool((batch["feats"] == 0).any()))
        return self.weight * batch["feats"].mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_fit_reshuffles_every_epoch(dm: AsrDataModule) -> None:
    model = _Recorder()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        use_distributed_sampler=False,
    )
    trainer.fit(model, datamodule=dm)
    dm.trainer = None
    train = sorted(u.id for u in dm.manifest("train").utterances)
    assert sorted(model.ids[0]) == sorted(model.ids[1]) == train  # each once per epoch
    assert model.ids[0] != model.ids[1]  # set_epoch reached the sampler
    assert all(model.masked)  # SpecAugment ran in training


@pytest.mark.parametrize("bad", [-1, 81, "30"])
def test_cepstral_lifter_errors_name_the_key(bad: object) -> None:
    with pytest.raises(ValueError, match="frontend.cepstral_lifter"):
        FrontEnd({"cepstral_lifter": bad})


def test_cepstral_lifter_reaches_the_batches(corpus: Path, tmp_path: Path) -> None:
    plain = make_dm(make_cfg(corpus, tmp_path))
    liftered = make_dm(make_cfg(corpus, tmp_path), cepstral_lifter=12)
    for dm_ in (plain, liftered):
        dm_.prepare_data()
        dm_.setup("fit")
    a, b = next(iter(plain.val_dataloader())), next(iter(liftered.val_dataloader()))
    assert a["ids"] == b["ids"]
    projection = lifter_matrix(N_MELS, 12)
    torch.testing.assert_close(b["feats"], a["feats"] @ projection, atol=1e-5, rtol=1e-5)


def test_no_training_utterances_is_an_error_not_zero_steps(corpus: Path, tmp_path: Path) -> None:
    dm = make_dm(make_cfg(corpus, tmp_path, on_bad_utterance="skip",
                          max_utterance_seconds=0.01, max_batch_seconds=8.0))
    dm.prepare_data()
    dm.setup("fit")
    with pytest.raises(ValueError, match=r"no training utterances: all 24 .* were left out"):
        dm.train_dataloader()


# ------------------------------------------------------------------ audio that does not decode
def _break_audio(root: Path) -> tuple[str, str]:
    """Truncate one dev file (its header still reads) and make one train file's samples NaN
    (WAV float: soundfile stores them); returns their ids."""
    dev = sorted((root / "dev").rglob("*.flac"))[0]
    data = dev.read_bytes()
    dev.write_bytes(data[: len(data) // 3])
    train = sorted((root / "train").rglob("*.flac"))[0]
    samples, rate = sf.read(train, dtype="float32")
    samples[100:200] = np.nan
    train.unlink()
    sf.write(train.with_suffix(".wav"), samples, rate, subtype="FLOAT")
    return dev.stem, train.stem


def test_undecodable_audio_stops_naming_the_file(corpus: Path, tmp_path: Path) -> None:
    root = tmp_path / "broken"
    shutil.copytree(corpus, root)
    truncated, nan = _break_audio(root)
    module = make_dm(make_cfg(root, tmp_path / "cache", stats_utterances=1000))
    # The statistics read every train file (24 < stats_utterances) before anything trains.
    with pytest.raises(BadUtteranceError, match=rf"{nan}.wav: non-finite|{nan}.wav: audio holds"):
        module.setup("fit")


def test_undecodable_audio_is_skipped_under_skip(
    corpus: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "broken"
    shutil.copytree(corpus, root)
    truncated, nan = _break_audio(root)
    module = make_dm(make_cfg(root, tmp_path / "cache", on_bad_utterance="skip",
                              stats_utterances=1000))
    with caplog.at_level(logging.WARNING):
        module.setup("fit")
        assert int(module.frontend.stats_count[0]) == 23  # the NaN file left out of the stats
        ids = [i for b in module.val_dataloader() for i in b["ids"]]
        train_ids = [i for b in module.train_dataloader() for i in b["ids"]]
    assert truncated not in ids and len(ids) == 5  # of 6: left out of its batch
    assert nan not in train_ids and len(train_ids) == 23
    assert f"{truncated}.flac: unreadable audio" in caplog.text
    assert f"{nan}.wav: audio holds non-finite samples" in caplog.text
