"""Learning-rate schedules and the optimiser's parameter groups."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from lowbit_asr.train.optim import OptimConfig, build_optimizer, lr_factor


def test_warmup_then_cosine_to_floor():
    cfg = OptimConfig(lr=1e-3, warmup_steps=10, schedule="cosine", final_lr_ratio=0.1)
    factors = [lr_factor(s, cfg, total_steps=110) for s in range(120)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(factors[:10], factors[1:10], strict=False))
    assert all(a >= b for a, b in zip(factors[10:110], factors[11:110], strict=False))
    assert factors[59] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert factors[109] == pytest.approx(0.1) and factors[119] == pytest.approx(0.1)


def test_noam_and_constant():
    noam = OptimConfig(warmup_steps=100, schedule="noam")
    assert lr_factor(99, noam, 0) == pytest.approx(1.0)
    assert lr_factor(399, noam, 0) == pytest.approx(0.5)
    const = OptimConfig(warmup_steps=0, schedule="constant")
    assert lr_factor(0, const, 0) == lr_factor(10_000, const, 0) == 1.0


def test_weight_decay_only_on_matrices():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    opt = build_optimizer(model.named_parameters(), OptimConfig(weight_decay=0.01))
    decayed, plain = opt.param_groups
    assert [p.shape for p in decayed["params"]] == [torch.Size([4, 4])]
    assert len(plain["params"]) == 3 and plain["weight_decay"] == 0.0


@pytest.mark.parametrize("kwargs,field", [
    ({"lr": 0}, "optim.lr"), ({"weight_decay": -1}, "optim.weight_decay"),
    ({"betas": [0.9]}, "optim.betas"), ({"warmup_steps": -1}, "optim.warmup_steps"),
    ({"schedule": "step"}, "optim.schedule"), ({"final_lr_ratio": 2}, "optim.final_lr_ratio"),
])
def test_invalid_optim_config_names_field(kwargs, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        OptimConfig(**kwargs)


def test_fused_and_multi_tensor_adamw_make_the_same_updates():
    # The fused kernel (full-precision training) is a faster AdamW, not another optimiser.
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 3))
    twin, start = copy.deepcopy(model), copy.deepcopy(model)
    cfg = OptimConfig(lr=1e-2, weight_decay=0.1)
    fused = build_optimizer(model.named_parameters(), cfg, fused=True)
    multi = build_optimizer(twin.named_parameters(), cfg)
    assert fused.defaults["fused"] and multi.defaults["foreach"] and not multi.defaults["fused"]
    x = torch.randn(32, 8)
    for _ in range(20):
        for net, opt in ((model, fused), (twin, multi)):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    for a, b, before in zip(model.parameters(), twin.parameters(), start.parameters(),
                            strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert (a - before).abs().max() > 1e-3  # 20 steps at lr 1e-2 moved every tensor
