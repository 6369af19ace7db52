"""Helpers shared by the export tests (imported by name: the test folders are not packages)."""

from __future__ import annotations

from pathlib import Path

# A 1-block model keeps training and decoding to seconds (as in tests/train/test_train_e2e.py).
SMALL_MODEL = [
    "model.encoder.num_layers=1",
    "model.encoder.d_model=48",
    "model.encoder.num_heads=2",
    "model.encoder.conv_kernel=5",
    "model.encoder.subsampling_channels=16",
    "model.predictor.embed_dim=32",
    "model.predictor.hidden_dim=32",
    "model.joiner.dim=32",
    "model.rnnt_loss_impl=torch",
]


def dataset_args(corpus_root: Path, cache: Path) -> list[str]:
    """Hydra overrides: the tiny dataset config over ``corpus_root``, caches in ``cache``."""
    return [
        "dataset=embedded_tiny",
        f"dataset.root={corpus_root}",
        f"dataset.cache_dir={cache}",
        "dataset.num_workers=0",
    ]
