"""Model configs: validation messages, dict/OmegaConf loading, every shipped YAML builds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lowbit_asr.model import (
    DecodingConfig,
    EncoderConfig,
    JoinerConfig,
    ModelConfig,
    PredictorConfig,
    build_model,
    count_parameters,
)

CONF_DIR = Path(__file__).resolve().parents[2] / "conf" / "model"
YAMLS = sorted(p.stem for p in CONF_DIR.glob("*.yaml"))

# config name -> (vocab size, expected millions of parameters, tolerance in millions)
EXPECTED_SIZE = {
    "conformer_tiny": (256, 4.5, 1.5),
    "conformer_s": (1024, 10.3, 0.5),
    "conformer_m": (1024, 31.0, 2.0),
    "conformer_l": (1024, 118.8, 3.0),
}


@pytest.mark.parametrize(
    ("cls", "kwargs", "field"),
    [
        (EncoderConfig, {"d_model": 144, "num_heads": 5}, "encoder.d_model"),
        (EncoderConfig, {"d_model": 12, "num_heads": 4}, "encoder.d_model / encoder.num_heads"),
        (EncoderConfig, {"subsampling_factor": 5}, "encoder.subsampling_factor"),
        (EncoderConfig, {"num_layers": 0}, "encoder.num_layers"),
        (EncoderConfig, {"conv_kernel": -3}, "encoder.conv_kernel"),
        (EncoderConfig, {"subsampling_channels": 0}, "encoder.subsampling_channels"),
        (EncoderConfig, {"dropout": 1.5}, "encoder.dropout"),
        (EncoderConfig, {"attention_dropout": -0.1}, "encoder.attention_dropout"),
        (PredictorConfig, {"num_layers": 3}, "predictor.num_layers"),
        (PredictorConfig, {"hidden_dim": 0}, "predictor.hidden_dim"),
        (PredictorConfig, {"kind": "gru"}, "predictor.kind"),
        (PredictorConfig, {"kind": "stateless", "num_layers": 2}, "predictor.num_layers"),
        (PredictorConfig, {"kind": "stateless", "context_size": 0}, "predictor.context_size"),
        (PredictorConfig, {"context_size": 3}, "predictor.context_size"),
        (JoinerConfig, {"dim": 0}, "joiner.dim"),
        (DecodingConfig, {"method": "viterbi"}, "decoding.method"),
        (DecodingConfig, {"beam_size": 0}, "decoding.beam_size"),
        (DecodingConfig, {"max_symbols_per_frame": 0}, "decoding.max_symbols_per_frame"),
        (ModelConfig, {"ctc_weight": -1.0}, "ctc_weight"),
        (ModelConfig, {"joint_chunk_size": -2}, "joint_chunk_size"),
        (ModelConfig, {"rnnt_loss_impl": "k2"}, "rnnt_loss_impl"),
        (ModelConfig, {"encoder": {"d_model": 100, "num_heads": 3}}, "encoder.d_model"),
        (ModelConfig, {"predictor": {"hidden": 10}}, "predictor: unknown field(s) ['hidden']"),
    ],
)
def test_validation_errors_name_the_field(cls: type, kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError) as err:
        cls(**kwargs)
    assert field in str(err.value)


def test_feature_dim_too_small_for_the_front_end_is_named() -> None:
    cfg = ModelConfig(encoder=EncoderConfig(feat_dim=10, subsampling_factor=8))
    with pytest.raises(ValueError, match="encoder.feat_dim"):
        build_model(cfg, 10)


@pytest.mark.parametrize("name", YAMLS)
def test_nested_dict_dictconfig_and_structured_merge_agree(name: str) -> None:
    raw = yaml.safe_load((CONF_DIR / f"{name}.yaml").read_text())
    from_dict = ModelConfig(**raw)
    assert isinstance(from_dict.encoder, EncoderConfig)
    assert isinstance(from_dict.decoding, DecodingConfig)
    from_dictconfig = ModelConfig(**OmegaConf.create(raw))
    merged = OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.create(raw))
    from_structured = OmegaConf.to_object(merged)
    assert from_dict == from_dictconfig == from_structured
    # Every YAML spells out every field, so the file alone documents the model.
    assert OmegaConf.to_container(merged) == raw


@pytest.mark.parametrize("name", YAMLS)
def test_every_yaml_composes_with_hydra_and_builds(name: str) -> None:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=name)
    vocab, millions, tolerance = EXPECTED_SIZE[name]
    # Big models are built on the meta device: shapes and counts without memory or init time.
    with torch.device("meta"):
        model = build_model(OmegaConf.to_container(cfg), vocab)
    assert count_parameters(model) / 1e6 == pytest.approx(millions, abs=tolerance)
    assert model.summary().endswith(")")


def test_tiny_yaml_runs_forward_and_decode() -> None:
    raw = yaml.safe_load((CONF_DIR / "conformer_tiny.yaml").read_text())
    torch.manual_seed(0)
    model = build_model(raw, 256)
    feats, feat_lens = torch.randn(2, 64, 80), torch.tensor([64, 50])
    targets, target_lens = torch.randint(1, 256, (2, 5)), torch.tensor([5, 3])
    out = model(feats, feat_lens, targets, target_lens)
    assert torch.isfinite(out["loss"])
    hyps = model.eval().decode(feats, feat_lens)
    assert len(hyps) == 2 and all(isinstance(t, int) for h in hyps for t in h)


def test_shipped_configs_cover_the_four_sizes() -> None:
    assert set(YAMLS) >= set(EXPECTED_SIZE)
