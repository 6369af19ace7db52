"""Speed / VTLP perturbation on log-mel features (lowbit_asr.data.perturb)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from pipeline_corpus import write_corpus

from lowbit_asr.data.config import DatasetConfig
from lowbit_asr.data.datamodule import AsrDataModule
from lowbit_asr.data.features import N_MELS
from lowbit_asr.data.perturb import Perturb, PerturbConfig, _hz_to_mel, _mel_to_hz
from lowbit_asr.model.frontend import FrontEnd


def centre_hz(bin_: int) -> float:
    """Centre frequency of torchaudio's mel filter ``bin_`` (80 filters, 0-8 kHz, HTK)."""
    top = _hz_to_mel(torch.tensor(8000.0, dtype=torch.float64))
    return float(_mel_to_hz(top / (N_MELS + 1) * (bin_ + 1)))


def peak_batch(bin_: int, frames: int = 50) -> torch.Tensor:
    """One utterance whose every frame has a single spectral peak at ``bin_``."""
    x = torch.full((1, frames, N_MELS), -1.0)
    x[0, :, bin_] = 5.0
    return x


def test_identity_factors_leave_the_batch_unchanged() -> None:
    perturb = Perturb(PerturbConfig())
    feats = torch.randn(2, 30, N_MELS)
    out, lens = perturb(feats, torch.tensor([30, 17]), ["a", "b"], epoch=0)
    assert not PerturbConfig().active
    assert torch.equal(out[0], feats[0]) and torch.equal(out[1, :17], feats[1, :17])
    assert lens.tolist() == [30, 17] and torch.all(out[1, 17:] == 0)


@pytest.mark.parametrize("speed", [0.9, 1.1, 1.25])
def test_speed_changes_duration_and_reads_the_input_at_t_times_s(speed: float) -> None:
    perturb = Perturb(PerturbConfig())
    ramp = torch.arange(200, dtype=torch.float32)[:, None].expand(200, N_MELS)  # value = frame
    out = perturb.utterance(ramp, speed=speed, warp=1.0 / speed)  # time only: s * a = 1
    assert out.shape == (round(200 / speed), N_MELS)
    expected = (torch.arange(out.shape[0], dtype=torch.float32) * speed).clamp(max=199)
    torch.testing.assert_close(out[:, 0], expected)


@pytest.mark.parametrize(("bin_", "warp"), [(20, 1.2), (40, 0.85), (30, 1.1)])
def test_frequency_warp_moves_a_spectral_peak_to_warp_times_its_frequency(
    bin_: int, warp: float
) -> None:
    perturb = Perturb(PerturbConfig())
    out = perturb.utterance(peak_batch(bin_)[0], speed=1.0, warp=warp)
    assert out.shape == (50, N_MELS)  # duration kept
    moved = int(out[0].argmax())
    target = warp * centre_hz(bin_)
    nearest = min(range(N_MELS), key=lambda m: abs(centre_hz(m) - target))
    assert abs(moved - nearest) <= 1 and moved != bin_


def test_speed_scales_frequencies_too() -> None:
    perturb = Perturb(PerturbConfig())
    out = perturb.utterance(peak_batch(30, frames=100)[0], speed=1.15, warp=1.0)
    assert out.shape[0] == round(100 / 1.15)
    target = 1.15 * centre_hz(30)
    nearest = min(range(N_MELS), key=lambda m: abs(centre_hz(m) - target))
    assert abs(int(out[0].argmax()) - nearest) <= 1 and int(out[0].argmax()) > 30


def test_factors_depend_on_seed_epoch_and_id_only() -> None:
    cfg = PerturbConfig(speed=[0.9, 1.1], freq_warp=[0.8, 1.2])
    perturb = Perturb(cfg, seed=3)
    s, a = perturb.factors("spk-ch-0001", epoch=2)
    assert 0.9 <= s <= 1.1 and 0.8 <= a <= 1.2
    assert Perturb(cfg, seed=3).factors("spk-ch-0001", epoch=2) == (s, a)
    assert perturb.factors("spk-ch-0001", epoch=3) != (s, a)
    assert Perturb(cfg, seed=4).factors("spk-ch-0001", epoch=2) != (s, a)
    # An utterance is perturbed the same whatever its batch mates (workers, ranks, resume).
    feats = torch.randn(3, 40, N_MELS)
    lens = torch.tensor([40, 33, 12])
    together, together_lens = perturb(feats, lens, ["x", "spk-ch-0001", "y"], epoch=2)
    alone, alone_lens = perturb(feats[1:2, :33], lens[1:2], ["spk-ch-0001"], epoch=2)
    assert together_lens[1] == alone_lens[0]
    assert torch.equal(together[1, : alone_lens[0]], alone[0])
    assert torch.all(together[2, together_lens[2] :] == 0)  # still zero-padded


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"speed": [1.1, 0.9]}, "perturb.speed"),
        ({"speed": [0.9]}, "perturb.speed"),
        ({"freq_warp": [0.3, 1.0]}, "perturb.freq_warp"),
        ({"freq_warp": "1.0"}, "perturb.freq_warp"),
        ({"speed": [True, 1.0]}, "perturb.speed"),
    ],
)
def test_config_errors_name_the_key(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PerturbConfig(**kwargs)  # type: ignore[arg-type]


def test_omegaconf_lists_are_accepted() -> None:
    node = OmegaConf.create({"root": "x", "perturb": {"speed": [0.9, 1.1]}})
    cfg = DatasetConfig(**node)  # type: ignore[arg-type]
    assert cfg.perturb.speed == [0.9, 1.1] and cfg.perturb.active
    with pytest.raises(ValueError, match="perturb: unknown field"):
        DatasetConfig(root="x", perturb={"tempo": [0.9, 1.1]})  # type: ignore[arg-type]


def test_datamodule_perturbs_training_batches_only(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    write_corpus(corpus)
    dm = AsrDataModule(
        DatasetConfig(
            root=str(corpus),
            cache_dir=str(tmp_path / "cache"),
            tokenizer={"units": "char"},  # type: ignore[arg-type]
            num_workers=0,
            max_batch_seconds=10.0,
            max_utterance_seconds=10.0,
            perturb=PerturbConfig(speed=[0.8, 0.85], freq_warp=[1.0, 1.0]),
            specaugment={"freq_masks": 0, "time_masks": 0},  # type: ignore[arg-type]
        ),
        frontend=FrontEnd(),
    )
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    try:
        dm.trainer = SimpleNamespace(training=False, current_epoch=0)  # type: ignore[assignment]
        same = dm.on_after_batch_transfer(dict(batch), 0)  # type: ignore[arg-type]
        dm.trainer = SimpleNamespace(training=True, current_epoch=0)  # type: ignore[assignment]
        slowed = dm.on_after_batch_transfer(dict(batch), 0)  # type: ignore[arg-type]
    finally:
        dm.trainer = None
    assert torch.equal(same["feats"], batch["feats"])
    # Slowed down by 0.8-0.85: every utterance 1/0.85..1/0.8 times as long.
    ratio = slowed["feat_lens"].double() / batch["feat_lens"].double()
    assert torch.all(ratio >= 1 / 0.85 - 0.05) and torch.all(ratio <= 1 / 0.8 + 0.05)
    assert slowed["feats"].shape[1] == int(slowed["feat_lens"].max())
