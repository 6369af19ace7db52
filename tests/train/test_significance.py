"""Confidence intervals and paired tests of WER (synthetic scores: no model, no audio)."""

from __future__ import annotations

import json
import math
import random
import sys

import numpy as np
import pytest

from lowbit_asr import cli
from lowbit_asr.commands import compare as compare_command
from lowbit_asr.train.scoring import UtteranceScore, score_utterance, write_evaluation
from lowbit_asr.train.significance import (
    block_labels,
    compare_recipes_split,
    compare_split,
    holm,
    mapsswe,
    non_inferior,
    paired_bootstrap,
    ratio_ci,
    segment_errors,
    split_metrics,
    two_level_bootstrap,
)

VOCAB = [f"w{i}" for i in range(500)]


def make_refs(n: int = 200, speakers: int = 40, seed: int = 0) -> tuple[list[str], list[str]]:
    """LibriSpeech-style ids (``speakers`` speakers) and references of 8-15 distinct words."""
    rng = random.Random(seed)
    ids = [f"{100 + i % speakers}-{7 + i % 3}-{i:04d}" for i in range(n)]
    return ids, [" ".join(rng.sample(VOCAB, rng.randint(8, 15))) for _ in ids]


def near_perfect(refs: list[str]) -> list[str]:
    """One substitution in every tenth utterance."""
    return [r if i % 10 else "oops " + " ".join(r.split()[1:]) for i, r in enumerate(refs)]


def score(ids: list[str], refs: list[str], hyps: list[str]) -> list[UtteranceScore]:
    return [score_utterance(i, r, h) for i, r, h in zip(ids, refs, hyps, strict=True)]


def test_identical_systems_no_difference():
    ids, refs = make_refs()
    hyps = near_perfect(refs)
    out = compare_split("test-clean", score(ids, refs, hyps), score(ids, refs, hyps))
    assert out["delta"] == 0.0 and out["delta_ci"] == [0.0, 0.0]
    assert out["prob_b_worse"] == 0.0
    assert out["mapsswe_p"] == 1.0
    assert out["verdict"] == "no significant difference"
    assert out["blocks"] == "speaker" and out["utterances"] == 200
    test = mapsswe(refs, hyps, hyps)
    assert test.z == 0.0 and test.p_value == 1.0 and test.segments == 20


def test_large_difference_is_significant_tiny_one_is_not():
    ids, refs = make_refs()
    a = score(ids, refs, near_perfect(refs))
    # B drops the last three words of every other utterance.
    dropped = [" ".join(r.split()[:-3]) if i % 2 else h
               for i, (r, h) in enumerate(zip(refs, near_perfect(refs), strict=True))]
    big = compare_split("test-clean", a, score(ids, refs, dropped))
    assert big["verdict"] == "B worse"
    assert big["mapsswe_p"] < 0.01 and big["delta_ci"][0] > 0 and big["prob_b_worse"] == 1.0
    assert big["wer_b"] > big["wer_a"] and math.isclose(big["delta"],
                                                         big["wer_b"] - big["wer_a"])
    reverse = compare_split("test-clean", score(ids, refs, dropped), a)
    assert reverse["verdict"] == "B better" and reverse["delta_ci"][1] < 0

    # One extra error in one utterance of 200.
    tiny = near_perfect(refs)
    tiny[5] = "extra " + tiny[5]
    small = compare_split("test-clean", a, score(ids, refs, tiny))
    assert small["verdict"] == "no significant difference"
    assert small["mapsswe_p"] > 0.1
    assert small["delta_ci"][0] <= 0.0 <= small["delta_ci"][1]
    assert 0.0 < small["delta"] < 0.001


def test_mapsswe_segments_and_insertions():
    # Bounded by runs of >= 2 words both got right; an insertion belongs to its own stretch.
    correct_a = np.array([True, True, True, True, True, True])
    correct_b = np.array([True, False, True, True, False, True])
    none = np.zeros(7, dtype=np.int64)
    assert segment_errors(correct_a, none, correct_b, none) == [(0, 1), (0, 1)]
    inserted = none.copy()
    inserted[3] = 1  # between words 2 and 3: splits the good run [2, 3] into two runs of 1
    assert segment_errors(correct_a, none, correct_b, inserted) == [(0, 3)]
    inserted = none.copy()
    inserted[6] = 2  # after the last word: joins the last stretch
    assert segment_errors(correct_a, none, correct_b, inserted) == [(0, 1), (0, 3)]
    # The same example through jiwer's alignments (checked against sc_stats -t mapsswe: 5
    # segments, mean -0.800 and Z -4.000 for A - B).
    refs = ["the cat sat on the mat", "a b c d e f g h", "one two three four five"]
    hyps_a = ["the cat sat on the mat", "a b c d e f g h", "one two tree four five"]
    hyps_b = ["the bat sat on mat", "a b x c d e f g h", "one two tree four five six"]
    test = mapsswe(refs, hyps_a, hyps_b)
    assert test.segments == 5 and math.isclose(test.mean_difference, 0.8)
    assert math.isclose(test.z, 4.0) and test.p_value < 1e-4
    # An empty hypothesis deletes everything.
    assert mapsswe(["a b c"], ["a b c"], [""]).segments == 1


def test_ratio_ci_covers_the_true_wer():
    rng = np.random.default_rng(0)
    true_wer, covered = 0.3, 0
    speakers = np.repeat(np.arange(60), 4)
    for draw in range(200):
        p = rng.beta(6, 14, size=60)  # speaker effects, mean 0.3
        words = rng.integers(10, 21, size=len(speakers))
        errors = rng.binomial(words, p[speakers])
        _, low, high = ratio_ci(errors, words, speakers, n_resamples=1000, seed=draw)
        covered += low <= true_wer <= high
    assert 0.90 <= covered / 200 <= 0.99


def test_speaker_blocks_widen_the_interval():
    rng = np.random.default_rng(1)
    speakers = np.repeat(np.arange(20), 10)
    p = np.where(np.arange(20) % 2 == 0, 0.05, 0.6)[speakers]  # strongly different speakers
    words = rng.integers(10, 21, size=len(speakers))
    errors = rng.binomial(words, p)
    est, lo_u, hi_u = ratio_ci(errors, words)
    est_s, lo_s, hi_s = ratio_ci(errors, words, speakers)
    assert est == est_s and lo_s < est < hi_s
    assert hi_s - lo_s > 1.5 * (hi_u - lo_u)


def test_ratio_ci_degenerate_inputs():
    assert ratio_ci([2, 2, 2], [10, 10, 10]) == (0.2, 0.2, 0.2)
    assert ratio_ci([3], [10]) == (0.3, 0.3, 0.3)
    assert ratio_ci([1, 2, 3], [5, 5, 5], groups=["s", "s", "s"]) == (0.4, 0.4, 0.4)
    assert all(math.isnan(x) for x in ratio_ci([math.nan, 1.0], [3, 4]))
    assert all(math.isnan(x) for x in ratio_ci([], []))
    est, low, high = ratio_ci([0] * 50 + [1], [10] * 51)  # BCa undefined-ish: still finite
    assert low <= est <= high and math.isfinite(low) and math.isfinite(high)
    boot = paired_bootstrap([1], [3], [10])
    assert (boot.delta, boot.low, boot.high, boot.prob_b_worse) == (0.2, 0.2, 0.2, 1.0)


def test_split_metrics_blocks_and_json():
    ids, refs = make_refs(n=40, speakers=10)
    scores = [score_utterance(i, r, h, nll=2.0, ref_tokens=4)
              for i, r, h in zip(ids, refs, near_perfect(refs), strict=True)]
    metrics = split_metrics(scores)
    assert metrics["blocks"] == "speaker" and metrics["speakers"] == 10
    assert metrics["utterances"] == 40 and metrics["errors"] == 4
    assert math.isclose(metrics["wer"], 4 / metrics["words"])
    assert metrics["wer_ci"][0] <= metrics["wer"] <= metrics["wer_ci"][1]
    assert metrics["cer_ci"][0] <= metrics["cer"] <= metrics["cer_ci"][1]
    assert metrics["nll_per_token"] == 0.5 and metrics["nll_ci"] == [0.5, 0.5]
    json.loads(json.dumps(metrics))
    # One utterance per speaker: utterance blocks; NLL not computed: NaN.
    single = [score_utterance(f"{k}-0-0000", "a b c", "a b") for k in range(5)]
    metrics = split_metrics(single)
    assert metrics["blocks"] == "utterance" and math.isnan(metrics["nll_per_token"])
    assert block_labels(single) == (None, "utterance")
    assert isinstance(json.loads(json.dumps(metrics))["nll_ci"][0], float)


def test_compare_split_refuses_mismatches():
    ids, refs = make_refs(n=20, speakers=5)
    a = score(ids, refs, refs)
    with pytest.raises(ValueError, match=r"split test-other: .*only in A \(e\.g\. 104-8-0004"):
        compare_split("test-other", a, [s for s in a if s.id != "104-8-0004"])
    changed = list(refs)
    changed[3] = "different words here"
    with pytest.raises(ValueError, match=r"split dev-clean: 1 references differ .*103-7-0003"):
        compare_split("dev-clean", a, score(ids, changed, changed))


def test_holm_and_non_inferiority():
    # sorted: .01*4 = .04, .03*3 = .09, .04*2 = .08 -> .09 (monotone), .5*1 = .5
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([0.5, 0.9]) == [1.0, 1.0]
    assert holm([]) == []
    assert non_inferior(0.002, 0.10) and not non_inferior(0.004, 0.10)


def test_compare_cli(tmp_path, monkeypatch, capsys):
    ids, refs = make_refs()
    a = score(ids, refs, near_perfect(refs))
    dropped = [" ".join(r.split()[:-3]) if i % 2 else h
               for i, (r, h) in enumerate(zip(refs, near_perfect(refs), strict=True))]
    write_evaluation(tmp_path / "a", {"test-clean": a, "dev-clean": a[:50]}, {"model": "a"})
    write_evaluation(tmp_path / "b", {"test-clean": score(ids, refs, dropped),
                                      "test-other": a[:10]}, {"model": "b"})
    out_json = tmp_path / "cmp.json"
    monkeypatch.setattr(sys, "argv", ["lowbit-asr"])
    cli.main(["compare", str(tmp_path / "a"), str(tmp_path / "b" / "evaluation.json"),
              "--json", str(out_json)])
    out = capsys.readouterr().out
    assert "| split | utterances | WER A % | WER B % | ΔWER (points) [95% CI] |" in out
    row = next(line for line in out.splitlines() if line.startswith("| test-clean |"))
    assert "| 200 |" in row and row.endswith("| B worse |")
    assert "skipped: dev-clean (only in A)" in out and "skipped: test-other (only in B)" in out
    saved = json.loads(out_json.read_text())
    assert saved["splits"]["test-clean"]["verdict"] == "B worse"
    assert saved["skipped"] == {"dev-clean": "only in A", "test-other": "only in B"}

    changed = list(refs)
    changed[7] = "another reference"
    write_evaluation(tmp_path / "c", {"test-clean": score(ids, changed, changed)}, {})
    status = compare_command.main([str(tmp_path / "a"), str(tmp_path / "c")])
    assert status == 1
    err = capsys.readouterr().err
    assert "split test-clean" in err and ids[7] in err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["compare", str(tmp_path / "a"), str(tmp_path / "c")])
    assert exit_info.value.code == 1
    assert compare_command.main([str(tmp_path / "a"), str(tmp_path / "nowhere")]) == 1


# ---- recipes: several trainings per side ------------------------------------------------------


def substituted(refs: list[str], rate: float, seed: int) -> list[str]:
    """Each reference word replaced by a wrong one with probability ``rate`` (one training)."""
    rng = random.Random(seed)
    return [" ".join("oops" if rng.random() < rate else w for w in r.split()) for r in refs]


def trainings(ids, refs, rates, seed):
    return [score(ids, refs, substituted(refs, rate, seed * 100 + k))
            for k, rate in enumerate(rates)]


def test_seed_spread_is_not_a_recipe_effect():
    # One recipe trained six times: word error rates 20-24% (the spread of seeds). Split into
    # two "recipes" of three, the per-model test calls two of its trainings different, the
    # recipe test does not.
    ids, refs = make_refs(300, speakers=60)
    runs = trainings(ids, refs, [0.20, 0.235, 0.215, 0.24, 0.205, 0.225], seed=1)
    single = compare_split("test-clean", runs[0], runs[3])
    assert single["verdict"] == "B worse"  # 20% vs 24%: two models, and they do differ
    out = compare_recipes_split("test-clean", runs[:3], runs[3:])
    assert out["verdict"] == "no significant difference"
    assert out["p"] > 0.05 and out["trainings_a"] == out["trainings_b"] == 3
    assert out["delta_ci"][0] < 0 < out["delta_ci"][1]
    means = [np.mean([sum(s.word_errors for s in r) for r in side]) / out["words"]
             for side in (runs[:3], runs[3:])]
    assert out["wer_a"] == pytest.approx(means[0]) and out["wer_b"] == pytest.approx(means[1])
    assert out["delta"] == pytest.approx(means[1] - means[0])
    assert out["sd_a"] > 0 and len(out["wer_b_runs"]) == 3


def test_recipe_effect_beyond_the_seed_spread_is_found():
    ids, refs = make_refs(300, speakers=60)
    out = compare_recipes_split("test-clean", trainings(ids, refs, [0.20, 0.22, 0.21], 2),
                                trainings(ids, refs, [0.30, 0.31, 0.29], 3))
    assert out["verdict"] == "B worse" and out["p"] < 0.01 and out["welch_p"] < 0.01
    low, high = out["delta_ci"]
    assert 0.0 < low < 0.09 < high  # the true difference of the rates, ~9 points
    assert out["prob_b_worse"] == 1.0
    better = compare_recipes_split("test-clean", trainings(ids, refs, [0.30, 0.31, 0.29], 3),
                                   trainings(ids, refs, [0.20, 0.22, 0.21], 2))
    assert better["verdict"] == "B better" and better["delta"] == pytest.approx(-out["delta"])


def test_two_level_interval_holds_the_training_spread():
    ids, refs = make_refs(300, speakers=60)
    groups, _ = block_labels(score(ids, refs, refs))
    words = [len(r.split()) for r in refs]
    a = [[s.word_errors for s in run] for run in trainings(ids, refs, [0.2], 4)]
    b = [[s.word_errors for s in run] for run in trainings(ids, refs, [0.25], 5)]
    # Identical trainings within each recipe: only the speakers vary, as in the paired bootstrap.
    two = two_level_bootstrap(a * 3, b * 3, words, groups)
    one = paired_bootstrap(a[0], b[0], words, groups)
    assert two.delta == pytest.approx(one.delta)
    assert two.low == pytest.approx(one.low, abs=0.004)
    assert two.high == pytest.approx(one.high, abs=0.004)
    # Trainings that disagree widen it.
    spread_a = [[s.word_errors for s in run] for run in trainings(ids, refs, [0.14, 0.2, 0.26], 6)]
    wide = two_level_bootstrap(spread_a, b * 3, words, groups)
    assert wide.high - wide.low > 1.5 * (one.high - one.low)


def test_recipe_comparison_degenerate_and_mismatched_inputs():
    ids, refs = make_refs()
    run = score(ids, refs, near_perfect(refs))
    other = score(ids, refs, substituted(refs, 0.1, 7))
    # Trainings that agree exactly: Welch's t is undefined; the bootstrap is then the paired
    # speaker bootstrap of the two models.
    same = compare_recipes_split("dev", [run, run], [other, other])
    single = compare_split("dev", run, other)
    assert math.isnan(same["welch_p"]) and same["verdict"] == single["verdict"] == "B worse"
    assert same["delta_ci"] == pytest.approx(single["delta_ci"], abs=0.004)
    assert compare_recipes_split("dev", [run, run], [run, run])["p"] == 1.0
    with pytest.raises(ValueError, match="at least two trainings"):
        compare_recipes_split("dev", [run], [other, other])
    changed = list(refs)
    changed[3] = "another reference"
    with pytest.raises(ValueError, match=r"split dev: .* between A1 and B2"):
        compare_recipes_split("dev", [run, run], [other, score(ids, changed, changed)])
    with pytest.raises(ValueError, match="200 utterances in A1, 199 in A2"):
        compare_recipes_split("dev", [run, run[:-1]], [other, other])


def test_compare_cli_recipes(tmp_path, monkeypatch, capsys):
    ids, refs = make_refs(300, speakers=60)
    paths = {}
    for name, rate, seed in (("a1", 0.20, 1), ("a2", 0.22, 2), ("a3", 0.21, 3),
                             ("b1", 0.30, 4), ("b2", 0.31, 5), ("b3", 0.29, 6)):
        scores = score(ids, refs, substituted(refs, rate, seed))
        splits = {"test-clean": scores, "test-other": scores[:100]}
        if name == "b3":
            splits["dev-clean"] = scores[:50]
        write_evaluation(tmp_path / name, splits, {"model": name})
        paths[name] = str(tmp_path / name)
    monkeypatch.setattr(sys, "argv", ["lowbit-asr"])
    out_json = tmp_path / "recipes.json"
    cli.main(["compare", "--a", paths["a1"], paths["a2"], paths["a3"],
              "--b", paths["b1"], paths["b2"], paths["b3"], "--json", str(out_json)])
    out = capsys.readouterr().out
    assert "| split | utterances | trainings A / B | WER A % (mean ± SD) |" in out
    row = next(line for line in out.splitlines() if line.startswith("| test-clean |"))
    assert "| 300 | 3 / 3 |" in row and row.endswith("| B worse |")
    assert "Holm-adjusted two-level bootstrap p over the splits" in out
    assert "skipped: dev-clean (not in A1, A2, A3, B1, B2)" in out
    saved = json.loads(out_json.read_text())
    assert saved["mode"] == "recipes" and len(saved["a"]) == 3
    assert saved["splits"]["test-clean"]["verdict"] == "B worse"
    assert "p_holm" in saved["splits"]["test-other"]

    # One training per side is the two-model comparison, as with positional arguments.
    assert compare_command.main(["--a", paths["a1"], "--b", paths["b1"]]) == 0
    assert "MAPSSWE p" in capsys.readouterr().out
    for bad, message in (
            (["--a", paths["a1"], paths["a2"], "--b", paths["b1"]], "at least two trainings"),
            ([paths["a1"], "--b", paths["b1"], paths["b2"]], "not both"),
            (["--a", paths["a1"], paths["a2"]], "go together"),
            ([paths["a1"]], "give two evaluations")):
        with pytest.raises(SystemExit) as exit_info:
            compare_command.main(bad)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_recipe_bootstrap_holds_its_level_and_finds_a_three_point_effect():
    # Simulated trainings: utterances of shared difficulty, each training's error rate shifted
    # by seed noise (SD 0.8 points, as the float recipe's trainings spread). Same recipe on both
    # sides: rejections at alpha = 0.05 stay near or under 5%; B 3 points worse: found.
    rng = np.random.default_rng(1)
    n_utt = 300
    speakers = [str(u // 6) for u in range(n_utt)]
    words = rng.integers(8, 20, n_utt)
    difficulty = rng.beta(2, 2, n_utt)

    def training(rate):
        p = np.clip(2 * rate * difficulty + rng.normal(0, 0.008), 0, 1)
        return rng.binomial(words, p)

    def rejections(shift, reps=60):
        return np.mean([two_level_bootstrap(
            [training(0.29) for _ in range(3)], [training(0.29 + shift) for _ in range(3)],
            words, speakers, n_resamples=1000, seed=k).p_value < 0.05 for k in range(reps)])

    assert rejections(0.0) <= 0.1
    assert rejections(0.03) >= 0.9
