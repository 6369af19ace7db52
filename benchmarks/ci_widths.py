"""How wide are the confidence intervals? Unpaired WER CIs of A and B and the paired ΔWER CI of
B − A, per split, with three choices of bootstrap block: utterances, speakers (what the
frontier uses), and the generated corpus's *base voices* (engine + voice name: its speakers are
drawn from a handful of voices with random settings, so speakers of one voice may err alike).

    python benchmarks/ci_widths.py runs/reproduce/embedded_mini/grid/none \\
        runs/reproduce/embedded_mini/grid/int4_asym --corpus data/embedded-mini

Prints a markdown table of estimates and 95% CI half-widths (percentage points).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lowbit_asr.train.scoring import load_evaluation
from lowbit_asr.train.significance import paired_bootstrap, ratio_ci


def base_voices(corpus: Path) -> dict[str, str]:
    """speaker id -> ``engine/voice`` from the corpus manifest."""
    speakers = json.loads((corpus / "manifest.json").read_text())["speakers"]
    return {sid: f"{s['engine']}/{s['voice']}" for sid, s in speakers.items()}


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("a", type=Path, help="evaluation (folder, json or run folder) A")
    parser.add_argument("b", type=Path, help="evaluation B")
    parser.add_argument("--corpus", type=Path, default=None,
                        help="generated corpus root (adds base-voice blocks)")
    args = parser.parse_args()
    _, splits_a = load_evaluation(args.a)
    _, splits_b = load_evaluation(args.b)
    voices = base_voices(args.corpus) if args.corpus else None
    print("| split | blocks | n blocks | WER A % ± | WER B % ± | ΔWER B − A [95% CI] | ± |")
    print("|---|---|---:|---:|---:|---|---:|")
    for split in [s for s in splits_a if s in splits_b]:
        a = sorted(splits_a[split], key=lambda s: s.id)
        b = sorted(splits_b[split], key=lambda s: s.id)
        assert [s.id for s in a] == [s.id for s in b], split
        choices = {"utterance": None, "speaker": [s.speaker for s in a]}
        if voices:
            choices["base voice"] = [voices.get(s.speaker, s.speaker) for s in a]
        words = [s.ref_words for s in a]
        for name, groups in choices.items():
            wa, la, ha = ratio_ci([s.word_errors for s in a], words, groups)
            wb, lb, hb = ratio_ci([s.word_errors for s in b], words, groups)
            d = paired_bootstrap([s.word_errors for s in a], [s.word_errors for s in b], words,
                                 groups)
            n = len(a) if groups is None else len(set(groups))
            print(f"| {split} | {name} | {n} | {100 * wa:.2f} ± {50 * (ha - la):.2f} |"
                  f" {100 * wb:.2f} ± {50 * (hb - lb):.2f} | {100 * d.delta:+.2f}"
                  f" [{100 * d.low:+.2f}, {100 * d.high:+.2f}] | {50 * (d.high - d.low):.2f} |")


if __name__ == "__main__":
    main()
