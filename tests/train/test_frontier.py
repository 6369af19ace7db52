"""Pareto front and frontier files from result rows (synthetic rows: no training needed)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

from lowbit_asr.train.frontier import frontier_rows, load_rows, pareto_front, write_frontier


def test_pareto_front():
    points = [(10.0, 0.10), (5.0, 0.12), (5.0, 0.11), (2.0, 0.30), (3.0, 0.35), (12.0, 0.10)]
    # (5, .12) is beaten by (5, .11); (3, .35) by (2, .30); (12, .10) ties (10, .10) at more size.
    assert pareto_front(points) == [3, 2, 0]
    assert pareto_front([]) == []


def test_frontier_rows_flags_and_relative_numbers(make_sweep, tmp_path):
    flat, splits = frontier_rows(load_rows(make_sweep(tmp_path)))
    assert splits == ["test-clean", "test-other"]
    by_name = {item["quantizer"]: item for item in flat}
    assert by_name["int4_asym"]["rel_size_vs_int4"] == 1.0
    assert abs(by_name["int2_asym"]["rel_size_vs_int4"] - 1.2 / 2.2) < 1e-9
    assert abs(by_name["int2_asym"]["rel_wer_test-clean"] - 2.0) < 1e-9
    front = {item["quantizer"] for item in flat if item["front_test-clean"]}
    # int2_asym beats int2_sym at the same size; int2_asym_g16 is bigger and worse than int4.
    assert front == {"int2_asym", "int4_asym", "int8_sym"}
    assert [item["size_mb"] for item in flat] == sorted(item["size_mb"] for item in flat)


def test_write_frontier_lists_failures_and_plots(make_sweep, tmp_path):
    paths = write_frontier(make_sweep(tmp_path / "sweep"), tmp_path / "out")
    rows = list(csv.DictReader(paths["csv"].open()))
    assert [r["status"] for r in rows].count("failed") == 2
    assert {r["run_id"] for r in rows} >= {"6", "7"}
    md = paths["md"].read_text()
    assert "Failed runs (2)" in md and "group_size=7" in md
    assert "7/results.json" in md  # the unreadable row names its file
    assert "| **int4_asym** | 4 | asym |" in md
    assert paths["png"].stat().st_size > 10_000


def test_frontier_command_logs_offline(make_sweep, tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    proc = subprocess.run([sys.executable, "-m", "lowbit_asr.cli", "frontier", str(sweep),
                           "--wandb", "offline"], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wrote" in proc.stdout and (sweep / "frontier.png").is_file()
    assert list((sweep / "wandb").glob("offline-run-*"))


def test_lossless_verdicts_and_headline_come_from_the_paired_tests(
        tmp_path, make_evaluated_sweep):
    sweep = make_evaluated_sweep(tmp_path / "sweep")
    flat, splits = frontier_rows(load_rows(sweep))
    by = {i["quantizer"]: i for i in flat}
    assert by["none"]["reference"] and by["none"]["lossless"] is True
    assert by["int4_asym"]["delta_test-clean"] == 0 and by["int4_asym"]["p_test-clean"] == 1.0
    assert by["int4_asym"]["lossless"] is True and by["int4_asym"]["within3"] is True
    assert by["int2_asym"]["lossless"] is True
    bad = by["int2_sym"]
    assert bad["delta_test-clean"] > 0 and bad["p_test-clean"] < 0.001
    assert bad["p_holm_test-clean"] >= bad["p_test-clean"]
    assert bad["lossless_test-clean"] is False and bad["lossless"] is False
    assert bad["wer_low_test-clean"] <= bad["wer_test-clean"] <= bad["wer_high_test-clean"]
    paths = write_frontier(sweep)
    md = paths["md"].read_text()
    # int2_asym (1.2 MB, 2.1 bits) is the smallest lossless point under 3 bits; int4 the 3-5.
    assert f"**{1.2 / 2.2:.2f}×**" in md and "`int2_asym`" in md and "Holm" in md
    data = json.loads(paths["json"].read_text())
    assert data["headline"]["lossless"]["low"] == "int2_asym"
    assert abs(data["headline"]["lossless"]["ratio"] - 1.2 / 2.2) < 1e-3
    assert paths["png_2_per_channel"].is_file()


def test_a_row_without_wers_is_listed_as_failed(make_sweep, tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    (sweep / "8").mkdir()
    (sweep / "8" / "results.json").write_text(json.dumps(
        {"status": "ok", "run_id": "8", "quantizer": "int4_sym", "size_bytes": 1}))
    rows = {r["run_id"]: r for r in load_rows(sweep)}
    assert rows["8"]["status"] == "failed" and "no WERs" in rows["8"]["error"]
    assert "8/results.json" in rows["8"]["error"]
    flat, _ = frontier_rows(list(rows.values()))
    assert "int4_sym" not in {i["quantizer"] for i in flat}


def test_post_training_rows_are_their_own_family_and_never_the_reference(
        tmp_path, make_evaluated_sweep):
    sweep = make_evaluated_sweep(tmp_path / "sweep")
    before = {i["run_id"]: i for i in frontier_rows(load_rows(sweep))[0]}
    # PTQ rows as `lowbit-asr ptq` writes them: a bad 2-bit one and a float one with the
    # reference's own hypotheses (it would tie for the reference if PTQ rows could be one).
    for src, name in (("int2_bad", "ptq_int2"), ("ref", "ptq_none")):
        shutil.copytree(sweep / src, sweep / "ptq" / name)
        path = sweep / "ptq" / name / "results.json"
        row = json.loads(path.read_text())
        row.update(run_id=name, experiment="ptq", method="ptq", steps=0)
        path.write_text(json.dumps(row))
    flat, _ = frontier_rows(load_rows(sweep))
    by = {i["run_id"]: i for i in flat}
    assert by["ref"]["reference"] and not by["ptq_none"]["reference"]
    assert by["ptq_int2"]["method"] == "ptq" and by["int2_bad"]["method"] == "qat"
    assert by["ref"]["method"] == "float"
    for run_id, item in before.items():  # the trained points' verdicts do not move
        for key in ("p_holm_test-clean", "p_holm_test-other", "lossless"):
            assert by[run_id][key] == item[key], (run_id, key)
    assert by["ptq_int2"]["lossless"] is False
    paths = write_frontier(sweep)
    assert "int2_sym (ptq)" in paths["md"].read_text()


def test_a_post_training_row_is_tested_against_the_checkpoint_it_quantized(
        tmp_path, make_evaluated_sweep):
    sweep = make_evaluated_sweep(tmp_path / "sweep")
    # A float baseline (another experiment, so not the reference) that is worse than the
    # fine-tuned reference: the hypotheses of int2_bad. Its PTQ twin has the same hypotheses.
    shutil.copytree(sweep / "int2_bad", sweep / "float")
    path = sweep / "float" / "results.json"
    row = json.loads(path.read_text())
    row.update(run_id="float", experiment="float_mini", quantizer="none", quant_bits=32,
               best_checkpoint=str(sweep / "float" / "best.ckpt"))
    path.write_text(json.dumps(row))
    for name, source in (("ptq_from_float", sweep / "float" / "best.ckpt"),
                         ("ptq_elsewhere", tmp_path / "other.ckpt")):
        shutil.copytree(sweep / "int2_bad", sweep / "ptq" / name)
        path = sweep / "ptq" / name / "results.json"
        row = json.loads(path.read_text())
        row.update(run_id=name, experiment="ptq", method="ptq", steps=0,
                   source_checkpoint=str(source))
        path.write_text(json.dumps(row))
    by = {i["run_id"]: i for i in frontier_rows(load_rows(sweep))[0]}
    assert by["ref"]["reference"] and not by["float"]["reference"]
    assert by["float"]["against"] == "ref" and by["float"]["lossless"] is False
    # Same hypotheses as its source: no difference, lossless against it ...
    assert by["ptq_from_float"]["against"] == "float"
    assert by["ptq_from_float"]["delta_test-clean"] == 0
    assert by["ptq_from_float"]["lossless"] is True
    # ... while a PTQ row whose source is not in the table falls back to the reference.
    assert by["ptq_elsewhere"]["against"] == "ref"
    assert by["ptq_elsewhere"]["lossless"] is False
    assert by["ref"]["against"] is None


def test_a_post_training_point_far_over_100_percent_does_not_set_the_wer_axis():
    from lowbit_asr.train.frontier import _y_cap

    def point(wer, high, method):
        return {"wer_x": wer, "wer_high_x": high, "method": method}

    trained = [point(0.6, 0.65, "qat"), point(0.8, 0.83, "qat")]
    assert _y_cap([*trained, point(1.79, 1.84, "ptq")], "x") == 100.0
    # A trained point's CI above 100% is shown whole.
    assert abs(_y_cap([*trained, point(1.05, 1.1, "qat")], "x") - 110.0) < 1e-9


def _seeded_sweep(root, points):
    """Rows of trainings: run folder -> (quantizer, bits, size MB, seed, word error rate); one
    ``recipe`` fingerprint per quantizer, as ``lowbit-asr train`` writes them."""
    import random

    from lowbit_asr.train.scoring import score_utterance, write_evaluation

    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(300)]
    refs = {f"{100 + i // 5}-7-{i:04d}": " ".join(rng.sample(vocab, rng.randint(8, 14)))
            for i in range(300)}
    for name, (quantizer, bits, size, seed, rate) in points.items():
        draw = random.Random(f"{name}")
        scores = [score_utterance(uid, ref, " ".join(
            "oops" if draw.random() < rate else w for w in ref.split()), nll=1.0, ref_tokens=5)
            for uid, ref in sorted(refs.items())]
        summary = write_evaluation(root / name / "eval", {"test-clean": scores}, {})
        row = {"status": "ok", "run_id": name, "experiment": "grid", "quantizer": quantizer,
               "quant_bits": bits, "quant_symmetric": False,
               "quant_granularity": "float" if bits == 32 else "per_channel",
               "quant_group": "", "quant_clip": "none", "size_bytes": int(size * 1e6),
               "size_mb": size, "bits_per_quantized_weight": float(bits),
               "wer": {"test-clean": summary["splits"]["test-clean"]["wer"]},
               "wer_ci": {"test-clean": summary["splits"]["test-clean"]["wer_ci"]},
               "evaluation": "eval/evaluation.json", "commit": "abc", "command": "x",
               "seed": seed, "recipe": f"recipe-of-{quantizer}"}
        (root / name / "results.json").write_text(json.dumps(row))
    return root


def test_trainings_of_one_recipe_are_one_point_tested_over_its_seeds(tmp_path):
    # The float reference and two 2-bit recipes, three seeds each (error rates spread by seed
    # as real trainings are), and a 4-bit point trained once.
    points = {
        "none": ("none", 32, 16.0, 0, 0.20), "none.seed1": ("none", 32, 16.0, 1, 0.23),
        "none.seed2": ("none", 32, 16.0, 2, 0.21),
        "int2_asym": ("int2_asym", 2, 1.2, 0, 0.235), "int2_asym.seed1": (
            "int2_asym", 2, 1.2, 1, 0.20), "int2_asym.seed2": ("int2_asym", 2, 1.2, 2, 0.225),
        "int2_sym": ("int2_sym", 2, 1.2, 0, 0.33), "int2_sym.seed1": ("int2_sym", 2, 1.2, 1, 0.35),
        "int2_sym.seed2": ("int2_sym", 2, 1.2, 2, 0.34),
        "int4_asym": ("int4_asym", 4, 2.2, 0, 0.205),
    }
    sweep = _seeded_sweep(tmp_path / "sweep", points)
    rows = load_rows(sweep)
    flat, _ = frontier_rows(rows)
    by = {i["quantizer"]: i for i in flat}
    assert len(flat) == 4 and by["none"]["reference"]
    assert by["int2_asym"]["trainings"] == 3 and by["int2_asym"]["seeds"] == [0, 1, 2]
    wers = [r["wer"]["test-clean"] for r in rows if r["quantizer"] == "int2_asym"]
    item = by["int2_asym"]
    assert abs(item["wer_test-clean"] - sum(wers) / 3) < 1e-12
    assert item["wer_low_test-clean"] < item["wer_test-clean"] < item["wer_high_test-clean"]
    # Seed 0 of int2_asym alone is significantly worse than seed 0 of the reference (23.5 vs
    # 20%); the recipe is not, over its three trainings.
    from lowbit_asr.train.scoring import load_evaluation
    from lowbit_asr.train.significance import compare_split

    alone = compare_split("test-clean", load_evaluation(sweep / "none")[1]["test-clean"],
                          load_evaluation(sweep / "int2_asym")[1]["test-clean"])
    assert alone["verdict"] == "B worse"
    assert item["test_test-clean"] == "seeds" and item["lossless"] is True
    bad = by["int2_sym"]
    assert bad["test_test-clean"] == "seeds" and bad["lossless"] is False
    assert bad["p_test-clean"] < 0.01 and bad["delta_test-clean"] > 0.1
    # Trained once: the per-model test, against the reference's training with its seed.
    once = by["int4_asym"]
    assert once["trainings"] == 1 and once["test_test-clean"] == "MAPSSWE"
    assert once["against"] == "none"
    md = write_frontier(sweep)["md"].read_text()
    assert "int2_asym ×3" in md and ") seeds |" in md and "×n: n seeds" in md
