"""Size accounting against totals computed by hand (METHOD.md, 'Stored form and size ...')."""

from __future__ import annotations

import pytest
from torch import nn

from lowbit_asr.quant import QuantPolicy, prepare, size_report


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(32, 16)  # weight 16×32 = 512 (K = 32), bias 16
        self.conv = nn.Conv1d(16, 8, 3)  # weight 8×16×3 = 384 (K = 48), bias 8
        self.bn = nn.BatchNorm1d(8)  # weight 8, bias 8; buffers mean 8, var 8, count 1 (int64)
        self.emb = nn.Embedding(10, 16)  # weight 10×16 = 160 (K = 16)


# Float parts shared by the first two cases: 40 float parameters (lin.bias 16, conv.bias 8,
# bn.weight 8, bn.bias 8) and 16 float buffers at 32 bits, plus the int64 batch counter.
FLOAT32_REST = 40 * 32 + 16 * 32 + 64

CASES = [
    pytest.param(
        {"default": {"bits": 2}},
        # int2 symmetric per-channel, float16 scales (one per output channel)
        (512 * 2 + 16 * 16) + (384 * 2 + 8 * 16) + (160 * 2 + 10 * 16) + FLOAT32_REST,
        id="int2-sym-per-channel-f16",
    ),
    pytest.param(
        {"default": {"bits": 2, "symmetric": False, "group_size": 16, "scale_dtype": "float32"}},
        # groups: lin 16×2, conv 8×3, emb 10×1; asymmetric stores scale + offset (2 × 32 bits)
        (512 * 2 + 32 * 64) + (384 * 2 + 24 * 64) + (160 * 2 + 10 * 64) + FLOAT32_REST,
        id="int2-asym-g16-f32",
    ),
    pytest.param(
        {"default": {"bits": 4, "symmetric": False, "sub_channels": 2, "scale_dtype": "bfloat16"},
         "rules": [{"pattern": "emb.*", "spec": None}], "float_bits": 16},
        # lin 16×2 groups, conv 8×2 groups, 2 × 16-bit per group; emb and the rest in float16
        (512 * 4 + 32 * 32) + (384 * 4 + 16 * 32) + 160 * 16 + 40 * 16 + 16 * 16 + 64,
        id="int4-asym-sc2-bf16-emb-float16",
    ),
    pytest.param({}, 1096 * 32 + 16 * 32 + 64, id="float"),
]


@pytest.mark.parametrize("config,expected_bits", CASES)
def test_totals_match_hand_count(config, expected_bits):
    policy = QuantPolicy.from_config(config)
    report = size_report(Small(), policy)
    assert report.total_bits == expected_bits
    assert report.total_bytes == -(-expected_bits // 8)
    assert report.total_mb == pytest.approx(report.total_bytes / 1e6)
    # Same numbers whether or not the model is already prepared.
    assert size_report(prepare(Small(), policy), policy).total_bits == expected_bits
    assert report.float32_bytes == (1096 * 32 + 16 * 32 + 64) // 8


def test_rows_name_every_tensor_with_its_format():
    policy = QuantPolicy.from_config({
        "default": {"bits": 2, "symmetric": False, "group_size": 16},
        "rules": [{"pattern": "emb.weight", "spec": None}],
    })
    report = size_report(prepare(Small(), policy), policy)
    rows = {r.name: r for r in report.rows}
    assert set(rows) == {
        "lin.weight", "lin.bias", "conv.weight", "conv.bias", "bn.weight", "bn.bias",
        "emb.weight", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked",
    }
    assert rows["lin.weight"].format == "int2-asym-g16-f16"
    assert (rows["lin.weight"].groups, rows["lin.weight"].scale_bits) == (32, 32 * 32)
    assert rows["emb.weight"].format == "float32"
    assert rows["emb.weight"].source.startswith("rules[0]")
    assert rows["bn.running_var"].kind == "buffer"
    assert rows["bn.num_batches_tracked"].format == "int64"
    assert report.quantized_params == 512 + 384
    assert report.bits_per_quantized_weight == pytest.approx((896 * 2 + 56 * 32) / 896)
    table = report.to_markdown()
    assert "| conv.weight | param | 8×16×3 | int2-asym-g16-f16 | 2 | 24 | 768 |" in table
    assert f"{report.total_bytes:,} bytes" in table
    assert report.to_dict()["summary"]["total_bits"] == report.total_bits


def test_size_report_validates_the_policy():
    policy = QuantPolicy.from_config({"rules": [{"pattern": "decoder.*", "spec": {"bits": 2}}]})
    with pytest.raises(ValueError, match="matches no quantizable weight"):
        size_report(Small(), policy)
