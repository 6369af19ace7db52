"""The LibriSpeech-layout reader: scanning, caching, every bad input, conversion on load."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from lowbit_asr.data import librispeech
from lowbit_asr.data.audio import BadUtteranceError, load_audio
from lowbit_asr.data.corpus import CorpusManifest
from lowbit_asr.data.librispeech import read_split

RATE = 16000


def tone(seconds: float = 0.5, rate: int = RATE, freq: float = 440.0) -> np.ndarray:
    """A (T,) float32 sine."""
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def make_chapter(
    root: Path, split: str = "train", speaker: int = 7, chapter: int = 70, n: int = 3
) -> Path:
    """Write a good chapter of ``n`` one-second utterances; returns its folder."""
    folder = root / split / str(speaker) / str(chapter)
    folder.mkdir(parents=True)
    lines = []
    for i in range(n):
        uid = f"{speaker}-{chapter}-{i:04d}"
        sf.write(folder / f"{uid}.flac", tone(1.0, freq=200 + 100 * i), RATE, subtype="PCM_16")
        lines.append(f"{uid} WORDS OF UTTERANCE {i}\n")
    (folder / f"{speaker}-{chapter}.trans.txt").write_text("".join(lines))
    return folder


# ---------------------------------------------------------------- good data


def test_reads_a_chapter(tmp_path: Path) -> None:
    make_chapter(tmp_path)
    m = read_split(tmp_path, "train")
    assert [u.id for u in m.utterances] == ["7-70-0000", "7-70-0001", "7-70-0002"]
    u = m.utterances[1]
    assert (u.speaker, u.text, u.duration) == ("7", "WORDS OF UTTERANCE 1", 1.0)
    assert Path(u.path).is_absolute() and Path(u.path).exists()
    assert (m.skipped, m.resampled, m.downmixed) == ([], 0, 0)
    assert m.hours == pytest.approx(3 / 3600)


def test_reads_the_tiny_corpus(tiny_corpus: CorpusManifest, tmp_path: Path) -> None:
    for split, summary in tiny_corpus.splits.items():
        # cache_dir: never write into the session corpus (other tests hash its files).
        m = read_split(tiny_corpus.root, split, cache_dir=tmp_path)
        assert len(m) == summary.utterances
        assert sum(u.duration for u in m.utterances) == pytest.approx(summary.seconds, abs=0.01)
        assert len({u.speaker for u in m.utterances}) == summary.speakers
        assert (m.skipped, m.resampled, m.downmixed) == ([], 0, 0)
    audio = load_audio(m.utterances[0].path)
    assert audio.dtype == torch.float32 and audio.ndim == 1
    assert audio.numel() == round(m.utterances[0].duration * RATE)


def test_manifest_is_cached_and_a_changed_folder_rescanned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = make_chapter(tmp_path)
    first = read_split(tmp_path, "train")
    assert first.cache_path == str(tmp_path / "train.jsonl")  # beside the data
    header = json.loads((tmp_path / "train.jsonl").read_text().splitlines()[0])
    assert header["utterances"] == 3

    def no_scan(*args: object) -> None:
        raise AssertionError("rescanned although nothing changed")

    with monkeypatch.context() as patch:
        patch.setattr(librispeech, "_scan", no_scan)
        assert read_split(tmp_path, "train").utterances == first.utterances
    # A new utterance changes the folder: the cache is stale and must not be used.
    sf.write(folder / "7-70-0003.flac", tone(), RATE)
    with open(folder / "7-70.trans.txt", "a") as f:
        f.write("7-70-0003 A FOURTH ONE\n")
    assert len(read_split(tmp_path, "train")) == 4


def test_cache_dir_keeps_the_data_folder_clean(tmp_path: Path) -> None:
    make_chapter(tmp_path / "data")
    m = read_split(tmp_path / "data", "train", cache_dir=tmp_path / "cache")
    assert Path(m.cache_path or "").parent == tmp_path / "cache"
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["train"]


# ---------------------------------------------------------------- bad data


def _corrupt_audio(folder: Path) -> tuple[Path, str]:
    path = folder / "7-70-0001.flac"
    path.write_bytes(b"this is not audio" * 10)
    return path, "unreadable audio"


def _zero_length(folder: Path) -> tuple[Path, str]:
    (folder / "7-70-0001.flac").unlink()
    path = folder / "7-70-0001.wav"  # libsndfile cannot write an empty FLAC; WAV can
    sf.write(path, np.zeros(0, np.float32), RATE)
    return path, "zero-length audio"


def _missing_line(folder: Path) -> tuple[Path, str]:
    trans = folder / "7-70.trans.txt"
    trans.write_text("".join(x + "\n" for x in trans.read_text().splitlines() if "-0001 " not in x))
    return folder / "7-70-0001.flac", "no transcript line"


def _line_without_audio(folder: Path) -> tuple[Path, str]:
    (folder / "7-70-0001.flac").unlink()
    return folder / "7-70.trans.txt", "has no audio file"


def _empty_transcript(folder: Path) -> tuple[Path, str]:
    trans = folder / "7-70.trans.txt"
    trans.write_text(trans.read_text().replace("7-70-0001 WORDS OF UTTERANCE 1", "7-70-0001 "))
    return folder / "7-70-0001.flac", "empty transcript"


Breaker = Callable[[Path], tuple[Path, str]]  # breaks a good chapter: (bad path, reason)
BREAKERS: list[Breaker] = [
    _corrupt_audio,
    _zero_length,
    _missing_line,
    _line_without_audio,
    _empty_transcript,
]


@pytest.mark.parametrize("breaker", BREAKERS, ids=lambda f: f.__name__.strip("_"))
def test_bad_utterance_stops(tmp_path: Path, breaker: Breaker) -> None:
    bad_path, reason = breaker(make_chapter(tmp_path))
    with pytest.raises(BadUtteranceError, match=reason) as err:
        read_split(tmp_path, "train", on_bad_utterance="stop")
    assert err.value.path == str(bad_path.resolve())
    assert str(bad_path.name) in str(err.value)


@pytest.mark.parametrize("breaker", BREAKERS, ids=lambda f: f.__name__.strip("_"))
def test_bad_utterance_skipped_counted_and_listed(tmp_path: Path, breaker: Breaker) -> None:
    bad_path, reason = breaker(make_chapter(tmp_path))
    m = read_split(tmp_path, "train", on_bad_utterance="skip")
    assert [u.id for u in m.utterances] == ["7-70-0000", "7-70-0002"]
    assert len(m.skipped) == 1
    assert m.skipped[0].path == str(bad_path.resolve()) and reason in m.skipped[0].reason
    skipped_file = tmp_path / "train.skipped.jsonl"
    listed = [json.loads(row) for row in skipped_file.read_text().splitlines()]
    assert listed == [{"path": m.skipped[0].path, "reason": m.skipped[0].reason}]
    # From the cache, skip still skips and stop still stops.
    assert read_split(tmp_path, "train", on_bad_utterance="skip").skipped == m.skipped
    with pytest.raises(BadUtteranceError, match=reason):
        read_split(tmp_path, "train")


def test_missing_transcript_file_skips_its_audio(tmp_path: Path) -> None:
    folder = make_chapter(tmp_path)
    (folder / "7-70.trans.txt").unlink()
    m = read_split(tmp_path, "train", on_bad_utterance="skip")
    assert len(m) == 0 and len(m.skipped) == 3


def test_missing_split_names_the_path_and_lists_splits(tmp_path: Path) -> None:
    make_chapter(tmp_path, split="dev-clean")
    make_chapter(tmp_path, split="test-clean")
    with pytest.raises(FileNotFoundError) as err:
        read_split(tmp_path, "train-clean-100")
    message = str(err.value)
    assert str(tmp_path / "train-clean-100") in message
    assert "dev-clean" in message and "test-clean" in message
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_split(tmp_path / "nowhere", "train")


def test_unknown_mode_is_refused(tmp_path: Path) -> None:
    make_chapter(tmp_path)
    with pytest.raises(ValueError, match="on_bad_utterance"):
        read_split(tmp_path, "train", on_bad_utterance="ignore")


# ---------------------------------------------------------------- conversion on load


def test_load_audio_resamples_and_downmixes(tmp_path: Path) -> None:
    rate = 44100
    left, right = tone(1.0, rate, 300.0), tone(1.0, rate, 300.0) * 0.5
    folder = tmp_path / "train" / "7" / "70"
    folder.mkdir(parents=True)
    sf.write(folder / "7-70-0000.flac", np.stack([left, right], axis=1), rate)  # (T, 2)
    sf.write(folder / "7-70-0001.wav", tone(1.0, 8000), 8000)
    (folder / "7-70.trans.txt").write_text("7-70-0000 STEREO\n7-70-0001 NARROW BAND\n")
    m = read_split(tmp_path, "train")
    assert (m.resampled, m.downmixed) == (2, 1)
    assert m.utterances[0].duration == pytest.approx(1.0)

    audio = load_audio(folder / "7-70-0000.flac")
    assert audio.shape == (RATE,) and audio.dtype == torch.float32
    # The mean of the channels, still a 300 Hz tone of amplitude 0.225.
    spectrum = np.abs(np.fft.rfft(audio.numpy()))
    assert np.argmax(spectrum) == 300
    assert float(audio[1000:-1000].abs().max()) == pytest.approx(0.225, abs=0.01)
    assert load_audio(folder / "7-70-0001.wav").shape == (RATE,)


def test_load_audio_keeps_16k_mono_samples(tmp_path: Path) -> None:
    path = tmp_path / "a.flac"
    sf.write(path, tone(), RATE, subtype="PCM_16")
    expected, _ = sf.read(path, dtype="float32")
    assert torch.equal(load_audio(path), torch.from_numpy(expected))


def test_load_audio_names_a_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.flac"
    path.write_bytes(b"garbage")
    with pytest.raises(BadUtteranceError, match="bad.flac"):
        load_audio(path)


def test_a_transcript_that_is_not_utf8_is_named(tmp_path):
    root = tmp_path / "corpus"
    chapter = root / "dev" / "1" / "10"
    chapter.mkdir(parents=True)
    sf.write(chapter / "1-10-0000.flac", np.zeros(1600, np.float32), 16000)
    (chapter / "1-10.trans.txt").write_bytes("1-10-0000 CAF\xc9\n".encode("latin-1"))
    with pytest.raises(BadUtteranceError, match=r"1-10.trans.txt: transcript is not valid UTF-8"):
        read_split(root, "dev", "stop", cache_dir=tmp_path / "cache")
    skipped = read_split(root, "dev", "skip", cache_dir=tmp_path / "cache2")
    assert not skipped.utterances
    assert any("not valid UTF-8" in s.reason for s in skipped.skipped)
