"""`lowbit-asr reproduce` end to end on the tiny corpus: float -> grid -> packed files -> PTQ
points -> an allocated point -> frontier -> RESULTS.md section, and a rerun that skips every
finished stage."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

from test_train_e2e import SMALL_MODEL

from lowbit_asr.train.scoring import load_evaluation

LOWBIT_ASR = str(Path(sys.executable).parent / "lowbit-asr")


def test_reproduce_runs_every_stage_then_skips_them(tiny_corpus, tmp_path):
    out, results_md = tmp_path / "repro", tmp_path / "RESULTS.md"
    results_md.write_text("# Results\n\nkept text\n")
    extra = [*SMALL_MODEL, f"dataset.cache_dir={tmp_path / 'cache'}",
             "dataset.tokenizer.units=char", "dataset.num_workers=0", "logger=csv",
             "trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.max_time=null",
             "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false"]
    command = [LOWBIT_ASR, "reproduce", "--dataset", "embedded_tiny",
               "--data-root", str(tiny_corpus.root), "--out", str(out),
               "--results-md", str(results_md), "--grid", "int4_asym", "int2_asym",
               "--packed-eval", "int2_asym", "--allocate", "int4_asym",
               "--allocate-extra", "probe_utterances=4", "--extra", *extra]
    first = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    every = list(csv.DictReader((out / "frontier.csv").open()))
    rows = {r["quantizer"]: r for r in every if r["method"] != "ptq"}
    assert set(rows) == {"none", "int4_asym", "int2_asym", "alloc_int4_asym"}
    assert all(r["status"] == "ok" for r in every)
    # A post-training point per grid config (none and float excluded), never trained.
    ptq = {r["quantizer"]: r for r in every if r["method"] == "ptq"}
    assert set(ptq) == {"int4_asym", "int2_asym"}
    assert all(r["size_bytes"] == rows[q]["size_bytes"] for q, r in ptq.items())
    assert json.loads((out / "ptq" / "int2_asym" / "results.json").read_text())["steps"] == 0
    # The allocated point fits the size of int4_asym and was trained like a grid point.
    allocation = json.loads(
        (out / "alloc_policies" / "alloc_int4_asym" / "allocation.json").read_text())
    assert int(rows["alloc_int4_asym"]["size_bytes"]) == allocation["predicted_bytes"]
    assert allocation["predicted_bytes"] <= int(rows["int4_asym"]["size_bytes"])
    assert (out / "alloc" / "alloc_int4_asym" / "model.lbq").is_file()
    # Each grid point was packed; the file is the accounted size plus a small header.
    for name in ("int4_asym", "int2_asym"):
        packed = json.loads((out / "grid" / name / "packed.json").read_text())
        row = json.loads((out / "grid" / name / "results.json").read_text())
        assert packed["accounted_bytes"] == row["size_bytes"]
        assert 1.0 <= packed["ratio"] and packed["file_bytes"] - row["size_bytes"] <= 64 * 1024
        assert (out / "grid" / name / "model.lbq").stat().st_size == packed["file_bytes"]
    # Only the asked point was evaluated from its packed file, with the fake-quant WER.
    assert "packed_wer" not in json.loads((out / "grid/int4_asym/packed.json").read_text())
    packed = json.loads((out / "grid" / "int2_asym" / "packed.json").read_text())
    assert packed["wer_equal"] is True
    logged = json.loads((out / "grid" / "int2_asym" / "results.json").read_text())["wer"]
    assert packed["packed_wer"].keys() == packed["fake_quant_wer"].keys() == logged.keys()
    # The packed file against its fake-quant run's own test stage, utterance by utterance.
    assert packed["hypotheses_differ"] == {"test-clean": 0, "test-other": 0}
    _, from_file = load_evaluation(out / "grid/int2_asym/packed_eval")
    _, stage = load_evaluation(out / "grid/int2_asym")
    assert {s: [u.hypothesis for u in v] for s, v in from_file.items()} == {
        s: [u.hypothesis for u in v] for s, v in stage.items()}
    # Every point kept its trn files and per-utterance table.
    for point in ("float", "grid/int4_asym", "grid/int2_asym"):
        for split in ("test-clean", "test-other"):
            folder = out / point / "eval" / split
            assert {p.name for p in folder.iterdir()} == {"ref.trn", "hyp.trn", "utterances.tsv"}
    # W&B for real: the offline frontier run on disk holds the table with CIs and verdicts.
    tables = list((out / "wandb").glob("offline-run-*/files/media/table/frontier/table_*.json"))
    assert tables, sorted(str(p) for p in (out / "wandb").rglob("*"))[:40]
    table = json.loads(tables[0].read_text())
    assert {"wer_low_test-clean", "p_holm_test-clean", "lossless_test-clean"} <= set(
        table["columns"])
    assert len(table["data"]) == 6  # float, int4_asym, int2_asym, their PTQ points, allocated
    assert list((out / "wandb").glob("offline-run-*/files/media/images/frontier/*.png"))
    text = results_md.read_text()
    assert text.startswith("# Results\n\nkept text\n")
    assert "## `make reproduce` on embedded_tiny" in text and "| `int2_asym` |" in text
    assert "file / accounted" in text and (out / "frontier.png").is_file()
    assert "Paired tests of the paper's claims" in text and "Headline (lossless" in text
    assert "![size vs WER](results/frontier_embedded_tiny.png)" in text
    assert "QAT against post-training quantization" in text and "QAT is" in text
    assert "| `alloc_int4_asym` |" in text and "`int4_asym` (" in text
    assert (tmp_path / "results" / "frontier_embedded_tiny.png").is_file()

    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "float baseline — done before, skipped" in again.stdout
    # float, both grid points, both PTQ points, the allocated point
    assert again.stdout.count("done before, skipped") == 6, again.stdout
    assert results_md.read_text().count("## `make reproduce` on embedded_tiny") == 1

    # --seeds 2: a second training of each point beside the first (which is kept), the float
    # fine-tune among them; the frontier makes one point of a point's trainings.
    seeded = [*command[:command.index("--grid")], "--grid", "none", "int2_asym", "--no-ptq",
              "--allocate", "--seeds", "2", "--extra", *extra]
    third = subprocess.run(seeded, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert "grid 2/2 int2_asym seed 0 — done before, skipped" in third.stdout
    first_row = json.loads((out / "grid" / "int2_asym" / "results.json").read_text())
    second_row = json.loads((out / "grid" / "int2_asym.seed1" / "results.json").read_text())
    assert (first_row["seed"], second_row["seed"]) == (0, 1) and "seed=1" in second_row["command"]
    assert first_row["recipe"] == second_row["recipe"]
    assert not (out / "grid" / "int2_asym.seed1" / "packed.json").exists()
    every = {r["quantizer"]: r for r in csv.DictReader((out / "frontier.csv").open())
             if r["method"] != "ptq"}
    assert every["int2_asym"]["trainings"] == "2" and every["int4_asym"]["trainings"] == "1"
    assert every["none"]["trainings"] == "2"  # the float fine-tune, now the reference
    text = results_md.read_text()
    assert "| **int2_asym (qat_mini) ×2** |" in text and "SEEDS=2" in text
    assert "`none (qat_mini) ×2`" not in text  # the reference is not tested against itself

    # --float-seeds: the float stage N times, training k of a point from float model k. The
    # seed-1 points above started from float model 0: they are refused, not silently reused.
    floats = [*seeded, "--float-seeds"]
    refused = subprocess.run(floats, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert refused.returncode != 0
    assert f"{out / 'grid' / 'none.seed1'} was trained from" in refused.stderr
    assert _done_row(out / "float.seed1")["seed"] == 1  # the float stage's second training

    out2 = tmp_path / "repro2"
    fresh = [*floats[:floats.index("--out")], "--out", str(out2),
             *floats[floats.index("--out") + 2:]]
    fresh[fresh.index("int2_asym", fresh.index("--grid"))] = "int4_sym"
    fourth = subprocess.run(fresh, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert fourth.returncode == 0, fourth.stdout[-3000:] + fourth.stderr[-3000:]
    for name in ("none", "int4_sym"):
        rows = [_done_row(out2 / "grid" / name), _done_row(out2 / "grid" / f"{name}.seed1")]
        starts = [r["command"].split("init.checkpoint=")[1].split()[0] for r in rows]
        assert "float.seed1" not in starts[0] and "/float.seed1/" in starts[1], starts
        assert rows[0]["recipe"] == rows[1]["recipe"]  # two float trainings of one recipe
    assert _done_row(out2 / "float")["recipe"] == _done_row(out2 / "float.seed1")["recipe"]
    every = {r["quantizer"]: r for r in csv.DictReader((out2 / "frontier.csv").open())
             if r["method"] != "ptq" and r["experiment"] != "float_mini"}
    assert every["int4_sym"]["trainings"] == "2" and every["int4_sym"]["test_test-clean"] == "seeds"
    assert "SEEDS=2 FLOAT_SEEDS=1" in results_md.read_text()


def _done_row(run: Path) -> dict:
    row = json.loads((run / "results.json").read_text())
    assert row["status"] == "ok", row
    return row


def test_a_finished_point_is_reused_only_from_the_float_model_it_started_from(tmp_path):
    from lowbit_asr.commands.reproduce import _same_start, started_from

    run, old = tmp_path / "point.seed1", tmp_path / "older"
    run.mkdir()
    old.mkdir()
    start = str(tmp_path / "float.seed1" / "checkpoints" / "best.ckpt")
    (run / "run_config.json").write_text(json.dumps({"init": {"checkpoint": start}}))
    assert started_from(run) == start and started_from(old) is None
    assert _same_start(run, start, unrecorded_ok=False) is None
    other = str(tmp_path / "float" / "checkpoints" / "best.ckpt")
    assert f"was trained from {start}, this run starts it from {other}" in _same_start(
        run, other, unrecorded_ok=True)
    # A run older than run_config.json: reused where only one float model was possible.
    assert _same_start(old, other, unrecorded_ok=True) is None
    assert "records no init.checkpoint" in _same_start(old, start, unrecorded_ok=False)
