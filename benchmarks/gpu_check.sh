#!/usr/bin/env bash
# The one prepared script for a lent GPU machine (a bare image with PyTorch, no network):
#   1. the CUDA-only test (parametrized LSTM weights under cuDNN),
#   2. training throughput of conformer_tiny/s/m/l, fp32 and bf16, full (torchaudio) and pruned
#      RNN-T loss (step time and peak memory), float and int2 QAT (eager and compiled fake
#      quantization, and whether the compiled values equal the eager ones on CUDA),
#   3. a Lightning smoke run of `lowbit-asr train` on the GPU in bf16-mixed (float, then int2
#      QAT initialised from it) and `lowbit-asr evaluate` of both, on the tiny corpus.
# SKIP_THROUGHPUT=1 skips part 2. Needs: the wheels the image lacks in .whl/ (hydra-core, omegaconf, antlr4, jiwer, rapidfuzz,
# soundfile, cffi, pycparser) and a generated tiny corpus in data/embedded-tiny. Writes logs under $OUT (or ./gpu).
set -uo pipefail
OUT=${OUT:-gpu}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD/src" PYTHONUNBUFFERED=1 WANDB_MODE=offline
log() { echo; echo "=== $* ($(date +%T))"; }

log environment
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, torchaudio, lightning; print('torch', torch.__version__, 'torchaudio',
torchaudio.__version__, 'lightning', lightning.__version__, 'cuda', torch.cuda.is_available())"

log "CUDA test"
python3 -m pytest tests/model/test_rnnt.py -m gpu -q -p no:cacheprovider 2>&1 | tail -n 5

if [ -z "${SKIP_THROUGHPUT:-}" ]; then
log "throughput: LibriSpeech-like batches (sentencepiece 1024, 15 s utterances, 600 s per batch), fp32/bf16 x full/pruned loss"
python3 benchmarks/train_throughput.py --model conformer_tiny conformer_s conformer_m \
  conformer_l --device cuda --precision fp32 bf16 --loss torchaudio pruned --units sentencepiece \
  --vocab 1024 --utt-seconds 15 --batch-seconds 600 --steps 5 --warmup 2 2>&1 | tail -n 18
log "throughput: int2 asym g16 QAT, bf16 (the QAT ratio: divide by the float bf16 rows above)"
python3 benchmarks/train_throughput.py --model conformer_s conformer_l --device cuda \
  --precision bf16 --loss torchaudio pruned --units sentencepiece --vocab 1024 --utt-seconds 15 \
  --batch-seconds 600 --steps 5 --warmup 2 --quantizer int2_asym_g16 2>&1 | tail -n 6
log "throughput: the same, fake quantization compiled (Triton); is it bit-identical on CUDA?"
python3 benchmarks/train_throughput.py --model conformer_l --device cuda --precision bf16 \
  --loss pruned --units sentencepiece --vocab 1024 --utt-seconds 15 --batch-seconds 600 \
  --steps 5 --warmup 2 --quantizer int2_asym_g16 --compile-fake-quant 2>&1 | tail -n 3
python3 - <<'PY' 2>&1 | tail -n 3
import torch
from lowbit_asr.quant import QuantSpec
from lowbit_asr.quant.fake_quant import fake_quantize_many, use_compiled_fake_quant
torch.manual_seed(0)
ws = [torch.randn(1024, 512, device="cuda") * 0.05, torch.randn(512, 31, device="cuda") * 0.1]
for spec, sizes in [(QuantSpec(2, symmetric=False, group_size=16), [16, 31]),
                    (QuantSpec(4, symmetric=True), [512, 31])]:
    eager = fake_quantize_many(ws, spec, sizes)
    use_compiled_fake_quant(True)
    compiled = fake_quantize_many(ws, spec, sizes)
    use_compiled_fake_quant(False)
    print(spec.short(), "compiled == eager on CUDA:",
          all(torch.equal(a, b) for a, b in zip(eager, compiled)))
PY
fi

log "lowbit-asr train on the GPU, bf16-mixed, tiny corpus (float)"
TINY="dataset=embedded_tiny dataset.root=$PWD/data/embedded-tiny trainer=gpu logger=csv"
time python3 -m lowbit_asr.commands.train $TINY trainer.max_steps=200 \
  trainer.val_check_interval=100 trainer.enable_progress_bar=false \
  hydra.run.dir="$OUT/float" 2>&1 | grep -v Warning | tail -n 25
log "lowbit-asr train on the GPU: int2 QAT from the float checkpoint"
time python3 -m lowbit_asr.commands.train $TINY trainer.max_steps=60 \
  trainer.val_check_interval=30 trainer.enable_progress_bar=false quantizer=int2_asym_g16 \
  init.mode=float_ckpt init.checkpoint="$OUT/float/checkpoints/last.ckpt" \
  hydra.run.dir="$OUT/int2" 2>&1 | grep -v Warning | tail -n 25
rm -f "$OUT"/*/checkpoints/*.ckpt  # too large to bring back; the logs and results stay
