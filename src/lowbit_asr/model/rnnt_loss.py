"""RNN-T negative log-likelihood in plain PyTorch, full and pruned, an alternative to torchaudio's.

Why it exists: on CPU, ``torchaudio.functional.rnnt_loss`` is slow (it computes the gradient in
its forward); this version vectorises one time step over the batch and all label positions.
Measured on logits (8, 399, 81, 256), i.e. 8 x 16 s at 40 ms frames and 80 tokens, 2 shared CPU
cores, with autograd through the recursion: forward + backward 1.7 s vs 6.0 s for torchaudio; the
backward is now written out (``_BandNLL``: posterior occupations from a backward-variable
recursion), which is faster still. Values and gradients agree with torchaudio to float32
round-off (tested; both are ~1e-3 off a float64 reference on that example, where the loss is
~2000 per utterance). The pruned loss (below) runs the same recursion on a band of the lattice.

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


def _at_least_float32(x: Tensor) -> Tensor:
    """float16/bfloat16 (autocast) -> float32; float32 and float64 as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


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
    blank_lp, label_lp = lattice_log_probs(logits, targets, blank)  # (N, T, U+1) each
    return lattice_nll(blank_lp, label_lp, logit_lengths, target_lengths)


def lattice_log_probs(
    logits: Tensor, targets: Tensor, blank: int = 0, nodes: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Blank and next-label log-probabilities (N, T, R) each from logits (N, T, R, V) at label
    positions ``nodes`` (N, T, R); ``nodes=None`` is the full lattice (R = U+1, node u = u).

    ``label[..., k]`` is log P(targets[node]) at the node; at node U it is unused.
    """
    n, t, r, _ = logits.shape
    logits = _at_least_float32(logits)
    labels = torch.cat([targets.long(), targets.new_full((n, 1), blank).long()], dim=1)  # (N, U+1)
    if nodes is None:
        node_labels = labels[:, None].expand(n, t, r)  # (N, T, U+1)
    else:
        node_labels = labels.gather(1, nodes.reshape(n, t * r)).reshape(n, t, r)
    index = torch.stack([torch.full_like(node_labels, blank), node_labels], dim=-1)  # (N,T,R,2)
    # One gather for blank and label keeps the backward to a single scatter over the lattice.
    picked = logits.gather(-1, index) - logits.logsumexp(dim=-1, keepdim=True)  # (N, T, R, 2)
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


# --- Pruned RNN-T (Kuang et al., Interspeech 2022) -------------------------------------------
#
# Written here in PyTorch rather than taken from k2 or fast_rnnt: k2 has no wheel for Python 3.11
# / torch 2.14 on PyPI, and fast_rnnt 1.3 (2023, no wheels) compiles against torch 2.14.1 only
# with four build workarounds tied to the CUDA toolkit's layout (README, "Pruned RNN-T loss").
# The pruned band uses the same recursion as the full lattice (``_BandNLL``, whose backward is
# written out), so it runs on any device torch runs on.
#
# The three steps:
# 1. ``simple_lattice``: a "simple" joiner that only adds an acoustic (N, T, V) and a language
#    (N, U+1, V) projection gives the whole (N, T, U+1) lattice of blank and label
#    log-probabilities without building (N, T, U+1, V) logits: the normaliser
#    logsumexp_v(am[t, v] + lm[u, v]) is one batched matrix product of their exponentials.
# 2. ``prune_bounds``: the posterior occupation of the simple lattice picks, per frame, the
#    ``prune_range`` consecutive label positions that hold most of the alignment mass.
# 3. ``pruned_nll``: the real joiner runs only on those (N, T, R) nodes, and the recursion runs
#    on the band they form (``alpha`` indexed by the position within each frame's window).

_UNREACHABLE = -1.0e30
"""Log-probability of a lattice node outside the pruned band (finite so that no inf - inf can
arise; exp() of it is 0 in float32)."""


def _band_alpha(blank_lp: Tensor, label_cum: Tensor, shift: Tensor | None) -> Tensor:
    """Forward variables (N, T, R) of a band; ``shift`` (N, T-1) moves of the window (None: 0).

    The loop carries ``a[t] = alpha[t] - c[t]`` so that each frame costs as few ops as possible
    (the recursion is T sequential steps over tensors of only N x R elements, so op dispatch,
    not arithmetic, is its cost): ``a[t] = logcumsumexp(align(a[t-1] + c[t-1] + b[t-1]) - c[t])``,
    with everything but the alignment precomputed for all frames at once.
    """
    n, t, r = blank_lp.shape
    if shift is None:
        # No alignment: a[t] = logcumsumexp(a[t-1] + (c[t-1] + b[t-1] - c[t])).
        step_in = (torch.cat([label_cum[:, :1], label_cum[:, :-1] + blank_lp[:, :-1]], dim=1)
                   - label_cum).unbind(dim=1)
        a = blank_lp.new_zeros(n, r)  # a[0] = alpha[0] - c[0] = 0
        out = [a]
        for step in range(1, t):
            a = torch.logcumsumexp(a + step_in[step], dim=-1)
            out.append(a)
        return torch.stack(out, dim=1) + label_cum
    carry = (label_cum + blank_lp).unbind(dim=1)  # alpha[t] + b[t] = a[t] + carry[t]
    pad = blank_lp.new_full((n, r - 1), _UNREACHABLE)
    index = (torch.arange(r, device=blank_lp.device) + shift[..., None]).unbind(dim=1)
    cum = label_cum.unbind(dim=1)
    a = blank_lp.new_zeros(n, r)
    out = [a]
    for step in range(1, t):
        # Align the previous frame's window with this one's: gather from
        # [alpha + b, unreachable x] at k + shift.
        prev = torch.cat([a + carry[step - 1], pad], dim=1).gather(1, index[step - 1])
        a = torch.logcumsumexp(prev - cum[step], dim=-1)
        out.append(a)
    return torch.stack(out, dim=1) + label_cum


def _band_beta(
    blank_lp: Tensor, label_cum: Tensor, shift: Tensor | None, last_t: Tensor, last_k: Tensor
) -> tuple[Tensor, Tensor]:
    """Backward variables of a band, computed in window-reversed order (k' = R-1-k) so that the
    reverse cumulative sums are plain ``logcumsumexp`` and the window alignment is the same
    gather as in ``_band_alpha``. Returns (beta, after_blank) (N, T, R) in the band's order:
    ``beta[t, k]`` = log P(rest | node (t, k)) and ``after_blank[t, k]`` = the beta of the node a
    blank from (t, k) leads to (0 for the final blank, unreachable outside the band).

    The loop carries ``g[t] = beta[t] + c[t]`` (reversed): ``g[t] = logcumsumexp(next[t] + b[t]
    + c[t])`` with ``next[t] = align(g[t+1]) - c[t+1]`` or, on an utterance's last frame, the
    virtual final node; frames after an utterance's end stay unreachable.
    """
    n, t, r = blank_lp.shape
    dev = blank_lp.device
    rows = torch.arange(n, device=dev)
    blank_rev, cum_rev = blank_lp.flip(-1), label_cum.flip(-1)
    into = (blank_rev + cum_rev).unbind(dim=1)  # g[t] = logcumsumexp(next[t] + into[t])
    cum = cum_rev.unbind(dim=1)
    final = blank_lp.new_full((n, r), _UNREACHABLE)
    final[rows, r - 1 - last_k] = 0.0  # the virtual node after the last blank
    ending = last_t.tolist()
    ends_at = {step: torch.tensor([e == step for e in ending], device=dev)[:, None]
               for step in set(ending)}
    pad = blank_lp.new_full((n, r - 1), _UNREACHABLE)
    index = None if shift is None else (torch.arange(r, device=dev) + shift[..., None]).unbind(1)
    nxt = blank_lp.new_full((n, r), _UNREACHABLE)
    gs, nexts = [], []
    for step in range(t - 1, -1, -1):
        if step < t - 1:
            if index is None:
                nxt = gs[-1] - cum[step + 1]
            else:
                # beta[t+1] at position k - shift, i.e. k' + shift in reversed order.
                nxt = torch.cat([gs[-1] - cum[step + 1], pad], dim=1).gather(1, index[step])
        if step in ends_at:
            nxt = torch.where(ends_at[step], final, nxt)
        gs.append(torch.logcumsumexp(nxt + into[step], dim=-1))
        nexts.append(nxt)
    beta = (torch.stack(gs[::-1], dim=1) - cum_rev).flip(-1)
    after_blank = torch.stack(nexts[::-1], dim=1).flip(-1)
    return beta, after_blank


def _label_cum(label_lp: Tensor) -> Tensor:
    """c[t, k] = sum_{j<k} label[t, j] within each frame's window (N, T, R)."""
    n, t, _ = label_lp.shape
    return torch.cat([label_lp.new_zeros(n, t, 1), label_lp[..., :-1].cumsum(dim=-1)], dim=-1)


class _BandNLL(torch.autograd.Function):
    """-log P(y | x) (N,) over a band of the RNN-T lattice, with an analytic backward.

    Why by hand: autograd through the T-step recursion records ~10 small ops per frame and its
    ``logcumsumexp`` backward is several more; the gradient of -log P is minus the posterior
    occupation of each transition, exp(alpha + log p + beta - log P), so one backward-variable
    recursion of the same shape gives it (no maintained library provides this for torch 2.14:
    see the module's note on k2 and fast_rnnt).
    """

    @staticmethod
    def forward(ctx, blank_lp, label_lp, shift, last_t, last_k):  # type: ignore[override]
        label_cum = _label_cum(label_lp)
        alpha = _band_alpha(blank_lp, label_cum, shift)
        rows = torch.arange(blank_lp.size(0), device=blank_lp.device)
        log_p = alpha[rows, last_t, last_k] + blank_lp[rows, last_t, last_k]
        ctx.save_for_backward(blank_lp, label_lp, label_cum, alpha, log_p, last_t, last_k)
        ctx.shift = shift
        return -log_p

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        blank_lp, label_lp, label_cum, alpha, log_p, last_t, last_k = ctx.saved_tensors
        beta, after_blank = _band_beta(blank_lp, label_cum, ctx.shift, last_t, last_k)
        base = alpha - log_p[:, None, None]
        scale = -grad[:, None, None]
        grad_blank = scale * (base + blank_lp + after_blank).exp()
        after_label = torch.cat([beta[..., 1:], torch.full_like(beta[..., :1], _UNREACHABLE)], -1)
        grad_label = scale * (base + label_lp + after_label).exp()
        return grad_blank, grad_label, None, None, None


def band_nll(
    blank_lp: Tensor,
    label_lp: Tensor,
    logit_lengths: Tensor,
    target_lengths: Tensor,
    nodes: Tensor | None = None,
) -> Tensor:
    """Per-utterance negative log-likelihood (N,) of a lattice given as (N, T, R) blank and
    label log-probabilities at label positions ``nodes`` (N, T, R) (None: the full lattice,
    R = U+1). The band must start at position 0 on frame 0, be consecutive within a frame,
    move up by 0..R-1 positions per frame and hold U_n on the utterance's last frame."""
    last_t = (logit_lengths.long() - 1).clamp(min=0)
    rows = torch.arange(blank_lp.size(0), device=blank_lp.device)
    if nodes is None:
        return _BandNLL.apply(blank_lp, label_lp, None, last_t, target_lengths.long())
    shift = torch.diff(nodes[..., 0], dim=1)
    last_k = target_lengths.long() - nodes[rows, last_t, 0]
    return _BandNLL.apply(blank_lp, label_lp, shift, last_t, last_k)


def lattice_nll(
    blank_lp: Tensor, label_lp: Tensor, logit_lengths: Tensor, target_lengths: Tensor
) -> Tensor:
    """Per-utterance negative log-likelihood (N,) of a full (N, T, U+1) lattice."""
    return band_nll(blank_lp, label_lp, logit_lengths, target_lengths)


def simple_lattice(
    am: Tensor,
    lm: Tensor,
    targets: Tensor,
    target_lengths: Tensor,
    lm_only_scale: float = 0.25,
    am_only_scale: float = 0.0,
    blank: int = 0,
) -> tuple[Tensor, Tensor]:
    """Blank and label log-probabilities (N, T, U+1) of the simple (additive) joiner.

    ``log P(v | t, u) = am[t, v] + lm[u, v] - logsumexp_v'(am[t, v'] + lm[u, v'])``, smoothed as
    k2's ``rnnt_loss_smoothed`` does (icefall trains with ``lm_only_scale=0.25``,
    ``am_only_scale=0``): the lattice is ``(1 - a - l) * joint + l * lm_only + a * am_only``,
    where ``lm_only`` is log_softmax(lm) and ``am_only`` normalises am under the unigram
    distribution of lm's softmax, averaged over the batch's valid label positions. The
    smoothing keeps each projection a usable model of its own, which makes the pruning bounds
    meaningful early in training.

    Args:
        am: (N, T, V) acoustic projection of the encoder frames.
        lm: (N, U+1, V) projection of the predictor outputs (position 0 follows the start).
        targets: (N, U) token ids; padding may be any id in [0, V).
        target_lengths: (N,) valid tokens (padding positions only matter for the unigram).
    """
    am, lm = _at_least_float32(am), _at_least_float32(lm)
    n, u1, v = lm.shape
    am_max = am.amax(dim=-1, keepdim=True)  # (N, T, 1)
    lm_max = lm.amax(dim=-1, keepdim=True)  # (N, U+1, 1)
    am_exp = (am - am_max).exp()
    lm_exp = (lm - lm_max).exp()
    tiny = torch.finfo(am.dtype).tiny
    # (N, T, U+1): logsumexp over v of am[t, v] + lm[u, v], as one bmm of the exponentials.
    norm = (torch.bmm(am_exp, lm_exp.transpose(1, 2)) + tiny).log()
    norm = norm + am_max + lm_max.transpose(1, 2)
    labels = torch.cat([targets.long(), targets.new_full((n, 1), blank).long()], dim=1)  # (N, U+1)
    am_label = am.gather(-1, labels[:, None, :].expand(-1, am.size(1), -1))  # (N, T, U+1)
    lm_label = lm.gather(-1, labels[..., None]).squeeze(-1)  # (N, U+1)
    am_blank = am[..., blank]  # (N, T)
    lm_blank = lm[..., blank]  # (N, U+1)
    label = am_label + lm_label[:, None, :] - norm
    blank_lp = am_blank[:, :, None] + lm_blank[:, None, :] - norm
    joint_scale = 1.0 - lm_only_scale - am_only_scale
    if lm_only_scale:
        lm_norm = lm_exp.sum(dim=-1).log() + lm_max.squeeze(-1)  # (N, U+1)
        label = joint_scale * label + lm_only_scale * (lm_label - lm_norm)[:, None, :]
        blank_lp = joint_scale * blank_lp + lm_only_scale * (lm_blank - lm_norm)[:, None, :]
        joint_scale = 1.0
    if am_only_scale:
        valid = (torch.arange(u1, device=lm.device)[None, :] <= target_lengths[:, None].long())
        lm_probs = lm_exp / lm_exp.sum(dim=-1, keepdim=True)  # (N, U+1, V)
        unigram = (lm_probs * valid[..., None]).sum(dim=(0, 1)) / valid.sum() + tiny  # (V,)
        am_norm = (am_exp @ unigram).log() + am_max.squeeze(-1)  # (N, T)
        log_unigram = unigram.log()
        am_only_label = am_label + log_unigram[labels][:, None, :] - am_norm[..., None]
        am_only_blank = (am_blank + log_unigram[blank] - am_norm)[..., None]
        label = joint_scale * label + am_only_scale * am_only_label
        blank_lp = joint_scale * blank_lp + am_only_scale * am_only_blank.expand_as(blank_lp)
    return blank_lp, label


def nll_and_occupation(
    blank_lp: Tensor, label_lp: Tensor, logit_lengths: Tensor, target_lengths: Tensor
) -> tuple[Tensor, Tensor]:
    """Negative log-likelihood (N,) of a full lattice, differentiable as usual, and the
    posterior occupation (N, T, U+1) of its blank transitions (detached).

    The occupation is d log P / d blank_lp; the loss's own gradient is the same quantity, so the
    recursion is differentiated once (here) and its result reused as the backward of the loss.
    """
    blank_d = blank_lp.detach().requires_grad_(True)
    label_d = label_lp.detach().requires_grad_(True)
    with torch.enable_grad():
        nll = lattice_nll(blank_d, label_d, logit_lengths, target_lengths)
        blank_occ, label_occ = torch.autograd.grad(-nll.sum(), [blank_d, label_d])
    nll = nll.detach()
    if blank_lp.requires_grad or label_lp.requires_grad:
        # Same value; gradient -occupation with respect to each lattice entry.
        surrogate = ((blank_lp - blank_d.detach()) * blank_occ).sum(dim=(1, 2)) + (
            (label_lp - label_d.detach()) * label_occ
        ).sum(dim=(1, 2))
        nll = nll - surrogate
    return nll, blank_occ


def prune_bounds(
    blank_occ: Tensor, logit_lengths: Tensor, target_lengths: Tensor, prune_range: int
) -> Tensor:
    """First label position (N, T) of each frame's window of ``prune_range`` positions.

    Per frame, the window holds the most blank-transition occupation (every alignment leaves
    each frame by exactly one blank, so this is the probability that the alignment passes
    through the window at that frame). The windows are then made a connected band from node
    (0, 0) to (T_n - 1, U_n): they start at 0 on frame 0, never move back, move at most
    ``prune_range - 1`` positions per frame, and contain U_n from the last valid frame on
    (each constraint is a running minimum or maximum, so the band stays as close to the
    occupation's choice as the constraints allow).
    ``prune_range`` is capped at U+1 (then nothing is pruned). Raises ValueError if an utterance
    has more tokens than such a band can reach (more than ``prune_range - 1`` per frame).
    """
    n, t, u1 = blank_occ.shape
    r = min(prune_range, u1)
    cum = torch.cat([blank_occ.new_zeros(n, t, 1), blank_occ.cumsum(dim=-1)], dim=-1)
    start = (cum[..., r:] - cum[..., :-r]).argmax(dim=-1)  # (N, T) in [0, U+1-r]
    end = (target_lengths.long() - r + 1).clamp(min=0)[:, None]  # window holding U_n
    frames = torch.arange(t, device=blank_occ.device)[None, :]
    slope = (r - 1) * frames
    start = torch.minimum(start, end)
    start[:, 0] = 0
    # Reachable from frame 0: start[t] <= start[t-1] + (r-1), i.e. lowered to
    # min_{k<=t} start[k] + (r-1)(t-k); then never moving back (a running maximum keeps that).
    start = ((start - slope).cummin(dim=1).values + slope).cummax(dim=1).values
    # From the last valid frame on, the window holds U_n; earlier windows are raised so that they
    # reach it: start[t] >= start[t+1] - (r-1), a running maximum taken from the end.
    start = torch.where(frames >= logit_lengths.long()[:, None] - 1, end.expand(n, t), start)
    start = (start - slope).flip(1).cummax(dim=1).values.flip(1) + slope
    if bool((start[:, 0] > 0).any()):
        bad = int((start[:, 0] > 0).nonzero()[0])
        raise ValueError(
            f"pruned RNN-T: utterance {bad} of the batch has {int(target_lengths[bad])} tokens"
            f" in {int(logit_lengths[bad])} frames, more than prune_range - 1 = {r - 1} per"
            " frame; raise model.pruned.prune_range")
    return start


def band_nodes(s_begin: Tensor, prune_range: int, u1: int) -> Tensor:
    """Label positions (N, T, R) of the band that starts at ``s_begin`` (N, T)."""
    r = min(prune_range, u1)
    return s_begin[..., None] + torch.arange(r, device=s_begin.device)


def pruned_nll(
    logits: Tensor,
    targets: Tensor,
    nodes: Tensor,
    logit_lengths: Tensor,
    target_lengths: Tensor,
    blank: int = 0,
) -> Tensor:
    """Per-utterance RNN-T negative log-likelihood (N,) restricted to a band of the lattice.

    Args:
        logits: (N, T, R) x V joiner output at the band's nodes, shape (N, T, R, V).
        targets: (N, U) token ids.
        nodes: (N, T, R) label positions of the band (``band_nodes``); consecutive within a
            frame, starting at 0 on frame 0, moving by 0..R-1 positions per frame.
        logit_lengths, target_lengths: (N,) valid frames and tokens.

    With a band that covers every position (R = U+1) this is ``rnnt_nll`` exactly.
    """
    blank_lp, label_lp = lattice_log_probs(logits, targets, blank, nodes)  # (N, T, R) each
    return band_nll(blank_lp, label_lp, logit_lengths, target_lengths, nodes)
