"""Learned scales (``scale: learned``, LSQ / LSQ+): they start as the min/max grid (so the first
forward pass equals min/max fake quantization exactly), get LSQ's gradients, are stored and
counted as the weight's scales (no extra bytes), start from loaded float weights, and take no
weight decay."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit_asr.quant import QuantPolicy, QuantSpec, fake_quantize, prepare, size_report
from lowbit_asr.quant.fake_quant import (
    dequantize,
    fake_quantize_learned,
    initial_grid,
    lsq_gradient_scale,
    quantize,
)
from lowbit_asr.quant.policy import logical_name
from lowbit_asr.quant.prepare import (
    fake_quant_modules,
    is_quantizer_parameter,
    load_float_state_dict,
)
from lowbit_asr.train.optim import OptimConfig, build_optimizer

SPECS = [
    {"bits": 2, "symmetric": False},
    {"bits": 4, "symmetric": True, "group_size": 8},
    {"bits": 3, "symmetric": False, "sub_channels": 2, "scale_dtype": "bfloat16"},
    {"bits": 2, "symmetric": False, "clip_search": {"min": 0.5, "steps": 6, "per_channel": True}},
    {"bits": 8, "symmetric": True, "clip": 0.9, "scale_dtype": "float32"},
]


def _weight(seed: int = 0) -> torch.Tensor:
    return torch.randn(12, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("config", SPECS)
def test_learned_grid_starts_as_the_min_max_grid_bit_for_bit(config):
    minmax = QuantSpec(**config)
    learned = QuantSpec(**config, scale="learned")
    w = _weight()
    g = minmax.group_size_for(32)
    scale, offset = initial_grid(w, learned, g)
    assert torch.equal(fake_quantize_learned(w, learned, g, scale, offset),
                       fake_quantize(w, minmax, group_size=g))
    stored = quantize(w, learned, group_size=g, scale=scale, offset=offset)
    assert torch.equal(dequantize(stored), fake_quantize(w, minmax, group_size=g))
    assert learned.short() == minmax.short() + "-lsq"


def test_a_learned_spec_needs_its_grid_and_a_min_max_one_refuses_one():
    spec = QuantSpec(bits=2, symmetric=False, scale="learned")
    with pytest.raises(ValueError, match="learned scales: pass its trained scale and offset"):
        quantize(_weight(), spec)
    scale, offset = initial_grid(_weight(), spec, 32)
    with pytest.raises(ValueError, match="for learned scales only"):
        quantize(_weight(), QuantSpec(bits=2, symmetric=False), scale=scale, offset=offset)
    with pytest.raises(ValueError, match="QuantSpec.scale must be one of"):
        QuantSpec(bits=2, scale="ema")


def test_lsq_gradients():
    spec = QuantSpec(bits=2, symmetric=False, scale="learned", scale_dtype="float32")
    w = _weight().requires_grad_(True)
    scale, offset = initial_grid(w, spec, 32)
    scale = (scale * 0.7).requires_grad_(True)  # a smaller step: some weights clip
    offset = offset.clone().requires_grad_(True)
    upstream = torch.randn(12, 32, generator=torch.Generator().manual_seed(1))
    (fake_quantize_learned(w, spec, 32, scale, offset) * upstream).sum().backward()
    x = ((w.detach()[:, None, :] - offset.detach()) / scale.detach())  # (O, 1, 32)
    q = torch.floor(x + 0.5).clamp(spec.qmin, spec.qmax)
    inside = (x >= spec.qmin) & (x <= spec.qmax)  # LSQ's condition: on x, not on its rounding
    gscale = lsq_gradient_scale(spec, 32)
    assert gscale == pytest.approx(1 / (32 * 3) ** 0.5)
    d_scale = torch.where(inside, q - x, q)  # clipped: q is qmin or qmax
    expected_scale = (upstream[:, None, :] * d_scale).sum(-1, keepdim=True) * gscale
    expected_offset = (upstream[:, None, :] * (~inside)).sum(-1, keepdim=True) * gscale
    assert torch.allclose(scale.grad, expected_scale, atol=1e-5)
    assert torch.allclose(offset.grad, expected_offset, atol=1e-5)
    assert (~inside).any() and inside.any()
    assert torch.allclose(w.grad, upstream * inside[:, 0, :], atol=1e-6)  # clipped: none


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 8))


LEARNED = QuantPolicy.from_config({"default": {"bits": 2, "symmetric": False,
                                               "scale": "learned", "group_size": 8}})
MINMAX = QuantPolicy.from_config({"default": {"bits": 2, "symmetric": False, "group_size": 8}})


def test_learned_grids_add_no_size_and_take_no_weight_decay():
    model = prepare(_model(), LEARNED)
    grids = [n for n, _ in model.named_parameters() if is_quantizer_parameter(n)]
    assert len(grids) == 4  # scale and offset of both layers
    assert size_report(model, LEARNED).total_bits == size_report(_model(), MINMAX).total_bits
    optimiser = build_optimizer(model.named_parameters(), OptimConfig(weight_decay=0.1))
    decayed = {id(p) for group in optimiser.param_groups if group["weight_decay"] > 0
               for p in group["params"]}
    named = dict(model.named_parameters())
    assert not any(id(named[n]) in decayed for n in grids)
    assert id(named["0.parametrizations.weight.original"]) in decayed


def test_loading_float_weights_starts_the_grids_from_them():
    model = prepare(_model(), LEARNED)
    other = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 8))
    torch.manual_seed(5)
    for p in other.parameters():
        nn.init.normal_(p)
    load_float_state_dict(model, other.state_dict())
    for name, fq in fake_quant_modules(model):
        expected, _ = initial_grid(other.get_parameter(name), fq.spec, fq.group_size)
        assert torch.equal(fq.scale.detach(), expected), name
    # A QAT state dict (grids included) keeps its trained grids.
    trained = {logical_name(k): (v * 1.5 if k.endswith(".scale") else v)
               for k, v in model.state_dict().items()}
    again = prepare(_model(), LEARNED)
    load_float_state_dict(again, trained)
    assert torch.equal(dict(fake_quant_modules(again))["0.weight"].scale.detach(),
                       trained["0.parametrizations.weight.0.scale"])
