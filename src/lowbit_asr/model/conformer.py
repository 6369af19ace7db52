"""Conformer encoder (Gulati et al. 2020) with relative positional self-attention.

Every weight is read through its module at call time (``self.linear(x)``, ``self.conv(x)``,
``self.pos_bias_u``), never cached, so that ``torch.nn.utils.parametrize`` parametrizations,
which is how the quantizer attaches fake-quant to a weight, are always seen.

Padding is respected everywhere, so that the valid frames of a padded utterance get exactly the
outputs the utterance gets alone (in eval mode):
- the subsampling convolutions use no padding, so a valid output frame only sees valid input;
- self-attention masks padded keys;
- the depthwise convolution sees padded frames as zeros, as it sees the frames beyond either end;
- BatchNorm statistics are computed over valid frames only (the padded frames are taken out
  before the norm and put back as zeros), so training statistics do not depend on how much
  padding a batch happens to have.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lowbit_asr.model.config import EncoderConfig

# (kernel, stride) of each Conv2d of the front end, per time reduction factor. Kernel >= stride
# so that no input frame is skipped; factor 6 follows ESPnet's Conv2dSubsampling6 layout.
_SUBSAMPLING_LAYOUT: dict[int, tuple[tuple[int, int], ...]] = {
    4: ((3, 2), (3, 2)),
    6: ((3, 2), (5, 3)),
    8: ((3, 2), (3, 2), (3, 2)),
}


def lengths_to_mask(lengths: Tensor, max_len: int) -> Tensor:
    """Boolean mask (N, max_len), True on valid frames, from lengths (N,)."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def conv_output_length(length: int, layout: tuple[tuple[int, int], ...]) -> int:
    """Length after unpadded convolutions with the given (kernel, stride) pairs (may be <= 0)."""
    for kernel, stride in layout:
        length = (length - kernel) // stride + 1
    return length


class _Conv2dAtenInputGrad(torch.autograd.Function):
    """``F.conv2d`` (no padding, no dilation, one group) whose input gradient is computed by
    ATen's im2col + GEMM kernel (``_slow_conv2d_backward``) instead of oneDNN's.

    Written by hand because no library switch does it: for the subsampling's second,
    stride-2 3x3 convolution (32 -> 32 channels) oneDNN's backward-data kernel took 11.6-11.8
    ms per ``float_mini``-shaped batch on one core, six times its forward, where ATen's took
    3.9-5.4 ms (AMD EPYC, native and AVX2-capped kernels); forward and weight gradient stay
    oneDNN's (2.0 and 2.3 ms). Float32 CPU tensors only (``_training_conv2d``).
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, int]):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.has_bias = stride, bias is not None
        return F.conv2d(x, weight, bias, stride)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten._slow_conv2d_backward.output_mask(
                grad_out, x, weight, list(weight.shape[2:]), list(ctx.stride), [0, 0],
                [True, False, False])[0]
        if ctx.needs_input_grad[1] or (ctx.has_bias and ctx.needs_input_grad[2]):
            _, grad_w, grad_b = torch.ops.aten.convolution_backward(
                grad_out, x, weight, [weight.size(0)] if ctx.has_bias else None,
                list(ctx.stride), [0, 0], [1, 1], False, [0, 0], 1,
                [False, True, ctx.has_bias])
        return grad_x, grad_w, grad_b, None


def _training_conv2d(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """``conv(x)`` (unpadded, undilated, one group) with the CPU kernels that are fastest for
    the subsampling's shapes when gradients are needed (measured on one core of an AMD EPYC,
    ``float_mini``-shaped batch, native and AVX2-capped kernels):

    - input needs its gradient (the second and later convolutions): oneDNN forward and weight
      gradient, ATen's input gradient (``_Conv2dAtenInputGrad``);
    - only the weights do (the first, one-channel convolution): ATen's im2col + GEMM forward
      and backward (``_slow_conv2d_forward``), 3.9-4.2 ms against oneDNN's 5.6-8.1 ms, whose
      one-input-channel primitive is slow to build and run under autograd.

    Anything else (CUDA, another dtype, autocast, no gradient) is plain ``conv(x)``.
    """
    weight, bias = conv.weight, conv.bias
    plain = (x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32
             or torch.is_autocast_enabled("cpu") or not torch.is_grad_enabled())
    if plain or not (x.requires_grad or weight.requires_grad):
        return conv(x)
    stride = tuple(conv.stride)
    if x.requires_grad:
        return _Conv2dAtenInputGrad.apply(x, weight, bias, stride)
    return torch.ops.aten._slow_conv2d_forward(
        x, weight, list(weight.shape[2:]), bias, list(stride), [0, 0])


class Conv2dSubsampling(nn.Module):
    """Conv2d + ReLU stack reducing time by 4, 6 or 8, then a Linear to ``d_model`` and dropout.

    The convolutions are unpadded, so output lengths follow exactly from the conv arithmetic
    ``L -> (L - kernel) // stride + 1`` per layer (see ``output_lengths``).
    """

    def __init__(
        self, feat_dim: int, d_model: int, factor: int, channels: int, dropout: float
    ) -> None:
        super().__init__()
        if factor not in _SUBSAMPLING_LAYOUT:
            raise ValueError(f"encoder.subsampling_factor must be one of 4, 6, 8, got {factor}")
        self.layout = _SUBSAMPLING_LAYOUT[factor]
        self.min_frames = self._min_frames(self.layout)
        freq = conv_output_length(feat_dim, self.layout)
        if freq < 1:
            raise ValueError(
                f"encoder.feat_dim={feat_dim} is too small for subsampling factor {factor}"
            )
        layers: list[nn.Module] = []
        in_channels = 1
        for kernel, stride in self.layout:
            layers += [nn.Conv2d(in_channels, channels, kernel, stride), nn.ReLU()]
            in_channels = channels
        self.conv = nn.Sequential(*layers)
        self.out = nn.Linear(channels * freq, d_model)
        self.dropout = nn.Dropout(dropout)

    @staticmethod
    def _min_frames(layout: tuple[tuple[int, int], ...]) -> int:
        """Fewest input frames that still give one output frame."""
        length = 1
        for kernel, stride in reversed(layout):
            length = (length - 1) * stride + kernel
        return length

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Exact number of output frames (N,) for input lengths (N,); 0 for too-short inputs."""
        for kernel, stride in self.layout:
            lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
        return lengths.clamp(min=0)

    def forward(self, feats: Tensor, feat_lens: Tensor) -> tuple[Tensor, Tensor]:
        """Subsample features (N, T, F) with lengths (N,) to (N, T', D) and lengths (N,)."""
        if feats.size(1) < self.min_frames:
            raise ValueError(
                f"input has {feats.size(1)} frames; this front end needs >= {self.min_frames}"
            )
        x = feats.unsqueeze(1)  # (N, 1, T, F)
        for layer in self.conv:  # Conv2d, ReLU, Conv2d, ReLU, ...
            x = _training_conv2d(x, layer) if isinstance(layer, nn.Conv2d) else layer(x)
        n, c, t, f = x.shape
        x = x.transpose(1, 2).reshape(n, t, c * f)  # (N, T', C*F'): channels x freq per frame
        return self.dropout(self.out(x)), self.output_lengths(feat_lens)


def relative_positional_encoding(
    length: int, dim: int, device: torch.device | None = None, dtype: torch.dtype | None = None
) -> Tensor:
    """Sinusoidal embeddings (2T-1, D) of relative positions T-1, T-2, ..., -(T-1).

    Row ``k`` encodes the relative position ``i - j = T-1-k`` (query ``i``, key ``j``); sin and cos
    are interleaved on the feature axis as in Transformer-XL / ESPnet ``RelPositionalEncoding``.
    """
    positions = torch.arange(length - 1, -length, -1, device=device, dtype=torch.float32)
    inv_freq = torch.exp(
        torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim)
    )
    angles = positions[:, None] * inv_freq[None, :]  # (2T-1, D/2)
    table = torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)  # (2T-1, D)
    return table.to(dtype) if dtype is not None else table


def rel_shift(scores: Tensor) -> Tensor:
    """Turn scores against relative positions (N, H, T, 2T-1) into (N, H, T, T) query-key scores.

    Output ``[..., i, j]`` is input ``[..., i, T-1-i+j]``, i.e. the score of relative position
    ``i - j``. Done with the Transformer-XL pad-and-reshape trick (no gather index tensor).
    """
    n, h, t, p = scores.shape  # p = 2T-1
    padded = F.pad(scores, (1, 0))  # (N, H, T, 2T): a zero column in front of each row
    padded = padded.view(n, h, p + 1, t)  # (N, H, 2T, T): rows now straddle the old row ends
    shifted = padded[:, :, 1:].reshape(n, h, t, p)  # (N, H, T, 2T-1): row i moved left by i
    return shifted[..., :t]  # (N, H, T, T)


class RelPositionMultiHeadAttention(nn.Module):
    """Multi-head self-attention with Transformer-XL relative positions (ESPnet style).

    score(i, j) = [(q_i + u) . k_j + (q_i + v) . p_{i-j}] / sqrt(d_head), where ``p`` is the
    bias-free projection ``pos_proj`` of the sinusoidal relative-position table and ``u``, ``v``
    are the learnable per-head biases ``pos_bias_u``, ``pos_bias_v``.

    q/k/v are one packed ``nn.Linear(d, 3d)`` (``qkv``): one GEMM instead of three, and because
    dim 0 of a weight is its output channel, per-channel and sub-channel quantization of the
    packed (3d, d) matrix is identical to quantizing three separate (d, d) matrices. Only a
    per-tensor choice (e.g. a per-tensor clipping search) is shared by q, k and v.
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.pos_proj = nn.Linear(d_model, d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model)
        self.pos_bias_u = nn.Parameter(torch.empty(num_heads, self.head_dim))
        self.pos_bias_v = nn.Parameter(torch.empty(num_heads, self.head_dim))
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)

    def forward(self, x: Tensor, pos_emb: Tensor, mask: Tensor) -> Tensor:
        """Attend over (N, T, D) with relative table (2T-1, D) and valid-frame mask (N, T)."""
        n, t, d = x.shape
        h, dh = self.num_heads, self.head_dim
        q, k, v = self.qkv(x).view(n, t, 3, h, dh).unbind(dim=2)  # 3 x (N, T, H, dh)
        k = k.transpose(1, 2)  # (N, H, T, dh)
        v = v.transpose(1, 2)  # (N, H, T, dh)
        pos = self.pos_proj(pos_emb).view(1, 2 * t - 1, h, dh).transpose(1, 2)  # (1, H, 2T-1, dh)
        q_u = (q + self.pos_bias_u).transpose(1, 2)  # (N, H, T, dh)
        q_v = (q + self.pos_bias_v).transpose(1, 2)  # (N, H, T, dh)
        scale = 1.0 / math.sqrt(dh)
        position_scores = rel_shift(q_v @ pos.transpose(-2, -1)) * scale  # (N, H, T, T)
        # The content term (q_u . k) and the softmax are left to SDPA, which adds this float
        # bias; padded keys get the most negative finite value rather than -inf, so that a
        # zero-length utterance yields a uniform (not NaN) distribution.
        bias = position_scores.masked_fill(
            ~mask[:, None, None, :], torch.finfo(position_scores.dtype).min
        )
        out = F.scaled_dot_product_attention(
            q_u,
            k,
            v,
            attn_mask=bias,
            dropout_p=self.dropout if self.training else 0.0,
            scale=scale,
        )  # (N, H, T, dh)
        out = out.transpose(1, 2).reshape(n, t, d)  # (N, T, D)
        return self.out_proj(out)


class FeedForward(nn.Module):
    """LayerNorm -> Linear(d, e*d) -> Swish -> dropout -> Linear(e*d, d) -> dropout."""

    def __init__(self, d_model: int, expansion: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, expansion * d_model)
        self.linear2 = nn.Linear(expansion * d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """Position-wise map (N, T, D) -> (N, T, D), without the residual."""
        x = self.dropout(F.silu(self.linear1(self.norm(x))))
        return self.dropout(self.linear2(x))


def masked_batch_norm(norm: nn.BatchNorm1d, x: Tensor, mask: Tensor) -> Tensor:
    """Apply ``norm`` to (N, C, T) using only valid frames (mask (N, T)); padded frames -> 0.

    The valid frames are gathered into an (M, C) matrix, so that in training mode the batch
    statistics (and the running averages updated from them) ignore padding.
    """
    if bool(mask.all()):
        return norm(x)
    frames = x.transpose(1, 2)  # (N, T, C)
    out = frames.new_zeros(frames.shape)
    out[mask] = norm(frames[mask])  # (M, C) valid frames only
    return out.transpose(1, 2)  # (N, C, T)


class ConvolutionModule(nn.Module):
    """LayerNorm -> pointwise Conv1d(d, 2d) -> GLU -> depthwise Conv1d(k) -> BatchNorm -> Swish
    -> pointwise Conv1d(d, d) -> dropout.

    The pointwise (kernel-1) convolutions are computed as matrix products on the (N, T, D)
    layout, ``F.linear(x, weight[..., 0], bias)``: the same arithmetic as ``nn.Conv1d``, whose CPU
    path for kernel 1 is PyTorch's unblocked ``_slow_conv2d`` (forward + backward 13.6 ms of a
    0.19 s ``float_mini`` step on one core, ~10 ms as GEMMs; RESULTS.md, issue 13). Their
    parameters stay ``nn.Conv1d`` ones, so checkpoints, the quantizer's policy (which reads each
    weight through its module, parametrization included) and packed files are unchanged.
    """

    def __init__(self, d_model: int, kernel_size: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.pointwise_in = nn.Conv1d(d_model, 2 * d_model, 1)
        # Unpadded conv plus explicit (left, right) padding in forward keeps the length for
        # even kernels too (Gulati's 32), which symmetric Conv1d padding cannot.
        self.depthwise = nn.Conv1d(d_model, d_model, kernel_size, groups=d_model)
        self.padding = ((kernel_size - 1) // 2, kernel_size // 2)
        self.batch_norm = nn.BatchNorm1d(d_model)
        self.pointwise_out = nn.Conv1d(d_model, d_model, 1)
        self.dropout = nn.Dropout(dropout)

    @staticmethod
    def _pointwise(conv: nn.Conv1d, x: Tensor) -> Tensor:
        """Kernel-1 ``conv`` applied to frames (N, T, C_in) -> (N, T, C_out)."""
        return F.linear(x, conv.weight[..., 0], conv.bias)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """Map (N, T, D) with valid-frame mask (N, T) to (N, T, D), without the residual."""
        y = F.glu(self._pointwise(self.pointwise_in, self.norm(x)), dim=-1)  # (N, T, D)
        # Padded frames must reach the kernel as zeros, exactly like the frames past the end of
        # an unpadded utterance, or a valid frame near the end would depend on the batch.
        y = y.masked_fill(~mask[:, :, None], 0.0).transpose(1, 2)  # (N, D, T)
        y = self.depthwise(F.pad(y, self.padding))  # (N, D, T)
        y = F.silu(masked_batch_norm(self.batch_norm, y, mask)).transpose(1, 2)  # (N, T, D)
        return self.dropout(self._pointwise(self.pointwise_out, y))


class ConformerBlock(nn.Module):
    """Macaron block: x + FF/2 -> + MHSA -> + Conv -> + FF/2 -> LayerNorm."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        ff_expansion: int,
        conv_kernel: int,
        dropout: float,
        attention_dropout: float,
    ) -> None:
        super().__init__()
        self.ff1 = FeedForward(d_model, ff_expansion, dropout)
        self.attn_norm = nn.LayerNorm(d_model)
        self.attn = RelPositionMultiHeadAttention(d_model, num_heads, attention_dropout)
        self.attn_dropout = nn.Dropout(dropout)
        self.conv = ConvolutionModule(d_model, conv_kernel, dropout)
        self.ff2 = FeedForward(d_model, ff_expansion, dropout)
        self.final_norm = nn.LayerNorm(d_model)

    def forward(self, x: Tensor, pos_emb: Tensor, mask: Tensor) -> Tensor:
        """Map (N, T, D) with relative table (2T-1, D) and valid mask (N, T) to (N, T, D)."""
        x = x + 0.5 * self.ff1(x)
        x = x + self.attn_dropout(self.attn(self.attn_norm(x), pos_emb, mask))
        x = x + self.conv(x, mask)
        x = x + 0.5 * self.ff2(x)
        return self.final_norm(x)


class ConformerEncoder(nn.Module):
    """Conv2d subsampling followed by a stack of Conformer blocks.

    The sinusoidal relative-position table is computed once per forward for the batch length and
    shared by all blocks (each block has its own ``pos_proj``). Unlike ESPnet, the input is not
    scaled by sqrt(d_model) and no dropout is applied to the table.
    """

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        channels = cfg.subsampling_channels or cfg.d_model
        self.subsampling = Conv2dSubsampling(
            cfg.feat_dim, cfg.d_model, cfg.subsampling_factor, channels, cfg.dropout
        )
        self.blocks = nn.ModuleList(
            ConformerBlock(
                cfg.d_model,
                cfg.num_heads,
                cfg.ff_expansion,
                cfg.conv_kernel,
                cfg.dropout,
                cfg.attention_dropout,
            )
            for _ in range(cfg.num_layers)
        )

    @property
    def output_dim(self) -> int:
        """Width of the encoder output frames."""
        return self.cfg.d_model

    def output_lengths(self, feat_lens: Tensor) -> Tensor:
        """Encoder frames (N,) for feature lengths (N,)."""
        return self.subsampling.output_lengths(feat_lens)

    def forward(self, feats: Tensor, feat_lens: Tensor) -> tuple[Tensor, Tensor]:
        """Encode features (N, T, F) with lengths (N,) into (N, T', D) and lengths (N,).

        Frames at or past a sequence's length hold unspecified values; use the lengths.
        """
        x, lens, pos_emb, mask = self.embed(feats, feat_lens)
        return self.run_blocks(x, pos_emb, mask), lens

    def embed(self, feats: Tensor, feat_lens: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The first block's input: subsampled frames (N, T', D), their lengths (N,), the
        relative-position table and the frame mask (N, T')."""
        x, lens = self.subsampling(feats, feat_lens)  # (N, T', D), (N,)
        mask = lengths_to_mask(lens, x.size(1))  # (N, T')
        pos_emb = relative_positional_encoding(x.size(1), x.size(2), x.device, x.dtype)
        return x, lens, pos_emb, mask

    def run_blocks(self, x: Tensor, pos_emb: Tensor, mask: Tensor, start: int = 0) -> Tensor:
        """Blocks ``start``, ``start + 1`` … on ``x``, the input of block ``start`` (a caller
        that caches block inputs recomputes only the blocks after a change)."""
        for block in self.blocks[start:]:
            x = block(x, pos_emb, mask)
        return x
