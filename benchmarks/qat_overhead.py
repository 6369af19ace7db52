"""QAT overhead: training-step time of a small Conformer RNN-T, float vs fake-quantized.

Prints a markdown table (median ms per forward+backward step, ratio to float) for:
float; int2 asymmetric sub-channel (group 16); the same with per-tensor and per-channel clip
search. The model is the parameter mix of `conformer_tiny`-like shapes (d = 144, 6 blocks,
4 heads, conv kernel 31, LSTM predictor, joiner over (N, T, U+1)), built from stock modules
so the benchmark runs without the ASR side.

    python benchmarks/qat_overhead.py [--blocks 6] [--d-model 144] [--batch 8] [--frames 250]

Float and QAT steps are interleaved (A, B, C, A, B, C, ...) so drift in machine load hits all
variants alike; the median of ``--steps`` timed steps is reported after ``--warmup`` steps.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from lowbit_asr.quant import QuantPolicy, prepare, size_report


class StandInBlock(nn.Module):
    """Conformer block shapes: two FFNs, MHA, conv module (pointwise, depthwise, BN)."""

    def __init__(self, d: int, heads: int, kernel: int) -> None:
        super().__init__()
        self.ff1 = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.SiLU(), nn.Linear(4 * d, d))
        self.attn_norm = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.conv_norm = nn.LayerNorm(d)
        self.pointwise1 = nn.Conv1d(d, 2 * d, 1)
        self.depthwise = nn.Conv1d(d, d, kernel, padding=kernel // 2, groups=d)
        self.bn = nn.BatchNorm1d(d)
        self.pointwise2 = nn.Conv1d(d, d, 1)
        self.ff2 = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.SiLU(), nn.Linear(4 * d, d))
        self.out_norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, T, d)
        x = x + 0.5 * self.ff1(x)
        h = self.attn_norm(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        h = self.conv_norm(x).transpose(1, 2)  # (N, d, T)
        h = nn.functional.glu(self.pointwise1(h), dim=1)
        h = self.pointwise2(nn.functional.silu(self.bn(self.depthwise(h))))
        x = x + h.transpose(1, 2)
        return self.out_norm(x + 0.5 * self.ff2(x))


class StandInRNNT(nn.Module):
    """Subsampling convs + Conformer blocks + LSTM predictor + joiner."""

    def __init__(self, d: int, blocks: int, heads: int, kernel: int, vocab: int, pred: int) -> None:
        super().__init__()
        self.subsample = nn.Sequential(
            nn.Conv2d(1, d, 3, stride=2), nn.ReLU(), nn.Conv2d(d, d, 3, stride=2), nn.ReLU()
        )
        self.subsample_proj = nn.Linear(d * 19, d)  # 80 mel bins -> 39 -> 19
        self.blocks = nn.ModuleList(StandInBlock(d, heads, kernel) for _ in range(blocks))
        self.embedding = nn.Embedding(vocab, pred)
        self.lstm = nn.LSTM(pred, pred, batch_first=True)
        self.joiner_enc = nn.Linear(d, pred)
        self.joiner_pred = nn.Linear(pred, pred)
        self.joiner_out = nn.Linear(pred, vocab)

    def forward(self, feats: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        x = self.subsample(feats.unsqueeze(1))  # (N, d, T/4, 19)
        x = self.subsample_proj(x.permute(0, 2, 1, 3).flatten(2))  # (N, T/4, d)
        for block in self.blocks:
            x = block(x)
        y, _ = self.lstm(self.embedding(tokens))  # (N, U+1, pred)
        joint = self.joiner_enc(x).unsqueeze(2) + self.joiner_pred(y).unsqueeze(1)  # (N, T, U+1, P)
        return self.joiner_out(torch.tanh(joint))  # (N, T, U+1, V)


POLICIES = {
    "int2 asym g16": {"default": {"bits": 2, "symmetric": False, "group_size": 16},
                      "indivisible": "per_channel"},
    "int2 asym g16 + clip search (tensor)": {
        "default": {"bits": 2, "symmetric": False, "group_size": 16,
                    "clip_search": {"min": 0.5, "steps": 8}},
        "indivisible": "per_channel"},
    "int2 asym g16 + clip search (channel)": {
        "default": {"bits": 2, "symmetric": False, "group_size": 16,
                    "clip_search": {"min": 0.5, "steps": 8, "per_channel": True}},
        "indivisible": "per_channel"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--d-model", type=int, default=144)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kernel", type=int, default=31)
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--pred", type=int, default=320)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=1000, help="input 10 ms frames")
    parser.add_argument("--tokens", type=int, default=30)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--only", choices=["all", "no-search"], default="all")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    base = StandInRNNT(args.d_model, args.blocks, args.heads, args.kernel, args.vocab, args.pred)
    variants: dict[str, nn.Module] = {"float": base}
    policies = {k: v for k, v in POLICIES.items() if args.only == "all" or "search" not in k}
    for label, config in policies.items():
        variants[label] = prepare(copy.deepcopy(base), QuantPolicy.from_config(config))
    params = sum(p.numel() for p in base.parameters())
    report = size_report(base, QuantPolicy.from_config(POLICIES["int2 asym g16"]))

    feats = torch.randn(args.batch, args.frames, 80)
    tokens = torch.randint(0, args.vocab, (args.batch, args.tokens + 1))
    times: dict[str, list[float]] = {k: [] for k in variants}

    def step(model: nn.Module) -> float:
        start = time.perf_counter()
        model.zero_grad(set_to_none=True)
        model(feats, tokens).float().logsumexp(-1).mean().backward()
        return time.perf_counter() - start

    for i in range(args.warmup + args.steps):
        for label, model in variants.items():
            elapsed = step(model)
            if i >= args.warmup:
                times[label].append(elapsed)

    float_ms = statistics.median(times["float"]) * 1e3
    print(f"model: {args.blocks} blocks × d {args.d_model}, {params / 1e6:.2f} M params;"
          f" batch {args.batch} × {args.frames} frames, U+1 = {args.tokens + 1};"
          f" {args.threads} threads; torch {torch.__version__}")
    print(f"int2 asym g16 size: {report.total_mb:.3f} MB vs float32"
          f" {report.float32_bytes / 1e6:.3f} MB\n")
    print("| variant | step ms (median) | min ms | ratio to float |")
    print("|---|---:|---:|---:|")
    for label, samples in times.items():
        ms = statistics.median(samples) * 1e3
        print(f"| {label} | {ms:.1f} | {min(samples) * 1e3:.1f} | {ms / float_ms:.3f} |")


if __name__ == "__main__":
    main()
