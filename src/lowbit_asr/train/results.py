"""One result row per run: what was trained, how big it is, how well it recognises, and how
to reproduce it. The frontier reads these rows; W&B gets the same as summary metrics."""

from __future__ import annotations

import os
import platform
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import torch
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


NUMERICS_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS",
                "OMP_NUM_THREADS")
"""Environment variables that choose which CPU kernels (so which round-off) torch runs."""

PORTABLE_CPU_NUMERICS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                         "MKL_CBWR": "AVX2"}
"""AVX2 kernels on any x86-64 CPU: ATen's AVX2 kernels, oneDNN capped at AVX2, MKL's AVX2 code
path (its Conditional Numerical Reproducibility mode) — what the AVX2-only CPU that trained the
float stage in RESULTS.md runs natively. They must be in the environment before torch starts
(``make reproduce`` sets them: the Makefile's ``CPU_NUMERICS`` repeats them; a test checks the
two agree). With them an AVX512 EPYC reproduced the AVX2 EPYC's float stage and a QAT grid point
to every published digit (RESULTS.md, "Bit for bit across machines"); Intel CPUs were not
compared."""


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def numerics(device: torch.device | str = "cpu") -> dict[str, Any]:
    """What decides a seeded run's round-off besides the code: torch's version, the thread
    count, the vector width of ATen's CPU kernels (AVX2 or AVX512 on x86), the CPU, the
    kernel-choosing environment variables that are set, and the GPU when the run used one.
    Where these differ, so may the numbers of one commit and command: the same one-thread recipe
    gave 56.31% test-clean with AVX512 kernels and 56.38% with AVX2 ones; with AVX2 kernels on
    both machines (:data:`PORTABLE_CPU_NUMERICS`) every compared number agreed (RESULTS.md)."""
    out: dict[str, Any] = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu": cpu_name(),
        "env": {k: os.environ[k] for k in NUMERICS_ENV if k in os.environ},
    }
    device = torch.device(device)
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
        out["cuda"] = torch.version.cuda
    return out


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
        "numerics": numerics(next(model.parameters()).device),
        **(extra or {}),
    }


def failed_row(*, run_id: str, experiment: str, quantizer: str, error: str,
               command: str, status: str = "failed") -> dict[str, Any]:
    """The row a run that raised (or was interrupted: ``status="interrupted"``) writes, so the
    frontier lists it instead of losing it."""
    return {"status": status, "run_id": run_id, "experiment": experiment,
            "quantizer": quantizer, "error": error, "commit": git_commit(),
            "command": command}
