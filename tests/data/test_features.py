"""Log-mel frames, the feature cache, the train statistics, SpecAugment."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from pipeline_corpus import RATE, tone_noise, write_corpus

from lowbit_asr.data import features as feat
from lowbit_asr.data.audio import N_MELS
from lowbit_asr.data.features import (
    FeatureSource,
    FeatureStats,
    LogMel,
    compute_stats,
    feature_cache_dir,
    load_or_compute_stats,
    num_frames,
    precompute_features,
    stats_subsample,
)
from lowbit_asr.data.librispeech import Utterance, read_split
from lowbit_asr.data.specaugment import SpecAugment, SpecAugmentConfig


@pytest.fixture(scope="module")
def train(tmp_path_factory: pytest.TempPathFactory) -> list[Utterance]:
    """The synthetic corpus's train utterances."""
    root = write_corpus(tmp_path_factory.mktemp("corpus"), {"train": 16})
    return read_split(root, "train", cache_dir=tmp_path_factory.mktemp("cache")).utterances


@pytest.mark.parametrize("samples", [1, 159, 160, 161, 16000, 16001, 12345])
def test_log_mel_frames(samples: int) -> None:
    audio = torch.from_numpy(tone_noise(samples / RATE, np.random.default_rng(0)))
    feats = LogMel()(audio)
    assert feats.shape == (1 + samples // 160, N_MELS) == (num_frames(samples), N_MELS)
    assert feats.dtype == torch.float32


def test_log_mel_floors_silence_and_batches() -> None:
    logmel = LogMel()
    silence = logmel(torch.zeros(8000))
    assert torch.all(silence == torch.log(torch.tensor(feat.LOG_FLOOR)))
    audio = torch.from_numpy(tone_noise(1.0, np.random.default_rng(1)))
    both = logmel(torch.stack([audio, torch.zeros_like(audio)]))  # (2, frames, 80)
    torch.testing.assert_close(both[0], logmel(audio))


def test_cache_matches_extraction_and_follows_the_audio(
    train: list[Utterance], tmp_path: Path
) -> None:
    source = FeatureSource(feature_cache_dir(tmp_path))
    report = precompute_features(train, source)
    assert (report.utterances, report.extracted) == (16, 16)
    assert report.seconds_per_hour > 0
    assert precompute_features(train, source).extracted == 0  # resumable, nothing redone
    for u in train[:3]:
        assert source.cache_file(u).exists()  # type: ignore[union-attr]
        # float16 on disk: log-mel values up to ~10 keep about 3 decimal digits.
        torch.testing.assert_close(source(u), source.extract(u), atol=1e-2, rtol=1e-3)
    # Rewritten audio (another size and mtime) is a cache miss, never a stale hit.
    u = train[0]
    old = source.cache_file(u)
    sf.write(u.path, tone_noise(1.0, np.random.default_rng(9)), RATE, subtype="PCM_16")
    os.utime(u.path, ns=(1, 1))
    assert source.cache_file(u) != old
    assert source(u).shape[0] == num_frames(RATE)


def test_stats_normalise_train_to_zero_mean_unit_variance(train: list[Utterance]) -> None:
    source = FeatureSource()
    stats = compute_stats(train, source, max_utterances=1000)  # all of them: exact
    assert stats.utterances == len(train)
    frames = torch.cat([source(u) for u in train]).double()  # (sum T, 80)
    assert frames.shape[0] == stats.frames
    torch.testing.assert_close(stats.mean.double(), frames.mean(0), atol=1e-4, rtol=0)
    torch.testing.assert_close(stats.std.double(), frames.std(0, unbiased=False),
                               atol=1e-4, rtol=0)
    restored = FeatureStats.from_dict(stats.to_dict())
    assert torch.equal(restored.mean, stats.mean) and torch.equal(restored.std, stats.std)
    # A cache written when the statistics also said how to apply them still reads.
    assert FeatureStats.from_dict({**stats.to_dict(), "normalisation": "global", "lifter": 0})


def test_stats_subsample_is_even_and_bounded(train: list[Utterance]) -> None:
    chosen = stats_subsample(train, 4)
    assert [train.index(u) for u in chosen] == [0, 4, 8, 12]
    assert stats_subsample(train, 100) == train
    assert compute_stats(train, FeatureSource(), max_utterances=4).utterances == 4


def test_stats_cache_is_reused(
    train: list[Utterance], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = load_or_compute_stats(train, FeatureSource(), tmp_path, max_utterances=5)
    assert len(list(tmp_path.glob("featstats-*.json"))) == 1

    def no_compute(*args: object, **kwargs: object) -> None:
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(feat, "compute_stats", no_compute)
    again = load_or_compute_stats(train, FeatureSource(), tmp_path, max_utterances=5)
    torch.testing.assert_close(again.mean, first.mean)
    with pytest.raises(AssertionError, match="recomputed"):  # another subsample: another key
        load_or_compute_stats(train, FeatureSource(), tmp_path, max_utterances=6)


def _batch(lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    feats = torch.randn(len(lengths), max(lengths), N_MELS) + 5  # never 0 before masking
    return feats, torch.tensor(lengths), [f"utt-{i}" for i in range(len(lengths))]


def test_spec_augment_is_deterministic_per_seed_epoch_and_id() -> None:
    feats, lens, ids = _batch([300, 1000, 120])
    aug = SpecAugment(SpecAugmentConfig(), seed=3)
    a = aug(feats, lens, ids, epoch=0)
    torch.testing.assert_close(a, aug(feats, lens, ids, epoch=0))
    assert not torch.equal(a, aug(feats, lens, ids, epoch=1))
    assert not torch.equal(a, SpecAugment(SpecAugmentConfig(), seed=4)(feats, lens, ids, 0))
    # An utterance's masks do not depend on its batch mates or position.
    alone = aug(feats[1:2], lens[1:2], ids[1:2], epoch=0)
    torch.testing.assert_close(alone[0], a[1])
    assert torch.all((a == 0) | (a == feats))  # masked values become 0, the rest is untouched


def test_spec_augment_adapts_to_length() -> None:
    cfg = SpecAugmentConfig(time_masks=10, time_mask_multiplicity=0.04, time_mask_ratio=0.05)
    aug = SpecAugment(cfg)
    for frames, count in [(50, 2), (100, 4), (1000, 10)]:
        times, freqs = aug.masks(frames, "x", 0)
        assert len(times) == count and len(freqs) == 2
        assert all(0 <= r.start <= r.stop <= frames and len(r) <= 0.05 * frames for r in times)
        assert all(0 <= r.start <= r.stop <= N_MELS and len(r) <= 27 for r in freqs)


def test_spec_augment_off() -> None:
    cfg = SpecAugmentConfig(freq_masks=0, time_masks=0)
    assert not cfg.active
    feats, lens, ids = _batch([200, 100])
    torch.testing.assert_close(SpecAugment(cfg)(feats, lens, ids, 0), feats)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"freq_masks": -1}, "specaugment.freq_masks"),
        ({"freq_mask_width": 2.5}, "specaugment.freq_mask_width"),
        ({"time_masks": -3}, "specaugment.time_masks"),
        ({"time_mask_ratio": 1.5}, "specaugment.time_mask_ratio"),
        ({"time_mask_multiplicity": -0.1}, "specaugment.time_mask_multiplicity"),
    ],
)
def test_spec_augment_config_errors_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SpecAugmentConfig(**kwargs)  # type: ignore[arg-type]
