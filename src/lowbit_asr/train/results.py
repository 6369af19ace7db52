"""One result row per run: what was trained, how big it is, how well it recognises, and how
to reproduce it. The frontier reads these rows; W&B gets the same as summary metrics."""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from torch import nn

from lowbit_asr.quant import QuantPolicy, size_report

RESULT_FILE = "results.json"
"""Name of the row a run writes into its run directory."""


def policy_summary(model: nn.Module, policy: QuantPolicy) -> dict[str, Any]:
    """Bits, grid and granularity of the quantized weights (``mixed`` when they differ)."""
    specs = [p.spec for p in policy.plan(model) if p.spec is not None]
    if not specs:
        return {"bits": 32, "symmetric": None, "granularity": "float", "clip": "none",
                "label": "float"}

    def one(values: list[Any]) -> Any:
        counts = Counter(values)
        return values[0] if len(counts) == 1 else "mixed"

    weights = Counter(s.short() for s in specs)
    main_spec = weights.most_common(1)[0][0]
    clip = one(["search" if s.clip_search else ("none" if s.clip == 1.0 else f"{s.clip:g}")
                for s in specs])
    return {
        "bits": one([s.bits for s in specs]),
        "symmetric": one([s.symmetric for s in specs]),
        "granularity": one([s.granularity if s.granularity == "per_channel" else "sub_channel"
                            for s in specs]),
        "group": one([s.granularity for s in specs]),
        "clip": clip,
        "label": main_spec if len(weights) == 1 else f"mixed ({main_spec} most)",
    }


def git_commit() -> str:
    """The commit of this checkout, with ``-dirty`` when tracked files have changes."""
    root = Path(__file__).resolve().parents[3]

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    if git("status", "--porcelain", "--untracked-files=no"):
        commit += "-dirty"
    return commit


def result_row(
    *, run_id: str, experiment: str, model: nn.Module, policy: QuantPolicy,
    wer: dict[str, float], train_seconds: float, steps: int, command: str, commit: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The row a finished run writes (``status: ok``); ``commit`` as read when it started."""
    size = size_report(model, policy).summary()
    return {
        "status": "ok",
        "run_id": run_id,
        "experiment": experiment,
        "quantizer": policy.name or "none",
        "policy": policy.to_config(),
        **{f"quant_{k}": v for k, v in policy_summary(model, policy).items()},
        "size_bytes": size["total_bytes"],
        "size_mb": size["total_mb"],
        "bits_per_quantized_weight": size["bits_per_quantized_weight"],
        "wer": wer,
        "train_seconds": train_seconds,
        "steps": steps,
        "commit": commit,
        "command": command,
        **(extra or {}),
    }


def failed_row(*, run_id: str, experiment: str, quantizer: str, error: str,
               command: str, status: str = "failed") -> dict[str, Any]:
    """The row a run that raised (or was interrupted: ``status="interrupted"``) writes, so the
    frontier lists it instead of losing it."""
    return {"status": status, "run_id": run_id, "experiment": experiment,
            "quantizer": quantizer, "error": error, "commit": git_commit(),
            "command": command}
