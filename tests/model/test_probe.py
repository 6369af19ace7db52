"""ProbeLoss: the cached evaluation equals evaluating the changed model from scratch, wherever the
changed weight sits; weights the likelihood never reads cost nothing; the probe ranks a weight
made destructive first; backward gives the full loss's gradients."""

from __future__ import annotations

import pytest
import torch

from lowbit_asr.model.probe import ProbeLoss
from lowbit_asr.quant.allocate import build_problem, probe_costs


def _batches(make_batch):
    out = []
    for seed, lengths in ((0, (60, 45, 31)), (1, (52, 40))):
        feats, feat_lens, targets, target_lens = make_batch(seed=seed, lengths=lengths)
        out.append({"feats": feats, "feat_lens": feat_lens, "targets": targets,
                    "target_lens": target_lens})
    return out


def _from_scratch(model, batches) -> float:
    total = tokens = 0.0
    with torch.no_grad():
        for b in batches:
            enc, enc_lens = model.encode(b["feats"], b["feat_lens"])
            sos = b["targets"].new_zeros((b["targets"].size(0), 1))
            pred, _ = model.predictor(torch.cat([sos, b["targets"]], 1))
            n = enc.size(0)
            total += float(model.full_loss(enc, enc_lens, pred, b["targets"], b["target_lens"])) * n
            tokens += float(b["target_lens"].sum())
    return total / tokens


@pytest.mark.parametrize("name", [
    "encoder.subsampling.conv.0.weight", "encoder.blocks.0.ff1.linear1.weight",
    "encoder.blocks.1.conv.depthwise.weight", "predictor.lstm.weight_hh_l0",
    "predictor.embedding.weight", "joiner.output.weight", "joiner.enc_proj.weight",
])
def test_cached_loss_equals_the_loss_from_scratch(name, make_model, make_batch):
    model = make_model(ctc_weight=0.5).eval()
    batches = _batches(make_batch)
    probe = ProbeLoss(model, batches)
    assert probe.float_loss == pytest.approx(_from_scratch(model, batches), rel=1e-6)
    weight = model.get_parameter(name)
    with torch.no_grad():
        weight.mul_(-1.5)  # a change large enough to move the loss
    changed = _from_scratch(model, batches)
    assert changed != pytest.approx(probe.float_loss, rel=1e-4)
    assert probe(name) == pytest.approx(changed, rel=1e-6)


def test_training_heads_do_not_change_the_likelihood(make_model, make_batch):
    model = make_model(ctc_weight=0.5, rnnt_loss_impl="pruned").eval()
    probe = ProbeLoss(model, _batches(make_batch))
    with torch.no_grad():
        model.ctc_head.weight.zero_()
        model.simple_joiner.am.weight.zero_()
    assert probe.stage("ctc_head.weight") == ("none", 0)
    assert probe("ctc_head.weight") == probe.float_loss == pytest.approx(
        _from_scratch(model, _batches(make_batch)), rel=1e-6)


def test_the_probe_ranks_a_destructive_weight_first(make_model, make_batch):
    model = make_model().eval()
    batches = _batches(make_batch)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(30):  # fit the batches a little: then a damaged model scores worse, not random
        for b in batches:
            optimiser.zero_grad()
            model(b["feats"], b["feat_lens"], b["targets"], b["target_lens"])["loss"].backward()
            optimiser.step()
    joiner = model.joiner
    with torch.no_grad():
        # Joint unit 0 made dead (always tanh(0) = 0), then a huge weight on it in every row of
        # the output layer: the float model computes the same, but rounding each row to a grid
        # that spans 0..100 wipes out its other weights, even at 8 bits.
        for layer in (joiner.enc_proj, joiner.pred_proj):
            layer.weight[0].zero_()
            layer.bias[0] = 0.0
        joiner.output.weight[:, 0] = 100.0
    probe = ProbeLoss(model, batches)
    problem = build_problem(model, bits=(8,), group_sizes=())
    costs, base = probe_costs(model, problem, probe)
    assert base == probe.float_loss
    int8 = sorted(((row[1], t.name) for t, row in zip(problem.tensors, costs, strict=True)),
                  reverse=True)
    assert int8[0][1] == "joiner.output.weight"
    assert int8[0][0] > 10 * max(int8[1][0], 1e-6)


def test_backward_gives_the_gradient_of_the_probe_loss(make_model, make_batch):
    model = make_model().eval()
    batches = _batches(make_batch)
    probe = ProbeLoss(model, batches)
    probe.backward()
    weight = model.get_parameter("joiner.output.weight")
    grad = weight.grad.clone()
    direction = torch.randn_like(weight)
    eps = 1e-3
    with torch.no_grad():
        weight.add_(eps * direction)
        up = _from_scratch(model, batches)
        weight.sub_(2 * eps * direction)
        down = _from_scratch(model, batches)
        weight.add_(eps * direction)
    assert float((grad * direction).sum()) == pytest.approx((up - down) / (2 * eps), rel=1e-2)
