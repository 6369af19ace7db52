"""``lowbit-asr frontier SWEEP_DIR``: size-vs-WER Pareto front of a sweep's runs.

Writes ``frontier.csv``, ``frontier.md`` and ``frontier.png`` (into ``--out``, default the sweep
directory) and logs a table and one scatter per bit-width and granularity to W&B (offline by
default: no network needed). Failed runs are listed, not dropped.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from lowbit_asr.train.frontier import write_frontier


def log_to_wandb(csv_path: Path, png_path: Path, mode: str, project: str, name: str) -> None:
    """One W&B run (job_type ``frontier``): the table, the plot, a scatter per group."""
    import wandb

    rows = list(csv.DictReader(csv_path.open()))
    ok = [r for r in rows if r["status"] == "ok"]
    run = wandb.init(project=project, mode=mode, job_type="frontier", name=name,
                     dir=str(csv_path.parent))
    run.log({"frontier/table": wandb.Table(columns=list(rows[0]),
                                           data=[list(r.values()) for r in rows]),
             "frontier/plot": wandb.Image(str(png_path))})
    splits = [k.removeprefix("wer_") for k in (ok[0] if ok else {}) if k.startswith("wer_")]
    for key in ("bits", "granularity"):
        for value in sorted({r[key] for r in ok}):
            for split in splits:
                points = [[float(r["size_mb"]), float(r[f"wer_{split}"])] for r in ok
                          if r[key] == value and r[f"wer_{split}"]]
                table = wandb.Table(columns=["size_mb", "wer"], data=points)
                title = f"{split}: {key}={value}"
                run.log({f"frontier/{split}/{key}_{value}": wandb.plot.scatter(
                    table, "size_mb", "wer", title=title)})
    run.finish()


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, write the frontier files, log them."""
    parser = argparse.ArgumentParser(prog="lowbit-asr frontier", description=__doc__)
    parser.add_argument("sweep_dir", type=Path, help="folder holding the runs' results.json")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: sweep)")
    parser.add_argument("--wandb", choices=["offline", "online", "disabled"], default="offline")
    parser.add_argument("--project", default="lowbit-asr")
    args = parser.parse_args(argv)
    paths = write_frontier(args.sweep_dir, args.out)
    if args.wandb != "disabled":
        log_to_wandb(paths["csv"], paths["png"], args.wandb, args.project,
                     f"frontier-{args.sweep_dir.name}")
    print(paths["md"].read_text())
    print("\n".join(f"wrote {p}" for p in paths.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
