"""Pareto front and frontier files from result rows (synthetic rows: no training needed)."""

from __future__ import annotations

import csv
import json
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


def _evaluated_sweep(root, drop_every):
    """A float reference (experiment grid) and quantized points whose hypotheses drop every
    n-th utterance's last word (0: identical to the reference), each with its per-utterance
    evaluation, as a training run writes them."""
    import random

    from lowbit_asr.train.scoring import score_utterance, write_evaluation

    rng = random.Random(0)
    words = "the cat sat on a mat and then it ran far away from home".split()
    refs = {f"{1000 + i // 4}-{2000 + i // 4}-{i % 4:04d}":
            " ".join(rng.choice(words) for _ in range(rng.randint(8, 16))) for i in range(240)}
    # Errors every system shares (about one word in five substituted), as a real model makes.
    base = {uid: [w if rng.random() > 0.2 else "x" for w in ref.split()]
            for uid, ref in refs.items()}
    for name, (quantizer, bits, size, bpw, every) in drop_every.items():
        run = root / name
        splits = {}
        for split in ("test-clean", "test-other"):
            scores = []
            for k, (uid, ref) in enumerate(sorted(refs.items())):
                hyp = base[uid][:-1] if every and k % every == 0 else base[uid]
                if split == "test-other" and k % 3 == 0:  # some errors everyone shares
                    hyp = hyp[1:]
                scores.append(score_utterance(uid, ref, " ".join(hyp), nll=1.0, ref_tokens=5))
            splits[split] = scores
        summary = write_evaluation(run / "eval", splits, {"model": name})
        row = {"status": "ok", "run_id": name, "experiment": "grid", "quantizer": quantizer,
               "quant_bits": bits, "quant_symmetric": False,
               "quant_granularity": "float" if bits == 32 else "per_channel",
               "quant_group": "", "quant_clip": "none", "size_bytes": int(size * 1e6),
               "size_mb": size, "bits_per_quantized_weight": bpw,
               "wer": {s: summary["splits"][s]["wer"] for s in splits},
               "wer_ci": {s: summary["splits"][s]["wer_ci"] for s in splits},
               "evaluation": "eval/evaluation.json", "commit": "abc", "command": "x"}
        (run / "results.json").write_text(json.dumps(row))
    return root


def test_lossless_verdicts_and_headline_come_from_the_paired_tests(tmp_path):
    sweep = _evaluated_sweep(tmp_path / "sweep", {
        "ref": ("none", 32, 16.0, 32.0, 0),
        "int4": ("int4_asym", 4, 2.2, 4.1, 0),  # identical to the reference: lossless
        "int2": ("int2_asym", 2, 1.2, 2.1, 120),  # 2 dropped words in 240 utterances: lossless
        "int2_bad": ("int2_sym", 2, 1.1, 2.1, 2),  # every second utterance loses a word
    })
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
