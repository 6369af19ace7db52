"""The numerics fingerprint a results row carries."""

from __future__ import annotations

import torch

from lowbit_asr.train.results import NUMERICS_ENV, numerics


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
