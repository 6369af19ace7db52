"""Fine-tuning from a checkpoint: its feature statistics, applied the way the config asks."""

from __future__ import annotations

import logging

import pytest
import torch

from lowbit_asr.commands.train import feature_options
from lowbit_asr.data.datamodule import DatasetConfig
from lowbit_asr.data.features import N_MELS, FeatureStats


def test_the_checkpoint_statistics_follow_the_config(caplog: pytest.LogCaptureFixture) -> None:
    trained = FeatureStats(torch.randn(N_MELS), torch.rand(N_MELS) + 1, 10, 1000, "utterance")
    same = DatasetConfig(root="x", normalisation="utterance")
    with caplog.at_level(logging.WARNING):
        assert feature_options(trained, same, "float.ckpt") is trained
    assert not caplog.records
    liftered = DatasetConfig(root="x", normalisation="global", cepstral_lifter=24)
    with caplog.at_level(logging.WARNING):
        applied = feature_options(trained, liftered, "float.ckpt")
    assert (applied.normalisation, applied.lifter) == ("global", 24)
    assert torch.equal(applied.mean, trained.mean) and torch.equal(applied.std, trained.std)
    message = caplog.records[-1].getMessage()
    assert "float.ckpt" in message and "cepstral_lifter=0" in message and "24" in message
