"""Small model configs and inputs shared by the model tests (kept tiny: the suite runs on CPU)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch

from lowbit_asr.model import (
    RNNT,
    DecodingConfig,
    EncoderConfig,
    JoinerConfig,
    ModelConfig,
    PredictorConfig,
    build_model,
)

VOCAB = 11
FEAT_DIM = 20


def small_config(**overrides: object) -> ModelConfig:
    """A 2-block, 32-wide model; keyword overrides replace top-level ModelConfig fields."""
    fields: dict[str, object] = dict(
        encoder=EncoderConfig(
            feat_dim=FEAT_DIM,
            subsampling_factor=4,
            d_model=32,
            num_layers=2,
            num_heads=4,
            ff_expansion=2,
            conv_kernel=5,
            dropout=0.1,
            attention_dropout=0.1,
        ),
        predictor=PredictorConfig(embed_dim=24, hidden_dim=24, num_layers=1, dropout=0.1),
        joiner=JoinerConfig(dim=24),
        decoding=DecodingConfig(),
    )
    fields.update(overrides)
    return ModelConfig(**fields)  # type: ignore[arg-type]


def small_model(seed: int = 0, **overrides: object) -> RNNT:
    """``small_config`` built with a fixed seed."""
    torch.manual_seed(seed)
    return build_model(small_config(**overrides), VOCAB)


def random_batch(
    seed: int = 0, lengths: tuple[int, ...] = (60, 45, 31), max_tokens: int = 6
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features (N, T, F) padded with garbage (not zeros), lengths, targets (N, U), lengths."""
    g = torch.Generator().manual_seed(seed)
    n, t = len(lengths), max(lengths)
    feats = torch.randn(n, t, FEAT_DIM, generator=g)
    feat_lens = torch.tensor(lengths)
    target_lens = torch.randint(1, max_tokens + 1, (n,), generator=g)
    target_lens[0] = max_tokens
    targets = torch.randint(1, VOCAB, (n, max_tokens), generator=g)
    targets[torch.arange(max_tokens)[None, :] >= target_lens[:, None]] = 0
    return feats, feat_lens, targets, target_lens


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Run each model test on one intra-op thread, then restore the setting.

    These tensors are tiny: with 2 threads on a shared 2-core machine (or under pytest -n 2),
    OpenMP synchronisation dominates and the suite measured ~10x slower (48 s vs 4 s for
    test_rnnt.py).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def make_config() -> Callable[..., ModelConfig]:
    """Factory: ``make_config(**overrides)`` -> ``small_config``."""
    return small_config


@pytest.fixture
def make_model() -> Callable[..., RNNT]:
    """Factory: ``make_model(seed=0, **overrides)`` -> ``small_model`` (train mode)."""
    return small_model


@pytest.fixture
def make_batch() -> Callable[..., tuple[torch.Tensor, ...]]:
    """Factory: ``make_batch(seed=0, lengths=..., max_tokens=...)`` -> ``random_batch``."""
    return random_batch
