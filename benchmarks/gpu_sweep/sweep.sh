#!/bin/bash
# Copy of the run of 2026-12-01 (see RESULTS.md). Needs benchmarks/gpu_sweep/data/ from
# pack_feats.py (carried, not committed: 44 MB) and the wheels of benchmarks/gpu_check.sh in .whl/.
# Device side: 8 float_mini variants in parallel on one GPU (fp32), packed features, dev WER.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 WANDB_MODE=offline OMP_NUM_THREADS=2
BASE="experiment=float_mini dataset.root=$PWD/benchmarks/gpu_sweep/data dataset.cache_dir=/tmp/cache dataset.precompute_features=false dataset.test_splits=[dev] trainer=gpu trainer.precision=32-true trainer.threads=2 trainer.max_time=00:00:05:30 logger=csv trainer.enable_progress_bar=false"
declare -A V
V[P1_base]=""
V[P2_ctc3]="model.ctc_weight=3.0"
V[P3_4x160]="model.encoder.num_layers=4 model.encoder.d_model=160"
V[P4_lr1e-3]="optim.lr=1e-3"
V[P5_specaug]="dataset.specaugment.freq_masks=2 dataset.specaugment.freq_mask_width=15 dataset.specaugment.time_masks=2"
V[P6_sp256_x6]="dataset.tokenizer.units=sentencepiece dataset.tokenizer.vocab_size=256 model.encoder.subsampling_factor=6"
V[P7_6000steps]="trainer.max_steps=6000"
V[P8_sp128]="dataset.tokenizer.units=sentencepiece dataset.tokenizer.vocab_size=128"
mkdir -p /tmp/cache
# the tokenizer/stats caches are built once, by a first process, before the others start
for name in "${!V[@]}"; do
  python3 benchmarks/gpu_sweep/train_packed.py $BASE ${V[$name]} dataset.cache_dir=/tmp/cache/$name hydra.run.dir=/tmp/runs/$name > /tmp/$name.log 2>&1 &
done
summary() {
  python3 - <<'PY'
import csv, glob, json, os
for d in sorted(glob.glob('/tmp/runs/*')):
    f = glob.glob(d + '/csv/**/metrics.csv', recursive=True)
    out = []
    if f:
        for r in csv.DictReader(open(f[0])):
            if r.get('val/wer'):
                out.append(f"s{r['step']}:{100*float(r['val/wer']):.1f}")
    res = d + '/results.json'
    if os.path.exists(res):
        j = json.load(open(res)); out.append(f"FINAL dev {100*j['wer'].get('dev', float('nan')):.1f} steps {j['steps']} min {j['train_seconds']/60:.1f}")
    print(os.path.basename(d), ' '.join(out), flush=True)
PY
}
for i in $(seq 1 9); do sleep 45; echo "--- $(date +%T)"; summary; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader; done
wait
echo "=== FINAL $(date +%T)"; summary | tee $OUT/sweep_summary.txt
for n in "${!V[@]}"; do grep -m3 -i "error\|Traceback" /tmp/$n.log && tail -n 5 /tmp/$n.log; done
