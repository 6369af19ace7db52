"""The generated corpus: determinism, LibriSpeech layout, no leakage, manifest, resume."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from lowbit_asr.commands import corpus as corpus_command
from lowbit_asr.data import corpus, texts
from lowbit_asr.data.corpus import IN_PROGRESS, MANIFEST, SIZES, CorpusManifest, generate_corpus
from lowbit_asr.data.corrupt import corrupt

UTT_NAME = re.compile(r"^(\d+)-(\d+)-(\d{4})\.flac$")
TRANSCRIPT_LINE = re.compile(r"^(\d+)-(\d+)-(\d{4}) ([A-Z']+(?: [A-Z']+)*)$")


# ---------------------------------------------------------------- text normalisation (no engines)


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        ('"My dear Mr. Bennet," said his lady.', "MY DEAR MISTER BENNET SAID HIS LADY"),
        (
            "Mrs. Long and Dr. Grant went to St. James's.",
            "MISSUS LONG AND DOCTOR GRANT WENT TO SAINT JAMES'S",
        ),
        ("It was _very_ well-bred of him--indeed!", "IT WAS VERY WELL BRED OF HIM INDEED"),
        ("The eclat of the naïveté was great.", "THE ECLAT OF THE NAIVETE WAS GREAT"),
    ],
)
def test_normalise_as_librispeech(raw: str, text: str) -> None:
    sentence = texts.normalise(raw)
    assert sentence is not None
    assert sentence.text == text
    # The engines read exactly the transcript's words.
    spoken_words = re.sub(r"[,;:.!?]", "", sentence.spoken).split()
    assert [w.upper() for w in spoken_words] == text.split()


@pytest.mark.parametrize(
    "raw",
    [
        "She was born in 1787 at home.",
        "Too short here.",
        "Miss ---- was there with us.",
        "Sugar, &c. was bought for them.",
        " ".join(["word"] * 36),
    ],
)
def test_normalise_drops_unusable(raw: str) -> None:
    assert texts.normalise(raw) is None


def test_split_sentences_skips_headings_and_keeps_abbreviations() -> None:
    lines = ["CHAPTER IV", "", "Mr. Knightley came in. He sat down", "by the fire!", "", "THE END"]
    assert texts.split_sentences(lines) == ["Mister Knightley came in.", "He sat down by the fire!"]


def test_size_table_has_tiny_and_mini() -> None:
    assert {"tiny", "mini"} <= set(SIZES)
    assert SIZES["mini"].train_minutes + SIZES["mini"].train_minutes_after_test >= 120


def _plans(
    monkeypatch: pytest.MonkeyPatch, train_minutes: float, **change: object
) -> tuple[corpus.CorpusPlan, corpus.CorpusPlan]:
    """Plans (seed 3) of a small size ``base`` and of ``changed``, the same size with ``change``."""
    base = corpus.CorpusSize(
        train_minutes=train_minutes, dev_minutes=1.0, test_minutes=1.0, chapter_sentences=(3, 5)
    )
    monkeypatch.setitem(SIZES, "base", base)
    monkeypatch.setitem(SIZES, "changed", dataclasses.replace(base, **change))
    return corpus.plan_corpus("base", 3), corpus.plan_corpus("changed", 3)


def test_train_after_test_grows_train_and_keeps_the_held_out_plan(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    small, grown = _plans(monkeypatch, 3.0, train_minutes_after_test=6.0)
    # The smaller plan is a prefix of the grown one: same train start, same dev and test.
    assert grown.chapters[: len(small.chapters)] == small.chapters
    extra = grown.chapters[len(small.chapters) :]
    assert extra and {c.split for c in extra} == {"train"}
    seconds = sum(corpus._estimated_seconds(c.voice, c.sentences) for c in extra)
    assert 6.0 * 60 <= seconds < 6.0 * 60 + 60  # stops at the first chapter past the target
    # New speakers, new chapters, new sentences; still only training voices and books.
    ids = [c.speaker for c in small.chapters]
    assert all(c.speaker > max(ids) for c in extra)
    read = {(c.source, c.first_sentence) for c in small.chapters}
    assert not read & {(c.source, c.first_sentence) for c in extra}
    assert {c.source for c in extra} <= set(corpus.TRAIN_BOOKS)
    heldout = {(c.voice.engine, c.voice.voice) for c in small.chapters if c.split != "train"}
    assert not heldout & {(c.voice.engine, c.voice.voice) for c in extra}


def test_noisy_train_copies_draw_their_own_stream_and_leave_the_plan_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clean, noisy = _plans(monkeypatch, 4.0, noisy_train_every=2)
    # Everything but the noisy seeds is the plan without them.
    assert [dataclasses.replace(c, noisy_seeds=()) for c in noisy.chapters] == list(clean.chapters)
    train = [c for c in noisy.chapters if c.split == "train"]
    assert len(train) >= 4
    for k, c in enumerate(train):
        assert len(c.noisy_seeds) == (len(c.sentences) if k % 2 == 0 else 0)
    assert not any(c.noisy_seeds for c in noisy.chapters if c.split != "train")
    seeds = [s for c in train for s in c.noisy_seeds]
    test_seeds = {s for c in noisy.chapters for s in c.corruption_seeds}
    assert len(set(seeds)) == len(seeds) and not set(seeds) & test_seeds
    # The copy lives under its own chapter id: no utterance id repeats one of train's.
    copies = {cp[0]: cp[1] for cp in train[0].copies()}
    assert copies == {"train": train[0].chapter,
                      "train-noisy": train[0].chapter + corpus.NOISY_CHAPTER_OFFSET}
    assert corpus.plan_corpus("changed", 4).chapters != noisy.chapters


def test_held_out_stream_leaves_mini_train_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    # mini before its held-out splits grew: 15-minute dev and test in train-length chapters,
    # drawn from the main stream (the v1 corpus). Its train must be today's, byte for byte.
    monkeypatch.setitem(
        SIZES,
        "mini-v1",
        dataclasses.replace(
            SIZES["mini"], dev_minutes=15.0, test_minutes=15.0, heldout_chapter_sentences=None
        ),
    )
    old, new = corpus.plan_corpus("mini-v1", 0), corpus.plan_corpus("mini", 0)
    train = [c for c in new.chapters if c.split == "train"]
    assert train == [c for c in old.chapters if c.split == "train"]
    assert len(train) == 141 and sum(bool(c.noisy_seeds) for c in train) == 71
    heldout = [c for c in new.chapters if c.split != "train"]
    assert heldout and new.chapters[len(train) :] == tuple(heldout)  # train, then dev and test
    lo, hi = SIZES["mini"].heldout_chapter_sentences or (0, 0)
    assert all(lo <= len(c.sentences) <= hi for c in heldout)
    for split, minutes in (("dev", 30.0), ("test-clean", 36.0)):
        chapters = [c for c in heldout if c.split == split]
        seconds = sum(corpus._estimated_seconds(c.voice, c.sentences) for c in chapters)
        assert minutes * 60 <= seconds < minutes * 60 + 60
        assert len({c.speaker for c in chapters}) == len(chapters) >= 60  # one chapter each
    # Ids: one chapter and one speaker each, none shared with train or its noisy copies.
    ids = [cid for c in new.chapters for split, cid, _ in c.copies() if split != "test-other"]
    assert len(ids) == len(set(ids))
    assert len({c.speaker for c in new.chapters}) == len(new.chapters)
    # The held-out draws are new (own stream), the corruption seeds never repeat.
    assert {(c.source, c.first_sentence) for c in heldout} != {
        (c.source, c.first_sentence) for c in old.chapters if c.split != "train"
    }
    seeds = [s for c in new.chapters for s in (*c.corruption_seeds, *c.noisy_seeds)]
    assert len(seeds) == len(set(seeds))


def test_small_keeps_minis_held_out_splits() -> None:
    mini, small = corpus.plan_corpus("mini", 0), corpus.plan_corpus("small", 0)
    assert small.chapters[: len(mini.chapters)] == mini.chapters
    extra = small.chapters[len(mini.chapters) :]
    assert extra and {c.split for c in extra} == {"train"}
    assert min(c.chapter for c in extra) > max(c.chapter for c in mini.chapters)
    assert min(c.speaker for c in extra) > max(c.speaker for c in mini.chapters)


# ---------------------------------------------------------------- corruption (no engines)


def test_corrupt_is_seeded_and_keeps_length() -> None:
    t = np.arange(16000) / 16000
    clean = (0.5 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    a, draws = corrupt(clean, seed=7)
    b, _ = corrupt(clean, seed=7)
    c, _ = corrupt(clean, seed=8)
    assert a.shape == clean.shape and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert 5.0 <= draws.snr_db <= 20.0
    assert np.isclose(np.max(np.abs(a)), 0.5, atol=1e-3)  # peak level kept


# ---------------------------------------------------------------- the tiny corpus


def test_tiny_is_byte_identical_for_a_seed(tiny_corpus: CorpusManifest, tmp_path: Path) -> None:
    # Another worker count too: the bytes must not depend on scheduling.
    again = generate_corpus(tmp_path / "again", size="tiny", seed=0, workers=1)
    assert tree_hashes(again.root) == tree_hashes(tiny_corpus.root)


def test_tiny_differs_for_another_seed(tiny_corpus: CorpusManifest, tmp_path: Path) -> None:
    reference = tree_hashes(tiny_corpus.root)
    other = tree_hashes(generate_corpus(tmp_path / "other", size="tiny", seed=1).root)
    assert other[MANIFEST] != reference[MANIFEST]
    shared = set(other) & set(reference) - {MANIFEST}
    assert all(other[p] != reference[p] for p in shared)


def test_tiny_has_librispeech_layout(tiny_corpus: CorpusManifest) -> None:
    root = tiny_corpus.root
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(corpus.ALL_SPLITS)
    for split in corpus.ALL_SPLITS:
        chapters = [p for p in (root / split).glob("*/*") if p.is_dir()]
        assert chapters, split
        for chapter_dir in chapters:
            speaker, chapter = chapter_dir.parent.name, chapter_dir.name
            trans = chapter_dir / f"{speaker}-{chapter}.trans.txt"
            lines = trans.read_text().splitlines()
            ids = []
            for line in lines:
                m = TRANSCRIPT_LINE.match(line)
                assert m, line
                assert (m[1], m[2]) == (speaker, chapter)
                assert texts.MIN_WORDS <= len(m[4].split()) <= texts.MAX_WORDS
                ids.append(line.split(" ", 1)[0])
            audio = sorted(p.name for p in chapter_dir.glob("*.flac"))
            assert audio == [f"{i}.flac" for i in ids]
            assert ids == sorted(ids)
            for name in audio:
                assert UTT_NAME.match(name)
                info = sf.info(str(chapter_dir / name))
                assert (info.samplerate, info.channels) == (16000, 1)
                assert (info.format, info.subtype) == ("FLAC", "PCM_16")
    total = sum(tiny_corpus.splits[s].seconds for s in corpus.SPLITS)
    assert 120 <= total <= 240, total  # 2-4 minutes over the four splits (+ train-noisy)


def test_tiny_test_voices_and_books_are_unseen_in_train(tiny_corpus: CorpusManifest) -> None:
    by_split: dict[str, list[dict[str, object]]] = {}
    for spec in tiny_corpus.speakers.values():
        by_split.setdefault(str(spec["split"]), []).append(spec)
    train_voices = {(s["engine"], s["voice"]) for s in by_split["train"]}
    for split in ("dev", "test-clean"):
        assert not {(s["engine"], s["voice"]) for s in by_split[split]} & train_voices
        accents = {s["accent"] for s in by_split[split]} - {""}
        assert not accents & {s["accent"] for s in by_split["train"]}
        assert not set(tiny_corpus.splits[split].sources) & set(tiny_corpus.splits["train"].sources)
    train_speakers = set(_speakers(tiny_corpus.root / "train"))
    for split in ("dev", "test-clean", "test-other"):
        assert not set(_speakers(tiny_corpus.root / split)) & train_speakers
    # All three engines are mixed into training.
    assert {s["engine"] for s in by_split["train"]} == {"espeak-ng", "flite", "festival"}


def test_tiny_test_other_is_test_clean_corrupted(tiny_corpus: CorpusManifest) -> None:
    root = tiny_corpus.root
    clean = sorted(p.relative_to(root / "test-clean") for p in (root / "test-clean").rglob("*.*"))
    other = sorted(p.relative_to(root / "test-other") for p in (root / "test-other").rglob("*.*"))
    assert clean == other
    for rel in clean:
        a, b = root / "test-clean" / rel, root / "test-other" / rel
        if rel.suffix == ".txt":
            assert a.read_text() == b.read_text()
        else:
            assert sf.info(str(a)).frames == sf.info(str(b)).frames
            assert a.read_bytes() != b.read_bytes()
    noisy = {p.stem for p in (root / "train-noisy").rglob("*.flac")}
    assert set(tiny_corpus.corruptions) == {p.stem for p in clean if p.suffix == ".flac"} | noisy


def test_tiny_train_noisy_is_every_second_train_chapter_corrupted(
    tiny_corpus: CorpusManifest,
) -> None:
    root = tiny_corpus.root
    train = sorted((root / "train").glob("*/*"))
    noisy = sorted((root / "train-noisy").glob("*/*"))
    assert noisy and len(noisy) == (len(train) + 1) // 2
    offset = corpus.NOISY_CHAPTER_OFFSET
    for chapter_dir in noisy:
        speaker, chapter = chapter_dir.parent.name, int(chapter_dir.name)
        source = root / "train" / speaker / str(chapter - offset)  # same reader, same sentences
        assert source in train[::2]
        clean_lines = (source / f"{speaker}-{chapter - offset}.trans.txt").read_text().splitlines()
        noisy_lines = (chapter_dir / f"{speaker}-{chapter}.trans.txt").read_text().splitlines()
        assert [line.split(" ", 1)[1] for line in noisy_lines] == [
            line.split(" ", 1)[1] for line in clean_lines
        ]
        for line in noisy_lines:
            uid = line.split(" ", 1)[0]
            clean_uid = f"{speaker}-{chapter - offset}-{uid.rsplit('-', 1)[1]}"
            a, b = sf.read(source / f"{clean_uid}.flac")[0], sf.read(chapter_dir / f"{uid}.flac")[0]
            assert a.shape == b.shape and not np.array_equal(a, b)
            assert uid in tiny_corpus.corruptions
        assert tiny_corpus.chapters[str(chapter)]["copy_of"] == chapter - offset
    noisy_ids = {p.stem for p in (root / "train-noisy").rglob("*.flac")}
    assert not noisy_ids & {p.stem for p in (root / "train").rglob("*.flac")}
    assert tiny_corpus.splits["train-noisy"].utterances == len(noisy_ids)


def test_tiny_manifest_records_the_run(tiny_corpus: CorpusManifest) -> None:
    m = CorpusManifest.load(tiny_corpus.root)
    assert (m.seed, m.size) == (0, "tiny")
    assert m.engine_versions["espeak-ng"] not in ("", "not installed")
    for split, summary in m.splits.items():
        files = list((tiny_corpus.root / split).rglob("*.flac"))
        assert summary.utterances == len(files)
        seconds = sum(sf.info(str(f)).duration for f in files)
        assert summary.seconds == pytest.approx(seconds, abs=0.01)
        assert summary.hours == pytest.approx(seconds / 3600, abs=1e-4)
    for speaker in _speakers(tiny_corpus.root / "train"):
        assert m.speakers[speaker]["split"] == "train"
    assert m.megabytes > 0


def test_rerun_is_a_no_op(tiny_corpus: CorpusManifest, caplog: pytest.LogCaptureFixture) -> None:
    before = {p: p.stat().st_mtime_ns for p in tiny_corpus.root.rglob("*")}
    with caplog.at_level(logging.INFO, logger="lowbit_asr.data.corpus"):
        again = generate_corpus(tiny_corpus.root, size="tiny", seed=0)
    assert "nothing to do" in caplog.text
    assert again == tiny_corpus
    assert {p: p.stat().st_mtime_ns for p in tiny_corpus.root.rglob("*")} == before


def test_another_corpus_in_the_folder_is_refused(
    tiny_corpus: CorpusManifest, tmp_path: Path
) -> None:
    (tmp_path / MANIFEST).write_text(
        (tiny_corpus.root / MANIFEST).read_text().replace('"seed": 0', '"seed": 5')
    )
    with pytest.raises(FileExistsError, match="another corpus"):
        generate_corpus(tmp_path, size="tiny", seed=0)


def test_a_corpus_of_an_older_format_is_refused_untouched_or_replaced(
    tiny_corpus: CorpusManifest, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "corpus"
    shutil.copytree(tiny_corpus.root, root)
    older = json.loads((root / MANIFEST).read_text())
    older["format"] = "lowbit-asr embedded corpus v1"
    del older["size_spec"]["heldout_chapter_sentences"]
    (root / MANIFEST).write_text(json.dumps(older))
    before = tree_hashes(root)
    with pytest.raises(FileExistsError, match=r"corpus v1.*rm -r") as refusal:
        generate_corpus(root, size="tiny", seed=0)
    assert str(root) in str(refusal.value)
    assert corpus_command.main(["--size", "tiny", "--seed", "0", "--out", str(root)]) == 1
    assert f"rm -r {root}" in capsys.readouterr().err
    assert tree_hashes(root) == before  # nothing deleted, nothing added
    # An interrupted run of the older recipe is not resumed either.
    (root / MANIFEST).unlink()
    stamp = {k: older[k] for k in ("format", "seed", "size", "size_spec", "engine_versions")}
    (root / IN_PROGRESS).write_text(json.dumps(stamp, sort_keys=True))
    with pytest.raises(FileExistsError, match="interrupted run of a corpus of another recipe"):
        generate_corpus(root, size="tiny", seed=0)
    # --overwrite replaces every split: the result is this recipe's corpus and nothing else.
    generate_corpus(root, size="tiny", seed=0, overwrite=True)
    assert tree_hashes(root) == tree_hashes(tiny_corpus.root)


def test_interrupted_run_resumes_to_the_same_bytes(
    tiny_corpus: CorpusManifest, tmp_path: Path
) -> None:
    root = tmp_path / "corpus"
    shutil.copytree(tiny_corpus.root, root)
    # Simulate a run killed while writing one chapter: no manifest, a missing transcript and
    # a missing audio file in that chapter, and the in-progress stamp left behind.
    stamp = json.loads(json.dumps(tiny_corpus.identity()))
    (root / MANIFEST).unlink()
    (root / IN_PROGRESS).write_text(json.dumps(stamp, sort_keys=True))
    trans = next((root / "train").rglob("*.trans.txt"))
    trans.unlink()
    next(trans.parent.glob("*.flac")).unlink()
    generate_corpus(root, size="tiny", seed=0)
    assert tree_hashes(root) == tree_hashes(tiny_corpus.root)


def test_a_corpus_of_another_size_spec_is_never_completed_in_place(
    tiny_corpus: CorpusManifest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No migration: a corpus made with another plan (here: before its size had train-noisy)
    is refused, and replaced only when asked to."""
    root = tmp_path / "corpus"
    with monkeypatch.context() as patch:
        patch.setitem(SIZES, "tiny", dataclasses.replace(SIZES["tiny"], noisy_train_every=0))
        older = generate_corpus(root, size="tiny", seed=0)
    assert "train-noisy" not in older.splits and not (root / "train-noisy").exists()
    with pytest.raises(FileExistsError, match=r"another corpus \(its size_spec differ"):
        generate_corpus(root, size="tiny", seed=0)
    generate_corpus(root, size="tiny", seed=0, overwrite=True)
    assert tree_hashes(root) == tree_hashes(tiny_corpus.root)


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        corpus_command.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--size" in out and "--seed" in out and "--out" in out


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under root, keyed by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _speakers(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir())


def test_size_spec_leaves_out_the_fields_a_size_does_not_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Corpora made before train_minutes_after_test and noisy_train_every existed keep their
    # identity: a size that uses neither records the fields it always had.
    old_fields = {
        "train_minutes", "dev_minutes", "test_minutes", "chapter_sentences", "chapters_per_speaker"
    }
    plain = corpus.CorpusSize(
        train_minutes=3.0, dev_minutes=1.0, test_minutes=1.0, chapter_sentences=(3, 5)
    )
    monkeypatch.setitem(SIZES, "plain", plain)
    assert set(corpus.size_spec("plain")) == old_fields
    assert corpus.size_spec("small")["train_minutes_after_test"] == 720.0
    assert corpus.size_spec("tiny")["noisy_train_every"] == 2
    assert corpus.size_spec("mini")["heldout_chapter_sentences"] == (4, 8)


def test_a_corpus_of_another_format_is_refused_on_load(tiny_corpus, tmp_path):
    """An older recipe's corpus (other dev/test splits) is never read as this one's."""
    from lowbit_asr.data.datamodule import AsrDataModule

    old = tmp_path / "old"
    shutil.copytree(tiny_corpus.root, old)
    manifest = json.loads((old / MANIFEST).read_text())
    manifest["format"] = "lowbit-asr embedded corpus v1"
    (old / MANIFEST).write_text(json.dumps(manifest))
    data = AsrDataModule({"root": str(old), "cache_dir": str(tmp_path / "cache")})
    with pytest.raises(ValueError, match=r"old holds a corpus of another recipe.*regenerate"):
        data.manifest("train")
    corpus.check_format(tiny_corpus.root)  # this recipe's: fine
    corpus.check_format(tmp_path)  # no manifest (e.g. real LibriSpeech): fine
