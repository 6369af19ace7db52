"""Pack the mini corpus' cached log-mel (train + dev) for a GPU machine that cannot generate the
corpus: 40 DCT coefficients per frame in int8 (lossy: reconstruction RMSE 0.35 against a
log-mel std of 5.3), ~44 MB for 3.3 h, under the 64 MiB a device call carries."""

import json
import os

import numpy as np
from scipy.fft import dct, idct

from lowbit_asr.data.config import DatasetConfig
from lowbit_asr.data.datamodule import AsrDataModule

K = 40
dm = AsrDataModule(DatasetConfig(root="data/embedded-mini", precompute_features=True))
out = {}
meta = {}
for split in ["train", "dev"]:
    rows = []
    for u in dm.manifest(split).utterances:
        x = dm.features(u).numpy().astype(np.float32)  # (T, 80)
        c = dct(x, type=2, norm="ortho", axis=1)[:, :K]  # (T, K)
        scale = np.abs(c).max(0) / 127 + 1e-8  # (K,)
        out[u.id + ".q"] = np.round(c / scale).astype(np.int8)
        out[u.id + ".s"] = scale.astype(np.float32)
        rows.append({"id": u.id, "duration": u.duration, "text": u.text, "speaker": u.speaker})
    meta[split] = rows
os.makedirs("benchmarks/gpu_sweep/data", exist_ok=True)
np.savez_compressed("benchmarks/gpu_sweep/data/feats.npz", **out)
json.dump(meta, open("benchmarks/gpu_sweep/data/meta.json", "w"))
# error check on a few
x = dm.features(dm.manifest("dev").utterances[0]).numpy().astype(np.float32)
c = (
    out[dm.manifest("dev").utterances[0].id + ".q"]
    * out[dm.manifest("dev").utterances[0].id + ".s"]
)
full = np.zeros((c.shape[0], 80), np.float32)
full[:, :K] = c
y = idct(full, type=2, norm="ortho", axis=1)
print("rmse", float(np.sqrt(((x - y) ** 2).mean())), "std", float(x.std()))
