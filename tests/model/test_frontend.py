"""The model's front end: statistics as model state, normalisation, lifter, audio in."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lowbit_asr.data.audio import N_MELS, SAMPLE_RATE, to_model_audio
from lowbit_asr.data.features import FeatureStats, LogMel
from lowbit_asr.model.config import FrontEndConfig
from lowbit_asr.model.frontend import FrontEnd, lifter_matrix
from lowbit_asr.model.rnnt import build_model
from lowbit_asr.quant import QuantPolicy, size_report


def _stats(mean: float = 0.5, std: float = 2.0) -> FeatureStats:
    return FeatureStats(torch.full((N_MELS,), mean), torch.full((N_MELS,), std), 3, 300)


def test_statistics_are_model_state_never_quantized_and_counted() -> None:
    model = build_model({}, 10)
    assert not model.frontend.has_stats
    model.frontend.set_stats(_stats())
    state = model.state_dict()
    assert torch.equal(state["frontend.mean"], torch.full((N_MELS,), 0.5))
    assert state["frontend.stats_count"].tolist() == [3, 300]
    # Only the statistics: the window and mel filterbank follow from constants.
    assert sorted(k for k in state if k.startswith("frontend.")) == [
        "frontend.mean", "frontend.stats_count", "frontend.std"]
    rows = {r.name: r for r in size_report(model, QuantPolicy.from_config(None)).rows}
    assert rows["frontend.mean"].numel == N_MELS and rows["frontend.std"].bits == 32
    assert rows["frontend.stats_count"].bits == 64
    again = build_model({}, 10)
    again.load_state_dict(state)
    assert again.frontend.has_stats and torch.equal(again.frontend.std, model.frontend.std)


def test_a_front_end_without_statistics_refuses_to_normalise() -> None:
    with pytest.raises(RuntimeError, match="no feature statistics"):
        FrontEnd().normalise(torch.zeros(5, N_MELS))
    with pytest.raises(ValueError, match="no frames"):
        FrontEnd().set_stats(FeatureStats(torch.zeros(N_MELS), torch.ones(N_MELS), 0, 0))
    with pytest.raises(ValueError, match=r"\(80,\)"):
        FrontEnd().set_stats(FeatureStats(torch.zeros(3), torch.ones(3), 1, 10))


def test_global_and_utterance_normalisation() -> None:
    x = torch.randn(7, N_MELS)
    glob = FrontEnd()
    glob.set_stats(_stats())
    torch.testing.assert_close(glob.normalise(x), (x - 0.5) / 2.0)
    per_utt = FrontEnd({"normalisation": "utterance"})
    per_utt.set_stats(_stats())
    torch.testing.assert_close(per_utt.normalise(x), (x - x.mean(0)) / 2.0)
    with pytest.raises(ValueError, match="frontend.normalisation"):
        FrontEndConfig(normalisation="speaker")


def test_utterance_mean_and_variance_normalisation() -> None:
    x = torch.randn(40, N_MELS) * torch.linspace(0.5, 3.0, N_MELS) + 4.0
    x[:, 7] = -11.5  # a constant bin (a silence floor): 0, not a division by 0
    mvn = FrontEnd({"normalisation": "utterance_mvn"})
    mvn.set_stats(_stats())  # the train statistics are not used
    y = mvn.normalise(x)
    assert torch.isfinite(y).all() and torch.equal(y[:, 7], torch.zeros(40))
    torch.testing.assert_close(y.mean(0), torch.zeros(N_MELS), atol=1e-5, rtol=0)
    others = [b for b in range(N_MELS) if b != 7]
    torch.testing.assert_close(y[:, others].std(0, unbiased=False),
                               torch.ones(len(others)), atol=1e-4, rtol=0)
    # Invariant to each bin's own offset and scale (what differs between voices and engines).
    gain, offset = torch.rand(N_MELS) + 0.5, torch.randn(N_MELS)
    torch.testing.assert_close(mvn.normalise(x * gain + offset)[:, others], y[:, others],
                               atol=1e-4, rtol=0)


def test_lifter_matrix_keeps_the_envelope_and_removes_fine_structure() -> None:
    bins = N_MELS
    p = lifter_matrix(bins, 30)
    assert torch.allclose(p, p.T) and torch.allclose(p @ p, p, atol=1e-5)  # a projection
    assert int((torch.linalg.eigvalsh(p.double()) > 0.5).sum()) == 30  # keeps 30 directions
    assert torch.allclose(lifter_matrix(bins, bins), torch.eye(bins), atol=1e-5)
    k = torch.arange(bins, dtype=torch.float32)
    envelope = torch.cos(torch.pi * 3 * (k + 0.5) / bins) + 0.5  # slow: "formants"
    ripple = torch.cos(torch.pi * 40 * (k + 0.5) / bins)  # period 4 bins: "pitch harmonics"
    torch.testing.assert_close(envelope @ p, envelope, atol=1e-4, rtol=0)
    assert (ripple @ p).abs().max() < 1e-4
    torch.testing.assert_close((envelope + ripple) @ p, envelope, atol=1e-4, rtol=0)


def test_the_lifter_follows_normalisation() -> None:
    frontend = FrontEnd({"normalisation": "utterance", "cepstral_lifter": 20})
    frontend.set_stats(_stats(0.0, 2.0))
    x = torch.randn(7, N_MELS)
    expected = ((x - x.mean(0)) / 2.0) @ lifter_matrix(N_MELS, 20)
    torch.testing.assert_close(frontend.normalise(x), expected)
    for bad in (-1, 81, 2.5, True):
        with pytest.raises(ValueError, match="frontend.cepstral_lifter"):
            FrontEndConfig(cepstral_lifter=bad)  # type: ignore[arg-type]


def test_waveform_in_any_rate_and_channels() -> None:
    frontend = FrontEnd()
    frontend.set_stats(_stats())
    rng = np.random.default_rng(0)
    mono = rng.standard_normal(SAMPLE_RATE).astype(np.float32) * 0.1
    direct = frontend.normalise(LogMel()(torch.from_numpy(mono)))
    torch.testing.assert_close(frontend(torch.from_numpy(mono), SAMPLE_RATE), direct)
    # Stereo (channels, samples): the channels are averaged.
    stereo = np.stack([mono + 0.01, mono - 0.01])
    torch.testing.assert_close(frontend(torch.from_numpy(stereo), SAMPLE_RATE), direct,
                               atol=1e-4, rtol=1e-4)
    # 22.05 kHz: resampled to 16 kHz, one second either way.
    at_22k = to_model_audio(mono, SAMPLE_RATE, 22050).numpy()
    assert at_22k.shape == (22050,)
    assert frontend(torch.from_numpy(at_22k), 22050).shape == direct.shape
    for bad_rate in (0, -16000, 16000.0):
        with pytest.raises(ValueError, match="sample_rate"):
            frontend(torch.from_numpy(mono), bad_rate)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-finite"):
        frontend(torch.full((1000,), float("nan")), SAMPLE_RATE)
    with pytest.raises(ValueError, match="channels, samples"):
        frontend(torch.zeros(1, 2, 100), SAMPLE_RATE)
