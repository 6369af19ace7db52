"""`lowbit-asr ptq` and `lowbit-asr allocate` through the CLI on a float checkpoint of the tiny
corpus (issue 14): the PTQ checkpoint holds the rounded float weights and a frontier row; the
allocated quantizer file fits its budget, `lowbit-asr size` counts exactly the predicted bytes,
and `lowbit-asr train` trains with it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from export_helpers import SMALL_MODEL, dataset_args

from lowbit_asr import cli
from lowbit_asr.packed import load_for_evaluation
from lowbit_asr.quant import QuantPolicy, dequantize, fake_quant_modules, quantize
from lowbit_asr.train.checkpoint import read_checkpoint


def _cli(*args: str) -> None:
    argv = list(sys.argv)
    try:
        cli.main(list(args))
    finally:
        sys.argv = argv


def _data(corpus, work: Path) -> list[str]:
    return [*dataset_args(corpus.root, work / "cache"), "dataset.test_splits=[test-clean]"]


def test_ptq_rounds_the_float_weights_and_writes_a_frontier_row(float_checkpoint, tiny_corpus,
                                                                 tmp_path):
    out = tmp_path / "int2_asym"
    _cli("ptq", f"checkpoint={float_checkpoint}", "quantizer=int2_asym", f"out={out}",
         *_data(tiny_corpus, tmp_path))
    row = json.loads((out / "results.json").read_text())
    assert row["status"] == "ok" and row["method"] == "ptq" and row["steps"] == 0
    assert row["quantizer"] == "int2_asym" and set(row["wer"]) == {"test-clean"}
    assert (out / "eval" / "evaluation.json").is_file()
    module, name = load_for_evaluation(out / "checkpoints" / "ptq.ckpt")
    assert name == "int2_asym"
    float_state = read_checkpoint(float_checkpoint)["state_dict"]
    fq = dict(fake_quant_modules(module.model))
    assert fq, "the PTQ checkpoint is quantized"
    for weight_name, q in fq.items():
        w = float_state[f"model.{weight_name}"]
        expected = dequantize(quantize(w, q.spec, weight_name, q.group_size))
        module_name, attr = weight_name.rsplit(".", 1)
        owner = module.model.get_submodule(module_name)
        assert torch.equal(owner.parametrizations[attr].original, w)  # the float master weight
        assert torch.equal(getattr(owner, attr), expected)  # what the model computes with


def _fails(capsys, *args: str) -> str:
    """Run a command that must fail: Hydra prints the error and exits 1; the printed error."""
    capsys.readouterr()
    with pytest.raises(SystemExit):
        _cli(*args)
    return capsys.readouterr().err


def test_ptq_refuses_a_quantized_checkpoint(qat_checkpoint, tiny_corpus, tmp_path, capsys):
    err = _fails(capsys, "ptq", f"checkpoint={qat_checkpoint}", "quantizer=int2_asym",
                 f"out={tmp_path / 'x'}", *_data(tiny_corpus, tmp_path))
    assert "is already quantized (int2_asym_g16): ptq starts from a float checkpoint" in err
    assert not (tmp_path / "x").exists()


def test_allocate_fits_the_budget_and_size_and_train_accept_it(float_checkpoint, tiny_corpus,
                                                               tmp_path, capsys):
    out = tmp_path / "alloc"
    _cli("allocate", f"checkpoint={float_checkpoint}", "budget_quantizer=int4_asym",
         "probe_utterances=4", f"out={out}", *_data(tiny_corpus, tmp_path))
    result = json.loads((out / "allocation.json").read_text())
    name = result["name"]
    assert name == "alloc_int4_asym" and result["sensitivity"] == "probe"
    assert result["predicted_bits"] <= result["budget_bits"]
    assert result["probe_utterances"] >= 4
    # Every candidate of every weight has a size and a sensitivity; float costs nothing.
    for entry in result["sensitivities"].values():
        assert len(entry["choices"]) == len(entry["bits"]) == len(entry["costs"])
        assert entry["choices"][0] == "float" and entry["costs"][0] == 0.0
    yaml_file = out / "quantizer" / f"{name}.yaml"
    assert "budget" in yaml_file.read_text().splitlines()[1].lower()
    capsys.readouterr()
    _cli("size", f"checkpoint={float_checkpoint}", f"quantizer={name}",
         f"hydra.searchpath=[file://{out}]", "format=json")
    report = json.loads(capsys.readouterr().out)
    assert report["summary"]["total_bytes"] == result["predicted_bytes"]
    assert report["summary"]["policy"] == name
    # int4_asym's own size on the same model is the budget.
    _cli("size", f"checkpoint={float_checkpoint}", "quantizer=int4_asym", "format=json")
    assert json.loads(capsys.readouterr().out)["summary"]["total_bytes"] * 8 == result[
        "budget_bits"]

    run = tmp_path / "qat"
    _cli("train", *_data(tiny_corpus, tmp_path), *SMALL_MODEL, "logger=csv",
         "trainer.max_steps=1", "trainer.val_check_interval=1", "trainer.limit_val_batches=1",
         "trainer.enable_progress_bar=false", "init.mode=float_ckpt",
         f"init.checkpoint={float_checkpoint}", f"quantizer={name}",
         f"hydra.searchpath=[file://{out}]", f"hydra.run.dir={run}")
    row = json.loads((run / "results.json").read_text())
    assert row["status"] == "ok" and row["quantizer"] == name
    assert row["size_bytes"] == result["predicted_bytes"]

    # The sensitivities are reused for another budget (same checkpoint, same candidates).
    again = tmp_path / "again"
    _cli("allocate", f"checkpoint={float_checkpoint}", "budget_quantizer=int2_asym",
         f"sensitivity_file={out / 'allocation.json'}", f"out={again}",
         *_data(tiny_corpus, tmp_path))
    second = json.loads((again / "allocation.json").read_text())
    assert second["reused_from"] == str(out / "allocation.json")
    assert second["sensitivities"] == result["sensitivities"]
    assert second["predicted_bits"] <= second["budget_bits"] < result["budget_bits"]


def test_allocate_with_hessian_traces(float_checkpoint, tiny_corpus, tmp_path):
    out = tmp_path / "hessian"
    _cli("allocate", f"checkpoint={float_checkpoint}", "budget_bits=3", "sensitivity=hessian",
         "hessian_samples=2", "probe_utterances=4", f"out={out}", *_data(tiny_corpus, tmp_path))
    result = json.loads((out / "allocation.json").read_text())
    assert set(result["traces"]) == set(result["sensitivities"])
    assert all(v["stderr"] >= 0 for v in result["traces"].values())
    policy = QuantPolicy.from_config(
        yaml.safe_load((out / "quantizer" / "alloc_3bits.yaml").read_text()))
    assert len(policy.rules) == len(result["sensitivities"])


def test_allocate_names_a_budget_below_the_smallest_size(float_checkpoint, tiny_corpus, tmp_path,
                                                         capsys):
    err = _fails(capsys, "allocate", f"checkpoint={float_checkpoint}", "budget_mb=0.001",
                 "sensitivity=weight_error", f"out={tmp_path / 'x'}", *_data(tiny_corpus, tmp_path))
    assert "BudgetTooSmall: budget 8,000 bits (1,000 bytes) is below the smallest size" in err
    assert not (tmp_path / "x").exists()
    err = _fails(capsys, "allocate", f"checkpoint={float_checkpoint}", "budget_mb=1",
                 "budget_bits=3", f"out={tmp_path / 'x'}", *_data(tiny_corpus, tmp_path))
    assert "allocate needs exactly one budget" in err and "['budget_mb', 'budget_bits']" in err


def test_lsq_training_moves_the_grids_and_the_packed_file_computes_the_same(
        float_checkpoint, tiny_corpus, tmp_path):
    from lowbit_asr.packed import export_packed, load_packed
    from lowbit_asr.quant.fake_quant import initial_grid
    from lowbit_asr.train.checkpoint import restore

    run = tmp_path / "lsq"
    _cli("train", *_data(tiny_corpus, tmp_path), *SMALL_MODEL, "logger=csv",
         "trainer.max_steps=3", "trainer.val_check_interval=3", "trainer.limit_val_batches=1",
         "trainer.enable_progress_bar=false", "init.mode=float_ckpt",
         f"init.checkpoint={float_checkpoint}", "quantizer=int2_asym_sc4_lsq", "optim.lr=0.01",
         "optim.warmup_steps=1", f"hydra.run.dir={run}")
    row = json.loads((run / "results.json").read_text())
    assert row["status"] == "ok" and row["quantizer"] == "int2_asym_sc4_lsq"
    module, _ = restore(read_checkpoint(run / "checkpoints" / "last.ckpt"))
    moved = 0
    for name, fq in fake_quant_modules(module.model):
        owner, attr = name.rsplit(".", 1)
        weight = module.model.get_submodule(owner).parametrizations[attr].original
        start, _ = initial_grid(weight, fq.spec, fq.group_size)
        moved += not torch.equal(fq.scale.detach(), start)
    assert moved > 0, "training moved no learned scale off its min/max grid"
    report = export_packed(run / "checkpoints" / "last.ckpt", tmp_path / "lsq.lbq")
    assert report.accounted_bytes == row["size_bytes"]
    plain = load_packed(tmp_path / "lsq.lbq").model
    for name, _ in fake_quant_modules(module.model):
        owner, attr = name.rsplit(".", 1)
        assert torch.equal(getattr(plain.get_submodule(owner), attr),
                           getattr(module.model.get_submodule(owner), attr)), name
