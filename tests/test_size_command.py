"""`lowbit-asr size` composes every quantizer config against a model and prints its table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lowbit_asr.model.rnnt import build_model
from lowbit_asr.quant import QuantPolicy, size_report

CONF = Path(__file__).resolve().parents[1] / "conf"
QUANTIZERS = sorted(p.stem for p in (CONF / "quantizer").glob("*.yaml"))


@pytest.fixture(scope="module")
def tiny_model():
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("size")
    return build_model(OmegaConf.to_container(cfg.model, resolve=True), cfg.vocab_size)


@pytest.mark.parametrize("name", QUANTIZERS)
def test_every_quantizer_config_resolves_on_the_tiny_model(name, tiny_model):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("size", overrides=[f"quantizer={name}"])
    policy = QuantPolicy.from_config(OmegaConf.to_container(cfg.quantizer, resolve=True))
    assert policy.name == name
    report = size_report(tiny_model, policy)
    if name == "none":
        assert report.quantized_params == 0
    else:
        # Every weight is quantized (only biases and norms stay float); the scale overhead keeps
        # bits/weight above b. Mixed policies lie between their lowest and highest widths.
        widths = sorted({s.bits for s in [policy.default, *(r.spec for r in policy.rules)] if s})
        low, high = widths[0], widths[-1]
        assert report.quantized_params > 0.99 * (report.quantized_params + report.float_params)
        assert low < report.bits_per_quantized_weight < high + 4.5
        assert report.total_bytes < report.float32_bytes * (high + 4.5) / 32


def test_size_command_prints_the_table():
    out = subprocess.run(
        [sys.executable, "-m", "lowbit_asr.cli", "size", "quantizer=int2_asym_g16"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert "| encoder.blocks.0.conv.batch_norm.running_var | buffer |" in out
    assert "int2-asym-g16-f16" in out and "**Total:" in out
    bad = subprocess.run(
        [sys.executable, "-m", "lowbit_asr.cli", "size", "quantizer=int2_asym",
         "quantizer.default.bits=9"],
        capture_output=True, text=True,
    )
    assert bad.returncode != 0 and "QuantSpec.bits" in bad.stderr
