"""``lowbit-asr transcribe``: audio files -> text with a packed file or a checkpoint, the same
text ``evaluate`` produces for the same audio; bad files are named and the others go on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from export_helpers import dataset_args

from lowbit_asr import cli
from lowbit_asr.data.audio import load_audio
from lowbit_asr.data.datamodule import AsrDataModule
from lowbit_asr.packed import export_packed
from lowbit_asr.train.scoring import load_evaluation
from lowbit_asr.transcribe import Recognizer, expand_inputs

SENTENCES = ["THE BOOK WAS ON THE TABLE", "SHE SAID IT WAS A FINE DAY",
             "HE WALKED HOME IN THE RAIN"]
RATE = 22050


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    """espeak-ng speech at 22.05 kHz, stereo (the channels differ), 16-bit WAV, in
    LibriSpeech's layout: ``<root>/speech/100/1/100-1-000i.wav`` with its transcript."""
    root = tmp_path_factory.mktemp("speech")
    chapter = root / "speech" / "100" / "1"
    chapter.mkdir(parents=True)
    lines = []
    for i, text in enumerate(SENTENCES):
        raw = chapter / f"raw{i}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(raw), text.lower()], check=True)
        mono, rate = sf.read(raw, dtype="float32")
        assert rate == RATE
        raw.unlink()
        stereo = np.stack([mono, 0.5 * mono], axis=1)  # (T, 2)
        sf.write(chapter / f"100-1-{i:04d}.wav", stereo, RATE, subtype="PCM_16")
        lines.append(f"100-1-{i:04d} {text}")
    (chapter / "100-1.trans.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def talkative(qat_checkpoint, tmp_path_factory) -> dict[str, Path]:
    """The tiny QAT checkpoint with its blank made less likely (a 2-step model mostly emits
    blanks: this one emits text that depends on the audio), and its packed file."""
    work = tmp_path_factory.mktemp("talkative")
    ckpt = torch.load(qat_checkpoint, map_location="cpu", weights_only=True)
    ckpt["state_dict"]["model.joiner.output.bias"][0] -= 4.0
    path = work / "model.ckpt"
    torch.save(ckpt, path)
    packed = work / "model.lbq"
    export_packed(path, packed)
    return {"ckpt": path, "packed": packed}


def _transcribe(args: list[str]) -> None:
    argv = list(sys.argv)  # cli.main rewrites it
    try:
        cli.main(["transcribe", *args])
    finally:
        sys.argv = argv


@pytest.mark.parametrize("kind", ["packed", "ckpt"])
def test_same_text_as_evaluate(kind, speech, talkative, tmp_path, capsys):
    model = talkative[kind]
    if kind == "packed":  # to a file
        out = tmp_path / "texts.tsv"
        _transcribe([f"model={model}", f"audio={speech / 'speech'}", f"out={out}"])
        written = out.read_text()
    else:  # to stdout, which holds the transcripts and nothing else (the log is on stderr)
        capsys.readouterr()
        _transcribe([f"model={model}", f"audio={speech / 'speech'}"])
        written = capsys.readouterr().out
    texts = dict(line.split("\t", 1) for line in written.splitlines())
    files = sorted((speech / "speech").rglob("*.wav"))
    assert sorted(texts) == [str(f) for f in files]
    argv = list(sys.argv)
    try:
        cli.main(["evaluate", f"checkpoint={model}", f"out={tmp_path / 'eval'}",
                  *dataset_args(speech, tmp_path / "cache"), "splits=[speech]",
                  "dataset.test_splits=[speech]"])
    finally:
        sys.argv = argv
    _, splits = load_evaluation(tmp_path / "eval")
    hyps = {u.id: u.hypothesis for u in splits["speech"]}
    assert len(hyps) == len(SENTENCES)
    assert {Path(p).stem: t for p, t in texts.items()} == hyps
    assert any(hyps.values())  # text, not only blanks: the comparison means something


def test_features_are_the_data_paths(speech, talkative, tmp_path):
    """The recogniser's features of a 22.05 kHz stereo file are exactly the evaluate loader's."""
    asr = Recognizer.load(talkative["packed"])
    data = AsrDataModule({"root": str(speech), "cache_dir": str(tmp_path), "num_workers": 0,
                          "test_splits": ["speech"]},
                         tokenizer=asr.tokenizer, frontend=asr.model.frontend)
    batch = next(iter(data.eval_dataloader(speech, "speech")))
    for i, uid in enumerate(batch["ids"]):
        path = next((speech / "speech").rglob(f"{uid}.wav"))
        feats = asr.features(load_audio(path))
        assert torch.equal(feats, batch["feats"][i, : batch["feat_lens"][i]])


def test_python_api_any_rate_and_channels(speech, talkative):
    asr = Recognizer.load(talkative["packed"])
    path = sorted((speech / "speech").rglob("*.wav"))[0]
    audio, rate = sf.read(path, dtype="float32", always_2d=True)  # (T, 2)
    waveform = torch.from_numpy(audio.T.copy())  # (channels, T), as torchaudio.load gives it
    text = asr.transcribe(waveform, rate)
    assert text == asr.transcribe_files([path])[0].text
    # The same audio at 16 kHz mono, resampled by the caller the same way, reads the same.
    assert asr.transcribe(load_audio(path), 16000) == text


def test_bad_files_are_named_and_the_others_go_on(speech, talkative, tmp_path, capsys):
    good = sorted((speech / "speech").rglob("*.wav"))
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really a wave file")
    listing = tmp_path / "files.txt"
    listing.write_text(f"# my files\n{good[0]}\nbroken.wav\nmissing.flac\n\n{good[1]}\n")
    assert expand_inputs(listing) == [good[0], broken, tmp_path / "missing.flac", good[1]]
    out = tmp_path / "texts.jsonl"
    with pytest.raises(SystemExit) as stop:
        _transcribe([f"model={talkative['packed']}", f"audio={listing}", f"out={out}",
                     "format=jsonl"])
    assert stop.value.code == 1
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"] for r in rows] == [str(p) for p in expand_inputs(listing)]
    assert "text" in rows[0] and "text" in rows[3]
    assert "error" in rows[1] and "error" in rows[2]
    logged = capsys.readouterr().err
    assert f"{broken}: unreadable audio" in logged and "missing.flac: no such file" in logged


@pytest.mark.parametrize("what", ["model", "input"])
def test_out_never_overwrites_the_model_or_an_input(what, speech, talkative, capsys):
    wav = sorted((speech / "speech").rglob("*.wav"))[0]
    before = {p: p.read_bytes() for p in (talkative["packed"], wav)}
    out = talkative["packed"] if what == "model" else wav
    with pytest.raises(SystemExit):  # Hydra prints the error and exits 1
        _transcribe([f"model={talkative['packed']}", f"audio={wav}", f"out={out}"])
    assert f"out={out} is the model or one of the inputs: refusing to overwrite" in (
        capsys.readouterr().err)
    assert all(p.read_bytes() == b for p, b in before.items())


@pytest.mark.parametrize("command", ["transcribe", "evaluate"])
def test_threads_out_of_range_is_named(command, talkative, capsys):
    model = "model" if command == "transcribe" else "checkpoint"
    args = [f"{model}={talkative['packed']}", "threads=-2"]
    if command == "transcribe":
        args.append("audio=nothing.wav")
    argv = list(sys.argv)
    try:
        with pytest.raises(SystemExit):
            cli.main([command, *args])
    finally:
        sys.argv = argv
    err = capsys.readouterr().err
    assert "threads must be an integer >= 0 (0 = torch's default), got -2" in err
