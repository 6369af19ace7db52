"""``lowbit_asr.quant`` needs torch and numpy alone: it imports in an environment without the
``asr`` extra (faked here by making every extra module unimportable)."""

from __future__ import annotations

import subprocess
import sys

ASR_EXTRA_MODULES = ("lightning", "hydra", "omegaconf", "wandb", "jiwer", "sentencepiece",
                     "soundfile", "scipy", "rdata", "matplotlib", "pandas", "safetensors",
                     "submitit")

CHECK = f"""
import sys
for name in {ASR_EXTRA_MODULES!r}:
    sys.modules[name] = None  # `import name` now raises ImportError
import torch
import lowbit_asr.quant as q
model = torch.nn.Sequential(torch.nn.Linear(8, 8))
q.prepare(model, q.QuantPolicy.from_config({{"default": {{"bits": 2}}}}))
print(q.size_report(model, q.QuantPolicy.from_config({{"default": {{"bits": 2}}}})).total_bytes)
try:
    q.container.write_packed("x.lbq", torch.nn.Linear(4, 4), q.QuantPolicy())
except ImportError as err:
    print("packed:", err)
"""


def test_quant_imports_without_the_asr_extra(tmp_path):
    run = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert int(lines[0]) > 0
    assert lines[1].startswith("packed: packed files need safetensors")
