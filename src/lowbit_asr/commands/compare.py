"""``lowbit-asr compare A B``: is B's WER significantly different from A's, split by split?

The paired bootstrap (Bisani & Ney 2004) resamples speakers (or utterances) and gives a 95%
interval of ΔWER = WER_B − WER_A and the probability that B is worse; NIST's matched-pairs
sentence-segment word error test (MAPSSWE, as SCTK's ``sc_stats -t mapsswe``) tests whether the
mean per-segment error difference is 0 and decides the verdict.

A and B are evaluation.json files, folders holding one, or training run folders; they must be
evaluations of the same utterances with the same references (else the command refuses, naming
the split). Splits only one of them has are listed as skipped.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from lowbit_asr.train.scoring import evaluation_file, load_evaluation
from lowbit_asr.train.significance import compare_split, holm


def _points(x: float, sign: bool = False) -> str:
    """A WER fraction in percentage points, two decimals."""
    return f"{100.0 * x:+.2f}" if sign else f"{100.0 * x:.2f}"


def _p(p: float) -> str:
    """A p-value: three significant digits, small ones in scientific notation."""
    if math.isnan(p):
        return "n/a"
    return f"{p:.3g}" if p >= 1e-4 else f"{p:.1e}"


def markdown_table(results: list[dict[str, Any]], confidence: float) -> str:
    """One row per compared split."""
    level = f"{100.0 * confidence:g}%"
    header = ["split", "utterances", "WER A %", "WER B %", f"ΔWER (points) [{level} CI]",
              "P(B worse)", "MAPSSWE p", "verdict"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in results:
        low, high = r["delta_ci"]
        delta = f"{_points(r['delta'], True)} [{_points(low, True)}, {_points(high, True)}]"
        cells = [r["split"], str(r["utterances"]), _points(r["wer_a"]), _points(r["wer_b"]),
                 delta, f"{r['prob_b_worse']:.3f}", _p(r["mapsswe_p"]), r["verdict"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare(path_a: str | Path, path_b: str | Path, alpha: float = 0.05) -> dict[str, Any]:
    """Every split both evaluations have, compared (B against A); the others as skipped."""
    _, splits_a = load_evaluation(path_a)
    _, splits_b = load_evaluation(path_b)
    common = [s for s in splits_a if s in splits_b]
    skipped = {s: "only in A" for s in splits_a if s not in splits_b}
    skipped.update({s: "only in B" for s in splits_b if s not in splits_a})
    results = [compare_split(s, splits_a[s], splits_b[s], alpha=alpha) for s in common]
    if len(results) > 1:  # several splits: also the family-wise (Holm) adjusted p-values
        for r, p in zip(results, holm([r["mapsswe_p"] for r in results]), strict=True):
            r["mapsswe_p_holm"] = p
    return {"a": str(evaluation_file(path_a)), "b": str(evaluation_file(path_b)),
            "alpha": alpha, "splits": {r["split"]: r for r in results}, "skipped": skipped}


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, compare, print the table (and write the JSON)."""
    parser = argparse.ArgumentParser(prog="lowbit-asr compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path, help="evaluation A (the reference system)")
    parser.add_argument("b", type=Path, help="evaluation B (compared against A)")
    parser.add_argument("--alpha", type=float, default=0.05,
                        help="significance level of MAPSSWE; the CI is at 1 - alpha (0.05)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if not 0.0 < args.alpha < 1.0:
        parser.error(f"--alpha must lie in (0, 1), not {args.alpha}")
    try:
        out = compare(args.a, args.b, args.alpha)
    except (FileNotFoundError, ValueError) as err:
        print(f"lowbit-asr compare: {err}", file=sys.stderr)
        return 1
    results = list(out["splits"].values())
    print(f"A: {out['a']}\nB: {out['b']}\n")
    if results:
        print(markdown_table(results, 1.0 - args.alpha))
    if len(results) > 1:
        print("\nHolm-adjusted MAPSSWE p over the splits: " + ", ".join(
            f"{r['split']} {_p(r['mapsswe_p_holm'])}" for r in results))
    for split, why in out["skipped"].items():
        print(f"skipped: {split} ({why})")
    if not results:
        print("lowbit-asr compare: no split in common, nothing compared", file=sys.stderr)
        return 1
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
