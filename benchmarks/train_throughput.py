"""Training throughput: seconds of audio per second of forward+backward+AdamW step.

    python benchmarks/train_throughput.py                                   # conformer_tiny, CPU
    python benchmarks/train_throughput.py --model conformer_s conformer_m conformer_l \
        --device cuda --precision bf16 --batch-seconds 600                   # on a GPU

Random log-mel features stand in for audio (the model cannot tell); targets have the token rate
of the given units (characters ~14/s, sentencepiece-256 ~5/s of read speech). Prints a markdown
table; the median of ``--steps`` timed steps after ``--warmup``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from lowbit_asr.model.rnnt import build_model, count_parameters
from lowbit_asr.quant import QuantPolicy, prepare

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
    parser.add_argument("--loss", choices=["torch", "torchaudio"], default="torch")
    parser.add_argument("--quantizer", default="none", help="a name under conf/quantizer/")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    vocab = args.vocab or VOCAB[args.units]
    batch = max(1, int(args.batch_seconds // args.utt_seconds))
    frames = int(args.utt_seconds * 100)
    tokens = max(1, int(args.utt_seconds * TOKENS_PER_SECOND[args.units]))

    print(f"batch {batch} × {args.utt_seconds:g} s ({batch * args.utt_seconds:g} s of audio),"
          f" {args.units} units (V = {vocab}, U = {tokens}), loss {args.loss}, quantizer"
          f" {args.quantizer}, {args.device} {args.precision}, {args.threads} threads,"
          f" torch {torch.__version__}\n")
    print("| model | params | step s (median) | audio s per s | peak memory GB |")
    print("|---|---:|---:|---:|---:|")
    for name in args.model:
        cfg = OmegaConf.to_container(OmegaConf.load(CONF / "model" / f"{name}.yaml"))
        cfg["rnnt_loss_impl"] = args.loss
        if args.subsampling:
            cfg["encoder"]["subsampling_factor"] = args.subsampling
        torch.manual_seed(0)
        model = build_model(cfg, vocab)
        policy = QuantPolicy.from_config(
            OmegaConf.to_container(OmegaConf.load(CONF / "quantizer" / f"{args.quantizer}.yaml")))
        prepare(model, policy)
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
            with torch.autocast(device.type, dtype=torch.bfloat16,
                                enabled=args.precision == "bf16"):
                loss = model(feats, feat_lens, targets, target_lens)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
        step = statistics.median(times)
        memory = (torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda"
                  else float("nan"))
        print(f"| {name} | {count_parameters(model) / 1e6:.1f} M | {step:.3f} |"
              f" {batch * args.utt_seconds / step:.1f} | {memory:.1f} |")


if __name__ == "__main__":
    main()
