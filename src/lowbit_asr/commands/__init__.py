"""Command-line entry points, each short and linear (see ``lowbit_asr.cli``)."""

from __future__ import annotations

from typing import Any


def apply_threads(threads: Any, key: str = "threads") -> None:
    """Validate a command's ``threads`` key; set torch's intra-op threads (0: torch's default)."""
    import torch

    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 0:
        raise ValueError(f"{key} must be an integer >= 0 (0 = torch's default), got {threads!r}")
    if threads:
        torch.set_num_threads(threads)
