"""Training throughput: seconds of audio per second of forward+backward+AdamW step.

    python benchmarks/train_throughput.py      # conformer_tiny, CPU: fp32/bf16 x full/pruned loss
    python benchmarks/train_throughput.py --model conformer_l --vocab 1024 --device cuda \
        --batch-seconds 600                     # on a GPU

Random log-mel features stand in for audio (the model cannot tell); targets have the token rate
of the given units (characters ~14/s, sentencepiece-256 ~5/s of read speech). Prints a markdown
table, one row per model x precision x loss: the median of ``--steps`` timed steps after
``--warmup``, and the peak memory (CUDA: allocated; CPU: the peak RSS of a fresh process per row,
so rows do not inherit each other's peak).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from lowbit_asr.model.rnnt import build_model, count_parameters
from lowbit_asr.quant import QuantPolicy, batched_fake_quant, prepare
from lowbit_asr.quant.fake_quant import use_compiled_fake_quant

CONF = Path(__file__).resolve().parents[1] / "conf"
TOKENS_PER_SECOND = {"char": 14.0, "sentencepiece": 5.0}
VOCAB = {"char": 29, "sentencepiece": 256}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", nargs="+", default=["conformer_tiny"])
    parser.add_argument("--units", choices=sorted(VOCAB), default="char")
    parser.add_argument("--vocab", type=int, default=0, help="override the units' vocab size")
    parser.add_argument("--batch-seconds", type=float, default=30.0)
    parser.add_argument("--utt-seconds", type=float, default=5.0)
    parser.add_argument("--subsampling", type=int, default=0, help="override the model's factor")
    parser.add_argument("--loss", nargs="+", choices=["torch", "torchaudio", "pruned"],
                        default=["torch", "pruned"], help="torch/torchaudio: the full lattice")
    parser.add_argument("--prune-range", type=int, default=5)
    parser.add_argument("--quantizer", default="none", help="a name under conf/quantizer/")
    parser.add_argument("--compile-fake-quant", action="store_true",
                        help="fake quantization through torch.compile (trainer.compile_fake_quant)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", nargs="+", choices=["fp32", "bf16"],
                        default=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--one", nargs=3, metavar=("MODEL", "PRECISION", "LOSS"),
                        help=argparse.SUPPRESS)  # internal: measure one row, print JSON
    args = parser.parse_args()
    vocab = args.vocab or VOCAB[args.units]
    batch = max(1, int(args.batch_seconds // args.utt_seconds))
    tokens = max(1, int(args.utt_seconds * TOKENS_PER_SECOND[args.units]))
    if args.one:
        print(json.dumps(measure(args, *args.one, vocab, batch, tokens)))
        return

    print(f"batch {batch} × {args.utt_seconds:g} s ({batch * args.utt_seconds:g} s of audio),"
          f" {args.units} units (V = {vocab}, U = {tokens}), quantizer {args.quantizer}"
          f"{' (compiled)' if args.compile_fake_quant else ''},"
          f" prune range {args.prune_range}, {args.device}, {args.threads} threads,"
          f" torch {torch.__version__}\n")
    print("| model | params | precision | loss | step s (median) | audio s per s |"
          " peak memory GB |")
    print("|---|---:|---|---|---:|---:|---:|")
    for name in args.model:
        for precision in args.precision:
            for loss in args.loss:
                row = json.loads(subprocess.run(
                    [sys.executable, __file__, *sys.argv[1:], "--one", name, precision, loss],
                    check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
                print(f"| {name} | {row['params'] / 1e6:.1f} M | {precision} | {loss} |"
                      f" {row['step']:.3f} | {batch * args.utt_seconds / row['step']:.1f} |"
                      f" {row['memory_gb']:.2f} |", flush=True)


def measure(args: argparse.Namespace, name: str, precision: str, loss_impl: str, vocab: int,
            batch: int, tokens: int) -> dict[str, float]:
    """Median step time, parameters and peak memory of one configuration (in this process)."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    frames = int(args.utt_seconds * 100)
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / "model" / f"{name}.yaml"))
    cfg["rnnt_loss_impl"] = loss_impl
    if loss_impl == "pruned":
        cfg["pruned"]["prune_range"] = args.prune_range
    if args.subsampling:
        cfg["encoder"]["subsampling_factor"] = args.subsampling
    torch.manual_seed(0)
    model = build_model(cfg, vocab)
    policy = QuantPolicy.from_config(
        OmegaConf.to_container(OmegaConf.load(CONF / "quantizer" / f"{args.quantizer}.yaml")))
    prepare(model, policy)
    use_compiled_fake_quant(args.compile_fake_quant)
    model = model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    feats = torch.randn(batch, frames, 80, device=device)
    feat_lens = torch.full((batch,), frames, dtype=torch.long, device=device)
    targets = torch.randint(1, vocab, (batch, tokens), device=device)
    target_lens = torch.full((batch,), tokens, dtype=torch.long, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"), \
                batched_fake_quant(model):  # as the LightningModule's training step
            loss = model(feats, feat_lens, targets, target_lens)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    memory = (torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda"
              else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    return {"step": statistics.median(times), "params": count_parameters(model),
            "memory_gb": memory}


if __name__ == "__main__":
    main()
