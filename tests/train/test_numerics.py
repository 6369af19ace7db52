"""The numerics fingerprint a results row carries."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

from lowbit_asr.train.results import NUMERICS_ENV, PORTABLE_CPU_NUMERICS, numerics


def test_numerics_names_threads_kernel_width_and_the_kernel_choosing_variables(monkeypatch):
    for name in NUMERICS_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MKL_CBWR", "AVX2")
    monkeypatch.setenv("UNRELATED_VARIABLE", "1")
    out = numerics("cpu")
    assert out["env"] == {"MKL_CBWR": "AVX2"}  # only the variables that choose kernels, if set
    assert out["threads"] == torch.get_num_threads()
    assert out["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert out["torch"] == torch.__version__ and "gpu" not in out


def test_the_portable_kernel_variables_take_effect_and_are_recorded():
    """``make reproduce``'s CPU_NUMERICS (AVX2 kernels everywhere) reach torch when set before it
    starts, and the row records both the variables and the kernel width torch then runs."""
    env = {**os.environ, **PORTABLE_CPU_NUMERICS}
    code = ("import json; from lowbit_asr.train.results import numerics;"
            " print(json.dumps(numerics()))")
    out = json.loads(subprocess.run([sys.executable, "-c", code], env=env, check=True,
                                    capture_output=True, text=True).stdout)
    assert out["env"] == {**{k: v for k, v in os.environ.items() if k in NUMERICS_ENV},
                          **PORTABLE_CPU_NUMERICS}
    if platform.machine() in ("x86_64", "AMD64"):
        assert out["cpu_capability"] == "AVX2"


def test_the_makefile_sets_the_same_portable_kernels():
    makefile = Path(__file__).resolve().parents[2] / "Makefile"
    lines = [ln for ln in makefile.read_text().splitlines() if ln.startswith("CPU_NUMERICS ?=")]
    assert len(lines) == 1, "the Makefile defines CPU_NUMERICS once"
    pairs = dict(item.split("=", 1) for item in lines[0].split("?=", 1)[1].split())
    assert pairs == PORTABLE_CPU_NUMERICS
    assert "env $(CPU_NUMERICS) $(VENV)/bin/lowbit-asr reproduce" in makefile.read_text()
