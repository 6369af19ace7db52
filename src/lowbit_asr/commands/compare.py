"""``lowbit-asr compare A B``: is B's WER significantly different from A's, split by split?
``lowbit-asr compare --a A1 A2 A3 --b B1 B2 B3``: the same question for two *recipes*, each
trained several times (e.g. ``seed=0,1,2``).

The paired bootstrap (Bisani & Ney 2004) resamples speakers (or utterances) and gives a 95%
interval of ΔWER = WER_B − WER_A and the probability that B is worse; NIST's matched-pairs
sentence-segment word error test (MAPSSWE, as SCTK's ``sc_stats -t mapsswe``) tests whether the
mean per-segment error difference is 0 and decides the verdict.

A and B are evaluation.json files, folders holding one, or training run folders; they must be
evaluations of the same utterances with the same references (else the command refuses, naming
the split). Splits only one of them has are listed as skipped.

Two models are not two recipes: trainings of one recipe that differ only in seed or round-off
land ~2 WER points apart on the mini corpus, and MAPSSWE calls that significant (it tests the
two models as they are). With two or more evaluations per side the verdict and interval come
instead from a two-level bootstrap of the difference of the recipes' mean WERs (trainings
within each recipe and speakers across all, resampled together), with Welch's t-test of the
trainings' WERs beside it (``significance.compare_recipes_split``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from lowbit_asr.train.scoring import evaluation_file, load_evaluation
from lowbit_asr.train.significance import compare_recipes_split, compare_split, holm


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


def recipes_table(results: list[dict[str, Any]], confidence: float) -> str:
    """One row per compared split of a recipe comparison."""
    level = f"{100.0 * confidence:g}%"
    header = ["split", "utterances", "trainings A / B", "WER A % (mean ± SD)",
              "WER B % (mean ± SD)", f"ΔWER (points) [{level} CI]", "P(B worse)", "p",
              "Welch p (seeds only)", "verdict"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in results:
        low, high = r["delta_ci"]
        delta = f"{_points(r['delta'], True)} [{_points(low, True)}, {_points(high, True)}]"
        cells = [r["split"], str(r["utterances"]), f"{r['trainings_a']} / {r['trainings_b']}",
                 f"{_points(r['wer_a'])} ± {_points(r['sd_a'])}",
                 f"{_points(r['wer_b'])} ± {_points(r['sd_b'])}", delta,
                 f"{r['prob_b_worse']:.3f}", _p(r["p"]), _p(r["welch_p"]), r["verdict"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare_recipes(paths_a: list[str | Path], paths_b: list[str | Path], alpha: float = 0.05,
                    ) -> dict[str, Any]:
    """Every split all evaluations have, compared as two recipes (B against A); splits some
    evaluation lacks are listed as skipped, naming one that lacks it."""
    named = [(f"A{i + 1}", p) for i, p in enumerate(paths_a)] + [
        (f"B{i + 1}", p) for i, p in enumerate(paths_b)]
    loaded = {name: load_evaluation(path)[1] for name, path in named}
    every = [s for s in loaded["A1"]]
    for splits in loaded.values():
        every += [s for s in splits if s not in every]
    common = [s for s in every if all(s in splits for splits in loaded.values())]
    skipped = {s: "not in " + ", ".join(n for n, splits in loaded.items() if s not in splits)
               for s in every if s not in common}
    results = [compare_recipes_split(
        s, [loaded[f"A{i + 1}"][s] for i in range(len(paths_a))],
        [loaded[f"B{i + 1}"][s] for i in range(len(paths_b))], alpha=alpha) for s in common]
    if len(results) > 1:
        for r, p in zip(results, holm([r["p"] for r in results]), strict=True):
            r["p_holm"] = p
    return {"mode": "recipes", "a": [str(evaluation_file(p)) for p in paths_a],
            "b": [str(evaluation_file(p)) for p in paths_b], "alpha": alpha,
            "splits": {r["split"]: r for r in results}, "skipped": skipped}


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
    parser.add_argument("a", type=Path, nargs="?", help="evaluation A (the reference system)")
    parser.add_argument("b", type=Path, nargs="?", help="evaluation B (compared against A)")
    parser.add_argument("--a", dest="runs_a", type=Path, nargs="+", default=None,
                        metavar="A", help="instead of a and b: the evaluations of recipe A's"
                        " trainings (the reference recipe)")
    parser.add_argument("--b", dest="runs_b", type=Path, nargs="+", default=None,
                        metavar="B", help="the evaluations of recipe B's trainings")
    parser.add_argument("--alpha", type=float, default=0.05,
                        help="significance level of the test; the CI is at 1 - alpha (0.05)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if not 0.0 < args.alpha < 1.0:
        parser.error(f"--alpha must lie in (0, 1), not {args.alpha}")
    positional = [p for p in (args.a, args.b) if p is not None]
    if args.runs_a is None and args.runs_b is None:
        if len(positional) != 2:
            parser.error("give two evaluations A B, or --a A1 A2 ... --b B1 B2 ...")
        runs_a, runs_b = [args.a], [args.b]
    elif positional:
        parser.error("give either two evaluations A B or --a ... --b ..., not both")
    elif args.runs_a is None or args.runs_b is None:
        parser.error("--a and --b go together: the trainings of recipe A and of recipe B")
    else:
        runs_a, runs_b = args.runs_a, args.runs_b
    recipes = len(runs_a) > 1 or len(runs_b) > 1
    if recipes and (len(runs_a) < 2 or len(runs_b) < 2):
        parser.error(f"a recipe comparison needs at least two trainings per recipe"
                     f" (--a has {len(runs_a)}, --b {len(runs_b)}): one training cannot tell"
                     " its recipe from its seed")
    try:
        out = (compare_recipes(runs_a, runs_b, args.alpha) if recipes
               else compare(runs_a[0], runs_b[0], args.alpha))
    except (FileNotFoundError, ValueError) as err:
        print(f"lowbit-asr compare: {err}", file=sys.stderr)
        return 1
    results = list(out["splits"].values())
    if recipes:
        for side in ("a", "b"):
            for i, path in enumerate(out[side], 1):
                print(f"{side.upper()}{i}: {path}")
        print()
    else:
        print(f"A: {out['a']}\nB: {out['b']}\n")
    if results:
        print(recipes_table(results, 1.0 - args.alpha) if recipes
              else markdown_table(results, 1.0 - args.alpha))
    if recipes and results:
        print(f"\nVerdict and interval: two-level bootstrap (trainings within each recipe and"
              f" speakers, resampled together) at alpha = {args.alpha:g}; Welch's t-test of the"
              " trainings' WERs beside it (seed spread only, few degrees of freedom).")
        print("Per training, WER %: " + "; ".join(
            f"{r['split']}: A " + ", ".join(_points(w) for w in r["wer_a_runs"]) + " | B "
            + ", ".join(_points(w) for w in r["wer_b_runs"]) for r in results))
    key = "p_holm" if recipes else "mapsswe_p_holm"
    if len(results) > 1:
        test = "two-level bootstrap" if recipes else "MAPSSWE"
        print(f"\nHolm-adjusted {test} p over the splits: " + ", ".join(
            f"{r['split']} {_p(r[key])}" for r in results))
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
