"""``lowbit-asr frontier SWEEP_DIR``: size-vs-WER Pareto front of a sweep's runs.

Writes ``frontier.csv``, ``frontier.md``, ``frontier.json`` and ``frontier.png`` (into ``--out``,
default the sweep directory): per point and split the WER with its 95% CI, ΔWER against the
reference float point with its paired CI and p-values, and the "lossless" verdict. Logs the
table and one scatter with error bars per bit-width × granularity to W&B (offline by default:
no network needed). Failed runs are listed, not dropped.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lowbit_asr.train.frontier import log_frontier_to_wandb, write_frontier


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, write the frontier files, log them."""
    parser = argparse.ArgumentParser(prog="lowbit-asr frontier", description=__doc__)
    parser.add_argument("sweep_dir", type=Path, help="folder holding the runs' results.json")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: sweep)")
    parser.add_argument("--wandb", choices=["offline", "online", "disabled"], default="offline")
    parser.add_argument("--project", default="lowbit-asr")
    args = parser.parse_args(argv)
    paths = write_frontier(args.sweep_dir, args.out)
    log_frontier_to_wandb(paths, args.wandb, args.project, f"frontier-{args.sweep_dir.name}")
    print(paths["md"].read_text())
    print("\n".join(f"wrote {p}" for p in paths.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
