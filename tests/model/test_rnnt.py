"""RNN-T model: losses, training signal, determinism, parametrized (quantizer-style) weights."""

from __future__ import annotations

import pytest
import torch
import torchaudio.functional as AF
from torch import nn
from torch.nn.utils import parametrize

from lowbit_asr.model import RNNT, PredictorConfig, count_parameters
from lowbit_asr.model.rnnt_loss import rnnt_nll


def test_forward_returns_finite_losses_and_gradients(make_model, make_batch) -> None:
    model = make_model()
    out = model(*make_batch())
    assert set(out) == {"loss", "rnnt_loss", "ctc_loss"}
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    assert out["ctc_loss"].item() == 0.0 and model.ctc_head is None
    out["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_ctc_head_adds_weighted_loss(make_model, make_batch) -> None:
    model = make_model(ctc_weight=0.3).eval()
    out = model(*make_batch())
    assert isinstance(model.ctc_head, nn.Linear)
    assert out["ctc_loss"].item() > 0
    torch.testing.assert_close(out["loss"], out["rnnt_loss"] + 0.3 * out["ctc_loss"])
    # The RNN-T part is untouched by the head.
    plain = make_model(ctc_weight=0.0).eval()
    plain.load_state_dict(
        {k: v for k, v in model.state_dict().items() if not k.startswith("ctc_head")}
    )
    torch.testing.assert_close(plain(*make_batch())["rnnt_loss"], out["rnnt_loss"])


def test_loss_decreases_on_a_fixed_batch(make_model, make_batch) -> None:
    model = make_model()
    batch = make_batch()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = model(*batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("seed", [0, 1])
def test_torch_loss_matches_torchaudio(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    n, t, u, v = 4, 13, 5, 7
    logits = torch.randn(n, t, u + 1, v, generator=g, requires_grad=True)
    targets = torch.randint(1, v, (n, u), generator=g)
    logit_lens = torch.tensor([13, 9, 1, 12])
    target_lens = torch.tensor([5, 0, 2, 4])
    ours = rnnt_nll(logits, targets, logit_lens, target_lens)
    theirs = AF.rnnt_loss(
        logits, targets.int(), logit_lens.int(), target_lens.int(), blank=0, reduction="none"
    )
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-5)
    (g_ours,) = torch.autograd.grad(ours.sum(), logits)
    (g_theirs,) = torch.autograd.grad(theirs.sum(), logits)
    torch.testing.assert_close(g_ours, g_theirs, atol=1e-5, rtol=1e-4)


def _loss_and_grads(model: RNNT, batch: tuple[torch.Tensor, ...]) -> tuple[float, list]:
    model.zero_grad()
    loss = model(*batch)["loss"]
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize(
    "overrides", [{"joint_chunk_size": 2}, {"rnnt_loss_impl": "torch"}], ids=["chunked", "torch"]
)
def test_loss_options_keep_value_and_gradients(make_model, make_batch, overrides) -> None:
    batch = make_batch()
    reference = make_model(seed=3).eval()
    variant = make_model(seed=3, **overrides).eval()
    loss_ref, grads_ref = _loss_and_grads(reference, batch)
    loss_var, grads_var = _loss_and_grads(variant, batch)
    assert loss_var == pytest.approx(loss_ref, rel=1e-5)
    for g_var, g_ref in zip(grads_var, grads_ref, strict=True):
        torch.testing.assert_close(g_var, g_ref, atol=1e-5, rtol=1e-3)


def test_same_seed_same_model_and_output(make_model, make_batch) -> None:
    a, b = make_model(seed=7), make_model(seed=7)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    batch = make_batch()
    torch.manual_seed(1)  # dropout masks too
    out_a = a(*batch)["loss"]
    torch.manual_seed(1)
    out_b = b(*batch)["loss"]
    assert torch.equal(out_a, out_b)
    assert not torch.equal(
        make_model(seed=8).encoder.blocks[0].ff1.linear1.weight,
        a.encoder.blocks[0].ff1.linear1.weight,
    )


class _Identity(nn.Module):
    """Identity-like parametrization (a real op, so the result is a new tensor)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return w * 1.0


class _Scale(nn.Module):
    """Parametrization that halves the weight, to prove the parametrized value is used."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * 0.5


def _weights_2d(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(module, attribute) of every >= 2-D parameter, where the quantizer would attach."""
    found = []
    for module in model.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            if p.dim() >= 2:
                found.append((module, name))
    return found


def test_identity_parametrization_of_every_weight_keeps_outputs(make_model, make_batch) -> None:
    model = make_model().eval()
    batch = make_batch()
    loss_before = model(*batch)["loss"]
    hyps_before = model.decode(batch[0], batch[1])
    targets = _weights_2d(model)
    kinds = {type(m).__name__ for m, _ in targets}
    assert {"Linear", "Conv1d", "Conv2d", "Embedding", "LSTM"} <= kinds
    lstm_names = {n for m, n in targets if isinstance(m, nn.LSTM)}
    assert {"weight_ih_l0", "weight_hh_l0"} <= lstm_names
    params = {}
    for module, name in targets:
        params[(module, name)] = _Identity()
        parametrize.register_parametrization(module, name, params[(module, name)])
    n_params = count_parameters(model)
    loss_after = model(*batch)["loss"]
    torch.testing.assert_close(loss_after, loss_before)
    assert model.decode(batch[0], batch[1]) == hyps_before
    assert count_parameters(model) == n_params
    # Every parametrization ran, and gradients reach every original weight.
    assert all(p.calls > 0 for p in params.values())
    loss_after.backward()
    for module, name in targets:
        original = module.parametrizations[name].original
        assert original.grad is not None and original.grad.abs().sum() > 0, (module, name)


@pytest.mark.parametrize(
    "path",
    [
        "predictor.lstm.weight_ih_l0",
        "predictor.lstm.weight_hh_l0",
        "predictor.embedding.weight",
        "encoder.subsampling.conv.0.weight",
        "encoder.blocks.0.conv.depthwise.weight",
        "encoder.blocks.0.conv.pointwise_in.weight",
        "encoder.blocks.0.attn.qkv.weight",
        "encoder.blocks.0.attn.pos_proj.weight",
        "encoder.blocks.0.attn.pos_bias_u",
        "joiner.output.weight",
    ],
)
def test_parametrized_weight_is_what_forward_uses(make_model, make_batch, path: str) -> None:
    batch = make_batch()
    model = make_model(seed=5).eval()
    manual = make_model(seed=5).eval()
    module_path, name = path.rsplit(".", 1)
    with torch.no_grad():
        manual.get_parameter(path).mul_(0.5)  # what the parametrization should produce
    loss_manual = manual(*batch)["loss"]
    parametrize.register_parametrization(model.get_submodule(module_path), name, _Scale())
    loss_param = model(*batch)["loss"]
    torch.testing.assert_close(loss_param, loss_manual)
    assert not torch.allclose(loss_param, make_model(seed=5).eval()(*batch)["loss"])


def test_lstm_parametrization_runs_once_per_call(make_model, make_batch) -> None:
    # nn.LSTM re-reads its weights several times per call (hasattr + getattr in
    # _update_flat_weights); the predictor's parametrize.cached() makes that one evaluation.
    model = make_model().eval()
    counters = {}
    for name in ("weight_ih_l0", "weight_hh_l0"):
        counters[name] = _Identity()
        parametrize.register_parametrization(model.predictor.lstm, name, counters[name])
        counters[name].calls = 0
    model.predictor(torch.tensor([[0, 3, 4]]))
    assert {k: c.calls for k, c in counters.items()} == {"weight_ih_l0": 1, "weight_hh_l0": 1}
    # The uncached nn.LSTM, for the record: more than one evaluation per weight and call.
    for c in counters.values():
        c.calls = 0
    model.predictor.lstm(torch.randn(1, 3, model.cfg.predictor.embed_dim))
    assert all(c.calls >= 2 for c in counters.values())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_parametrized_lstm_on_cuda_uses_parametrized_weights(make_model, make_batch) -> None:
    # On CUDA, nn.LSTM re-flattens its (parametrized, hence new every call) weights into one
    # cuDNN buffer in-place under no_grad at every call; check values and gradients survive.
    # Training mode (cuDNN's RNN backward refuses eval mode) with every dropout at 0, so that
    # the two models compute the same function.
    batch = [t.cuda() for t in make_batch()]
    model, manual = make_model(seed=5).cuda().train(), make_model(seed=5).cuda().train()
    for module in [*model.modules(), *manual.modules()]:
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        elif isinstance(getattr(module, "dropout", None), float):  # attention's SDPA dropout
            module.dropout = 0.0
    with torch.no_grad():
        for name in ("weight_ih_l0", "weight_hh_l0"):
            getattr(manual.predictor.lstm, name).mul_(0.5)
    for name in ("weight_ih_l0", "weight_hh_l0"):
        parametrize.register_parametrization(model.predictor.lstm, name, _Scale())
    loss, loss_manual = model(*batch)["loss"], manual(*batch)["loss"]
    torch.testing.assert_close(loss, loss_manual)
    loss.backward()
    loss_manual.backward()
    for name in ("weight_ih_l0", "weight_hh_l0"):
        grad = model.predictor.lstm.parametrizations[name].original.grad
        # d(loss)/d(original) = 0.5 * d(loss)/d(weight) for w = 0.5 * original
        torch.testing.assert_close(grad, 0.5 * getattr(manual.predictor.lstm, name).grad)


# ---- the stateless predictor ---------------------------------------------------------------
def _stateless(make_model, context_size: int, **overrides) -> RNNT:
    predictor = PredictorConfig(
        kind="stateless", embed_dim=16, hidden_dim=24, context_size=context_size, dropout=0.0)
    return make_model(predictor=predictor, **overrides).eval()


@pytest.mark.parametrize("context_size", [1, 2, 4])
def test_stateless_predictor_steps_equal_the_whole_sequence(make_model, context_size) -> None:
    # Search feeds one token at a time with the state of the previous call; training feeds the
    # whole sequence: both must give the same outputs (history before the start = blanks).
    predictor = _stateless(make_model, context_size).predictor
    tokens = torch.tensor([[0, 3, 7, 1, 1, 9, 2], [0, 5, 5, 5, 4, 8, 6]])
    whole, _ = predictor(tokens)
    state, steps = None, []
    for u in range(tokens.size(1)):
        out, state = predictor.step(tokens[:, u], state)
        steps.append(out)
    torch.testing.assert_close(torch.stack(steps, 1), whole, rtol=1e-6, atol=1e-6)
    first, mid = predictor(tokens[:, :3])  # two calls, the second continuing the first
    rest, _ = predictor(tokens[:, 3:], mid)
    torch.testing.assert_close(torch.cat([first, rest], 1), whole, rtol=1e-6, atol=1e-6)
    assert state[0].shape == (2, context_size - 1)


def test_stateless_predictor_sees_exactly_its_context(make_model) -> None:
    predictor = _stateless(make_model, 3).predictor
    tokens = torch.tensor([[0, 3, 7, 1, 4, 9, 2]])
    out, _ = predictor(tokens)
    for position, changed_at in [(5, 2), (5, 3), (5, 4), (5, 5)]:
        other = tokens.clone()
        other[0, changed_at] = 10
        out_other, _ = predictor(other)
        seen = position - changed_at < 3  # tokens position-2 .. position
        assert (not torch.equal(out[0, position], out_other[0, position])) == seen, changed_at


@pytest.mark.parametrize("loss_impl", ["torchaudio", "pruned"])
def test_stateless_model_trains_every_parameter(make_model, make_batch, loss_impl) -> None:
    model = _stateless(make_model, 2, rnnt_loss_impl=loss_impl, ctc_weight=0.5).train()
    out = model(*make_batch())
    assert all(torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None]
    assert {n for n, _ in model.predictor.named_parameters()} == {
        "embedding.weight", "conv.weight", "conv.bias"}
    assert "stateless c2 16->24" in model.summary()
