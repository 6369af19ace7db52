"""Per-utterance scoring: one error-counting function and one writer for every evaluation.

Validation, the test stage of ``lowbit-asr train``, ``lowbit-asr evaluate`` and reproduce's
packed-file check all count errors with :func:`score_utterance` and write what they decoded with
:func:`write_evaluation`, so their numbers cannot disagree and any two evaluations can be
compared utterance by utterance afterwards (``lowbit-asr compare``).

An evaluation on disk::

    <dir>/evaluation.json            what was evaluated, and per split the metrics with CIs
    <dir>/<split>/ref.trn            NIST trn: ``WORDS (speaker-utterance_id)``, sclite reads it
    <dir>/<split>/hyp.trn
    <dir>/<split>/utterances.tsv     one row per utterance (UTTERANCE_COLUMNS)
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import jiwer

from lowbit_asr.files import write_text_atomic

EVALUATION_FILE = "evaluation.json"
"""The summary file of an evaluation folder."""
EVALUATION_FORMAT = "lowbit-asr evaluation v1"
UTTERANCES_FILE = "utterances.tsv"
REF_TRN, HYP_TRN = "ref.trn", "hyp.trn"
RUN_EVAL_DIR = "eval"
"""A training run's test-stage evaluation: ``<run dir>/eval/``."""


@dataclass(frozen=True)
class UtteranceScore:
    """What one utterance's evaluation found."""

    id: str  #: utterance id (LibriSpeech: ``<speaker>-<chapter>-<n>``)
    speaker: str  #: speaker id: the bootstrap resamples speakers as blocks
    reference: str  #: normalised reference words
    hypothesis: str  #: decoded words
    ref_words: int  #: reference words
    substitutions: int
    deletions: int
    insertions: int
    ref_chars: int  #: reference characters, spaces included (jiwer's CER convention)
    char_errors: int  #: character substitutions + deletions + insertions
    nll: float  #: -log P(reference | audio) under teacher forcing (nats; NaN: not computed)
    ref_tokens: int  #: tokenizer units of the reference (the NLL's denominator)

    @property
    def word_errors(self) -> int:
        """Substitutions + deletions + insertions."""
        return self.substitutions + self.deletions + self.insertions


UTTERANCE_COLUMNS = tuple(f.name for f in fields(UtteranceScore))
_INT_COLUMNS = {f.name for f in fields(UtteranceScore) if f.type == "int"}


def speaker_of(utterance_id: str) -> str:
    """The speaker of a LibriSpeech-style id (the part before the first ``-``); an id without
    one is its own speaker (every utterance its own block)."""
    head, sep, _ = utterance_id.partition("-")
    return head if sep and head else utterance_id


def score_utterance(utterance_id: str, reference: str, hypothesis: str, *,
                    nll: float = math.nan, ref_tokens: int = 0) -> UtteranceScore:
    """Align one hypothesis to its reference (words and characters, jiwer's Levenshtein)."""
    ref = " ".join(reference.split())
    hyp = " ".join(hypothesis.split())
    if not ref:
        raise ValueError(f"utterance {utterance_id}: empty reference (nothing to score)")
    if hyp:
        w = jiwer.process_words(ref, hyp)
        c = jiwer.process_characters(ref, hyp)
        s, d, i = w.substitutions, w.deletions, w.insertions
        char_errors = c.substitutions + c.deletions + c.insertions
    else:  # everything deleted (jiwer refuses an empty hypothesis)
        s, d, i, char_errors = 0, len(ref.split()), 0, len(ref)
    return UtteranceScore(
        id=utterance_id, speaker=speaker_of(utterance_id), reference=ref, hypothesis=hyp,
        ref_words=len(ref.split()), substitutions=s, deletions=d, insertions=i,
        ref_chars=len(ref), char_errors=char_errors, nll=float(nll), ref_tokens=int(ref_tokens),
    )


def word_errors(refs: Sequence[str], hyps: Sequence[str]) -> tuple[int, int]:
    """(substitutions + deletions + insertions, reference words) summed over utterances."""
    scores = [score_utterance(str(i), r, h) for i, (r, h) in
              enumerate(zip(refs, hyps, strict=True))]
    return sum(s.word_errors for s in scores), sum(s.ref_words for s in scores)


# ---- files ----------------------------------------------------------------------------------


def trn_line(utterance_id: str, speaker: str, words: str) -> str:
    """One NIST trn line: ``WORDS (speaker-utterance_id)`` (the id as it is when it already
    starts with its speaker, as LibriSpeech ids do)."""
    tag = utterance_id if utterance_id.startswith(f"{speaker}-") else f"{speaker}-{utterance_id}"
    return f"{words} ({tag})".lstrip()


def write_split(directory: Path, scores: Sequence[UtteranceScore]) -> dict[str, str]:
    """``ref.trn``, ``hyp.trn`` and ``utterances.tsv`` of one split (ordered by id); returns
    their names relative to ``directory``'s parent."""
    directory.mkdir(parents=True, exist_ok=True)
    ordered = sorted(scores, key=lambda s: s.id)
    write_text_atomic(directory / REF_TRN, "".join(
        trn_line(s.id, s.speaker, s.reference) + "\n" for s in ordered))
    write_text_atomic(directory / HYP_TRN, "".join(
        trn_line(s.id, s.speaker, s.hypothesis) + "\n" for s in ordered))
    lines = ["\t".join(UTTERANCE_COLUMNS)]
    for s in ordered:
        values = [getattr(s, c) for c in UTTERANCE_COLUMNS]
        lines.append("\t".join(repr(v) if isinstance(v, float) else str(v) for v in values))
    write_text_atomic(directory / UTTERANCES_FILE, "\n".join(lines) + "\n")
    rel = directory.name
    return {"utterances": f"{rel}/{UTTERANCES_FILE}", "ref_trn": f"{rel}/{REF_TRN}",
            "hyp_trn": f"{rel}/{HYP_TRN}"}


def read_utterances(path: Path) -> list[UtteranceScore]:
    """The rows of an ``utterances.tsv``; a malformed file is an error naming it."""
    try:
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            if tuple(reader.fieldnames or ()) != UTTERANCE_COLUMNS:
                raise ValueError(f"columns {reader.fieldnames} are not {list(UTTERANCE_COLUMNS)}")
            rows = []
            for row in reader:
                values: dict[str, Any] = {}
                for name in UTTERANCE_COLUMNS:
                    raw = row[name] if row[name] is not None else ""
                    if name in _INT_COLUMNS:
                        values[name] = int(raw)
                    elif name == "nll":
                        values[name] = float(raw)
                    else:
                        values[name] = raw
                rows.append(UtteranceScore(**values))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a per-utterance table ({err})") from err
    return rows


def write_evaluation(directory: Path, splits: dict[str, Sequence[UtteranceScore]],
                     info: dict[str, Any], timing: dict[str, dict[str, float]] | None = None,
                     ) -> dict[str, Any]:
    """Write every split's files and ``evaluation.json`` (metrics with 95% CIs); returns it."""
    from lowbit_asr.train.significance import split_metrics

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"format": EVALUATION_FORMAT, **info, "splits": {}}
    for split, scores in splits.items():
        files = write_split(directory / split, scores)
        metrics = split_metrics(scores)
        t = (timing or {}).get(split, {})
        if t:
            metrics["audio_seconds"] = t.get("audio_seconds", 0.0)
            metrics["decode_seconds"] = t.get("decode_seconds", 0.0)
            metrics["rtf"] = t.get("decode_seconds", 0.0) / max(t.get("audio_seconds", 0.0), 1e-9)
        summary["splits"][split] = {**metrics, "files": files}
    write_text_atomic(directory / EVALUATION_FILE, json.dumps(summary, indent=1) + "\n")
    return summary


def evaluation_file(path: str | Path) -> Path:
    """``evaluation.json`` of an evaluation file, evaluation folder or training run folder."""
    path = Path(path)
    for candidate in (path, path / EVALUATION_FILE, path / RUN_EVAL_DIR / EVALUATION_FILE):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{path}: no evaluation here (expected an {EVALUATION_FILE}, a folder holding one, or a"
        f" training run folder with {RUN_EVAL_DIR}/{EVALUATION_FILE})")


def load_evaluation(path: str | Path) -> tuple[dict[str, Any], dict[str, list[UtteranceScore]]]:
    """An evaluation's summary and, per split, its per-utterance scores."""
    file = evaluation_file(path)
    try:
        summary = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{file}: not an evaluation file ({err})") from err
    if not isinstance(summary, dict) or summary.get("format") != EVALUATION_FORMAT:
        raise ValueError(f"{file}: not an evaluation file (format is not {EVALUATION_FORMAT!r})")
    splits = {split: read_utterances(file.parent / entry["files"]["utterances"])
              for split, entry in summary["splits"].items()}
    return summary, splits


def totals(scores: Iterable[UtteranceScore]) -> dict[str, int]:
    """Summed counts of a split."""
    out = {"utterances": 0, "words": 0, "errors": 0, "chars": 0, "char_errors": 0}
    for s in scores:
        out["utterances"] += 1
        out["words"] += s.ref_words
        out["errors"] += s.word_errors
        out["chars"] += s.ref_chars
        out["char_errors"] += s.char_errors
    return out


def evaluate_to(directory: str | Path, module: Any, loaders: dict[str, Any],
                info: dict[str, Any]) -> dict[str, Any]:
    """Score every split with ``module.evaluate_loader`` (an :class:`RNNTModule`) and write the
    evaluation folder: the one path behind ``train``'s test stage, ``evaluate`` and reproduce's
    packed-file check."""
    splits, timing = {}, {}
    for split, loader in loaders.items():
        splits[split], timing[split] = module.evaluate_loader(loader)
    return write_evaluation(Path(directory), splits, info, timing)


def print_summary(summary: dict[str, Any], directory: str | Path) -> None:
    """The evaluation as a markdown table (WER and CER with 95% CIs, NLL, RTF)."""
    print("| split | utterances | speakers | words | WER % [95% CI] | CER % [95% CI] |"
          " NLL / token | RTF |\n|---|---:|---:|---:|---|---|---:|---:|")
    for split, r in summary["splits"].items():
        lo, hi = r["wer_ci"]
        clo, chi = r["cer_ci"]
        print(f"| {split} | {r['utterances']} | {r['speakers']} | {r['words']} |"
              f" {100 * r['wer']:.2f} [{100 * lo:.2f}, {100 * hi:.2f}] |"
              f" {100 * r['cer']:.2f} [{100 * clo:.2f}, {100 * chi:.2f}] |"
              f" {r['nll_per_token']:.4f} | {r.get('rtf', float('nan')):.3f} |")
    print(f"\nwritten to {Path(directory) / EVALUATION_FILE} (per-utterance files beside it)")
