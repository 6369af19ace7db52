"""``lowbit-asr corpus [--size mini] [--seed 0] [--out data/embedded-<size>]``: generate the
embedded TTS corpus in LibriSpeech's layout (``lowbit_asr.data.corpus`` does the work).

    lowbit-asr corpus                      # mini, seed 0, into data/embedded-mini
    lowbit-asr corpus --size tiny --out /tmp/tiny
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from lowbit_asr.data.corpus import ALL_SPLITS, SIZES, default_root, generate_corpus


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``lowbit-asr corpus``."""
    parser = argparse.ArgumentParser(
        prog="lowbit-asr corpus",
        description="Generate the embedded TTS speech corpus in LibriSpeech's layout.",
    )
    parser.add_argument(
        "--size",
        choices=sorted(SIZES),
        default="mini",
        help="corpus size (default: mini, ~3 h of train audio)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"corpus root (default: {default_root('<size>')}, where conf/dataset/embedded_<size>"
        " looks)",
    )
    parser.add_argument("--workers", type=int, default=2, help="parallel chapters (default: 2)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a different corpus already in --out"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; prints a per-split summary and the wall time."""
    args = build_parser().parse_args(argv)
    args.out = args.out or default_root(args.size)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    start = time.perf_counter()
    try:
        manifest = generate_corpus(
            args.out, size=args.size, seed=args.seed, workers=args.workers, overwrite=args.overwrite
        )
    except (FileExistsError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{'split':<11} {'utts':>6} {'speakers':>8} {'hours':>7}")
    for name in (n for n in ALL_SPLITS if n in manifest.splits):
        s = manifest.splits[name]
        print(f"{name:<11} {s.utterances:>6} {s.speakers:>8} {s.hours:>7.3f}")
    print(f"{manifest.megabytes:.1f} MB in {args.out}; {time.perf_counter() - start:.1f} s wall")
    return 0


if __name__ == "__main__":
    sys.exit(main())
