"""Conformer encoder: shapes, length arithmetic, relative attention, masking."""

from __future__ import annotations

import math

import pytest
import torch

from lowbit_asr.model import ConformerEncoder, EncoderConfig
from lowbit_asr.model.conformer import (
    Conv2dSubsampling,
    RelPositionMultiHeadAttention,
    conv_output_length,
    lengths_to_mask,
    masked_batch_norm,
    rel_shift,
    relative_positional_encoding,
)


def _encoder(factor: int = 4, kernel: int = 5, seed: int = 0) -> ConformerEncoder:
    torch.manual_seed(seed)
    cfg = EncoderConfig(
        feat_dim=20,
        subsampling_factor=factor,
        d_model=32,
        num_layers=2,
        num_heads=4,
        ff_expansion=2,
        conv_kernel=kernel,
    )
    return ConformerEncoder(cfg)


@pytest.mark.parametrize("factor", [4, 6, 8])
def test_subsampling_output_lengths_follow_conv_arithmetic(factor: int) -> None:
    sub = Conv2dSubsampling(feat_dim=20, d_model=16, factor=factor, channels=8, dropout=0.0)
    layout = sub.layout
    assert math.prod(stride for _, stride in layout) == factor
    for length in range(sub.min_frames, sub.min_frames + 3 * factor + 2):
        out, out_lens = sub(torch.randn(1, length, 20), torch.tensor([length]))
        assert out.shape == (1, conv_output_length(length, layout), 16)
        assert int(out_lens) == out.size(1)
    # Batched lengths: each equals the unbatched frame count; too-short inputs give 0.
    lengths = torch.arange(1, 3 * sub.min_frames)
    expected = [max(0, conv_output_length(int(n), layout)) for n in lengths]
    assert sub.output_lengths(lengths).tolist() == expected
    assert expected[sub.min_frames - 2] == 0 and expected[sub.min_frames - 1] == 1
    # Roughly length / factor for long inputs.
    assert abs(int(sub.output_lengths(torch.tensor([1600]))) - 1600 / factor) <= 2
    with pytest.raises(ValueError, match="needs >="):
        sub(torch.randn(1, sub.min_frames - 1, 20), torch.tensor([sub.min_frames - 1]))


def test_shapes_at_every_block() -> None:
    enc = _encoder().eval()
    n, t = 3, 50
    feats, lens = torch.randn(n, t, 20), torch.tensor([50, 40, 23])
    x, out_lens = enc.subsampling(feats, lens)
    t_sub = conv_output_length(t, enc.subsampling.layout)
    assert x.shape == (n, t_sub, 32)
    assert out_lens.tolist() == [conv_output_length(int(v), enc.subsampling.layout) for v in lens]
    pos = relative_positional_encoding(t_sub, 32)
    assert pos.shape == (2 * t_sub - 1, 32)
    mask = lengths_to_mask(out_lens, t_sub)
    assert mask.shape == (n, t_sub)
    for block in enc.blocks:
        assert block.ff1(x).shape == x.shape
        assert block.attn(block.attn_norm(x), pos, mask).shape == x.shape
        assert block.conv(x, mask).shape == x.shape
        x = block(x, pos, mask)
        assert x.shape == (n, t_sub, 32)
    y, y_lens = enc(feats, lens)
    torch.testing.assert_close(y, x)
    assert torch.equal(y_lens, out_lens)


@pytest.mark.parametrize("kernel", [4, 5, 32])
def test_convolution_module_keeps_length_for_odd_and_even_kernels(kernel: int) -> None:
    enc = _encoder(kernel=kernel).eval()
    x = torch.randn(2, 40, 32)
    mask = lengths_to_mask(torch.tensor([40, 33]), 40)
    assert enc.blocks[0].conv(x, mask).shape == x.shape


def test_relative_position_table_rows_are_positions_descending() -> None:
    t, d = 7, 16
    table = relative_positional_encoding(t, d)
    for k, rel in enumerate(range(t - 1, -t, -1)):
        inv_freq = torch.exp(torch.arange(0, d, 2).float() * (-math.log(10000.0) / d))
        torch.testing.assert_close(table[k, 0::2], torch.sin(rel * inv_freq))
        torch.testing.assert_close(table[k, 1::2], torch.cos(rel * inv_freq))


def test_rel_shift_selects_relative_position_i_minus_j() -> None:
    n, h, t = 2, 3, 6
    scores = torch.randn(n, h, t, 2 * t - 1)
    i = torch.arange(t)[:, None]
    j = torch.arange(t)[None, :]
    index = (t - 1 - i + j).expand(n, h, t, t)  # column of relative position i - j
    torch.testing.assert_close(rel_shift(scores), scores.gather(-1, index))


def _reference_attention(
    attn: RelPositionMultiHeadAttention, x: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Textbook formula with an explicit (T, T) table of relative embeddings p_{i-j}."""
    n, t, d = x.shape
    h, dh = attn.num_heads, attn.head_dim
    q, k, v = attn.qkv(x).view(n, t, 3, h, dh).unbind(2)  # (N, T, H, dh)
    table = attn.pos_proj(relative_positional_encoding(t, d)).view(2 * t - 1, h, dh)
    i, j = torch.arange(t)[:, None], torch.arange(t)[None, :]
    p = table[t - 1 - (i - j)]  # (T, T, H, dh): row of relative position i - j
    content = torch.einsum("nihd,njhd->nhij", q + attn.pos_bias_u, k)
    position = torch.einsum("nihd,ijhd->nhij", q + attn.pos_bias_v, p)
    scores = (content + position) / math.sqrt(dh)
    scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    out = torch.einsum("nhij,njhd->nihd", scores.softmax(-1), v).reshape(n, t, d)
    return attn.out_proj(out)


def test_attention_matches_explicit_formula_values_and_gradients() -> None:
    torch.manual_seed(0)
    attn = RelPositionMultiHeadAttention(32, 4, dropout=0.0)
    x = torch.randn(2, 9, 32)
    mask = lengths_to_mask(torch.tensor([9, 6]), 9)
    pos = relative_positional_encoding(9, 32)
    out = attn(x, pos, mask)
    ref = _reference_attention(attn, x, mask)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # Gradients too: the positional term reaches SDPA as a float bias that needs a gradient.
    weights = torch.randn_like(out) * mask[..., None]
    grads = torch.autograd.grad((out * weights).sum(), list(attn.parameters()))
    ref_grads = torch.autograd.grad((ref * weights).sum(), list(attn.parameters()))
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-4)


def test_relative_positions_make_attention_position_aware() -> None:
    # Without a positional term, self-attention is permutation-equivariant: shuffling the frames
    # shuffles the outputs the same way. The relative term must break that.
    torch.manual_seed(0)
    attn = RelPositionMultiHeadAttention(32, 4, dropout=0.0).eval()
    t = 8
    x = torch.randn(1, t, 32)
    perm = torch.randperm(t)
    mask = torch.ones(1, t, dtype=torch.bool)
    pos = relative_positional_encoding(t, 32)
    with torch.no_grad():
        with_pos = attn(x, pos, mask)
        assert with_pos.shape == (1, t, 32)
        assert (attn(x[:, perm], pos, mask) - with_pos[:, perm]).abs().max() > 1e-3
        attn.pos_proj.weight.zero_()  # no positional term: content-only attention
        no_pos = attn(x, pos, mask)
        torch.testing.assert_close(attn(x[:, perm], pos, mask), no_pos[:, perm])
    assert (with_pos - no_pos).abs().max() > 1e-3


@pytest.mark.parametrize("factor", [4, 6, 8])
def test_padding_does_not_change_valid_outputs(factor: int) -> None:
    enc = _encoder(factor=factor).eval()
    # Warm the BatchNorm running statistics away from their identity init.
    enc.train()
    with torch.no_grad():
        enc(torch.randn(4, 80, 20), torch.tensor([80, 70, 60, 50]))
    enc.eval()
    lengths = [97, 64, 40]
    feats = torch.randn(len(lengths), max(lengths), 20) * 3  # padding is garbage, not zeros
    with torch.no_grad():
        batched, batched_lens = enc(feats, torch.tensor(lengths))
        for i, length in enumerate(lengths):
            alone, alone_lens = enc(feats[i : i + 1, :length], torch.tensor([length]))
            assert int(batched_lens[i]) == int(alone_lens[0]) == alone.size(1)
            torch.testing.assert_close(batched[i, : alone.size(1)], alone[0], atol=1e-5, rtol=1e-5)


def test_masked_batch_norm_uses_valid_frames_only() -> None:
    torch.manual_seed(0)
    norm, ref = torch.nn.BatchNorm1d(6), torch.nn.BatchNorm1d(6)
    x = torch.randn(3, 6, 10)
    mask = lengths_to_mask(torch.tensor([10, 7, 2]), 10)
    x_garbage = x.masked_fill(~mask[:, None, :], 100.0)
    out = masked_batch_norm(norm, x_garbage, mask)  # train mode: batch statistics
    valid = x.transpose(1, 2)[mask]  # (M, C)
    torch.testing.assert_close(out.transpose(1, 2)[mask], ref(valid))
    assert out.transpose(1, 2)[~mask].abs().max() == 0
    torch.testing.assert_close(norm.running_mean, ref.running_mean)
    torch.testing.assert_close(norm.running_var, ref.running_var)


def test_zero_length_utterance_gives_finite_output() -> None:
    enc = _encoder().eval()
    with torch.no_grad():
        out, lens = enc(torch.randn(2, 30, 20), torch.tensor([30, 3]))
    assert lens.tolist()[1] == 0
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("factor", [4, 6, 8])
def test_subsampling_gradients_equal_plain_autograd(factor: int) -> None:
    # The training path runs the first convolution on ATen's kernels and the later ones' input
    # gradients too (faster than oneDNN's on the CPU): values and gradients must be the plain
    # ones up to float round-off (the kernels may sum in another order).
    torch.manual_seed(factor)
    sub = Conv2dSubsampling(40, 24, factor, 8, dropout=0.0)
    feats, lens = torch.randn(3, 90, 40), torch.tensor([90, 70, 50])
    out, _ = sub(feats, lens)
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    ours = {name: p.grad.clone() for name, p in sub.named_parameters()}
    sub.zero_grad()
    plain = sub.conv(feats.unsqueeze(1))  # nn.Sequential: oneDNN forward and backward
    n, c, t, f = plain.shape
    reference = sub.out(plain.transpose(1, 2).reshape(n, t, c * f))
    (reference * weights).sum().backward()
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-6)
    for name, p in sub.named_parameters():
        torch.testing.assert_close(ours[name], p.grad, rtol=1e-4, atol=1e-4, msg=name)
