"""prepare(): fake quantization on every module type the Conformer RNN-T uses."""

from __future__ import annotations

import copy
import gc
import importlib
import io
import weakref

import pytest
import torch
from torch import nn

from lowbit_asr.quant import (
    QuantPolicy,
    QuantSpec,
    batched_fake_quant,
    fake_quant_disabled,
    fake_quant_modules,
    fake_quantize,
    is_fake_quant_enabled,
    load_float_state_dict,
    prepare,
    set_fake_quant_enabled,
)
from lowbit_asr.quant.fake_quant import use_compiled_fake_quant

# the module, not the function of the same name that lowbit_asr.quant exports
prepare_module = importlib.import_module("lowbit_asr.quant.prepare")


class Zoo(nn.Module):
    """Every weight-holding module type of a Conformer RNN-T, wired into one forward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv2d = nn.Conv2d(1, 8, 3, stride=2)
        self.proj = nn.Linear(8 * 3, 16)
        self.mha = nn.MultiheadAttention(16, 4, batch_first=True)
        self.norm = nn.LayerNorm(16)
        self.pointwise = nn.Conv1d(16, 32, 1)
        self.depthwise = nn.Conv1d(32, 32, 3, padding=1, groups=32)
        self.bn = nn.BatchNorm1d(32)
        self.embedding = nn.Embedding(20, 16)
        self.lstm = nn.LSTM(16, 16, num_layers=2, batch_first=True)
        self.joiner = nn.Linear(32 + 16, 8)

    def forward(self, feats: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        x = self.conv2d(feats.unsqueeze(1))  # (N, 8, T', 3)
        x = self.proj(x.permute(0, 2, 1, 3).flatten(2))  # (N, T', 16)
        x = self.norm(x + self.mha(x, x, x, need_weights=False)[0])
        x = self.bn(self.depthwise(self.pointwise(x.transpose(1, 2))))  # (N, 32, T')
        y, _ = self.lstm(self.embedding(tokens))  # (N, U, 16)
        joint = torch.cat([x.mean(-1), y.mean(1)], dim=-1)  # (N, 48)
        return self.joiner(joint)


WEIGHTS = [
    "conv2d.weight", "proj.weight", "mha.in_proj_weight", "mha.out_proj.weight",
    "pointwise.weight", "depthwise.weight", "embedding.weight",
    "lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.weight_ih_l1", "lstm.weight_hh_l1",
    "joiner.weight",
]


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 11, 7, generator=g), torch.randint(0, 20, (3, 5), generator=g)


def _zoo() -> Zoo:
    torch.manual_seed(0)
    return Zoo().eval()


def _policy() -> QuantPolicy:
    # 2-bit asymmetric everywhere, with a rule per special case so each path is exercised.
    return QuantPolicy.from_config({
        "default": {"bits": 2, "symmetric": False, "group_size": 8},
        "rules": [
            {"pattern": "conv2d.weight", "spec": {"bits": 8}},  # K = 9: per-channel
            {"pattern": "depthwise.weight", "spec": {"bits": 4, "symmetric": False}},  # K = 3
            {"pattern": "re:lstm\\.weight_hh_l\\d", "spec": {"bits": 3, "symmetric": False,
                                                             "sub_channels": 2}},
        ],
    })


def test_every_weight_is_quantized_in_forward():
    feats, tokens = _inputs()
    model = _zoo()
    float_out = model(feats, tokens)
    # Reference: an unprepared copy whose weights are overwritten by their fake-quant values.
    reference = copy.deepcopy(model)
    policy = _policy()
    with torch.no_grad():
        for name in WEIGHTS:
            spec, _ = policy.match(name)
            module_name, attr = name.rsplit(".", 1)
            module = reference.get_submodule(module_name)
            getattr(module, attr).copy_(fake_quantize(getattr(module, attr), spec, name))
    prepare(model, policy)
    assert sorted(n for n, _ in fake_quant_modules(model)) == sorted(WEIGHTS)
    out = model(feats, tokens)
    torch.testing.assert_close(out, reference(feats, tokens), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out, float_out, atol=1e-3), "2-bit weights must change the output"
    # The float masters are untouched; biases and norms are never parametrized.
    assert model.lstm.parametrizations.weight_ih_l0.original.dtype == torch.float32
    assert not hasattr(model.mha, "parametrizations") or "in_proj_bias" not in \
        model.mha.parametrizations


def test_state_dict_round_trip_keeps_float_masters():
    feats, tokens = _inputs()
    model = prepare(_zoo(), _policy())
    state = model.state_dict()
    assert "proj.parametrizations.weight.original" in state
    assert "lstm.parametrizations.weight_hh_l1.original" in state
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    restored = prepare(Zoo().eval(), _policy())
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(restored(feats, tokens), model(feats, tokens))
    # A prepared checkpoint cannot be loaded into a float model by accident.
    with pytest.raises(RuntimeError, match="parametrizations"):
        Zoo().load_state_dict(state)


def test_gradients_reach_the_float_masters():
    feats, tokens = _inputs()
    model = prepare(_zoo().train(), _policy())
    model(feats, tokens).square().sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name


def test_switch_off_and_on_without_rebuilding():
    feats, tokens = _inputs()
    model = _zoo()
    float_out = model(feats, tokens)
    prepare(model, _policy())
    quant_out = model(feats, tokens)
    assert is_fake_quant_enabled(model)
    with fake_quant_disabled(model):
        assert not is_fake_quant_enabled(model)
        assert torch.equal(model(feats, tokens), float_out)
    assert torch.equal(model(feats, tokens), quant_out)
    assert set_fake_quant_enabled(model, False) == len(WEIGHTS)
    assert torch.equal(model(feats, tokens), float_out)
    set_fake_quant_enabled(model, True)
    assert torch.equal(model(feats, tokens), quant_out)


def test_rule_matching_nothing_is_an_error_and_nothing_is_attached():
    model = _zoo()
    policy = QuantPolicy.from_config({
        "default": {"bits": 4},
        "rules": [{"pattern": "encoder.*", "spec": None}],
    })
    with pytest.raises(ValueError, match=r"quantizer\.rules\[0\] pattern 'encoder\.\*' matches no"):
        prepare(model, policy)
    assert not list(fake_quant_modules(model))
    # A rule that only matches biases or norms matches no quantizable weight either.
    bias_only = QuantPolicy.from_config({"rules": [{"pattern": "*.bias", "spec": {"bits": 4}}]})
    with pytest.raises(ValueError, match="matches no quantizable weight"):
        prepare(model, bias_only)


def test_indivisible_group_size_errors_or_falls_back():
    strict = QuantPolicy.from_config({"default": {"bits": 2, "symmetric": False,
                                                  "group_size": 8}})
    with pytest.raises(ValueError, match=r"conv2d\.weight: group_size=8 does not divide .*K=9"):
        prepare(_zoo(), strict)
    lenient = QuantPolicy.from_config({"default": {"bits": 2, "symmetric": False,
                                                   "group_size": 8},
                                       "indivisible": "per_channel"})
    with pytest.warns(UserWarning, match=r"2 of \d+ quantized weights fell back to per-channel"):
        plan = {p.name: p for p in lenient.plan(_zoo())}
    assert plan["conv2d.weight"].spec.granularity == "per_channel"
    assert "fell back to per_channel" in plan["conv2d.weight"].source
    assert plan["depthwise.weight"].group_size == 3
    assert plan["proj.weight"].group_size == 8
    with pytest.warns(UserWarning, match="fell back"):
        prepare(_zoo(), lenient)
    # A group size that divides no row: every weight falls back, and the warning says so.
    none_divide = QuantPolicy.from_config({"default": {"bits": 2, "group_size": 7},
                                           "indivisible": "per_channel"})
    with pytest.warns(UserWarning, match="the policy's groups apply to none of them"):
        none_divide.plan(_zoo())


def test_prepare_twice_and_float_policy():
    model = prepare(_zoo(), _policy())
    with pytest.raises(ValueError, match="already prepared"):
        prepare(model, _policy())
    untouched = prepare(_zoo(), QuantPolicy())
    assert not list(fake_quant_modules(untouched))


def test_training_step_updates_masters_and_keeps_levels():
    feats, tokens = _inputs()
    model = prepare(_zoo().train(), QuantPolicy.uniform(QuantSpec(2, symmetric=False,
                                                                  sub_channels=1)))
    before = model.proj.parametrizations.weight.original.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(feats, tokens).square().sum().backward()
    opt.step()
    after = model.proj.parametrizations.weight.original
    assert not torch.equal(before, after)
    levels = [len(torch.unique(row)) for row in model.proj.weight]
    assert max(levels) <= 4


def test_float_state_dict_initialises_a_prepared_model():
    feats, tokens = _inputs()
    trained = _zoo()
    expected = prepare(copy.deepcopy(trained), _policy())(feats, tokens)
    fresh = prepare(Zoo().eval(), _policy())
    load_float_state_dict(fresh, trained.state_dict())
    assert torch.equal(fresh(feats, tokens), expected)
    state = trained.state_dict()
    state["proj.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match=r"shape mismatch .*proj\.weight \(3, 3\) vs \(16, 24\)"):
        load_float_state_dict(fresh, state)
    del state["proj.weight"]
    with pytest.raises(ValueError, match=r"missing \['proj\.weight'\]"):
        load_float_state_dict(fresh, state)


def test_two_dimensional_biases_stay_float():
    class RelPosBias(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Linear(8, 24)
            self.pos_bias_u = nn.Parameter(torch.zeros(2, 4))  # 2-D, but a bias

    model = prepare(RelPosBias(), QuantPolicy.uniform(QuantSpec(2)))
    assert [name for name, _ in fake_quant_modules(model)] == ["qkv.weight"]
    with pytest.raises(ValueError, match="matches no quantizable weight"):
        QuantPolicy.from_config({"rules": [{"pattern": "*pos_bias*", "spec": {"bits": 8}}]}).plan(
            RelPosBias())


# ---- batched_fake_quant: every weight at once, per forward -------------------------------------


def _batched_policy() -> QuantPolicy:
    """_policy() plus a clipped spec and an LSQ weight (which keeps its own path)."""
    config = {
        "default": {"bits": 2, "symmetric": False, "group_size": 8},
        "rules": [
            {"pattern": "conv2d.weight", "spec": {"bits": 8}},
            {"pattern": "depthwise.weight", "spec": {"bits": 4, "symmetric": False}},
            {"pattern": "re:lstm\\.weight_hh_l\\d", "spec": {"bits": 3, "symmetric": False,
                                                             "sub_channels": 2}},
            {"pattern": "mha.out_proj.weight", "spec": {"bits": 4, "clip": 0.9}},
            {"pattern": "joiner.weight", "spec": {"bits": 4, "scale": "learned"}},
        ],
    }
    return QuantPolicy.from_config(config)


def _forward_backward(model: nn.Module, batched: bool) -> tuple[torch.Tensor, dict]:
    model.zero_grad(set_to_none=True)
    feats, tokens = _inputs()
    if batched:
        with batched_fake_quant(model):
            out = model(feats, tokens)
    else:
        out = model(feats, tokens)
    out.square().sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("compile_on", [False, True])
def test_batched_fake_quant_gives_the_per_weight_values_and_gradients(compile_on, monkeypatch):
    model = prepare(_zoo().train(), _batched_policy())
    ref_out, ref_grads = _forward_backward(model, batched=False)
    calls = []
    real = prepare_module.fake_quantize_many
    monkeypatch.setattr(prepare_module, "fake_quantize_many",
                        lambda ws, spec, gs: calls.append(spec) or real(ws, spec, gs))
    per_weight = prepare_module.fake_quantize
    monkeypatch.setattr(prepare_module, "fake_quantize", lambda *a, **k: pytest.fail(
        "a weight was fake-quantized on its own inside the scope"))
    use_compiled_fake_quant(compile_on)
    try:
        out, grads = _forward_backward(model, batched=True)
    finally:
        use_compiled_fake_quant(False)
    # one call per min/max spec (the learned joiner is not among them), and nothing per weight
    assert len(calls) == len(set(calls)) == 5
    assert torch.equal(out, ref_out)
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        assert torch.equal(grad, ref_grads[name]), name
    assert all(fq._batch is None for _, fq in fake_quant_modules(model))  # the scope is over
    monkeypatch.setattr(prepare_module, "fake_quantize", per_weight)
    assert torch.equal(_forward_backward(model, batched=False)[0], ref_out)


def test_batched_fake_quant_recomputes_a_weight_changed_inside_and_nests():
    model = prepare(_zoo(), _policy())
    spec = QuantSpec(bits=2, symmetric=False, group_size=8)
    with batched_fake_quant(model), torch.no_grad():
        before = model.proj.weight.clone()
        model.proj.parametrizations.weight.original.mul_(2.0)
        after = model.proj.weight
        with batched_fake_quant(model):  # a scope inside another changes nothing
            assert torch.equal(model.proj.weight, after)
        assert model.proj.parametrizations.weight[0]._batch is not None
    expected = fake_quantize(model.proj.parametrizations.weight.original, spec, group_size=8)
    assert torch.equal(after, expected)
    assert not torch.equal(after, before)
    with pytest.raises(RuntimeError, match="boom"), batched_fake_quant(model):
        raise RuntimeError("boom")
    assert all(fq._batch is None for _, fq in fake_quant_modules(model))


def test_batched_fake_quant_respects_disabled_weights_and_float_models():
    model = prepare(_zoo(), _policy())
    feats, tokens = _inputs()
    with torch.no_grad():
        float_out = _zoo()(feats, tokens)
        with fake_quant_disabled(model), batched_fake_quant(model):
            assert torch.equal(model(feats, tokens), float_out)
        plain = _zoo()
        with batched_fake_quant(plain):
            assert torch.equal(plain(feats, tokens), float_out)


def test_batched_fake_quant_does_not_keep_a_model_alive():
    model = prepare(_zoo(), _policy())
    with batched_fake_quant(model):
        pass
    assert model in prepare_module._BATCH_MEMBERS  # its quantizers were found once, kept
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None
