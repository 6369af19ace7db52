"""Training throughput of a recipe, measured on the real corpus and data path: seconds of audio
trained per second over the first ``--steps`` optimiser steps of ``lowbit-asr train``.

    python benchmarks/recipe_throughput.py --tree . /path/to/old/checkout -- experiment=float_mini

Each source tree (a checkout of this repository, e.g. an older commit from ``git worktree add``)
runs the same command in its own process with its own ``src/`` on ``PYTHONPATH`` and its own
``conf/``, interleaved over ``--repeats`` (A, B, A, B, ...), so that the rows compare code, not
machines or moments. The corpus is the one under ``data/`` of the tree it is run from (linked
into the others where they lack it). A callback added to Lightning's Trainer times steps
0 .. N-1 (data loading included) and sums their audio, then ends the process: no validation or
test runs are timed or waited for.
``--arm TREE 'OVERRIDES'`` adds a row that runs TREE with extra overrides after the common ones
(e.g. a cheaper model in this tree beside the old commit):

    python benchmarks/recipe_throughput.py --tree /path/to/old/checkout \\
        --arm . '' --arm . 'model.encoder.ff_expansion=2' -- experiment=float_mini

Prints a markdown table (median of the repeats per row, and their range).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# Runs inside the measured tree's process: wraps lightning.Trainer so that one more callback
# rides along, whatever the tree's train command passes.
_PROBE = r"""
import json, os, sys, time
import lightning as L

STEPS, OUT = int(os.environ["PROBE_STEPS"]), os.environ["PROBE_OUT"]
FRAME_SECONDS = 0.01  # log-mel frames of every version of this project: 10 ms

class Probe(L.Callback):
    def __init__(self):
        self.start, self.audio = None, 0.0
    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if self.start is None:
            self.start = time.perf_counter()
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.audio += float(batch["feat_lens"].sum()) * FRAME_SECONDS
        if trainer.global_step >= STEPS:
            seconds = time.perf_counter() - self.start
            with open(OUT, "w") as f:
                json.dump({"steps": trainer.global_step, "seconds": seconds,
                           "audio_seconds": self.audio}, f)
            os._exit(0)

_init = L.Trainer.__init__
def _with_probe(self, *args, **kwargs):
    kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), Probe()]
    _init(self, *args, **kwargs)
L.Trainer.__init__ = _with_probe

from lowbit_asr.cli import main
sys.argv = ["lowbit-asr", "train", *sys.argv[1:]]
main()
"""


def _measure(tree: Path, steps: int, overrides: list[str]) -> dict:
    """One run of the command in ``tree``: its steps, seconds and audio seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "probe.json"
        env = {**os.environ, "PYTHONPATH": str(tree / "src"), "PROBE_STEPS": str(steps),
               "PROBE_OUT": str(out), "WANDB_MODE": "disabled"}
        cmd = [sys.executable, "-c", _PROBE, *overrides, f"trainer.max_steps={steps + 1}",
               f"hydra.run.dir={tmp}/run", f"output_dir={tmp}/run"]
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
        if not out.exists():
            sys.exit(f"{tree}: the run ended before step {steps} (exit {proc.returncode}):\n"
                     f"{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", nargs="+", default=None, help="source trees to compare")
    parser.add_argument("--arm", nargs=2, action="append", default=[], metavar=("TREE", "EXTRA"),
                        help="one more row: TREE run with the common overrides plus EXTRA "
                             "(space-separated overrides, '' for none)")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("overrides", nargs="*", help="lowbit-asr train overrides")
    args = parser.parse_args()
    here = Path.cwd()
    if args.tree is None and not args.arm:
        args.tree = ["."]
    # One row per tree (common overrides only) and per arm (tree + its own extra overrides).
    arms = [(Path(t).resolve(), []) for t in args.tree or []]
    arms += [(Path(t).resolve(), extra.split()) for t, extra in args.arm]
    for tree in {tree for tree, _ in arms}:
        data = tree / "data"
        if not data.exists():
            data.symlink_to(here / "data")
    results: list[list[dict]] = [[] for _ in arms]
    # Interleaved (A, B, A, B, ...): drift in the machine's speed hits every row alike.
    for _ in range(args.repeats):
        for i, (tree, extra) in enumerate(arms):
            results[i].append(_measure(tree, args.steps, [*args.overrides, *extra]))
    rows = []
    for (tree, extra), runs in zip(arms, results):
        commit = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--",
                                "src", "conf"], capture_output=True, text=True).stdout.strip()
        seconds = statistics.median(r["seconds"] for r in runs)
        audio = runs[0]["audio_seconds"]
        spread = (min(r["seconds"] for r in runs), max(r["seconds"] for r in runs))
        label = tree.name + (f" + `{' '.join(extra)}`" if extra else "")
        rows.append((label, commit + ("-dirty" if dirty else ""), args.steps, audio, seconds,
                     spread))
    print(f"`lowbit-asr train {' '.join(args.overrides)}`, steps 0..{args.steps - 1},"
          f" median of {args.repeats}\n")
    print("| tree (+ its overrides) | commit | steps | audio s | train s (min–max) | audio s per s | vs first |")
    print("|---|---|---:|---:|---:|---:|---:|")
    base = rows[0][3] / rows[0][4]
    for label, commit, steps, audio, seconds, (low, high) in rows:
        rate = audio / seconds
        print(f"| {label} | {commit} | {steps} | {audio:.0f} | {seconds:.1f} ({low:.1f}–"
              f"{high:.1f}) | {rate:.1f} | {rate / base:.2f}× |")


if __name__ == "__main__":
    main()
