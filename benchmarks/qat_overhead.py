"""QAT overhead: training-step time of the Conformer RNN-T, float vs fake-quantized.

Prints a markdown table (median ms per forward+backward step, ratio to float) for float,
int2 asymmetric sub-channel (group 16), and the same with per-tensor and per-channel clip
search, on a model built from ``conf/model/<model>.yaml`` with random features and targets.
Each policy runs with every weight fake-quantized on its own as the forward reads it, and
"batched" (``batched_fake_quant``, as the LightningModule's training and validation steps run:
all weights of a spec at once); ``--compile`` adds both through ``torch.compile``. A last column
times the fake quantization of all weights alone (what QAT adds to a forward; the
straight-through backward is free). Every variant is checked to compute the same weights, bit
for bit.

    python benchmarks/qat_overhead.py [--model conformer_tiny] [--batch 8] [--seconds 8]
    python benchmarks/qat_overhead.py --no-loss --no-search --batch 16 --seconds 2   # issue 13:
        # 6 x 144 Conformer blocks + the LSTM predictor, 16 x 200 frames, no joiner or loss

Each round runs every variant once, in a seeded random order, so drift in machine load hits all
alike and no variant always follows the same one; after ``--warmup`` rounds, ``--steps`` rounds
are timed. Reported: the median step, the ratio of medians, and the paired ratio (the median of
each round's variant / float, with a bootstrap CI), which is the one to quote. Run it on a quiet
machine: with other processes on the cores, OpenMP threads stall and ratios mean little.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import random
import statistics
import time
from pathlib import Path

import numpy as np
import scipy.stats
import torch
from omegaconf import OmegaConf
from torch import nn

from lowbit_asr.model.rnnt import build_model, count_parameters
from lowbit_asr.quant import (
    QuantPolicy,
    batched_fake_quant,
    fake_quant_modules,
    prepare,
    size_report,
)
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
BATCHED = ", batched"


def _fake_quantized(model: nn.Module, batched: bool) -> dict[str, torch.Tensor]:
    """Every fake-quantized weight of ``model``, as the current mode computes it."""
    scope = batched_fake_quant(model) if batched else contextlib.nullcontext()
    with torch.no_grad(), scope:
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
    # label -> (model, compiled, batched); each its own copy, so no variant warms another's cache
    variants: dict[str, tuple[nn.Module, bool, bool]] = {"float": (base, False, False)}
    for label, config in POLICIES.items():
        if args.no_search and "search" in label:
            continue
        for compiled in [False, True] if args.compile else [False]:
            for batched in (False, True):
                name = label + (COMPILED if compiled else "") + (BATCHED if batched else "")
                variants[name] = (prepare(copy.deepcopy(base), QuantPolicy.from_config(config)),
                                  compiled, batched)

    frames = int(args.seconds * 100)
    feats = torch.randn(args.batch, frames, 80)
    feat_lens = torch.full((args.batch,), frames, dtype=torch.long)
    targets = torch.randint(1, args.vocab, (args.batch, args.tokens))
    target_lens = torch.full((args.batch,), args.tokens, dtype=torch.long)
    times: dict[str, list[float]] = {k: [] for k in variants}
    fq_times: dict[str, list[float]] = {k: [] for k in variants if k != "float"}

    sos_targets = torch.cat([torch.zeros_like(targets[:, :1]), targets], dim=1)

    def step(model: nn.Module, batched: bool) -> float:
        start = time.perf_counter()
        model.zero_grad(set_to_none=True)
        scope = batched_fake_quant(model) if batched else contextlib.nullcontext()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"), \
                scope:  # as the LightningModule's training_step runs its forward
            if args.no_loss:
                enc, _ = model.encode(feats, feat_lens)  # (N, T', E)
                pred, _ = model.predictor(sos_targets)  # (N, U+1, H)
                loss = enc.float().square().mean() + pred.float().square().mean()
            else:
                loss = model(feats, feat_lens, targets, target_lens)["loss"]
        loss.backward()
        return time.perf_counter() - start

    def fake_quant_all(model: nn.Module, batched: bool) -> float:
        start = time.perf_counter()
        scope = batched_fake_quant(model) if batched else contextlib.nullcontext()
        with torch.no_grad(), scope:
            for name, _ in fake_quant_modules(model):
                module_name, attr = name.rsplit(".", 1)
                getattr(model.get_submodule(module_name), attr)
        return time.perf_counter() - start

    order = random.Random(0)  # each round runs the variants in a new (seeded) order
    for i in range(args.warmup + args.steps):
        labels = list(variants)
        order.shuffle(labels)
        for label in labels:
            model, compiled, batched = variants[label]
            use_compiled_fake_quant(compiled)  # the first step compiles
            elapsed = step(model, batched)
            if i >= args.warmup:
                times[label].append(elapsed)
                if label in fq_times:
                    fq_times[label].append(fake_quant_all(model, batched))
    # every variant of a policy computes the same weights, bit for bit
    for label, (model, compiled, batched) in variants.items():
        if compiled or batched:
            reference = variants[label.removesuffix(BATCHED).removesuffix(COMPILED)][0]
            use_compiled_fake_quant(compiled)
            values = _fake_quantized(model, batched)
            use_compiled_fake_quant(False)
            expected = _fake_quantized(reference, False)
            assert all(torch.equal(values[n], expected[n]) for n in expected), label
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
    print("| variant | step ms (median) | min ms | ratio of medians | paired ratio [95% CI] |"
          " fake-quant of all weights ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, samples in times.items():
        ms = statistics.median(samples) * 1e3
        fq = f"{statistics.median(fq_times[label]) * 1e3:.1f}" if label in fq_times else "–"
        print(f"| {label} | {ms:.1f} | {min(samples) * 1e3:.1f} | {ms / float_ms:.3f} |"
              f" {_paired_ratio(samples, times['float'])} | {fq} |")
    print("\npaired ratio: median over rounds of (variant step / float step of the same round),"
          " 95% percentile-bootstrap CI (scipy.stats.bootstrap, 2,000 resamples) — the machine's"
          " drift between rounds cancels in it, not in the ratio of medians.")


def _paired_ratio(samples: list[float], float_samples: list[float]) -> str:
    """Median of the per-round ratios with a 95% bootstrap CI, as text."""
    ratios = np.asarray(samples) / np.asarray(float_samples)
    if np.all(ratios == 1.0):
        return "1"
    ci = scipy.stats.bootstrap((ratios,), np.median, n_resamples=2000, method="percentile",
                               random_state=0).confidence_interval
    return f"{np.median(ratios):.3f} [{ci.low:.3f}, {ci.high:.3f}]"


if __name__ == "__main__":
    main()
