"""Packed low-bit files: size on disk vs accounted size, memory after loading, CPU decode speed.

    python benchmarks/packed_inference.py                       # conformer_tiny, random weights
    python benchmarks/packed_inference.py --checkpoint runs/<run>/checkpoints/best.ckpt \
        --corpus data/embedded-mini --split test-clean          # trained weights, real audio

For every quantizer config the model (randomly initialised, or the checkpoint's weights
quantized after training) is saved as a training checkpoint and packed with ``export_packed``.
Each file is then loaded in a fresh process, imports done: the peak and the resident memory of
``load_packed`` (``VmHWM`` after resetting the peak through ``/proc/self/clear_refs``, and
``VmRSS``), each minus the resident memory just before it; and the real-time factor of greedy
decoding, one utterance at a time, of ``--utterances`` random 5-second feature sequences (or
corpus utterances). The fake-quant checkpoint's load is measured the same way for comparison.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import safetensors.torch
import torch
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[1] / "conf"
QUANTIZERS = ["none", "int8_asym", "int4_asym", "int2_asym", "mixed_int2_ffn_attn_int4_rest"]
FRAME_SECONDS = 0.01


def _rss_mb(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    """Reset the peak-RSS high-water mark ``VmHWM`` to the current RSS.

    Without it the peak left by the imports hides the load: importing Lightning peaks above
    what loading a small model adds. ``ru_maxrss`` is not used: it also keeps the RSS the
    process had when it was forked from its parent (before ``exec``), which no reset clears.
    """
    Path("/proc/self/clear_refs").write_text("5")


def measure(path: Path, kind: str, feats_path: Path) -> None:
    """Child process: load ``path`` (packed or checkpoint), decode, print one JSON line."""
    torch.set_num_threads(1)
    from lowbit_asr.packed import load_packed
    from lowbit_asr.train.checkpoint import read_checkpoint, restore

    feats = safetensors.torch.load_file(feats_path)
    gc.collect()
    _reset_peak()
    before = _rss_mb("VmRSS")
    start = time.perf_counter()
    model = load_packed(path).model if kind == "packed" else restore(read_checkpoint(path))[0].model
    load_seconds = time.perf_counter() - start
    peak = _rss_mb("VmHWM")
    gc.collect()
    resident = _rss_mb("VmRSS")
    decode = audio = 0.0
    for i in range(len(feats)):
        x = feats[f"utt{i}"].unsqueeze(0)  # (1, T, F)
        start = time.perf_counter()
        model.decode(x, torch.tensor([x.size(1)]))
        decode += time.perf_counter() - start
        audio += x.size(1) * FRAME_SECONDS
    print(
        json.dumps(
            {
                "peak_mb": peak - before,
                "resident_mb": resident - before,
                "load_seconds": load_seconds,
                "rtf": decode / audio,
            }
        )
    )


def _child(path: Path, kind: str, feats_path: Path) -> dict[str, float]:
    proc = subprocess.run(
        [
            sys.executable,
            __file__,
            "--measure",
            str(path),
            "--kind",
            kind,
            "--feats",
            str(feats_path),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode:
        raise RuntimeError(f"measuring {path} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _corpus_feats(args: argparse.Namespace, tokenizer, frontend, cache: Path) -> list[torch.Tensor]:
    from lowbit_asr.data.config import DatasetConfig
    from lowbit_asr.data.datamodule import AsrDataModule

    dataset = DatasetConfig(root=args.corpus, num_workers=0, cache_dir=str(cache))
    data = AsrDataModule(dataset, tokenizer=tokenizer, frontend=frontend)
    feats: list[torch.Tensor] = []
    for batch in data.eval_dataloader(args.corpus, args.split):
        for x, n in zip(batch["feats"], batch["feat_lens"], strict=True):
            feats.append(x[: int(n)].contiguous())  # (T, F)
            if len(feats) == args.utterances:
                return feats
    return feats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="conformer_tiny", help="a name under conf/model/")
    parser.add_argument("--quantizers", nargs="+", default=QUANTIZERS)
    parser.add_argument("--checkpoint", default=None, help="a training checkpoint's weights")
    parser.add_argument("--corpus", default=None, help="decode utterances of this corpus root")
    parser.add_argument("--split", default="test-clean")
    parser.add_argument("--utterances", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0, help="synthetic utterance length")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--kind", default="packed", help=argparse.SUPPRESS)
    parser.add_argument("--feats", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args.measure, args.kind, args.feats)
        return

    torch.set_num_threads(1)
    from lowbit_asr.data.audio import N_MELS
    from lowbit_asr.data.features import FeatureStats
    from lowbit_asr.data.tokenizer import CharTokenizer, Tokenizer
    from lowbit_asr.packed import export_packed
    from lowbit_asr.quant import load_float_state_dict
    from lowbit_asr.quant.policy import logical_name
    from lowbit_asr.train.checkpoint import read_checkpoint
    from lowbit_asr.train.module import RNNTModule

    # Random weights: identity statistics (a front end needs some to be exported).
    unit = FeatureStats(torch.zeros(N_MELS), torch.ones(N_MELS), 1, 1)
    if args.checkpoint:
        ckpt = read_checkpoint(args.checkpoint)
        model_cfg = ckpt["hyper_parameters"]["model"]
        tokenizer = Tokenizer.from_state(ckpt["hyper_parameters"]["tokenizer"])
        weights = {
            logical_name(k.removeprefix("model.")): v
            for k, v in ckpt["state_dict"].items()
            if k.startswith("model.")
        }
        source = f"weights of {args.checkpoint}"
    else:
        model_cfg = OmegaConf.to_container(OmegaConf.load(CONF / "model" / f"{args.model}.yaml"))
        tokenizer = CharTokenizer()
        weights = None
        source = f"{args.model}, random weights (seed 0)"

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.corpus:
            frontend = RNNTModule(model=model_cfg, tokenizer=tokenizer.state_dict()).model.frontend
            if weights is not None:
                frontend.load_state_dict({k.removeprefix("frontend."): v
                                          for k, v in weights.items()
                                          if k.startswith("frontend.")})
            else:
                frontend.set_stats(unit)
            feats = _corpus_feats(args, tokenizer, frontend, tmp)
        else:
            g = torch.Generator().manual_seed(0)
            frames = int(args.seconds / FRAME_SECONDS)
            feats = [
                torch.randn(frames, model_cfg["encoder"]["feat_dim"], generator=g)
                for _ in range(args.utterances)
            ]
        feats_path = tmp / "feats.safetensors"
        safetensors.torch.save_file({f"utt{i}": x for i, x in enumerate(feats)}, feats_path)
        audio = sum(x.size(0) for x in feats) * FRAME_SECONDS

        print(
            f"{source}; {len(feats)} utterances ({audio:.1f} s of"
            f" {'corpus ' + args.split if args.corpus else 'random features'}), greedy decoding,"
            f" CPU 1 thread, torch {torch.__version__}\n"
        )
        print(
            "| quantizer | file bytes | accounted bytes | file / accounted | header bytes |"
            " load: peak / resident RSS MB (packed) | load: peak / resident RSS MB (fake-quant"
            " ckpt) | load s (packed) | decode RTF (packed) |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name in args.quantizers:
            quantizer = OmegaConf.to_container(OmegaConf.load(CONF / "quantizer" / f"{name}.yaml"))
            torch.manual_seed(0)
            module = RNNTModule(
                model=model_cfg, tokenizer=tokenizer.state_dict(), quantizer=quantizer
            )
            if weights is not None:
                load_float_state_dict(module.model, weights)
            else:
                module.model.frontend.set_stats(unit)
            ckpt_path, packed_path = tmp / f"{name}.ckpt", tmp / f"{name}.lbq"
            torch.save(
                {
                    "hyper_parameters": dict(module.hparams),
                    "state_dict": module.state_dict(),
                },
                ckpt_path,
            )
            report = export_packed(ckpt_path, packed_path)
            packed = _child(packed_path, "packed", feats_path)
            fake = _child(ckpt_path, "checkpoint", feats_path)
            print(
                f"| {name} | {report.file_bytes:,} | {report.accounted_bytes:,} |"
                f" {report.ratio:.4f} | {report.header_bytes:,} |"
                f" {packed['peak_mb']:.1f} / {packed['resident_mb']:.1f} |"
                f" {fake['peak_mb']:.1f} / {fake['resident_mb']:.1f} |"
                f" {packed['load_seconds']:.2f} | {packed['rtf']:.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
