"""Pruned RNN-T loss (``rnnt_loss_impl: pruned``): simple lattice, pruning bounds, band NLL."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torchaudio.functional as AF

from lowbit_asr.model import ModelConfig
from lowbit_asr.model.config import PrunedLossConfig
from lowbit_asr.model.rnnt_loss import (
    band_nodes,
    nll_and_occupation,
    prune_bounds,
    pruned_nll,
    rnnt_nll,
    simple_lattice,
)

N, T, U, V, J = 3, 9, 5, 7, 6
LOGIT_LENS = torch.tensor([9, 6, 4])
TARGET_LENS = torch.tensor([5, 3, 0])


def _targets(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(1, V, (N, U), generator=g)
    targets[torch.arange(U)[None, :] >= TARGET_LENS[:, None]] = V - 1  # padding: a real id
    return targets


class _Joiner(torch.nn.Module):
    """tanh(enc + pred) @ W: the shape of the model's joiner, in float64."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.nn.Parameter(torch.randn(J, V, generator=g, dtype=torch.float64))

    def forward(self, enc: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        return torch.tanh(enc + pred) @ self.weight


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 100)
    enc = torch.randn(N, T, J, generator=g, dtype=torch.float64, requires_grad=True)
    pred = torch.randn(N, U + 1, J, generator=g, dtype=torch.float64, requires_grad=True)
    return enc, pred


def _band_logits(joiner: _Joiner, enc: torch.Tensor, pred: torch.Tensor, nodes: torch.Tensor):
    r = nodes.size(-1)
    band = pred.gather(1, nodes.reshape(N, -1, 1).expand(-1, -1, J)).reshape(N, T, r, J)
    return joiner(enc[:, :, None, :], band)


def _bounds(seed: int, prune_range: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 200)
    am = torch.randn(N, T, V, generator=g, dtype=torch.float64)
    lm = torch.randn(N, U + 1, V, generator=g, dtype=torch.float64)
    blank_lp, label_lp = simple_lattice(am, lm, _targets(seed), TARGET_LENS)
    _, occupation = nll_and_occupation(blank_lp, label_lp, LOGIT_LENS, TARGET_LENS)
    return prune_bounds(occupation, LOGIT_LENS, TARGET_LENS, prune_range)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_band_over_every_symbol_is_the_full_lattice(seed: int) -> None:
    """prune_range >= U+1: loss and gradients (inputs and joiner weights) equal the full loss,
    both ours and torchaudio's."""
    joiner, targets = _Joiner(seed), _targets(seed)
    enc, pred = _inputs(seed)
    s_begin = _bounds(seed, prune_range=U + 3)
    assert int(s_begin.abs().sum()) == 0
    nodes = band_nodes(s_begin, U + 3, U + 1)
    assert nodes.shape == (N, T, U + 1)
    pruned = pruned_nll(_band_logits(joiner, enc, pred, nodes), targets, nodes, LOGIT_LENS,
                        TARGET_LENS)
    full_logits = joiner(enc[:, :, None, :], pred[:, None, :, :])
    full = rnnt_nll(full_logits, targets, LOGIT_LENS, TARGET_LENS)
    theirs = AF.rnnt_loss(full_logits.float(), targets.int(), LOGIT_LENS.int(),
                          TARGET_LENS.int(), blank=0, reduction="none")
    torch.testing.assert_close(pruned, full, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(pruned.float(), theirs, atol=1e-4, rtol=1e-5)
    params = [enc, pred, joiner.weight]
    for a, b in zip(torch.autograd.grad(pruned.sum(), params),
                    torch.autograd.grad(full.sum(), params), strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("prune_range", [2, 3, 4])
def test_a_narrow_band_bounds_the_full_loss_and_has_exact_gradients(prune_range: int) -> None:
    """Fewer alignments: the pruned NLL is >= the full one (equal for an utterance the band
    covers); its hand-written backward matches finite differences."""
    joiner, targets = _Joiner(), _targets()
    enc, pred = _inputs()
    nodes = band_nodes(_bounds(0, prune_range), prune_range, U + 1)
    logits = _band_logits(joiner, enc, pred, nodes)
    pruned = pruned_nll(logits, targets, nodes, LOGIT_LENS, TARGET_LENS)
    full = rnnt_nll(joiner(enc[:, :, None, :], pred[:, None, :, :]), targets, LOGIT_LENS,
                    TARGET_LENS)
    assert bool((pruned >= full - 1e-9).all())
    # U = 5 > prune_range - 1: really pruned
    assert float(pruned[0].detach()) > float(full[0].detach()) + 1e-6
    torch.testing.assert_close(pruned[2], full[2])  # U = 0: the band holds every node
    leaf = logits.detach().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: pruned_nll(x, targets, nodes, LOGIT_LENS, TARGET_LENS), (leaf,))


@pytest.mark.parametrize("prune_range", [2, 3, 5])
def test_pruning_bounds_form_a_connected_band(prune_range: int) -> None:
    for seed in range(4):
        s = _bounds(seed, prune_range)
        r = min(prune_range, U + 1)
        assert bool((s[:, 0] == 0).all())
        step = torch.diff(s, dim=1)
        assert bool((step >= 0).all()) and bool((step <= r - 1).all())
        for n in range(N):
            last = int(LOGIT_LENS[n]) - 1
            assert int(s[n, last]) <= int(TARGET_LENS[n]) < int(s[n, last]) + r
            assert bool((s[n, last:] == s[n, last]).all())
        assert int(s.max()) + r <= U + 1  # the band stays inside the lattice


def test_pruning_bounds_follow_the_occupation() -> None:
    """A lattice whose alignments all go one way: the band is centred on that path."""
    t, u = 8, 6
    occupation = torch.zeros(1, t, u + 1)
    path = [0, 1, 1, 2, 3, 4, 5, 6]  # the label position the blank leaves frame t from
    occupation[0, torch.arange(t), torch.tensor(path)] = 1.0
    s = prune_bounds(occupation, torch.tensor([t]), torch.tensor([u]), prune_range=2)
    for frame, pos in enumerate(path):
        assert int(s[0, frame]) <= pos < int(s[0, frame]) + 2


def test_more_tokens_than_the_band_can_reach_is_a_clear_error() -> None:
    occupation = torch.rand(1, 3, 10)
    with pytest.raises(ValueError, match="9 tokens in 3 frames.*prune_range"):
        prune_bounds(occupation, torch.tensor([3]), torch.tensor([9]), prune_range=3)


def _brute_force_nll(blank: torch.Tensor, label: torch.Tensor, t: int, u: int) -> float:
    """-log of the summed probability of every alignment, enumerated one by one: the U labels
    take U of the first T+U-1 slots, blanks the rest (the last slot is the final blank)."""
    total = []
    for slots in itertools.combinations(range(t + u - 1), u):
        fr, pos, score = 0, 0, 0.0
        for k in range(t + u - 1):
            if k in slots:
                score += float(label[fr, pos])
                pos += 1
            else:
                score += float(blank[fr, pos])
                fr += 1
        total.append(score + float(blank[fr, pos]))
    return -math.log(sum(math.exp(s) for s in total))


@pytest.mark.parametrize(("lm_scale", "am_scale"), [(0.0, 0.0), (0.25, 0.0), (0.2, 0.3)])
def test_simple_loss_equals_brute_force(lm_scale: float, am_scale: float) -> None:
    """The simple lattice (with k2-style smoothing) against per-node softmaxes built
    explicitly and every alignment enumerated."""
    g = torch.Generator().manual_seed(3)
    am = torch.randn(N, T, V, generator=g, dtype=torch.float64)
    lm = torch.randn(N, U + 1, V, generator=g, dtype=torch.float64)
    targets = _targets(3)
    nll, _ = nll_and_occupation(*simple_lattice(am, lm, targets, TARGET_LENS, lm_scale,
                                                am_scale), LOGIT_LENS, TARGET_LENS)
    lm_probs = lm.softmax(-1)
    valid = [(n, p) for n in range(N) for p in range(int(TARGET_LENS[n]) + 1)]
    unigram = torch.stack([lm_probs[n, p] for n, p in valid]).mean(0)
    for n in range(N):
        t, u = int(LOGIT_LENS[n]), int(TARGET_LENS[n])
        blank = torch.zeros(t, u + 1, dtype=torch.float64)
        label = torch.zeros(t, u + 1, dtype=torch.float64)
        for fr in range(t):
            for pos in range(u + 1):
                joint = (am[n, fr] + lm[n, pos]).log_softmax(-1)
                lm_only = lm[n, pos].log_softmax(-1)
                am_only = (am[n, fr] + unigram.log()).log_softmax(-1)
                mix = (1 - lm_scale - am_scale) * joint + lm_scale * lm_only + am_scale * am_only
                blank[fr, pos] = mix[0]
                if pos < u:
                    label[fr, pos] = mix[int(targets[n, pos])]
        assert float(nll[n]) == pytest.approx(_brute_force_nll(blank, label, t, u), abs=1e-9)


def test_padding_is_respected() -> None:
    """Each utterance's simple and pruned losses in a padded batch (garbage in the padding)
    equal those of the utterance alone."""
    joiner, targets = _Joiner(), _targets()
    enc, pred = _inputs()
    g = torch.Generator().manual_seed(5)
    am = torch.randn(N, T, V, generator=g, dtype=torch.float64)
    lm = torch.randn(N, U + 1, V, generator=g, dtype=torch.float64)

    def losses(sl: slice, t: int, u: int):
        tl, ll = TARGET_LENS[sl], LOGIT_LENS[sl]
        simple, occ = nll_and_occupation(
            *simple_lattice(am[sl, :t], lm[sl, : u + 1], targets[sl, :u], tl), ll, tl)
        nodes = band_nodes(prune_bounds(occ, ll, tl, 3), 3, u + 1)
        r = nodes.size(-1)
        n = nodes.size(0)
        band = pred[sl, : u + 1].gather(1, nodes.reshape(n, -1, 1).expand(-1, -1, J))
        logits = joiner(enc[sl, :t, None, :], band.reshape(n, t, r, J))
        return simple, pruned_nll(logits, targets[sl, :u], nodes, ll, tl)

    batch_simple, batch_pruned = losses(slice(None), T, U)
    for n in range(N):
        t, u = int(LOGIT_LENS[n]), int(TARGET_LENS[n])
        alone_simple, alone_pruned = losses(slice(n, n + 1), t, u)
        torch.testing.assert_close(batch_simple[n : n + 1], alone_simple)
        torch.testing.assert_close(batch_pruned[n : n + 1], alone_pruned)


def test_model_trains_with_the_pruned_loss(make_model, make_batch) -> None:
    model = make_model(rnnt_loss_impl="pruned", ctc_weight=0.5,
                       pruned=PrunedLossConfig(warmup_steps=10))
    batch = make_batch()
    out = model(*batch, step=0)
    assert set(out) == {"loss", "rnnt_loss", "ctc_loss", "simple_loss"}
    torch.testing.assert_close(
        out["loss"], 1.0 * out["simple_loss"] + 0.1 * out["rnnt_loss"] + 0.5 * out["ctc_loss"])
    late = model(*batch, step=10)
    torch.testing.assert_close(
        late["loss"], 0.5 * late["simple_loss"] + late["rnnt_loss"] + 0.5 * late["ctc_loss"])
    late["loss"].backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        loss = model(*batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.5 * first


def test_full_prune_range_model_loss_equals_the_full_loss(make_model, make_batch) -> None:
    """Same weights, prune_range past every U: the model's rnnt_loss is the full-lattice one."""
    pruned = make_model(rnnt_loss_impl="pruned", pruned=PrunedLossConfig(prune_range=50)).eval()
    full = make_model(rnnt_loss_impl="torchaudio").eval()
    full.load_state_dict({k: v for k, v in pruned.state_dict().items()
                          if not k.startswith("simple_joiner")})
    batch = make_batch()
    torch.testing.assert_close(pruned(*batch)["rnnt_loss"], full(*batch)["rnnt_loss"],
                               atol=1e-4, rtol=1e-5)


def test_warmup_scales_move_as_icefall_sets_them() -> None:
    cfg = PrunedLossConfig(simple_loss_scale=0.5, warmup_steps=100)
    assert cfg.scales(0) == (1.0, 0.1)
    assert cfg.scales(50) == pytest.approx((0.75, 0.55))
    assert cfg.scales(100) == (0.5, 1.0) == cfg.scales(None)
    assert PrunedLossConfig(warmup_steps=0).scales(0) == (0.5, 1.0)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"pruned": {"prune_range": 3}}, "only with rnnt_loss_impl=pruned"),
        ({"rnnt_loss_impl": "pruned", "joint_chunk_size": 2}, "joint_chunk_size"),
        ({"rnnt_loss_impl": "pruned", "pruned": {"prune_range": 1}}, "prune_range"),
        ({"rnnt_loss_impl": "pruned", "pruned": {"lm_scale": 0.7, "am_scale": 0.5}}, "<= 1"),
        ({"rnnt_loss_impl": "pruned", "pruned": {"warmup_steps": -1}}, "warmup_steps"),
    ],
)
def test_bad_pruned_settings_are_refused(fields: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ModelConfig(**fields)
