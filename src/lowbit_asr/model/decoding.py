"""RNN-T search: batched greedy search and time-synchronous beam search.

Both take encoder output (N, T, E) with lengths (N,) and return token ids (blank removed) per
utterance. Both cap the non-blank symbols emitted at one frame at ``max_symbols_per_frame``;
when the cap is hit the search moves to the next frame without scoring a blank.

Beam search (``beam_search``) is a time-synchronous variant of Graves' algorithm, in the spirit
of icefall's ``modified_beam_search`` but allowing several symbols per frame:

    at frame t, every kept hypothesis is "open";
    repeat up to max_symbols_per_frame times:
        extend every open hypothesis by every token; blank "closes" it for this frame
        (closed hypotheses with the same prefix are merged by log-add of their scores);
        keep the best (beam_size - #closed) extensions, closed and open together;
    open hypotheses left when the cap is hit are closed with their blank log-probability;
    the closed hypotheses are the beam for frame t+1.

The beam holds at most ``beam_size`` hypotheses at every moment, and a hypothesis' score is the
log-sum of the probabilities of the alignments of its prefix that the search kept. With
``beam_size=1`` each sub-step keeps the single best extension of the single hypothesis, i.e. the
argmax, so the search is exactly greedy search with the same cap (tested).

Pruning can drop the greedy path, so on its own a beam search can end with a sequence that the
model likes less than greedy's (measured on random models: 63 of 540 utterances). With ``rescore``
(the default) the final beam plus the greedy hypothesis are re-ranked by the exact
log P(y | x), summed over all alignments (``sequence_log_prob``); the result is then never worse
than greedy under the model, by construction (tested), at the cost of one greedy pass and one
(T, U+1, V) lattice per candidate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lowbit_asr.data.tokenizer import BLANK_ID
from lowbit_asr.model.config import DecodingConfig
from lowbit_asr.model.rnnt_loss import forward_rows, lattice_log_probs

if TYPE_CHECKING:
    from lowbit_asr.model.rnnt import RNNT


def search(model: RNNT, enc: Tensor, enc_lens: Tensor, cfg: DecodingConfig) -> list[list[int]]:
    """Dispatch on ``cfg.method`` (greedy | beam) over encoder output (N, T, E), lengths (N,)."""
    if cfg.method == "greedy":
        return greedy_search(model, enc, enc_lens, cfg.max_symbols_per_frame)
    if cfg.method == "beam":
        return beam_search(
            model, enc, enc_lens, cfg.beam_size, cfg.max_symbols_per_frame, cfg.rescore
        )
    raise ValueError(f"decoding.method must be 'greedy' or 'beam', got {cfg.method!r}")


@torch.no_grad()
def greedy_search(
    model: RNNT, enc: Tensor, enc_lens: Tensor, max_symbols_per_frame: int = 5
) -> list[list[int]]:
    """Batched greedy search: per frame, emit the argmax until it is blank or the cap is hit.

    All utterances advance frame by frame together; at each sub-step only the utterances that
    just emitted a symbol run a predictor step (one step per emitted symbol).
    """
    n, t_max, _ = enc.shape
    enc_proj = model.joiner.project_encoder(enc)  # (N, T, J)
    start = torch.full((n,), BLANK_ID, dtype=torch.long, device=enc.device)
    pred, state = model.predictor.step(start, None)  # (N, H), batch-first state tensors
    pred_proj = model.joiner.project_predictor(pred)  # (N, J)
    hyps: list[list[int]] = [[] for _ in range(n)]
    for t in range(t_max):
        active = torch.nonzero(enc_lens > t).squeeze(1)  # (A,) utterances still at frame t
        for _ in range(max_symbols_per_frame):
            if active.numel() == 0:
                break
            logits = model.joiner.join(enc_proj[active, t], pred_proj[active])  # (A, V)
            tokens = logits.argmax(dim=-1)  # (A,)
            emitted = tokens != BLANK_ID
            active, tokens = active[emitted], tokens[emitted]
            if active.numel() == 0:
                break
            for i, token in zip(active.tolist(), tokens.tolist(), strict=True):
                hyps[i].append(token)
            pred, new_state = model.predictor.step(tokens, tuple(s[active] for s in state))
            pred_proj[active] = model.joiner.project_predictor(pred)
            for s, new in zip(state, new_state, strict=True):
                s[active] = new
    return hyps


@dataclass
class _Hypothesis:
    """A prefix with its score and the predictor output it conditions the joiner on."""

    tokens: tuple[int, ...]
    score: float
    pred_proj: Tensor  # (J,)
    state: tuple[Tensor, ...]  # the predictor's state, batch-first, batch of 1


def _log_add(a: float, b: float) -> float:
    """log(exp(a) + exp(b)) without overflow."""
    hi, lo = max(a, b), min(a, b)
    return hi + math.log1p(math.exp(lo - hi))


def _close(closed: dict[tuple[int, ...], _Hypothesis], hyp: _Hypothesis) -> None:
    """Add ``hyp`` to the closed set, merging with an equal prefix (same predictor state)."""
    same = closed.get(hyp.tokens)
    if same is None:
        closed[hyp.tokens] = hyp
    else:
        same.score = _log_add(same.score, hyp.score)


@torch.no_grad()
def beam_search(
    model: RNNT,
    enc: Tensor,
    enc_lens: Tensor,
    beam_size: int = 4,
    max_symbols_per_frame: int = 5,
    rescore: bool = True,
) -> list[list[int]]:
    """Time-synchronous beam search (see the module docstring), one utterance at a time with
    the hypotheses of an utterance batched through the joiner and predictor.

    With ``rescore``, the final beam and the greedy hypothesis are re-ranked by exact
    log P(y | x); otherwise the best search score wins.
    """
    enc_proj = model.joiner.project_encoder(enc)  # (N, T, J)
    beams = [
        _beam_search_one(model, enc_proj[i, : int(enc_lens[i])], beam_size, max_symbols_per_frame)
        for i in range(enc.size(0))
    ]
    if not rescore:
        return [list(beam[0].tokens) for beam in beams]
    greedy = greedy_search(model, enc, enc_lens, max_symbols_per_frame)
    best = []
    for i, beam in enumerate(beams):
        if int(enc_lens[i]) == 0:  # nothing to score: no frame, no symbol
            best.append([])
            continue
        candidates = list(dict.fromkeys([tuple(greedy[i])] + [h.tokens for h in beam]))
        scores = sequence_log_prob(
            model,
            enc[i : i + 1].expand(len(candidates), -1, -1),
            enc_lens[i : i + 1].expand(len(candidates)),
            [list(c) for c in candidates],
        )  # (K,)
        best.append(list(candidates[int(scores.argmax())]))
    return best


_LATTICE_ELEMENTS = 1 << 22
"""Elements of (frames, U+1, max(V, J)) built at once by ``sequence_log_prob`` (16 MB float32)."""


@torch.no_grad()
def sequence_log_prob(model: RNNT, enc: Tensor, enc_lens: Tensor, hyps: list[list[int]]) -> Tensor:
    """Exact log P(y | x) (N,) of one token sequence per encoder output (N, T, E), summed over
    all alignments; 0-frame utterances score 0 for the empty sequence.

    Memory stays bounded for any T and U: one utterance at a time, and its lattice a few frames
    at a time (the forward recursion is carried across frame chunks).
    """
    scores = []
    for i, hyp in enumerate(hyps):
        t = int(enc_lens[i])
        tokens = torch.tensor([[BLANK_ID, *hyp]], dtype=torch.long, device=enc.device)  # (1, U+1)
        pred, _ = model.predictor(tokens)  # (1, U+1, H)
        pred_proj = model.joiner.project_predictor(pred)[:, None]  # (1, 1, U+1, J)
        enc_proj = model.joiner.project_encoder(enc[i : i + 1, :t])  # (1, T, J)
        width = max(model.vocab_size, pred_proj.size(-1)) * (len(hyp) + 1)
        frames = max(1, _LATTICE_ELEMENTS // width)
        carry = None
        for start in range(0, t, frames):
            logits = model.joiner.join(
                enc_proj[:, start : start + frames, None], pred_proj
            )  # (1, frames, U+1, V)
            blank_lp, label_lp = lattice_log_probs(logits, tokens[:, 1:], BLANK_ID)
            _, carry = forward_rows(blank_lp, label_lp, carry)
        if carry is None:
            scores.append(enc.new_zeros(1) if not hyp else enc.new_full((1,), float("-inf")))
        else:
            alpha, blank_lp = carry  # (1, U+1) each, at the last frame
            scores.append(alpha[:, len(hyp)] + blank_lp[:, len(hyp)])
    return torch.cat(scores)


def _beam_search_one(
    model: RNNT, enc_proj: Tensor, beam_size: int, max_symbols_per_frame: int
) -> list[_Hypothesis]:
    """Beam search over one utterance's projected encoder frames (T, J); best first."""
    start = torch.full((1,), BLANK_ID, dtype=torch.long, device=enc_proj.device)
    pred, state = model.predictor.step(start, None)  # (1, H)
    beam = [_Hypothesis((), 0.0, model.joiner.project_predictor(pred)[0], state)]
    for t in range(enc_proj.size(0)):
        closed: dict[tuple[int, ...], _Hypothesis] = {}
        open_hyps = beam
        for _ in range(max_symbols_per_frame):
            if not open_hyps:
                break
            pred_proj = torch.stack([h.pred_proj for h in open_hyps])  # (K, J)
            logits = model.joiner.join(enc_proj[t], pred_proj)  # (K, V)
            log_probs = torch.log_softmax(logits.float(), dim=-1)  # (K, V)
            scores = torch.tensor([h.score for h in open_hyps], dtype=torch.float32)
            candidates = (scores.to(log_probs.device)[:, None] + log_probs).flatten()  # (K*V,)
            # closed + open never exceeds beam_size, so budget >= 1 while hypotheses are open.
            budget = beam_size - len(closed)
            top_scores, top_index = candidates.topk(min(budget, candidates.numel()))
            parents: list[_Hypothesis] = []
            tokens: list[int] = []
            new_scores: list[float] = []
            vocab = log_probs.size(1)
            for score, index in zip(top_scores.tolist(), top_index.tolist(), strict=True):
                parent, token = divmod(index, vocab)
                hyp = open_hyps[parent]
                if token == BLANK_ID:
                    _close(closed, _Hypothesis(hyp.tokens, score, hyp.pred_proj, hyp.state))
                else:
                    parents.append(hyp)
                    tokens.append(token)
                    new_scores.append(score)
            open_hyps = _extend(model, parents, tokens, new_scores)
        if open_hyps:  # cap reached: these hypotheses still pay for the blank that ends t
            pred_proj = torch.stack([h.pred_proj for h in open_hyps])  # (K, J)
            logits = model.joiner.join(enc_proj[t], pred_proj)  # (K, V)
            blank = torch.log_softmax(logits.float(), dim=-1)[:, BLANK_ID].tolist()  # (K,)
            for hyp, blank_score in zip(open_hyps, blank, strict=True):
                hyp.score += blank_score
                _close(closed, hyp)
        beam = sorted(closed.values(), key=lambda h: h.score, reverse=True)[:beam_size]
    return beam


def _extend(
    model: RNNT, parents: list[_Hypothesis], tokens: list[int], scores: list[float]
) -> list[_Hypothesis]:
    """Append one token to each parent, running one batched predictor step for all of them."""
    if not parents:
        return []
    device = parents[0].pred_proj.device
    state = tuple(torch.cat(parts) for parts in zip(*(p.state for p in parents), strict=True))
    token_ids = torch.tensor(tokens, dtype=torch.long, device=device)  # (K,)
    pred, state = model.predictor.step(token_ids, state)  # (K, H), batch-first (K, ...) each
    pred_proj = model.joiner.project_predictor(pred)  # (K, J)
    return [
        _Hypothesis(p.tokens + (token,), score, pred_proj[k], tuple(s[k : k + 1] for s in state))
        for k, (p, token, score) in enumerate(zip(parents, tokens, scores, strict=True))
    ]
