"""RNN-T negative log-likelihood in plain PyTorch (autograd), an alternative to torchaudio's.

Why it exists: on CPU, ``torchaudio.functional.rnnt_loss`` is slow (it computes the gradient in
its forward); this version vectorises one time step over the batch and all label
positions and lets autograd do the backward. Measured on logits (8, 399, 81, 256), i.e. 8 x 16 s
at 40 ms frames and 80 tokens, 2 shared CPU cores: forward + backward 1.7 s vs 6.0 s for
torchaudio. Values and gradients agree with torchaudio to float32 round-off (tested; both are
~1e-3 off a float64 reference on that example, where the loss is ~2000 per utterance).

Recursion (Graves 2012), with ``b[t, u]`` the blank and ``y[t, u]`` the label log-probability:

    alpha[0, u] = sum_{k<u} y[0, k]
    alpha[t, u] = logaddexp(alpha[t-1, u] + b[t-1, u], alpha[t, u-1] + y[t, u-1])

The second term makes each row a first-order linear recurrence in log space, so a whole row is
one ``logcumsumexp``: with ``c[u] = sum_{k<u} y[t, k]``,
``alpha[t, u] = c[u] + logcumsumexp_u(alpha[t-1, u] + b[t-1, u] - c[u])``. The loop runs over T
only; each step costs O(N * U).
"""

from __future__ import annotations

import torch
from torch import Tensor


def rnnt_nll(
    logits: Tensor,
    targets: Tensor,
    logit_lengths: Tensor,
    target_lengths: Tensor,
    blank: int = 0,
) -> Tensor:
    """Per-utterance RNN-T negative log-likelihood (N,), summed over all alignments.

    Args:
        logits: (N, T, U+1, V) unnormalised joiner output (log-softmax is applied here).
        targets: (N, U) token ids, padding with any id in [0, V).
        logit_lengths: (N,) valid frames, each >= 1.
        target_lengths: (N,) valid tokens.
        blank: blank token id.
    """
    n = logits.size(0)
    blank_lp, label_lp = lattice_log_probs(logits, targets, blank)  # (N, T, U+1) each
    alphas, _ = forward_rows(blank_lp, label_lp)  # (N, T, U+1)
    rows = torch.arange(n, device=logits.device)
    last_t = (logit_lengths.long() - 1).clamp(min=0)
    last_u = target_lengths.long()
    return -(alphas[rows, last_t, last_u] + blank_lp[rows, last_t, last_u])


def lattice_log_probs(logits: Tensor, targets: Tensor, blank: int = 0) -> tuple[Tensor, Tensor]:
    """Blank and next-label log-probabilities (N, T, U+1) each from logits (N, T, U+1, V).

    ``label[..., u]`` is log P(targets[u]) at lattice node u; ``label[..., U]`` is unused.
    """
    n, t, u1, _ = logits.shape
    logits = logits.float()
    labels = torch.cat([targets.long(), targets.new_full((n, 1), blank).long()], dim=1)  # (N, U+1)
    index = torch.stack([torch.full_like(labels, blank), labels], dim=-1)  # (N, U+1, 2)
    index = index[:, None].expand(n, t, u1, 2)  # (N, T, U+1, 2)
    # One gather for blank and label keeps the backward to a single scatter over the lattice.
    picked = logits.gather(-1, index) - logits.logsumexp(dim=-1, keepdim=True)  # (N, T, U+1, 2)
    blank_lp, label_lp = picked.unbind(dim=-1)
    return blank_lp, label_lp


def forward_rows(
    blank_lp: Tensor, label_lp: Tensor, carry: tuple[Tensor, Tensor] | None = None
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Forward variables alpha (N, t, U+1) for a run of t frames of the lattice.

    ``carry`` is (alpha, blank log-prob) (N, U+1) of the frame before the run, ``None`` when
    the run starts at frame 0; the returned carry continues the recursion, so a long lattice can
    be processed a few frames at a time.
    """
    n, _, u1 = label_lp.shape
    label_cum = torch.cat(
        [label_lp.new_zeros(n, label_lp.size(1), 1), label_lp[:, :, :-1].cumsum(dim=-1)], dim=-1
    )  # (N, t, U+1): c[t, u] = sum_{k<u} y[t, k]
    # unbind once: indexing the (N, t, ...) tensors inside the loop would make autograd
    # allocate a full-size zero gradient per step.
    blank_steps = blank_lp.unbind(dim=1)  # t x (N, U+1)
    cum_steps = label_cum.unbind(dim=1)  # t x (N, U+1)
    alphas = []
    for blank_step, c in zip(blank_steps, cum_steps, strict=True):
        if carry is None:
            alpha = c  # frame 0: only label emissions reach node u
        else:
            alpha = torch.logcumsumexp(carry[0] + carry[1] - c, dim=-1) + c
        alphas.append(alpha)
        carry = (alpha, blank_step)
    if carry is None:
        raise ValueError("forward_rows needs at least one frame")
    return torch.stack(alphas, dim=1), carry
