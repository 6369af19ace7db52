"""RNN-T: Conformer encoder, LSTM or stateless predictor, additive joiner, RNN-T loss, optional CTC.

Blank is token id 0 and is also the start-of-sequence input of the predictor.

Memory: the loss needs the full joint lattice, logits of shape (N, T, U+1, V) in float32, plus
the joiner's hidden activations (N, T, U+1, J) and, inside torchaudio's fused loss, a gradient
tensor as large as the logits. For 8 utterances x 16 s at 40 ms frames (T = 400), U = 100 tokens,
V = 256 and J = 320, that is ~8*400*101*(2*256 + 320)*4 B ~ 1.1 GB. ``joint_chunk_size`` bounds
it: the lattice is then built and reduced a few utterances at a time under activation
checkpointing (the joiner is recomputed in backward), each chunk trimmed to its own longest T
and U, so peak memory scales with the chunk, not the batch; the loss value and gradients are
unchanged. ``rnnt_loss_impl: torch`` (``rnnt_loss.rnnt_nll``) keeps the logits for its backward
instead: measured peak RSS for that batch (conformer_tiny, whole step) 4.0 GB vs 3.3 GB with
torchaudio, 3.1 GB with ``joint_chunk_size: 2``.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.utils.checkpoint import checkpoint

from lowbit_asr.data.tokenizer import BLANK_ID
from lowbit_asr.model.config import DecodingConfig, ModelConfig, PredictorConfig
from lowbit_asr.model.conformer import ConformerEncoder
from lowbit_asr.model.decoding import search, sequence_log_prob
from lowbit_asr.model.frontend import FrontEnd
from lowbit_asr.model.rnnt_loss import (
    band_nodes,
    nll_and_occupation,
    prune_bounds,
    pruned_nll,
    rnnt_nll,
    simple_lattice,
)

PredictorState = tuple[Tensor, ...]
"""What a predictor carries from one token to the next, every tensor batch-first (B, ...), so
that search selects, assigns and concatenates hypotheses' states without knowing the kind:
the LSTM's hidden and cell state (B, L, H) each, or the stateless predictor's last tokens."""


class _PredictorBase(nn.Module):
    """What both prediction networks share: ``forward(tokens (N, U), state)`` is theirs; the
    output width and the one-token ``step`` search calls are defined once here."""

    cfg: PredictorConfig

    @property
    def output_dim(self) -> int:
        """Width of the predictor output."""
        return self.cfg.hidden_dim

    def step(self, tokens: Tensor, state: PredictorState | None) -> tuple[Tensor, PredictorState]:
        """One step for a batch of last tokens (B,) -> outputs (B, H) and the new state."""
        out, state = self(tokens[:, None], state)  # (B, 1, H)
        return out[:, 0], state


class Predictor(_PredictorBase):
    """Prediction network: Embedding(V, E) -> dropout -> LSTM (float32) -> dropout.

    The LSTM is called inside ``parametrize.cached()``: ``nn.LSTM`` looks its weights up several
    times per call (``_update_flat_weights`` does ``hasattr`` then ``getattr``), which evaluates a
    parametrization (e.g. a fake-quantizer) 2-4 times per weight and call without the cache.
    """

    def __init__(self, cfg: PredictorConfig, vocab_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(vocab_size, cfg.embed_dim)
        self.lstm = nn.LSTM(
            cfg.embed_dim,
            cfg.hidden_dim,
            num_layers=cfg.num_layers,
            batch_first=True,
            dropout=cfg.dropout if cfg.num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(
        self, tokens: Tensor, state: PredictorState | None = None
    ) -> tuple[Tensor, PredictorState]:
        """Run token ids (N, U) to outputs (N, U, H); ``state`` (h, c), each (N, L, H),
        continues a previous call."""
        x = self.dropout(self.embedding(tokens))  # (N, U, E)
        hx = None if state is None else tuple(s.transpose(0, 1).contiguous() for s in state)
        # float32 whatever autocast says: oneDNN's bf16 LSTM exists only on CPUs with native
        # bf16 (AVX512-BF16/AMX; on an AVX2 machine it fails to build its primitive), and a
        # recurrence is where bf16 round-off compounds.
        with parametrize.cached(), torch.autocast(x.device.type, enabled=False):
            out, (h, c) = self.lstm(x.float(), hx)  # (N, U, H), 2 x (L, N, H)
        return self.dropout(out), (h.transpose(0, 1), c.transpose(0, 1))


class StatelessPredictor(_PredictorBase):
    """Stateless prediction network (Ghodsi et al., ICASSP 2020; the decoder of icefall's
    transducers): Embedding(V, E) -> dropout -> Conv1d(E, H, context_size) over the last
    ``context_size`` tokens -> ReLU -> dropout.

    Before the start-of-sequence blank the history is padded with blanks, so the state of a
    search is just the last ``context_size - 1`` tokens (B, C-1), starting as blanks. Training
    runs the convolution over the whole label sequence at once; there is no recurrence, so its
    forward and backward are one embedding lookup and one small GEMM, and search needs no state
    of floats.
    """

    def __init__(self, cfg: PredictorConfig, vocab_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(vocab_size, cfg.embed_dim)
        self.conv = nn.Conv1d(cfg.embed_dim, cfg.hidden_dim, cfg.context_size)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(
        self, tokens: Tensor, state: PredictorState | None = None
    ) -> tuple[Tensor, PredictorState]:
        """Run token ids (N, U) to outputs (N, U, H); ``state`` = (the C-1 tokens before
        ``tokens``, (N, C-1)) continues a previous call (None: blanks)."""
        context = self.cfg.context_size - 1
        history = (
            tokens.new_full((tokens.size(0), context), BLANK_ID) if state is None else state[0]
        )
        padded = torch.cat([history, tokens], dim=1)  # (N, C-1+U)
        x = self.dropout(self.embedding(padded)).transpose(1, 2)  # (N, E, C-1+U)
        out = F.relu(self.conv(x)).transpose(1, 2)  # (N, U, H)
        return self.dropout(out), (padded[:, padded.size(1) - context:],)


def build_predictor(cfg: PredictorConfig, vocab_size: int) -> Predictor | StatelessPredictor:
    """The prediction network ``cfg.kind`` names."""
    if cfg.kind == "stateless":
        return StatelessPredictor(cfg, vocab_size)
    return Predictor(cfg, vocab_size)


class Joiner(nn.Module):
    """Joint network: tanh(enc_proj(enc) + pred_proj(pred)) -> output Linear to the vocabulary.

    Split into ``project_encoder`` / ``project_predictor`` / ``join`` so that search projects each
    encoder frame once and the loss broadcasts the (N, T, 1, J) and (N, 1, U+1, J) projections
    instead of materialising concatenated inputs.
    """

    def __init__(self, encoder_dim: int, predictor_dim: int, joint_dim: int, vocab_size: int):
        super().__init__()
        self.enc_proj = nn.Linear(encoder_dim, joint_dim)
        self.pred_proj = nn.Linear(predictor_dim, joint_dim)
        self.output = nn.Linear(joint_dim, vocab_size)

    def project_encoder(self, enc: Tensor) -> Tensor:
        """Encoder frames (..., E) -> (..., J)."""
        return self.enc_proj(enc)

    def project_predictor(self, pred: Tensor) -> Tensor:
        """Predictor outputs (..., H) -> (..., J)."""
        return self.pred_proj(pred)

    def join(self, enc_proj: Tensor, pred_proj: Tensor) -> Tensor:
        """Logits (..., V) from broadcastable projected inputs (..., J)."""
        return self.output(torch.tanh(enc_proj + pred_proj))

    def forward(self, enc: Tensor, pred: Tensor) -> Tensor:
        """Logits (..., V) from broadcastable encoder (..., E) and predictor (..., H) outputs."""
        return self.join(self.project_encoder(enc), self.project_predictor(pred))


class SimpleJoiner(nn.Module):
    """The pruned loss's "simple" joiner: encoder (..., E) and predictor (..., H) projected
    straight to vocabulary logits, combined by addition (``rnnt_loss.simple_lattice``).

    Training only: it sets the pruning bounds and adds the simple loss; search never calls it.
    """

    def __init__(self, encoder_dim: int, predictor_dim: int, vocab_size: int) -> None:
        super().__init__()
        self.am = nn.Linear(encoder_dim, vocab_size)
        self.lm = nn.Linear(predictor_dim, vocab_size)


def _rnnt_loss_sum(
    joiner: Joiner,
    enc_proj: Tensor,
    pred_proj: Tensor,
    targets: Tensor,
    enc_lens: Tensor,
    target_lens: Tensor,
    impl: str,
) -> Tensor:
    """Summed RNN-T loss of a chunk; inputs are trimmed to this chunk's longest T and U."""
    t_max = int(enc_lens.max())
    u_max = int(target_lens.max())
    logits = joiner.join(
        enc_proj[:, :t_max, None, :],  # (n, T, 1, J)
        pred_proj[:, None, : u_max + 1, :],  # (n, 1, U+1, J)
    )  # (n, T, U+1, V)
    if impl == "torch":
        return rnnt_nll(logits, targets[:, :u_max], enc_lens, target_lens, BLANK_ID).sum()
    return AF.rnnt_loss(
        logits.float(),
        targets[:, :u_max].int(),
        enc_lens.int(),
        target_lens.int(),
        blank=BLANK_ID,
        reduction="sum",
        fused_log_softmax=True,
    )


class RNNT(nn.Module):
    """Conformer transducer with its front end and an optional auxiliary CTC head.

    ``forward`` returns the training losses and ``decode`` token ids per utterance, both from
    normalised features ``(N, T, 80)``; ``frontend(waveform, sample_rate)`` makes those features
    from audio (the data path normalises with the same module).
    """

    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2 (blank + one token), got {vocab_size}")
        self.cfg = cfg
        self.vocab_size = vocab_size
        # Audio -> normalised log-mel, with the train statistics as buffers (model state).
        self.frontend = FrontEnd(cfg.frontend)
        self.encoder = ConformerEncoder(cfg.encoder)
        self.predictor = build_predictor(cfg.predictor, vocab_size)
        self.joiner = Joiner(
            self.encoder.output_dim, self.predictor.output_dim, cfg.joiner.dim, vocab_size
        )
        # Built only when used, so that a CTC-free model has no dead parameters to count or
        # quantize.
        self.ctc_head = (
            nn.Linear(self.encoder.output_dim, vocab_size) if cfg.ctc_weight > 0 else None
        )
        self.simple_joiner = (
            SimpleJoiner(self.encoder.output_dim, self.predictor.output_dim, vocab_size)
            if cfg.rnnt_loss_impl == "pruned" else None
        )

    def encode(self, feats: Tensor, feat_lens: Tensor) -> tuple[Tensor, Tensor]:
        """Encoder frames (N, T', E) and their lengths (N,) for features (N, T, F)."""
        return self.encoder(feats, feat_lens)

    def forward(
        self, feats: Tensor, feat_lens: Tensor, targets: Tensor, target_lens: Tensor,
        step: int | None = None,
    ) -> dict[str, Tensor]:
        """Training losses for a batch.

        Args:
            feats: (N, T, F) input features, padded.
            feat_lens: (N,) valid frames per utterance.
            targets: (N, U) token ids in [1, V), padded with any valid id (e.g. 0).
            target_lens: (N,) valid tokens per utterance.
            step: the optimiser step, for the pruned loss's warm-up (None = after warm-up).

        Returns:
            ``loss`` = ``rnnt_loss`` + ``ctc_weight`` * ``ctc_loss``; ``rnnt_loss`` and
            ``ctc_loss`` are the summed negative log-likelihoods divided by N (torchaudio's
            ``reduction="mean"``: mean over utterances of per-utterance NLL). ``ctc_loss`` is a
            detached zero when the CTC head is disabled. With ``rnnt_loss_impl: pruned``,
            ``rnnt_loss`` is the pruned loss (an upper bound of the full one), ``simple_loss``
            the additive joiner's, and ``loss`` weighs them by ``pruned.scales(step)``.
        """
        enc, enc_lens = self.encode(feats, feat_lens)  # (N, T', E), (N,)
        n = enc.size(0)
        sos = targets.new_full((n, 1), BLANK_ID)
        pred, _ = self.predictor(torch.cat([sos, targets], dim=1))  # (N, U+1, H)
        losses: dict[str, Tensor] = {}
        if self.simple_joiner is not None:
            simple, pruned = self._pruned_losses(enc, enc_lens, pred, targets, target_lens)
            simple_scale, pruned_scale = self.cfg.pruned.scales(step)
            rnnt_loss = pruned
            losses["simple_loss"] = simple
            transducer_loss = simple_scale * simple + pruned_scale * pruned
        else:
            rnnt_loss = self.full_loss(enc, enc_lens, pred, targets, target_lens)
            transducer_loss = rnnt_loss

        if self.ctc_head is not None:
            log_probs = F.log_softmax(self.ctc_head(enc).float(), dim=-1)  # (N, T', V)
            ctc_loss = (
                F.ctc_loss(
                    log_probs.transpose(0, 1),  # (T', N, V)
                    targets,
                    enc_lens,
                    target_lens,
                    blank=BLANK_ID,
                    reduction="sum",
                    zero_infinity=True,  # a frame-starved utterance must not poison the batch
                )
                / n
            )
            loss = transducer_loss + self.cfg.ctc_weight * ctc_loss
        else:
            ctc_loss = rnnt_loss.new_zeros(())
            loss = transducer_loss
        return {"loss": loss, "rnnt_loss": rnnt_loss, "ctc_loss": ctc_loss, **losses}

    def full_loss(
        self, enc: Tensor, enc_lens: Tensor, pred: Tensor, targets: Tensor, target_lens: Tensor
    ) -> Tensor:
        """Mean RNN-T loss over the full (N, T', U+1) lattice, in chunks of utterances, from
        encoder frames (N, T', E) and predictor outputs (N, U+1, H); exact whatever
        ``rnnt_loss_impl`` trains with (``pruned`` takes torchaudio's full lattice here)."""
        n = enc.size(0)
        enc_proj = self.joiner.project_encoder(enc)  # (N, T', J)
        pred_proj = self.joiner.project_predictor(pred)  # (N, U+1, J)
        chunk = self.cfg.joint_chunk_size or n
        total = enc.new_zeros((), dtype=torch.float32)
        for start in range(0, n, chunk):
            part = slice(start, start + chunk)
            args = (
                self.joiner,
                enc_proj[part],
                pred_proj[part],
                targets[part],
                enc_lens[part],
                target_lens[part],
                self.cfg.rnnt_loss_impl,
            )
            if chunk < n and torch.is_grad_enabled():
                # Keep only this chunk's lattice alive; backward rebuilds it.
                total = total + checkpoint(_rnnt_loss_sum, *args, use_reentrant=False)
            else:
                total = total + _rnnt_loss_sum(*args)
        return total / n

    def _pruned_losses(
        self, enc: Tensor, enc_lens: Tensor, pred: Tensor, targets: Tensor, target_lens: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Mean simple and pruned RNN-T losses (Kuang et al. 2022; ``rnnt_loss`` module)."""
        assert self.simple_joiner is not None
        cfg = self.cfg.pruned
        t_max, u_max = int(enc_lens.max()), int(target_lens.max())
        enc, pred, targets = enc[:, :t_max], pred[:, : u_max + 1], targets[:, :u_max]
        blank_lp, label_lp = simple_lattice(
            self.simple_joiner.am(enc), self.simple_joiner.lm(pred), targets, target_lens,
            lm_only_scale=cfg.lm_scale, am_only_scale=cfg.am_scale, blank=BLANK_ID)
        simple, occupation = nll_and_occupation(blank_lp, label_lp, enc_lens, target_lens)
        s_begin = prune_bounds(occupation, enc_lens, target_lens, cfg.prune_range)
        nodes = band_nodes(s_begin, cfg.prune_range, u_max + 1)  # (N, T', R)
        n, r = enc.size(0), nodes.size(-1)
        pred_proj = self.joiner.project_predictor(pred)  # (N, U+1, J)
        band = pred_proj.gather(
            1, nodes.reshape(n, -1, 1).expand(-1, -1, pred_proj.size(-1))
        ).reshape(n, t_max, r, -1)  # (N, T', R, J)
        logits = self.joiner.join(self.joiner.project_encoder(enc)[:, :, None, :], band)
        pruned = pruned_nll(logits, targets, nodes, enc_lens, target_lens, BLANK_ID)
        return simple.sum() / n, pruned.sum() / n

    @torch.no_grad()
    def sequence_log_prob(self, feats: Tensor, feat_lens: Tensor, hyps: list[list[int]]) -> Tensor:
        """Exact log P(y | x) (N,) of token sequences ``hyps``, summed over all alignments."""
        with parametrize.cached():
            enc, enc_lens = self.encode(feats, feat_lens)
            return sequence_log_prob(self, enc, enc_lens, hyps)

    @torch.no_grad()
    def decode_and_score(
        self, feats: Tensor, feat_lens: Tensor, targets: Tensor, target_lens: Tensor,
        cfg: DecodingConfig | None = None,
    ) -> tuple[list[list[int]], Tensor, float]:
        """One encoder pass for both: token ids per utterance (as :meth:`decode`), the
        reference's negative log-likelihood -log P(targets | x) (N,) under teacher forcing
        (exact, summed over alignments), and the seconds spent encoding and searching (the
        real-time factor's numerator; the NLL is not part of it)."""
        cfg = cfg or self.cfg.decoding
        with parametrize.cached():
            start = time.perf_counter()
            enc, enc_lens = self.encode(feats, feat_lens)
            hyps = search(self, enc, enc_lens, cfg)
            seconds = time.perf_counter() - start
            refs = [targets[i, : int(target_lens[i])].tolist() for i in range(len(hyps))]
            nll = -sequence_log_prob(self, enc, enc_lens, refs)
        return hyps, nll, seconds

    @torch.no_grad()
    def decode(
        self, feats: Tensor, feat_lens: Tensor, cfg: DecodingConfig | None = None
    ) -> list[list[int]]:
        """Token ids (no blanks) per utterance, by ``cfg`` or else ``self.cfg.decoding``.

        Leaves the train/eval mode as it is; call ``eval()`` first for deterministic output.
        """
        cfg = cfg or self.cfg.decoding
        # Weights do not change during search: evaluate each parametrization once per call
        # instead of once per predictor step.
        with parametrize.cached():
            enc, enc_lens = self.encode(feats, feat_lens)
            return search(self, enc, enc_lens, cfg)

    def summary(self) -> str:
        """One line: architecture and parameter counts per part."""
        e, p = self.cfg.encoder, self.cfg.predictor
        predictor = (f"stateless c{p.context_size} {p.embed_dim}->{p.hidden_dim}"
                     if p.kind == "stateless" else f"LSTM {p.num_layers}x{p.hidden_dim}")
        parts = {
            "enc": count_parameters(self.encoder),
            "pred": count_parameters(self.predictor),
            "joint": count_parameters(self.joiner),
        }
        if self.ctc_head is not None:
            parts["ctc"] = count_parameters(self.ctc_head)
        detail = ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in parts.items())
        return (
            f"Conformer-RNNT {e.num_layers}x{e.d_model} h{e.num_heads} k{e.conv_kernel} "
            f"sub{e.subsampling_factor} | {predictor} | "
            f"joint {self.cfg.joiner.dim} | V {self.vocab_size} | "
            f"{count_parameters(self) / 1e6:.2f}M params ({detail})"
        )


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (parametrized weights count their original once)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def build_model(cfg: ModelConfig | dict, vocab_size: int) -> RNNT:
    """Build an ``RNNT`` from a ``ModelConfig`` or a (possibly nested) mapping of its fields."""
    if not isinstance(cfg, ModelConfig):
        cfg = ModelConfig(**cfg)
    return RNNT(cfg, vocab_size)
