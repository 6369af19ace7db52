"""Run one training command twice and compare every number it produced: is a seeded CPU run
repeatable, bit for bit?

    python benchmarks/repeat_run.py -- experiment=float_mini trainer.max_steps=300 \
        trainer.val_check_interval=100
    python benchmarks/repeat_run.py --compare RUN_A RUN_B   # two finished run folders

Both runs write into fresh folders under ``--out`` (default ``runs/repeat/``) and share a feature
cache that starts empty (``--cache``, default ``<out>/cache``): the first run extracts every
feature (a cold cache, as on a fresh machine), the second finds them all (warm, as in every later
run). The two used to train different models: extraction drew from torch's global generator
(fixed in ``878715e``); two runs on one warm cache did not show it. Compared: every logged
metric at every step (``csv/metrics.csv``, except the wall-clock columns ``time/*``), the results
row's WERs, confidence intervals and size, the per-utterance hypotheses and error counts of the
test evaluation (``eval/<split>/utterances.tsv``), and the final checkpoint's weights. Prints a
markdown table and exits 1 if anything differs.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import torch

from lowbit_asr.train.checkpoint import read_checkpoint

WALL_CLOCK = ("time/", "train_seconds", "rtf", "decode_seconds", "seconds")


def _metrics(run: Path) -> dict[tuple[str, str], str]:
    rows = list(csv.DictReader((run / "csv" / "metrics.csv").open()))
    return {(r["step"], k): v for r in rows for k, v in r.items()
            if v != "" and k != "step" and not k.startswith(WALL_CLOCK)}


def _results(run: Path) -> dict[str, object]:
    row = json.loads((run / "results.json").read_text())
    return {k: row[k] for k in ("wer", "wer_ci", "size_bytes", "steps", "status")}


def _utterances(run: Path) -> dict[str, list[str]]:
    """Every test split's per-utterance table (hypothesis, error counts, NLL), line by line."""
    return {path.parent.name: path.read_text().splitlines()
            for path in sorted((run / "eval").glob("*/utterances.tsv"))}


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(run / "checkpoints" / "last.ckpt")["state_dict"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/repeat")
    parser.add_argument("--cache", help="feature cache of both runs (default <out>/cache; must"
                        " not exist yet, so that the first run extracts every feature)")
    parser.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"),
                        help="compare two finished run folders instead of training")
    parser.add_argument("overrides", nargs="*", help="lowbit-asr train overrides")
    args = parser.parse_args()
    if args.compare:
        runs = [Path(run) for run in args.compare]
        for run in runs:
            if not (run / "results.json").is_file():
                sys.exit(f"{run}: no results.json (not a finished run folder)")
        compare(*runs, "the two runs given")
        return
    if any(o.startswith("dataset.cache_dir=") for o in args.overrides):
        sys.exit("pass the feature cache as --cache, not dataset.cache_dir= (it must start empty)")
    cache = Path(args.cache or Path(args.out) / "cache")
    runs = [Path(args.out) / name for name in ("a", "b")]
    for path in (*runs, cache):
        if path.exists():
            sys.exit(f"{path} exists: pick another --out (or --cache)")
    for run in runs:
        subprocess.run([str(Path(sys.executable).parent / "lowbit-asr"), "train",
                        *args.overrides, f"dataset.cache_dir={cache}", f"hydra.run.dir={run}",
                        f"output_dir={run}"], check=True)
    compare(*runs, f"`lowbit-asr train {' '.join(args.overrides)}`, twice (a: cold feature"
            f" cache, b: warm; {cache})")


def compare(a: Path, b: Path, title: str) -> None:
    """Print the table of what is identical between run folders ``a`` and ``b``; exit 1 if
    anything differs."""
    checks = []
    ma, mb = _metrics(a), _metrics(b)
    checks.append(("logged metrics (every step, every column but time/*)", len(ma),
                   ma == mb))
    ra, rb = _results(a), _results(b)
    checks.append((f"results row: WER, CI, size, steps ({json.dumps(ra['wer'])})", len(ra),
                   ra == rb))
    ua, ub = _utterances(a), _utterances(b)
    checks.append(("per-utterance hypotheses, error counts and NLLs",
                   sum(map(len, ua.values())) - len(ua), bool(ua) and ua == ub))
    wa, wb = _weights(a), _weights(b)
    same = wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    checks.append(("last.ckpt weights and buffers", len(wa), same))
    print(f"{title}: {a}, {b}\n")
    print("| compared | items | identical |")
    print("|---|---:|---|")
    for what, n, ok in checks:
        print(f"| {what} | {n} | {'yes' if ok else '**no**'} |")
    sys.exit(0 if all(ok for _, _, ok in checks) else 1)


if __name__ == "__main__":
    main()
