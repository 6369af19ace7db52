"""Packed export (issue 5): the file is the accounted size plus a small header, its weights,
outputs and WER equal the fake-quant model's exactly, and every damaged file is a clear error."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
from export_helpers import dataset_args

from lowbit_asr import cli
from lowbit_asr.model import EncoderConfig, JoinerConfig, ModelConfig, PredictorConfig, build_model
from lowbit_asr.packed import export_packed, load_for_evaluation, load_packed, load_packed_module
from lowbit_asr.quant import (
    ClipSearch,
    QuantPolicy,
    QuantSpec,
    dequantize,
    fake_quant_modules,
    fake_quantize,
    prepare,
    quantize,
    size_report,
)
from lowbit_asr.quant.container import _digest, is_packed_file, read_packed, write_packed
from lowbit_asr.quant.policy import logical_name
from lowbit_asr.quant.prepare import is_quantizer_parameter
from lowbit_asr.train.checkpoint import read_checkpoint, restore
from lowbit_asr.train.scoring import load_evaluation

HEADER_ALLOWANCE = 64 * 1024
VOCAB = 13


# ---- every spec: weights equal the fake-quant weights, size is the accounted size ------------
def _small_model(seed: int = 0, predictor: str = "lstm") -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        encoder=EncoderConfig(
            feat_dim=20,
            d_model=48,
            num_layers=1,
            num_heads=2,
            ff_expansion=2,
            conv_kernel=5,
            subsampling_channels=16,
        ),
        predictor=PredictorConfig(
            kind=predictor, embed_dim=32, hidden_dim=32,
            context_size=3 if predictor == "stateless" else 2),
        joiner=JoinerConfig(dim=32),
        ctc_weight=0.3,
        rnnt_loss_impl="torch",
    )
    model = build_model(cfg, VOCAB)
    for module in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
            module.num_batches_tracked.fill_(7)
    return model.eval()


def _batch(seed: int = 0, feat_dim: int = 20) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(3, 90, feat_dim, generator=g)  # (N, T, F)
    feat_lens = torch.tensor([90, 71, 40])
    targets = torch.randint(1, VOCAB, (3, 5), generator=g)  # (N, U)
    return feats, feat_lens, targets, torch.tensor([5, 3, 4])


POLICIES = {
    "int2_sym": {"default": {"bits": 2}},
    "int2_asym": {"default": {"bits": 2, "symmetric": False}},
    "int4_asym_g16": {
        "default": {"bits": 4, "symmetric": False, "group_size": 16},
        "indivisible": "per_channel",
    },
    "int8_sym": {"default": {"bits": 8}},
    "int2_asym_sc2_bf16": {
        "default": {"bits": 2, "symmetric": False, "sub_channels": 2, "scale_dtype": "bfloat16"},
        "indivisible": "per_channel",
    },
    "int2_asym_g16_clipsearch": {
        "default": {
            "bits": 2,
            "symmetric": False,
            "group_size": 16,
            "clip_search": {"min": 0.5, "steps": 8},
        },
        "indivisible": "per_channel",
    },
    "int3_sym_clipsearch_pc": {
        "default": {"bits": 3, "clip_search": {"min": 0.4, "steps": 12, "per_channel": True}}
    },
    "int3_asym_f32": {"default": {"bits": 3, "symmetric": False, "scale_dtype": "float32"}},
    # Learned scales (LSQ / LSQ+): moved away from min/max below, as training moves them.
    "int2_asym_lsq": {"default": {"bits": 2, "symmetric": False, "scale": "learned"}},
    "int4_sym_g16_lsq": {"default": {"bits": 4, "group_size": 16, "scale": "learned"},
                         "indivisible": "per_channel"},
    "int2_asym_sc4_clipsearch_lsq": {
        "default": {"bits": 2, "symmetric": False, "sub_channels": 4, "scale": "learned",
                    "clip_search": {"min": 0.5, "steps": 4, "per_channel": True}},
        "indivisible": "per_channel"},
    "mixed": {
        "name": "mixed",
        "default": {"bits": 3, "symmetric": False},
        "rules": [
            {"pattern": "encoder.subsampling.*", "spec": None},
            {
                "pattern": "encoder.blocks.*.ff*.weight",
                "spec": {"bits": 2, "symmetric": False, "group_size": 16},
            },
            {"pattern": "encoder.blocks.*.attn.*weight", "spec": {"bits": 4, "clip": 0.9}},
            {"pattern": "predictor.embedding.weight", "spec": {"bits": 8}},
            {"pattern": "joiner.*", "spec": {"bits": 1, "symmetric": False}},
            {"pattern": "predictor.lstm.*", "spec": {"bits": 3, "symmetric": False,
                                                     "scale": "learned"}},
        ],
    },
}


def _train_learned_grids(model: torch.nn.Module, seed: int = 0) -> None:
    """Move every learned scale and offset away from its min/max start, as training does."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, fq in fake_quant_modules(model):
            if fq.spec.learned:
                fq.scale.mul_(torch.empty(fq.scale.shape).uniform_(0.6, 1.4, generator=g))
                if fq.offset is not None:
                    fq.offset.add_(0.3 * fq.scale * torch.randn(fq.offset.shape, generator=g))


def _check_sizes(path: Path, accounted: int, described) -> None:
    file_bytes = path.stat().st_size
    assert described.file_bytes == file_bytes
    assert accounted <= file_bytes <= accounted + HEADER_ALLOWANCE
    # The data alone is the accounted size up to each tensor's rounding to whole bytes.
    assert 0 <= described.data_bytes - accounted < len(described.tensors)
    assert described.header_bytes == file_bytes - described.data_bytes


@pytest.mark.parametrize(
    ("name", "predictor"),
    [(name, "lstm") for name in sorted(POLICIES)]
    + [("int2_asym", "stateless"), ("int4_asym_g16", "stateless")])
def test_packed_weights_and_outputs_equal_fake_quant(name, predictor, tmp_path):
    policy = QuantPolicy.from_config(POLICIES[name])
    model = prepare(_small_model(predictor=predictor), policy)
    _train_learned_grids(model)
    path = tmp_path / "m.lbq"
    written = write_packed(path, model, policy, extra={"note": name})
    state, described = read_packed(path)
    assert described == written and described.extra == {"note": name}
    assert described.policy == policy
    _check_sizes(path, size_report(model, policy).total_bytes, described)

    quantized = dict(fake_quant_modules(model))
    assert {t.name for t in described.tensors if t.spec is not None} == set(quantized)
    for key, value in model.state_dict().items():
        if is_quantizer_parameter(key):
            continue  # a learned grid: stored as the weight's scales and offsets
        logical = logical_name(key)
        if logical in quantized:  # the weight the model computes with: its fake quantization
            owner, attr = logical.rsplit(".", 1)
            value = getattr(model.get_submodule(owner), attr)
        assert state[logical].dtype == value.dtype and torch.equal(state[logical], value), logical

    if predictor == "stateless":  # its convolution is quantized like every other weight
        assert "predictor.conv.weight" in quantized
    plain = _small_model(seed=1, predictor=predictor)  # other weights: all must be overwritten
    plain.load_state_dict(state)
    batch = _batch()
    feats, feat_lens = batch[:2]
    with torch.no_grad():
        ours, theirs = plain(*batch), model(*batch)
        assert all(torch.equal(ours[k], theirs[k]) for k in ("loss", "rnnt_loss", "ctc_loss"))
        assert torch.equal(plain.encode(feats, feat_lens)[0], model.encode(feats, feat_lens)[0])
    assert plain.decode(feats, feat_lens) == model.decode(feats, feat_lens)


def test_clip_search_stored_form_equals_fake_quant():
    # Regression: quantize() recomputed the chosen grid from the coefficient as a float32
    # tensor, which rounded some scales one ulp away from fake_quantize's (seed 1 here).
    for seed in range(4):
        w = torch.randn(64, 64, generator=torch.Generator().manual_seed(seed))
        for per_channel in (False, True):
            spec = QuantSpec(
                2, symmetric=False, group_size=16, clip_search=ClipSearch(per_channel=per_channel)
            )
            assert torch.equal(dequantize(quantize(w, spec)), fake_quantize(w, spec))


def test_float_bits_16_stores_float_tensors_in_half(tmp_path):
    policy = QuantPolicy.from_config({"default": {"bits": 4}, "float_bits": 16})
    model = prepare(_small_model(), policy)
    state, described = read_packed(write_packed(tmp_path / "m.lbq", model, policy).path)
    _check_sizes(tmp_path / "m.lbq", size_report(model, policy).total_bytes, described)
    bias = "encoder.blocks.0.ff1.linear1.bias"
    assert {t.name: t.dtype for t in described.tensors}[bias] == "float16"
    assert torch.equal(state[bias], model.state_dict()[bias].half())


def test_prepared_model_must_match_the_policy(tmp_path):
    model = prepare(_small_model(), QuantPolicy.from_config({"default": {"bits": 4}}))
    with pytest.raises(ValueError, match=r"fake-quantizes it as int4-sym.*packs it as int2"):
        write_packed(tmp_path / "m.lbq", model, QuantPolicy.from_config({"default": {"bits": 2}}))


# ---- a trained checkpoint: export, load, identical outputs and WER ---------------------------
def test_checkpoint_outputs_bit_identical(qat_checkpoint, packed_qat):
    module, tokenizer = restore(read_checkpoint(qat_checkpoint))
    model, tokenizer2, metadata = load_packed(packed_qat)
    assert not any(True for _ in fake_quant_modules(model)) and not model.training
    assert tokenizer2 == tokenizer and model.frontend.has_stats
    for key in ("mean", "std", "stats_count"):  # the front end's statistics: exact
        assert torch.equal(getattr(model.frontend, key), getattr(module.model.frontend, key))
    assert "feature_stats" not in metadata.extra  # model state now, not metadata
    assert metadata.policy.name == "int2_asym_g16" and metadata.extra["source"]["global_step"] == 2
    _check_sizes(packed_qat, size_report(module.model, module.policy).total_bytes, metadata)
    feats, feat_lens, targets, target_lens = _batch(feat_dim=80)
    with torch.no_grad():
        ours, theirs = (
            model(feats, feat_lens, targets, target_lens),
            module.model(feats, feat_lens, targets, target_lens),
        )
        assert torch.equal(ours["loss"], theirs["loss"])
        assert torch.equal(
            model.encode(feats, feat_lens)[0], module.model.encode(feats, feat_lens)[0]
        )
    assert model.decode(feats, feat_lens) == module.model.decode(feats, feat_lens)


def test_cli_export_then_evaluate_gives_the_same_wer(
    tiny_corpus, qat_checkpoint, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # cli.main rewrites it
    out = tmp_path / "int2.lbq"
    cli.main(["export", f"checkpoint={qat_checkpoint}", f"out={out}"])
    printed = capsys.readouterr().out
    assert "file / accounted" in printed and f"{out.stat().st_size:,} bytes on disk" in printed
    results = {}
    for kind, path in (("ckpt", qat_checkpoint), ("packed", out)):
        cli.main(
            [
                "evaluate",
                f"checkpoint={path}",
                f"out={tmp_path / kind}",
                *dataset_args(tiny_corpus.root, tmp_path / "cache"),
                "splits=[test-clean]",
            ]
        )
        results[kind] = load_evaluation(tmp_path / kind)
    assert results["packed"][0]["quantizer"] == results["ckpt"][0]["quantizer"] == "int2_asym_g16"
    for key in ("wer", "errors", "words", "utterances"):
        assert (
            results["packed"][0]["splits"]["test-clean"][key]
            == (results["ckpt"][0]["splits"]["test-clean"][key])
        ), key
    # Utterance by utterance: the same hypotheses, counts and (to float rounding) NLL.
    packed, ckpt = results["packed"][1]["test-clean"], results["ckpt"][1]["test-clean"]
    assert [(u.id, u.hypothesis, u.word_errors) for u in packed] == [
        (u.id, u.hypothesis, u.word_errors) for u in ckpt]
    assert all(abs(a.nll - b.nll) <= 1e-4 * max(1.0, abs(b.nll))
               for a, b in zip(packed, ckpt, strict=True))
    assert results["ckpt"][0]["splits"]["test-clean"]["utterances"] > 0


def test_packed_file_is_recognised_by_its_bytes_not_its_name(qat_checkpoint, packed_qat, tmp_path):
    disguised = tmp_path / "model.ckpt"
    shutil.copy(packed_qat, disguised)
    assert is_packed_file(disguised) and not is_packed_file(qat_checkpoint)
    module, quantizer = load_for_evaluation(disguised)
    assert quantizer == "int2_asym_g16" and not any(True for _ in fake_quant_modules(module))
    assert load_for_evaluation(qat_checkpoint)[1] == "int2_asym_g16"


def test_float_checkpoint_exports_all_float(qat_checkpoint, tmp_path):
    ckpt = torch.load(qat_checkpoint, map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["quantizer"] = None
    ckpt["state_dict"] = {logical_name(k): v for k, v in ckpt["state_dict"].items()}
    float_ckpt = tmp_path / "float.ckpt"
    torch.save(ckpt, float_ckpt)
    report = export_packed(float_ckpt, tmp_path / "float.lbq")
    assert report.quantized_tensors == 0 and report.quantizer == "none"
    assert report.accounted_bytes <= report.file_bytes <= report.accounted_bytes + HEADER_ALLOWANCE
    module, _ = restore(read_checkpoint(float_ckpt))
    model, _, metadata = load_packed(tmp_path / "float.lbq")
    assert all(t.spec is None for t in metadata.tensors)
    theirs = module.model.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in model.state_dict().items())


# ---- damaged files: clear errors, no code run ------------------------------------------------
def _split(data: bytes) -> tuple[dict, bytes]:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _join(header: dict, payload: bytes) -> bytes:
    raw = json.dumps(header, separators=(",", ":")).encode()
    return len(raw).to_bytes(8, "little") + raw + payload


def _edit_metadata(src: Path, dst: Path, **changes: str) -> Path:
    header, payload = _split(src.read_bytes())
    header["__metadata__"].update(changes)
    dst.write_bytes(_join(header, payload))
    return dst


def _resave(src: Path, dst: Path, edit) -> Path:
    """Rewrite ``src``'s blobs through ``edit`` with its metadata, digest recomputed or not."""
    data = src.read_bytes()
    metadata = _split(data)[0]["__metadata__"]
    blobs = safetensors.torch.load(data)
    edit(blobs, metadata)
    safetensors.torch.save_file(blobs, dst, metadata=metadata)
    return dst


def test_truncated_file_is_a_clear_error(packed_qat, tmp_path):
    data = packed_qat.read_bytes()
    header_end = 8 + int.from_bytes(data[:8], "little")
    for cut in (0, 5, 8, 100, header_end - 1, header_end, header_end + 10, len(data) - 1):
        bad = tmp_path / f"cut{cut}.lbq"
        bad.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=r"truncated") as err:
            load_packed(bad)
        assert str(bad) in str(err.value)


def test_flipped_header_bytes_are_a_clear_error(packed_qat, tmp_path):
    data = bytearray(packed_qat.read_bytes())
    header_end = 8 + int.from_bytes(data[:8], "little")
    bad = tmp_path / "flipped.lbq"
    positions = [*range(9), *range(9, header_end, max(1, (header_end - 9) // 60))]
    for pos in positions:
        flipped = bytearray(data)
        flipped[pos] ^= 0xFF
        bad.write_bytes(flipped)
        with pytest.raises(ValueError) as err:
            read_packed(bad)
        assert str(bad) in str(err.value)
        if pos > 8:  # inside the JSON: never valid UTF-8 after flipping all bits of a byte
            assert "corrupted header: not valid JSON" in str(err.value)
    # A change that keeps the JSON valid: one decimal of a hyper-parameter (the learning rate).
    header, payload = _split(bytes(data))
    extra = header["__metadata__"]["extra"]
    i = extra.index(".", extra.index('"lr":')) + 1
    digit = "1" if extra[i] != "1" else "2"
    header["__metadata__"]["extra"] = extra[:i] + digit + extra[i + 1 :]
    bad.write_bytes(_join(header, payload))
    with pytest.raises(ValueError, match="sha256 .* does not match"):
        read_packed(bad)
    flipped = bytearray(data)
    flipped[-100] ^= 0x01  # one bit of tensor data
    bad.write_bytes(flipped)
    with pytest.raises(ValueError, match="sha256 .* does not match"):
        read_packed(bad)


def test_wrong_magic_and_version(packed_qat, tmp_path):
    with pytest.raises(ValueError, match="format magic 'something.else'"):
        read_packed(_edit_metadata(packed_qat, tmp_path / "a.lbq", format="something.else"))
    with pytest.raises(ValueError, match="unsupported packed format version '2'"):
        read_packed(_edit_metadata(packed_qat, tmp_path / "b.lbq", version="2"))
    with pytest.raises(ValueError, match="metadata key 'policy' is not valid JSON"):
        read_packed(_edit_metadata(packed_qat, tmp_path / "c.lbq", policy="{oops"))
    plain = tmp_path / "plain.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(3)}, plain)
    with pytest.raises(ValueError, match="not a lowbit-asr packed file: no __metadata__"):
        load_packed(plain)


def test_tensor_of_wrong_size_missing_or_extra(packed_qat, tmp_path):
    def shorten(blobs, metadata):
        blobs["codes"] = blobs["codes"][:-1].clone()

    with pytest.raises(ValueError, match=r"tensor 'codes' has the wrong size: \(\d+,\) .*implies"):
        read_packed(_resave(packed_qat, tmp_path / "short.lbq", shorten))
    with pytest.raises(ValueError, match=r"missing tensor\(s\) \['float16'\]"):
        read_packed(
            _resave(packed_qat, tmp_path / "missing.lbq", lambda blobs, md: blobs.pop("float16"))
        )
    with pytest.raises(ValueError, match=r"unexpected tensor\(s\) \['__reduce__'\]"):
        read_packed(
            _resave(
                packed_qat,
                tmp_path / "extra.lbq",
                lambda blobs, md: blobs.update(__reduce__=torch.zeros(2)),
            )
        )

    def reshape_row(blobs, metadata):  # a table row whose shape does not fit its bytes
        table = json.loads(metadata["tensors"])
        row = next(r for r in table["rows"] if isinstance(r[2], int))
        row[1][0] += 1
        metadata["tensors"] = json.dumps(table)

    with pytest.raises(ValueError, match=r"tensor '[\w.]+weight': wrong size: the table records"):
        read_packed(_resave(packed_qat, tmp_path / "row.lbq", reshape_row))


def test_missing_model_tensor_is_named(packed_qat, tmp_path):
    model, _, metadata = load_packed(packed_qat)
    model.joiner.output.bias = None  # a valid file that lacks one of the model's tensors
    write_packed(tmp_path / "nobias.lbq", model, QuantPolicy(), extra=metadata.extra)
    with pytest.raises(ValueError, match=r"nobias.lbq: .*missing \['joiner.output.bias'\]"):
        load_packed(tmp_path / "nobias.lbq")

    def drop_row(blobs, metadata):  # the table lists one tensor fewer than the data holds
        table = json.loads(metadata["tensors"])
        table["rows"].remove(next(r for r in table["rows"] if r[2] == "float32"))
        metadata["tensors"] = json.dumps(table)
        metadata["sha256"] = _digest(blobs, metadata)

    with pytest.raises(ValueError, match=r"tensor 'float32' has the wrong size"):
        read_packed(_resave(packed_qat, tmp_path / "droprow.lbq", drop_row))


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_bearing_files_are_refused_without_running_code(tmp_path):
    marker = tmp_path / "code-ran"
    raw = tmp_path / "evil.lbq"
    raw.write_bytes(pickle.dumps(_RunsCode(marker)))
    zipped = tmp_path / "evil.ckpt"
    torch.save({"hyper_parameters": _RunsCode(marker)}, zipped)
    for path in (raw, zipped):
        assert not is_packed_file(path)
        with pytest.raises(ValueError, match="not a lowbit-asr packed file"):
            load_packed(path)
    with pytest.raises(ValueError, match="not a lowbit-asr packed file"):
        load_for_evaluation(raw)  # .lbq: read as packed, refused
    with pytest.raises(ValueError, match="weights-only"):
        load_for_evaluation(zipped)  # a torch file: read with weights_only=True, refused
    assert not marker.exists()


def test_packed_module_scores_like_the_checkpoint(qat_checkpoint, packed_qat):
    module, _ = restore(read_checkpoint(qat_checkpoint))
    packed, _ = load_packed_module(packed_qat)
    feats, feat_lens, targets, target_lens = _batch(feat_dim=80)
    targets = targets % (module.tokenizer.vocab_size - 1) + 1
    batch = {"feats": feats, "feat_lens": feat_lens, "targets": targets,
             "target_lens": target_lens, "ids": ["1-1-0", "1-1-1", "2-1-0"],
             "texts": ["a b", "c", "d e f"]}
    assert packed.score_batch(batch)[0] == module.score_batch(batch)[0]


# ---- files written before the front end moved into the model -------------------------------
def _old_stats(model) -> dict:
    fe = model.frontend
    return {"version": 1, "mean": fe.mean.tolist(), "std": fe.std.tolist(),
            "utterances": int(fe.stats_count[0]), "frames": int(fe.stats_count[1]),
            "normalisation": "utterance", "lifter": 7}


def test_old_checkpoint_is_converted_or_named(qat_checkpoint, tmp_path):
    module, _ = restore(read_checkpoint(qat_checkpoint))
    ckpt = torch.load(qat_checkpoint, map_location="cpu", weights_only=True)
    for key in ("mean", "std", "stats_count"):
        del ckpt["state_dict"][f"model.frontend.{key}"]
    ckpt["hyper_parameters"]["model"].pop("frontend", None)
    ckpt["AsrDataModule"] = {"tokenizer": ckpt["hyper_parameters"]["tokenizer"],
                             "feature_stats": _old_stats(module.model)}
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    converted, _ = restore(read_checkpoint(old))
    fe, theirs = converted.model.frontend, module.model.frontend
    assert torch.equal(fe.mean, theirs.mean) and torch.equal(fe.std, theirs.std)
    assert torch.equal(fe.stats_count, theirs.stats_count)
    # How the statistics were applied travels too: it was stored beside them.
    assert (fe.cfg.normalisation, fe.cfg.cepstral_lifter) == ("utterance", 7)
    del ckpt["AsrDataModule"]["feature_stats"]
    torch.save(ckpt, old)
    with pytest.raises(ValueError, match=r"old.ckpt: no feature statistics.*model.frontend.mean"):
        read_checkpoint(old)


def test_old_packed_file_is_converted(packed_qat, tmp_path):
    model, _, metadata = load_packed(packed_qat)
    stats = _old_stats(model)
    reference = {k: v.clone() for k, v in model.frontend.state_dict().items()}
    del model.frontend  # the model as it was: no front end, statistics in the metadata
    old = tmp_path / "old.lbq"
    write_packed(old, model, QuantPolicy(), extra={**metadata.extra, "feature_stats": stats})
    again, _, _ = load_packed(old)
    assert all(torch.equal(again.frontend.state_dict()[k], v) for k, v in reference.items())
    assert again.frontend.cfg.normalisation == "utterance"
    write_packed(old, model, QuantPolicy(), extra=metadata.extra)
    with pytest.raises(ValueError, match=r"old.lbq: .*no feature statistics"):
        load_packed(old)


def test_export_never_overwrites_its_input_and_names_bad_destinations(qat_checkpoint, tmp_path):
    before = qat_checkpoint.read_bytes()
    with pytest.raises(ValueError, match="is the checkpoint itself"):
        export_packed(qat_checkpoint, qat_checkpoint)
    assert qat_checkpoint.read_bytes() == before
    with pytest.raises(ValueError, match="is a folder"):
        export_packed(qat_checkpoint, tmp_path)
    with pytest.raises(ValueError, match=r"the folder .*missing does not exist"):
        export_packed(qat_checkpoint, tmp_path / "missing" / "model.lbq")


def test_a_packed_file_given_as_a_training_checkpoint_says_what_it_is(packed_qat):
    with pytest.raises(ValueError, match=r"is a packed .lbq file, not a training checkpoint: use"
                       r" it with lowbit-asr evaluate or transcribe"):
        read_checkpoint(packed_qat)


def test_an_empty_or_foreign_checkpoint_is_named(tmp_path):
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty.ckpt: cannot be read as a weights-only"):
        read_checkpoint(empty)
    other = tmp_path / "other.ckpt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match=r"other.ckpt: not a lowbit-asr training checkpoint"):
        read_checkpoint(other)
