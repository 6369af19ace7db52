"""QAT overhead: training-step time of the Conformer RNN-T, float vs fake-quantized.

Prints a markdown table (median ms per forward+backward step, ratio to float) for float,
int2 asymmetric sub-channel (group 16), and the same with per-tensor and per-channel clip
search, on a model built from ``conf/model/<model>.yaml`` with random features and targets.
A second table times the fake quantization of all weights alone (what QAT adds to a forward;
the straight-through backward is free).

    python benchmarks/qat_overhead.py [--model conformer_tiny] [--batch 8] [--seconds 8]
    python benchmarks/qat_overhead.py --no-loss --no-search --batch 16 --seconds 2   # issue 13:
        # 6 x 144 Conformer blocks + the LSTM predictor, 16 x 200 frames, no joiner or loss

Variants are interleaved (A, B, C, A, B, C, ...) so drift in machine load hits all alike; the
median of ``--steps`` timed steps is reported after ``--warmup`` steps. Run it on a quiet
machine: with other processes on the cores, OpenMP threads stall and ratios mean little.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from lowbit_asr.model.rnnt import build_model, count_parameters
from lowbit_asr.quant import QuantPolicy, fake_quant_modules, prepare, size_report
from lowbit_asr.quant.fake_quant import use_compiled_fake_quant

CONF = Path(__file__).resolve().parents[1] / "conf"

POLICIES = {
    "int2 asym g16": {"default": {"bits": 2, "symmetric": False, "group_size": 16},
                      "indivisible": "per_channel"},
    "int2 asym g16 + clip search (tensor, 8)": {
        "default": {"bits": 2, "symmetric": False, "group_size": 16,
                    "clip_search": {"min": 0.5, "steps": 8}},
        "indivisible": "per_channel"},
    "int2 asym g16 + clip search (channel, 8)": {
        "default": {"bits": 2, "symmetric": False, "group_size": 16,
                    "clip_search": {"min": 0.5, "steps": 8, "per_channel": True}},
        "indivisible": "per_channel"},
}


COMPILED = ", compiled"


def _fake_quantized(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every fake-quantized weight of ``model``, as the current mode computes it."""
    with torch.no_grad():
        return {name: getattr(model.get_submodule(owner), attr).clone()
                for name, _ in fake_quant_modules(model)
                for owner, attr in [name.rsplit(".", 1)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="conformer_tiny", help="a name under conf/model/")
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=8.0, help="audio per utterance")
    parser.add_argument("--tokens", type=int, default=40, help="target tokens per utterance")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-search", action="store_true", help="skip the clip-search rows")
    parser.add_argument("--no-loss", action="store_true",
                        help="encoder + predictor forward+backward only (no joiner, no loss):"
                             " the largest fake-quant share")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--compile", action="store_true",
                        help="also each policy with use_compiled_fake_quant (torch.compile)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model_cfg = OmegaConf.to_container(OmegaConf.load(CONF / "model" / f"{args.model}.yaml"))
    base = build_model(model_cfg, args.vocab).train()
    variants: dict[str, nn.Module] = {"float": base}
    for label, config in POLICIES.items():
        if args.no_search and "search" in label:
            continue
        variants[label] = prepare(copy.deepcopy(base), QuantPolicy.from_config(config))
        if args.compile:
            variants[label + COMPILED] = prepare(copy.deepcopy(base),
                                                 QuantPolicy.from_config(config))

    frames = int(args.seconds * 100)
    feats = torch.randn(args.batch, frames, 80)
    feat_lens = torch.full((args.batch,), frames, dtype=torch.long)
    targets = torch.randint(1, args.vocab, (args.batch, args.tokens))
    target_lens = torch.full((args.batch,), args.tokens, dtype=torch.long)
    times: dict[str, list[float]] = {k: [] for k in variants}
    fq_times: dict[str, list[float]] = {k: [] for k in variants if k != "float"}

    sos_targets = torch.cat([torch.zeros_like(targets[:, :1]), targets], dim=1)

    def step(model: nn.Module) -> float:
        start = time.perf_counter()
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            if args.no_loss:
                enc, _ = model.encode(feats, feat_lens)  # (N, T', E)
                pred, _ = model.predictor(sos_targets)  # (N, U+1, H)
                loss = enc.float().square().mean() + pred.float().square().mean()
            else:
                loss = model(feats, feat_lens, targets, target_lens)["loss"]
        loss.backward()
        return time.perf_counter() - start

    def fake_quant_all(model: nn.Module) -> float:
        start = time.perf_counter()
        with torch.no_grad():
            for name, _ in fake_quant_modules(model):
                module_name, attr = name.rsplit(".", 1)
                getattr(model.get_submodule(module_name), attr)
        return time.perf_counter() - start

    for i in range(args.warmup + args.steps):
        for label, model in variants.items():
            use_compiled_fake_quant(label.endswith(COMPILED))  # the first step compiles
            elapsed = step(model)
            if i >= args.warmup:
                times[label].append(elapsed)
                if label in fq_times:
                    fq_times[label].append(fake_quant_all(model))
    for label in variants:  # the compiled variants compute the same weights, bit for bit
        if label.endswith(COMPILED):
            use_compiled_fake_quant(True)
            compiled = _fake_quantized(variants[label])
            use_compiled_fake_quant(False)
            eager = _fake_quantized(variants[label.removesuffix(COMPILED)])
            assert all(torch.equal(compiled[n], eager[n]) for n in eager), label
    use_compiled_fake_quant(False)

    float_ms = statistics.median(times["float"]) * 1e3
    report = size_report(base, QuantPolicy.from_config(POLICIES["int2 asym g16"]))
    what = "encoder + predictor, no loss" if args.no_loss else "full RNN-T loss"
    print(f"model: {args.model} ({what}), {count_parameters(base) / 1e6:.2f} M params"
          f" (vocab {args.vocab});"
          f" batch {args.batch} × {args.seconds:g} s, U = {args.tokens}; {args.precision};"
          f" {args.threads} threads;"
          f" torch {torch.__version__}")
    print(f"int2 asym g16: {report.total_mb:.3f} MB vs float32"
          f" {report.float32_bytes / 1e6:.3f} MB\n")
    print("| variant | step ms (median) | min ms | ratio to float | fake-quant of all weights ms |")
    print("|---|---:|---:|---:|---:|")
    for label, samples in times.items():
        ms = statistics.median(samples) * 1e3
        fq = f"{statistics.median(fq_times[label]) * 1e3:.1f}" if label in fq_times else "–"
        print(f"| {label} | {ms:.1f} | {min(samples) * 1e3:.1f} | {ms / float_ms:.3f} | {fq} |")


if __name__ == "__main__":
    main()
