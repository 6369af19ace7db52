"""The size-vs-WER frontier of a sweep: rows -> Pareto front -> CSV, markdown table, plot.

Reads the ``results.json`` row every run writes (see :mod:`lowbit_asr.train.results`);
failed runs are listed in the outputs, never dropped.

"Lossless" is decided by a test, never by eye: every point's per-utterance results are compared
with the reference float point's (the float model fine-tuned like the grid) by NIST's
matched-pairs sentence-segment word error test (MAPSSWE) and a paired bootstrap of ΔWER; a point
is *lossless* on a split unless it is significantly worse at ``ALPHA`` after Holm–Bonferroni
correction over every (point, split) test of its method (trained points form one family,
post-training ``ptq`` points another; the raw verdict is shown too), and *within +3%* when the
upper bound of its paired 95% CI of ΔWER is at most 3% of the reference WER. Post-training points
are drawn with their own marker, are never the reference, and are tested against the float
checkpoint they quantized where its row is in the table (the fine-tuned reference is not what they
start from).

A point trained several times (rows with one ``recipe`` fingerprint and another ``seed``, e.g.
``lowbit-asr reproduce --seeds 3``) is one item: its WER is the trainings' mean with a two-level
bootstrap CI, and it is tested against the reference's trainings by that bootstrap (trainings
within each recipe and speakers resampled together;
:func:`lowbit_asr.train.significance.compare_recipes_split`) when both have two or more; a
point trained once keeps the per-model MAPSSWE test.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

from lowbit_asr.train.results import RESULT_FILE
from lowbit_asr.train.scoring import UtteranceScore, load_evaluation
from lowbit_asr.train.significance import (
    block_labels,
    compare_trainings,
    holm,
    non_inferior,
    two_level_bootstrap,
)

BIT_COLOURS = {1: "#7f0000", 2: "#d62728", 3: "#ff7f0e", 4: "#1f77b4", 8: "#2ca02c",
               32: "#000000", "mixed": "#9467bd"}
GRANULARITY_MARKERS = {"per_channel": "o", "sub_channel": "s", "float": "*", "mixed": "D"}
PTQ_MARKER = "v"
"""Post-training points (``method: ptq``, no training step) are drawn with their own marker."""


def method(row: dict[str, Any]) -> str:
    """How a row's model was made: ``ptq`` (post-training, its row says so), ``float`` or
    ``qat`` (trained)."""
    if row.get("method"):
        return str(row["method"])
    return "float" if row.get("quant_bits") == 32 else "qat"

ALPHA = 0.05
"""Significance level of the "lossless" verdicts (family-wise, after Holm-Bonferroni)."""
RELATIVE_MARGIN = 0.03
""""Within +3%": the paired 95% CI's upper bound of ΔWER is at most this share of the
reference WER (the analogue of the paper's large-scale result)."""
LOW_BITS, MID_BITS = (0.0, 3.0), (3.0, 5.0)
"""Average bits per quantized weight of the headline's "2-bit" point (< 3) and of its "4-bit"
one (3-5), scales included."""
VERDICT_NOTE = (
    "WER: 95% bootstrap CI over speakers. ΔWER = point − reference float point (the float model"
    " fine-tuned like the grid), with its paired-bootstrap 95% CI (Bisani & Ney 2004, speakers as"
    " blocks); a post-training (ptq) point's reference is the float checkpoint it quantized."
    " p: NIST MAPSSWE (matched-pairs sentence-segment word error test, two-sided)."
    " A point trained several times (×n: n seeds of one recipe) shows the trainings' mean WER"
    " with a two-level bootstrap CI (trainings and speakers), and its ΔWER, CI and p (marked"
    " `seeds`) come from the same bootstrap of its trainings against the reference's (when both"
    " have two or more)."
    " **Lossless** = not significantly worse than the reference at α = 0.05 after Holm–Bonferroni"
    " correction over every (point, split) test of its method in this table (trained points one"
    " family, post-training ones another) — this is the verdict that decides;"
    " `raw` is the uncorrected one. **≤+3%** = the CI's upper bound is at most +3% relative."
)


def load_rows(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Every run's row under ``sweep_dir`` (recursively), sorted by path; unreadable files
    become failed rows naming the file."""
    rows = []
    for path in sorted(Path(sweep_dir).rglob(RESULT_FILE)):
        try:
            row = json.loads(path.read_text())
            if not isinstance(row, dict) or "status" not in row:
                raise ValueError("not a result row")
            if row["status"] == "ok" and not (isinstance(row.get("wer"), dict) and row["wer"]):
                raise ValueError("status ok but no WERs ('wer')")
        except (OSError, ValueError) as err:
            row = {"status": "failed", "run_id": path.parent.name, "error": f"{path}: {err}"}
        row["path"] = str(path.parent)
        rows.append(row)
    return rows


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both size and WER (smaller is better),
    ordered by size. Ties in both coordinates keep the first."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1], i))
    front, best_wer = [], math.inf
    for i in order:
        if points[i][1] < best_wer:
            front.append(i)
            best_wer = points[i][1]
    return front


def _mean_wer(row: dict[str, Any]) -> float:
    values = list(row["wer"].values())
    return sum(values) / len(values)


def group_trainings(ok: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The rows as groups of trainings of one recipe: rows of one method with the same
    ``recipe`` fingerprint (written by ``lowbit-asr train``: the config without its seed and
    locations) form one group, sorted by seed; rows without one (post-training points, older
    runs) stand alone. Groups in order of their first row."""
    groups: dict[Any, list[dict[str, Any]]] = {}
    for i, r in enumerate(ok):
        key = (method(r), r["recipe"]) if r.get("recipe") else ("alone", i)
        groups.setdefault(key, []).append(r)
    return [sorted(g, key=lambda r: (r.get("seed") is None, r.get("seed") or 0, r["path"]))
            for g in groups.values()]


def _group_mean_wer(group: list[dict[str, Any]]) -> float:
    return sum(_mean_wer(r) for r in group) / len(group)


def _scores(row: dict[str, Any]) -> dict[str, list[UtteranceScore]] | None:
    """A row's per-utterance test results (None: the run wrote none, e.g. an older run)."""
    if not row.get("evaluation") or not row.get("path"):
        return None
    try:
        return load_evaluation(Path(row["path"]) / row["evaluation"])[1]
    except (OSError, ValueError):
        return None


def reference_group(groups: list[list[dict[str, Any]]]) -> list[dict[str, Any]] | None:
    """The float point the others are tested against: among the float groups, those trained
    with the experiment most quantized rows used (the float model fine-tuned like the grid),
    else all float groups; of these the lowest mean WER (over its trainings)."""
    trained = [g for g in groups if method(g[0]) != "ptq"]  # PTQ rows were never trained
    floats = [g for g in trained if g[0].get("quant_bits") == 32]
    quantized = [r.get("experiment") for g in trained if g[0].get("quant_bits") != 32 for r in g]
    if quantized:
        grid = Counter(quantized).most_common(1)[0][0]
        floats = [g for g in floats if g[0].get("experiment") == grid] or floats
    return min(floats, key=_group_mean_wer) if floats else None


def source_group(group: list[dict[str, Any]], groups: list[list[dict[str, Any]]],
                 ) -> list[dict[str, Any]] | None:
    """The trained float group holding the checkpoint a post-training row quantized (its
    ``source_checkpoint`` is that row's ``best_checkpoint``), else None."""
    row = group[0]
    source = row.get("source_checkpoint")
    if method(row) != "ptq" or not source:
        return None
    resolved = str(Path(source).resolve())
    for g in groups:
        for r in g:
            if (method(r) != "ptq" and r.get("quant_bits") == 32 and r.get("best_checkpoint")
                    and str(Path(r["best_checkpoint"]).resolve()) == resolved):
                return [r]  # PTQ quantized that one training: test against it
    return None


def _pick(group: list[dict[str, Any]], seed: Any) -> dict[str, Any]:
    """The training of ``group`` with ``seed`` (else its first): the partner of a point trained
    once when the other side was trained several times."""
    return next((r for r in group if r.get("seed") == seed), group[0])


def add_significance(flat: list[dict[str, Any]], groups: list[list[dict[str, Any]]],
                     splits: list[str]) -> None:
    """Per item and split: ΔWER against the reference with its CI, P(worse), the p-value
    (``test_<split>``: ``MAPSSWE`` between two models, ``seeds`` — the two-level bootstrap —
    between two groups of trainings),
    Holm-adjusted p, and the ``lossless`` / ``lossless_raw`` / ``within3`` verdicts (None where
    either side has no per-utterance results); per item ``lossless`` on every split, and
    ``reference`` for the reference itself.

    Trained points are tested against :func:`reference_group` (the float model fine-tuned like
    them); a post-training point against the float checkpoint it quantized (:func:`source_group`)
    where that row is in the table — the fine-tune is not what PTQ starts from, and its WER
    differs from the checkpoint's by more than the test's noise — else against the reference.
    ``against`` names the row each item was tested against."""
    ref = reference_group(groups)
    cache: dict[int, dict[str, list[UtteranceScore]] | None] = {}

    def scores_of(row: dict[str, Any]) -> dict[str, list[UtteranceScore]] | None:
        if id(row) not in cache:
            cache[id(row)] = _scores(row)
        return cache[id(row)]

    keys = ("delta", "delta_low", "delta_high", "prob_worse", "p", "p_holm", "lossless",
            "lossless_raw", "within3", "test")
    tests: list[tuple[dict[str, Any], str]] = []
    for item, group in zip(flat, groups, strict=True):
        item["reference"] = group is ref
        against = source_group(group, groups) or ref
        if against is not None and len(group) == 1 and len(against) > 1:
            against = [_pick(against, group[0].get("seed"))]
        item["against"] = (against[0]["run_id"] if against is not None and group is not ref
                           else None)
        for s in splits:
            for k in keys:
                item[f"{k}_{s}"] = None
        if group is ref or against is None:
            continue
        if len(group) > 1 and len(against) == 1:
            group = [_pick(group, against[0].get("seed"))]
        ref_scores = [scores_of(r) for r in against]
        scores = [scores_of(r) for r in group]
        if any(x is None for x in [*ref_scores, *scores]):
            continue
        for s in splits:
            if any(s not in x for x in [*ref_scores, *scores]):
                continue
            c = compare_trainings(s, [x[s] for x in ref_scores], [x[s] for x in scores])
            p = c["p"]
            item[f"test_{s}"] = c["test"]
            item[f"delta_{s}"] = c["delta"]
            item[f"delta_low_{s}"], item[f"delta_high_{s}"] = c["delta_ci"]
            item[f"prob_worse_{s}"] = c["prob_b_worse"]
            item[f"p_{s}"] = p
            item[f"within3_{s}"] = non_inferior(c["delta_ci"][1], c["wer_a"], RELATIVE_MARGIN)
            item[f"lossless_raw_{s}"] = not (p < ALPHA and c["delta"] > 0)
            tests.append((item, s))
    # One Holm family per method: adding post-training baselines to a table must not change the
    # verdicts of the trained points (nor the other way round).
    for family in sorted({item.get("method", "qat") for item, _ in tests}):
        members = [(item, s) for item, s in tests if item.get("method", "qat") == family]
        adjusted = holm([item[f"p_{s}"] for item, s in members])
        for (item, s), p in zip(members, adjusted, strict=True):
            item[f"p_holm_{s}"] = p
            item[f"lossless_{s}"] = not (p < ALPHA and item[f"delta_{s}"] > 0)
    for item in flat:
        verdicts = [item[f"lossless_{s}"] for s in splits]
        item["lossless"] = (True if item["reference"] else
                            None if any(v is None for v in verdicts) else all(verdicts))
        within = [item[f"within3_{s}"] for s in splits]
        item["within3"] = (True if item["reference"] else
                           None if any(v is None for v in within) else all(within))


def headline(flat: list[dict[str, Any]], key: str = "lossless") -> dict[str, Any] | None:
    """The paper's headline computed: size of the smallest point with verdict ``key`` on every
    split whose quantized weights average < 3 bits, over the smallest such point with 3-5 bits
    (None when either is missing)."""
    def smallest(bounds: tuple[float, float]) -> dict[str, Any] | None:
        good = [i for i in flat if i.get(key) and i["bits"] != 32
                and bounds[0] <= (i["bits_per_weight"] or 0.0) < bounds[1]]
        return min(good, key=lambda i: i["size_bytes"]) if good else None

    low, mid = smallest(LOW_BITS), smallest(MID_BITS)
    if not low or not mid:
        return {"verdict": key, "low": low and low["quantizer"], "mid": mid and mid["quantizer"],
                "ratio": None}
    return {"verdict": key, "low": low["quantizer"], "low_mb": low["size_mb"],
            "low_bits": low["bits_per_weight"], "mid": mid["quantizer"],
            "mid_mb": mid["size_mb"], "mid_bits": mid["bits_per_weight"],
            "ratio": low["size_bytes"] / mid["size_bytes"]}


def _recipe_wer(group: list[dict[str, Any]], split: str,
                ) -> tuple[float | None, float | None, float | None]:
    """A group's mean WER on ``split`` and the two-level bootstrap 95% CI of that mean (the
    interval of a difference against a recipe that makes no errors); CI None without every
    training's per-utterance results."""
    wers = [r["wer"].get(split) for r in group]
    if any(w is None for w in wers):
        return None, None, None
    mean = sum(wers) / len(wers)
    scores = [_scores(r) for r in group]
    if any(x is None or split not in x for x in scores):
        return mean, None, None
    runs = [sorted(x[split], key=lambda u: u.id) for x in scores]  # type: ignore[index]
    groups, _ = block_labels(runs[0])
    words = [u.ref_words for u in runs[0]]
    zeros = [[0] * len(words)] * 2
    boot = two_level_bootstrap(zeros, [[u.word_errors for u in run] for run in runs], words,
                               groups)
    return mean, boot.low, boot.high


def frontier_rows(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Flat rows of the successful runs (one per recipe: trainings of one recipe are one item,
    :func:`group_trainings`) with Pareto flags and relative numbers, and the splits.

    ``rel_size_vs_int4``: size over the size of the best (lowest mean WER) 4-bit run.
    ``rel_wer_<split>``: WER over the reference float point's WER on that split.
    """
    ok = [r for r in rows if r.get("status") == "ok"]
    splits = sorted({s for r in ok for s in r["wer"]})
    groups = group_trainings(ok)
    int4 = [g for g in groups if g[0].get("quant_bits") == 4]
    ref4 = min(int4, key=_group_mean_wer)[0]["size_bytes"] if int4 else None
    ref = reference_group(groups)
    ref_float = ({s: sum(r["wer"][s] for r in ref) / len(ref) for s in ref[0]["wer"]
                  if all(s in r["wer"] for r in ref)} if ref else None)
    flat = []
    for g in groups:
        r = g[0]
        item = {
            "run_id": r["run_id"], "experiment": r.get("experiment", ""),
            "quantizer": r.get("quantizer", ""), "method": method(r),
            "trainings": len(g), "seeds": [x.get("seed") for x in g],
            "bits": r.get("quant_bits"),
            "symmetric": r.get("quant_symmetric"), "granularity": r.get("quant_granularity"),
            "group": r.get("quant_group", ""), "clip": r.get("quant_clip", ""),
            "size_bytes": r["size_bytes"], "size_mb": r["size_mb"],
            "bits_per_weight": r.get("bits_per_quantized_weight", 0.0),
            "rel_size_vs_int4": r["size_bytes"] / ref4 if ref4 else None,
        }
        for s in splits:
            if len(g) == 1:
                wer = r["wer"].get(s)
                ci = (r.get("wer_ci") or {}).get(s)
                low, high = ci if ci else (None, None)
            else:
                wer, low, high = _recipe_wer(g, s)
            item[f"wer_{s}"] = wer
            item[f"rel_wer_{s}"] = (wer / ref_float[s] if ref_float and wer is not None
                                    and ref_float.get(s) else None)
            item[f"wer_low_{s}"], item[f"wer_high_{s}"] = low, high
        item["commit"], item["command"] = r.get("commit", ""), r.get("command", "")
        item["path"] = r.get("path", "")
        item["paths"] = [x.get("path", "") for x in g]
        flat.append(item)
    add_significance(flat, groups, splits)
    for s in splits:
        usable = [i for i, item in enumerate(flat) if item[f"wer_{s}"] is not None]
        front = {usable[j] for j in pareto_front(
            [(flat[i]["size_bytes"], flat[i][f"wer_{s}"]) for i in usable])}
        for i, item in enumerate(flat):
            item[f"front_{s}"] = i in front
    flat.sort(key=lambda item: item["size_bytes"])
    return flat, splits


def _fmt(value: Any, pattern: str = "{:.3f}") -> str:
    if value is None:
        return "–"
    return pattern.format(value) if isinstance(value, float) else str(value)


def _pct(value: float | None, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * value:+.2f}" if signed else f"{100 * value:.2f}"


def _verdict(item: dict[str, Any], split: str) -> str:
    if item["reference"]:
        return "reference"
    final, raw = item[f"lossless_{split}"], item[f"lossless_raw_{split}"]
    if final is None:
        return "–"
    text = "yes" if final else "**no**"
    if raw is not None and raw != final:
        text += f" (raw: {'yes' if raw else 'no'})"
    if item[f"within3_{split}"]:
        text += ", ≤+3%"
    return text


def _p(item: dict[str, Any], split: str) -> str:
    p, adjusted = item[f"p_{split}"], item[f"p_holm_{split}"]
    if p is None:
        return "–"
    seeds = " seeds" if item.get(f"test_{split}") == "seeds" else ""
    return f"{p:.3g} ({adjusted:.3g}){seeds}"


def display_name(item: dict[str, Any], flat: list[dict[str, Any]]) -> str:
    """The quantizer, with its experiment when several rows share the quantizer (e.g. the float
    baseline and the float model fine-tuned like the grid)."""
    name = item["quantizer"]
    if sum(i["quantizer"] == name for i in flat) > 1:
        name = f"{name} ({item['experiment'] or item['run_id']})"
    if item.get("trainings", 1) > 1:
        name += f" ×{item['trainings']}"
    return name


def to_markdown(flat: list[dict[str, Any]], splits: list[str],
                failed: list[dict[str, Any]]) -> str:
    """The frontier table (every run, front members in bold, WER CIs, ΔWER against the
    reference with its paired CI and p-values, lossless verdicts), the computed headline, then
    the failed runs."""
    head = ["quantizer", "bits", "sym", "granularity", "clip", "size MB", "× int4 size",
            "bits / weight"]
    for s in splits:
        head += [f"WER {s} % [95% CI]", f"ΔWER {s} [95% CI]", f"p {s} (Holm)",
                 f"lossless {s}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for item in flat:
        on_front = any(item[f"front_{s}"] for s in splits)
        name = display_name(item, flat)
        name = f"**{name}**" if on_front else name
        sym = {True: "sym", False: "asym"}.get(item["symmetric"], _fmt(item["symmetric"]))
        group = item["group"]  # e.g. g16; not repeated when it says the same as the granularity
        granularity = (item["granularity"] if group in (None, "", item["granularity"])
                       else f"{item['granularity']} {group}")
        cells = [name, _fmt(item["bits"]), sym, granularity,
                 _fmt(item["clip"]), f"{item['size_mb']:.3f}",
                 _fmt(item["rel_size_vs_int4"], "{:.2f}"),
                 _fmt(item["bits_per_weight"], "{:.2f}")]
        for s in splits:
            wer = _pct(item[f"wer_{s}"])
            if item[f"wer_low_{s}"] is not None:
                wer += f" [{_pct(item[f'wer_low_{s}'])}, {_pct(item[f'wer_high_{s}'])}]"
            delta = _pct(item[f"delta_{s}"], signed=True)
            if item[f"delta_low_{s}"] is not None:
                delta += (f" [{_pct(item[f'delta_low_{s}'], True)},"
                          f" {_pct(item[f'delta_high_{s}'], True)}]")
            cells += [wer, delta, _p(item, s), _verdict(item, s)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Bold: on the size-vs-WER Pareto front of at least one split. " + VERDICT_NOTE]
    lines += ["", headline_text(flat)]
    if failed:
        lines.append("")
        lines.append(f"Failed runs ({len(failed)}):")
        lines.append("")
        for r in failed:
            lines.append(f"- `{r.get('run_id', '?')}` ({r.get('quantizer', '?')}):"
                         f" {r.get('error', 'unknown error')}")
    return "\n".join(lines)


def headline_text(flat: list[dict[str, Any]]) -> str:
    """The paper's headline, computed from the verdicts (lossless, and within +3%)."""
    out = []
    for key, what in (("lossless", "lossless on every split"),
                      ("within3", "within +3% relative WER on every split")):
        h = headline(flat, key)
        if h is None or h["ratio"] is None:
            missing = [b for b, q in (("< 3 bits", h and h["low"]), ("3–5 bits", h and h["mid"]))
                       if not q]
            out.append(f"Headline ({what}): not computable — no such point with "
                       f"{' or '.join(missing)} per weight.")
        else:
            out.append(
                f"Headline ({what}): the smallest such point under 3 bits per weight,"
                f" `{h['low']}` ({h['low_mb']:.3f} MB, {h['low_bits']:.2f} bits), is"
                f" **{h['ratio']:.2f}×** the size of the smallest with 3–5 bits, `{h['mid']}`"
                f" ({h['mid_mb']:.3f} MB, {h['mid_bits']:.2f} bits): {100 * (1 - h['ratio']):.0f}%"
                " smaller (the paper: 32% on LibriSpeech).")
    return "\n\n".join(out)


def _y_cap(items: list[dict[str, Any]], split: str) -> float:
    """Top of a panel's WER axis (%): 100% or the highest CI bound of a trained point, whichever
    is higher — a post-training model that emits more words than the references hold (WER far
    over 100%) must not squash every other point into the bottom of the panel."""
    highs = [item[f"wer_high_{split}"] or item[f"wer_{split}"] for item in items
             if item.get("method") != "ptq" and item[f"wer_{split}"] is not None]
    return 100 * max([1.0, *highs])


def _draw(ax: Any, items: list[dict[str, Any]], split: str, names: dict[str, str],
          front: bool = True, label_all: bool = True) -> None:
    """One panel: points with WER CIs as error bars, lossless points filled, significantly worse
    ones hollow; the Pareto front as a step line. Named: every point (``label_all``) or the
    front's; a point above the axis cap (:func:`_y_cap`) sits on the top edge, its WER named."""
    cap = _y_cap(items, split)
    top = cap * 1.04
    for item in items:
        wer = item[f"wer_{split}"]
        if wer is None:
            continue
        colour = BIT_COLOURS.get(item["bits"], "#7f7f7f")
        low, high = item[f"wer_low_{split}"], item[f"wer_high_{split}"]
        off_scale = 100 * wer > top
        y = top if off_scale else 100 * wer
        if low is not None and not off_scale:
            ax.errorbar(item["size_mb"], 100 * wer,
                        yerr=[[100 * (wer - low)], [100 * (min(high, top / 100) - wer)]],
                        fmt="none", ecolor=colour, elinewidth=0.8, capsize=2, alpha=0.7,
                        zorder=2)
        worse = item[f"lossless_{split}"] is False
        marker = (PTQ_MARKER if item.get("method") == "ptq"
                  else GRANULARITY_MARKERS.get(item["granularity"], "x"))
        ax.scatter(item["size_mb"], y, marker=marker, s=55, zorder=3, clip_on=False,
                   facecolors="white" if worse else colour, edgecolors=colour, linewidths=1.2)
        name = names[item["run_id"] + item["path"]]
        if off_scale:
            name += f" ({100 * wer:.0f}%, off scale)"
        if label_all or off_scale or item.get(f"front_{split}"):
            ax.annotate(name, (item["size_mb"], y), textcoords="offset points",
                        xytext=(6, -9) if off_scale else (4, 3),
                        fontsize=6.5, color="#333333", annotation_clip=False)
    ax.set_ylim(top=top)
    if front:
        line = sorted((i for i in items if i[f"front_{split}"]), key=lambda i: i["size_mb"])
        ax.step([i["size_mb"] for i in line], [100 * i[f"wer_{split}"] for i in line],
                where="post", color="#555555", linewidth=1, zorder=1)
    ax.set_xscale("log")
    ax.set_xlabel("model size (MB, 10^6 bytes, log scale)")
    ax.set_ylabel("WER (%)")
    ax.grid(alpha=0.3, which="both")


def _legends(fig: Any, items: list[dict[str, Any]]) -> None:
    from matplotlib.lines import Line2D

    bits = [Line2D([], [], marker="o", linestyle="", color=c,
                   label=f"{b} bits" if b != 32 else "float")
            for b, c in BIT_COLOURS.items() if any(i["bits"] == b for i in items)]
    grans = [Line2D([], [], marker=m, linestyle="", color="#7f7f7f", label=g)
             for g, m in GRANULARITY_MARKERS.items() if any(i["granularity"] == g for i in items)]
    if any(i.get("method") == "ptq" for i in items):
        grans.append(Line2D([], [], marker=PTQ_MARKER, linestyle="", color="#7f7f7f",
                            label="post-training (no QAT)"))
    grans.append(Line2D([], [], marker="o", linestyle="", markerfacecolor="white",
                        markeredgecolor="#7f7f7f", label="significantly worse (Holm)"))
    first = fig.legend(handles=bits, loc="upper left", title="bits (colour)", frameon=False,
                       ncol=len(bits), fontsize=8, title_fontsize=8)
    fig.add_artist(first)
    fig.legend(handles=grans, loc="upper right", title="granularity (marker)", frameon=False,
               ncol=len(grans), fontsize=8, title_fontsize=8)


def plot(flat: list[dict[str, Any]], splits: list[str], path: Path) -> None:
    """x = size MB (log), y = WER % with its 95% CI, colour = bits, marker = granularity, the
    front as a line and its points named (the per-group plots name every point); hollow markers
    are significantly worse than the reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = {i["run_id"] + i["path"]: display_name(i, flat) for i in flat}
    fig, axes = plt.subplots(1, max(len(splits), 1), figsize=(7 * max(len(splits), 1), 5.2),
                             squeeze=False)
    for ax, split in zip(axes[0], splits, strict=False):
        _draw(ax, flat, split, names, label_all=False)
        ax.set_title(split)
    _legends(fig, flat)
    fig.text(0.5, 0.005, "named: the points on the front (every point: frontier_<bits>_"
             "<granularity>.png); error bars: 95% CI", ha="center", fontsize=7, color="#555555")
    fig.tight_layout(rect=(0, 0.02, 1, 0.88))
    fig.savefig(path, dpi=130)
    plt.close(fig)


def group_plots(flat: list[dict[str, Any]], splits: list[str], out_dir: Path) -> dict[str, Path]:
    """One scatter (with error bars) per bit-width × granularity, the reference float point in
    each for scale: ``<out_dir>/frontier_<bits>_<granularity>.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = {i["run_id"] + i["path"]: display_name(i, flat) for i in flat}
    groups = sorted({(str(i["bits"]), str(i["granularity"])) for i in flat if i["bits"] != 32})
    paths = {}
    for bits, gran in groups:
        items = [i for i in flat if (str(i["bits"]), str(i["granularity"])) == (bits, gran)
                 or i["reference"]]
        fig, axes = plt.subplots(1, max(len(splits), 1), figsize=(5 * max(len(splits), 1), 4),
                                 squeeze=False)
        for ax, split in zip(axes[0], splits, strict=False):
            _draw(ax, items, split, names, front=False)
            ax.set_title(f"{split}: {bits} bits, {gran}", fontsize=9)
        fig.tight_layout()
        path = out_dir / f"frontier_{bits}_{gran}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths[f"{bits}_{gran}"] = path
    return paths


def write_frontier(sweep_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Read the rows under ``sweep_dir``; write frontier.csv/.md/.png to ``out_dir``."""
    rows = load_rows(sweep_dir)
    if not rows:
        raise FileNotFoundError(f"{sweep_dir}: no {RESULT_FILE} found (is it a sweep directory?)")
    out = Path(out_dir or sweep_dir)
    out.mkdir(parents=True, exist_ok=True)
    flat, splits = frontier_rows(rows)
    failed = [r for r in rows if r.get("status") != "ok"]
    paths = {"csv": out / "frontier.csv", "md": out / "frontier.md", "png": out / "frontier.png"}
    columns = list(flat[0]) if flat else ["run_id"]
    with paths["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*columns, "status", "error"],
                                extrasaction="ignore")
        writer.writeheader()
        for item in flat:
            writer.writerow({**item, "status": "ok", "error": ""})
        for r in failed:
            writer.writerow({"run_id": r.get("run_id"), "quantizer": r.get("quantizer"),
                             "status": "failed", "error": r.get("error", "")})
    paths["md"].write_text(to_markdown(flat, splits, failed) + "\n")
    paths["json"] = out / "frontier.json"
    paths["json"].write_text(json.dumps({
        "splits": splits, "alpha": ALPHA, "relative_margin": RELATIVE_MARGIN,
        "note": VERDICT_NOTE, "points": flat, "failed": failed,
        "headline": {k: headline(flat, k) for k in ("lossless", "within3")}}, indent=1) + "\n")
    plot(flat, splits, paths["png"])
    for key, path in group_plots(flat, splits, out).items():
        paths[f"png_{key}"] = path
    return paths


WANDB_COLUMNS = ("quantizer", "experiment", "trainings", "bits", "symmetric", "granularity",
                 "group", "clip", "size_mb", "bits_per_weight", "lossless", "within3")
WANDB_SPLIT_COLUMNS = ("wer", "wer_low", "wer_high", "delta", "delta_low", "delta_high",
                       "prob_worse", "p", "test", "p_holm", "lossless", "lossless_raw",
                       "within3")


def log_frontier_to_wandb(paths: dict[str, Path], mode: str = "offline",
                          project: str = "lowbit-asr", name: str | None = None) -> Path | None:
    """One W&B run (job_type ``frontier``) beside the frontier files: the table with CIs and
    verdicts (``frontier/table``), the plot, and one scatter with error bars per bit-width ×
    granularity (``frontier/<bits>_<granularity>``). Returns the run's folder."""
    if mode == "disabled":
        return None
    import wandb

    data = json.loads(paths["json"].read_text())
    splits = data["splits"]
    columns = [*WANDB_COLUMNS, *[f"{c}_{s}" for s in splits for c in WANDB_SPLIT_COLUMNS]]
    rows = [[_wandb_cell(p.get(c)) for c in columns] for p in data["points"]]
    for j in range(len(columns)):  # W&B tables want one type per column (bits: 4 or "mixed")
        if len({type(r[j]) for r in rows if r[j] is not None}) > 1:
            for r in rows:
                r[j] = None if r[j] is None else str(r[j])
    run = wandb.init(project=project, mode=mode, job_type="frontier",
                     name=name or f"frontier-{paths['json'].parent.name}",
                     dir=str(paths["json"].parent), reinit="finish_previous")
    try:
        run.log({"frontier/table": wandb.Table(columns=columns, data=rows),
                 "frontier/plot": wandb.Image(str(paths["png"]))})
        for key, path in paths.items():
            if key.startswith("png_"):
                run.log({f"frontier/{key.removeprefix('png_')}": wandb.Image(str(path))})
        for key in ("lossless", "within3"):
            h = data["headline"].get(key) or {}
            if h.get("ratio") is not None:
                run.summary[f"headline/{key}_size_ratio"] = h["ratio"]
        return Path(run.dir).parent
    finally:
        run.finish()


def _wandb_cell(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
