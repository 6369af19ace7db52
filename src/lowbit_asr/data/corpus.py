"""Generate the embedded speech corpus: TTS engines reading Jane Austen, in LibriSpeech's layout.

Layout (as LibriSpeech's)::

    <out>/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<utt:04d>.flac   16 kHz mono 16-bit
    <out>/<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt       "ID TEXT" lines
    <out>/manifest.json                                                  seed, versions, voices

Splits: ``train`` (Emma, Mansfield Park, Pride and Prejudice, Sense and Sensibility, training
voices), ``dev`` and ``test-clean`` (Persuasion, Northanger Abbey and Harvard sentences, read by
voices never used in training), ``test-other`` (the ``test-clean`` utterances, same ids,
reverberated and with noise at 5-20 dB SNR), and for sizes that ask for it ``train-noisy``
(every n-th train chapter through the same recipe with its own rooms and noises, under chapter
ids offset by ``NOISY_CHAPTER_OFFSET``: train on ``[train, train-noisy]`` to learn the noisy
condition that ``test-other`` measures).

Determinism: :func:`plan_corpus` draws every choice (voices, chapters, corruption seeds) from
generators seeded by ``seed`` before any parallel work starts; workers only execute the plan, so
the files are byte-identical for a seed on a machine with the same engine versions.

Held-out size: ``dev`` and ``test-clean`` are sized for paired comparisons of two models: the
target is a 95% interval of at most ±0.75 WER points on a paired difference bootstrapped over
speakers as blocks, hence mini's ~2.4x the words of v1 in short chapters (one speaker each).

CLI: ``lowbit-asr corpus --size mini --seed 0`` (into ``data/embedded-mini``, where
``conf/dataset/embedded_mini.yaml`` looks).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata, resources
from pathlib import Path

import numpy as np
import soundfile as sf

from lowbit_asr.data import texts
from lowbit_asr.data.audio import SAMPLE_RATE
from lowbit_asr.data.corrupt import corrupt, draw_corruption
from lowbit_asr.data.tts import Voice, synthesize
from lowbit_asr.data.voices import HELDOUT, TRAIN, VoiceDealer

log = logging.getLogger(__name__)

# v2: dev and test-clean of mini and small grew (30 and 36 minutes, 4-8 sentence chapters, their
# own generator stream); v1 corpora hold the old held-out splits and are never completed in place.
FORMAT = "lowbit-asr embedded corpus v2"
MANIFEST = "manifest.json"
# Present while a generation is under way; names the plan so that a rerun can resume it.
IN_PROGRESS = ".generating.json"
SPLITS = ("train", "dev", "test-clean", "test-other")
NOISY_SPLIT = "train-noisy"
ALL_SPLITS = (*SPLITS, NOISY_SPLIT)
# A noisy train chapter keeps its speaker (the same reader in another room) under this offset
# to its chapter id, so that its utterance ids never repeat one of ``train``'s.
NOISY_CHAPTER_OFFSET = 500_000
# Second entropy word of the generator behind the noisy copies: they draw from their own stream,
# so adding them to a size leaves every other draw of its plan (and every other file) unchanged.
_NOISY_STREAM = 0x6E6F697379
# The same for the held-out splits of sizes with ``heldout_chapter_sentences``: their voices,
# chapters and test-other seeds can change size without touching a single train draw.
_HELDOUT_STREAM = 0x68656C646F7574


# --------------------------------------------------------------------------------------------
# Sizes: the one table to edit.


@dataclass(frozen=True)
class CorpusSize:
    """How much audio each split should hold (estimated from word counts when planning)."""

    train_minutes: float  #: target audio in ``train``
    dev_minutes: float  #: target audio in ``dev``
    test_minutes: float  #: target audio in ``test-clean`` (``test-other`` is its copy)
    chapter_sentences: tuple[int, int]  #: a chapter holds this many consecutive sentences (incl.)
    chapters_per_speaker: int = 1  #: more voices beat more audio per voice for unseen voices
    #: more train audio, planned after dev and test-clean: growing train this way leaves the
    #: held-out splits byte-identical (the plan's earlier draws do not change)
    train_minutes_after_test: float = 0.0
    #: every n-th train chapter is also written reverberant and noisy (the ``test-other``
    #: recipe, its own draws) to ``train-noisy``; 0: no such split
    noisy_train_every: int = 0
    #: dev and test-clean chapters hold this many sentences (short chapters: more speakers per
    #: minute, for speaker-level confidence intervals), drawn from their own generator stream so
    #: that train is the plan without it, byte for byte; None: ``chapter_sentences``, main stream
    heldout_chapter_sentences: tuple[int, int] | None = None


SIZES: dict[str, CorpusSize] = {
    # For tests: ~3 min of audio over all splits, a handful of speakers, a few seconds to make.
    # Its held-out splits take mini's path (own stream, short chapters) at a few speakers each.
    "tiny": CorpusSize(
        train_minutes=1.2,
        dev_minutes=0.4,
        test_minutes=0.4,
        chapter_sentences=(3, 5),
        noisy_train_every=2,
        heldout_chapter_sentences=(2, 3),
    ),
    # The default: ~3 h of train audio from 141 voices (short chapters: more voices), and half
    # of its chapters again reverberant and noisy in train-noisy (1.6 h). dev (30 min) and
    # test-clean (36 min) are read in 4-8 sentence chapters, one speaker each: sized for a paired
    # WER difference of two models known to ±0.75 points (95%, speakers bootstrapped as blocks).
    # Its train is the v1 corpus's (15-minute held-out splits), byte for byte.
    "mini": CorpusSize(
        train_minutes=180.0,
        dev_minutes=30.0,
        test_minutes=36.0,
        chapter_sentences=(10, 20),
        noisy_train_every=2,
        heldout_chapter_sentences=(4, 8),
    ),
    # mini's plan plus 12 h of train read by ~570 more speakers; dev and test are mini's, byte
    # for byte, so WERs compare across the two. For budgets that would memorise mini's 3 h.
    "small": CorpusSize(
        train_minutes=180.0,
        dev_minutes=30.0,
        test_minutes=36.0,
        chapter_sentences=(10, 20),
        train_minutes_after_test=720.0,
        noisy_train_every=2,
        heldout_chapter_sentences=(4, 8),
    ),
}


def size_spec(size: str) -> dict[str, object]:
    """``SIZES[size]`` as recorded in the manifest (part of a corpus's identity).

    ``train_minutes_after_test``, ``noisy_train_every`` and ``heldout_chapter_sentences`` are
    left out when unset (0 or None), so that a size which does not use them records the fields
    it always had (its plan is the one made before they existed).
    """
    spec = asdict(SIZES[size])
    later_fields = ("train_minutes_after_test", "noisy_train_every", "heldout_chapter_sentences")
    for later_field in later_fields:
        if not spec[later_field]:
            del spec[later_field]
    return spec


TRAIN_BOOKS = ("emma", "mansfield_park", "pride_and_prejudice", "sense_and_sensibility")
HELDOUT_SOURCES = ("persuasion", "northanger_abbey", texts.HARVARD)
# Seconds per word at native tempo (espeak-ng: at -s 160), to plan durations before synthesis.
SECONDS_PER_WORD = {"espeak-ng": 0.335, "flite": 0.32, "festival": 0.335}


# --------------------------------------------------------------------------------------------
# The plan: every random choice, made before any audio exists.


@dataclass(frozen=True)
class Chapter:
    """One chapter to synthesise: consecutive sentences of one source read by one speaker."""

    split: str  #: "train", "dev" or "test-clean" (test-clean chapters also make test-other)
    speaker: int  #: LibriSpeech-style speaker id
    chapter: int  #: LibriSpeech-style chapter id
    voice: Voice  #: the speaker's voice
    source: str  #: book name or "harvard"
    first_sentence: int  #: index of the first sentence in the source's usable sentences
    sentences: tuple[texts.Sentence, ...]  #: what is read, in order
    corruption_seeds: tuple[int, ...] = ()  #: per utterance, for the test-other copy
    noisy_seeds: tuple[int, ...] = ()  #: per utterance, for the train-noisy copy

    def copies(self) -> tuple[tuple[str, int, tuple[int, ...]], ...]:
        """``(split, chapter id, corruption seeds)`` of every copy written; seeds () = clean."""
        out = [(self.split, self.chapter, ())]
        if self.corruption_seeds:
            out.append(("test-other", self.chapter, self.corruption_seeds))
        if self.noisy_seeds:
            out.append((NOISY_SPLIT, self.chapter + NOISY_CHAPTER_OFFSET, self.noisy_seeds))
        return tuple(out)

    def utterance_id(self, i: int, chapter: int | None = None) -> str:
        """LibriSpeech id of the i-th utterance: ``<speaker>-<chapter>-<i:04d>``."""
        return f"{self.speaker}-{self.chapter if chapter is None else chapter}-{i:04d}"

    def directory(self, root: Path, split: str | None = None, chapter: int | None = None) -> Path:
        """``<root>/<split>/<speaker>/<chapter>``."""
        chapter = self.chapter if chapter is None else chapter
        return root / (split or self.split) / str(self.speaker) / str(chapter)


@dataclass(frozen=True)
class CorpusPlan:
    """Everything needed to write a corpus; a pure function of (size, seed)."""

    size: str  #: a key of SIZES
    seed: int  #: seed of the generator behind every choice
    chapters: tuple[Chapter, ...]  #: train, dev, test-clean, then train_minutes_after_test


def _estimated_seconds(voice: Voice, sentences: tuple[texts.Sentence, ...]) -> float:
    words = sum(len(s.text.split()) for s in sentences)
    if voice.engine == "espeak-ng":
        return words * SECONDS_PER_WORD["espeak-ng"] * 160 / (voice.speed * voice.warp)
    return words * SECONDS_PER_WORD[voice.engine] * voice.stretch / voice.warp


class _ChapterDealer:
    """Hands out runs of consecutive sentences, round-robin over sources, never twice."""

    def __init__(
        self, sources: tuple[str, ...], lengths: tuple[int, int], rng: np.random.Generator
    ) -> None:
        self.blocks: dict[str, list[tuple[int, int]]] = {}
        for source in sources:
            n = len(texts.source_sentences(source))
            cuts = [0]
            while cuts[-1] < n:
                cuts.append(cuts[-1] + int(rng.integers(lengths[0], lengths[1] + 1)))
            # The last run may be short; drop it rather than bend the chapter length.
            blocks = [(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if b <= n]
            self.blocks[source] = [blocks[i] for i in rng.permutation(len(blocks))]
        self.order = [sources[i] for i in rng.permutation(len(sources))]
        self.turn = 0

    def next(self) -> tuple[str, int, tuple[texts.Sentence, ...]]:
        """The next (source, first sentence index, sentences)."""
        for _ in range(len(self.order)):
            source = self.order[self.turn % len(self.order)]
            self.turn += 1
            if self.blocks[source]:
                start, stop = self.blocks[source].pop(0)
                return source, start, texts.source_sentences(source)[start:stop]
        raise RuntimeError("ran out of sentences: the corpus size asks for more text than exists")


def plan_corpus(size: str, seed: int) -> CorpusPlan:
    """Draw every choice of a corpus (voices, chapters, corruption seeds) from seeded generators.

    One generator seeded by ``seed`` draws train (and, for sizes without
    ``heldout_chapter_sentences``, dev and test-clean); the held-out splits of sizes with it and
    the train-noisy copies draw from their own streams of the same seed. Ids are handed out in
    plan order (train, dev, test-clean, train after test), so no two chapters share one.
    """
    spec = SIZES[size]
    rng = np.random.default_rng(seed)
    train_voices = VoiceDealer(TRAIN, rng)
    heldout_voices = VoiceDealer(HELDOUT, rng)
    train_text = _ChapterDealer(TRAIN_BOOKS, spec.chapter_sentences, rng)
    # dev and test-clean draw from one dealer, so they never share a sentence. Built even when
    # unused below: its construction draws from ``rng``, and the train voices drawn after it must
    # stay those of the corpora made before held-out splits had their own stream.
    heldout_text = _ChapterDealer(HELDOUT_SOURCES, spec.chapter_sentences, rng)
    heldout_rng = rng  # where the test-other corruption seeds come from
    if spec.heldout_chapter_sentences is not None:
        heldout_rng = np.random.default_rng([seed, _HELDOUT_STREAM])
        heldout_voices = VoiceDealer(HELDOUT, heldout_rng)
        heldout_text = _ChapterDealer(
            HELDOUT_SOURCES, spec.heldout_chapter_sentences, heldout_rng
        )
    targets = (
        ("train", spec.train_minutes, train_voices, train_text),
        ("dev", spec.dev_minutes, heldout_voices, heldout_text),
        ("test-clean", spec.test_minutes, heldout_voices, heldout_text),
        ("train", spec.train_minutes_after_test, train_voices, train_text),
    )
    chapters: list[Chapter] = []
    speaker_id, chapter_id = 1000, 10000
    for split, minutes, voices, text in targets:
        planned = 0.0
        while planned < minutes * 60:
            voice = voices.next()
            for _ in range(spec.chapters_per_speaker):
                source, start, sentences = text.next()
                seeds: tuple[int, ...] = ()
                if split == "test-clean":
                    draws = heldout_rng.integers(0, 2**63 - 1, len(sentences))
                    seeds = tuple(int(s) for s in draws)
                chapters.append(
                    Chapter(split, speaker_id, chapter_id, voice, source, start, sentences, seeds)
                )
                planned += _estimated_seconds(voice, sentences)
                chapter_id += 1
            speaker_id += 1
    if spec.noisy_train_every:
        noisy_rng = np.random.default_rng([seed, _NOISY_STREAM])
        train = [i for i, c in enumerate(chapters) if c.split == "train"]
        for i in train[:: spec.noisy_train_every]:
            n = len(chapters[i].sentences)
            seeds = tuple(int(s) for s in noisy_rng.integers(0, 2**63 - 1, n))
            chapters[i] = replace(chapters[i], noisy_seeds=seeds)
    return CorpusPlan(size=size, seed=seed, chapters=tuple(chapters))


# --------------------------------------------------------------------------------------------
# The manifest.


@dataclass
class SplitSummary:
    """Counts for one split."""

    utterances: int  #: number of utterances
    seconds: float  #: total audio
    hours: float  #: the same, in hours
    speakers: int  #: distinct speakers
    chapters: int  #: distinct chapters
    sources: list[str]  #: books (and "harvard") read in this split


@dataclass
class CorpusManifest:
    """What ``manifest.json`` at the corpus root records."""

    format: str  #: FORMAT, bumped when the recipe changes what is written
    seed: int  #: the seed of the one generator behind every choice
    size: str  #: a key of SIZES
    size_spec: dict[str, object]  #: SIZES[size] at generation time
    engine_versions: dict[str, str]  #: Debian versions of the engines and texts (decide audio)
    library_versions: dict[str, str]  #: Python-side versions (numpy, scipy, libsndfile...)
    splits: dict[str, SplitSummary]  #: per split counts
    speakers: dict[str, dict[str, object]]  #: speaker id -> split and Voice settings
    chapters: dict[str, dict[str, object]]  #: chapter id -> speaker, source, first sentence
    #: test-other and train-noisy utterance id -> room/noise draws
    corruptions: dict[str, dict[str, float]]
    megabytes: float  #: size of the audio and transcripts on disk
    root: Path = field(default=Path("."), compare=False)  #: where it was read from (not saved)

    def identity(self) -> dict[str, object]:
        """What must match for an existing corpus to count as already generated."""
        return {
            "format": self.format,
            "seed": self.seed,
            "size": self.size,
            "size_spec": self.size_spec,
            "engine_versions": self.engine_versions,
        }

    def to_json(self) -> str:
        """Deterministic JSON text (no timestamps, sorted keys): part of the byte-identical tree."""
        data = asdict(self)
        data.pop("root")
        return json.dumps(data, indent=1, sort_keys=True) + "\n"

    @classmethod
    def load(cls, root: Path) -> CorpusManifest:
        """Read ``<root>/manifest.json``."""
        data = json.loads((root / MANIFEST).read_text())
        data["splits"] = {k: SplitSummary(**v) for k, v in data["splits"].items()}
        return cls(**data, root=root)


def _dpkg_version(package: str) -> str:
    try:
        proc = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package],
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError:
        return "unknown (no dpkg-query)"
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else "not installed"


def debian_packages(role: str | None = None) -> list[str]:
    """The Debian packages of ``data/debian-packages.txt`` (the one list, which the Makefile
    installs), those of ``role`` only if given (``corpus``: whose versions decide the corpus)."""
    text = (resources.files("lowbit_asr.data") / "debian-packages.txt").read_text("utf-8")
    rows = [line.split("#", 1)[0].split() for line in text.splitlines()]
    return [row[0] for row in rows if row and (role is None or row[1:2] == [role])]


def engine_versions() -> dict[str, str]:
    """Debian versions of everything that decides the audio and the text."""
    return {p: _dpkg_version(p) for p in debian_packages("corpus")}


def library_versions() -> dict[str, str]:
    """Versions of the Python-side libraries that touch the samples or the FLAC bytes."""
    versions = {p: metadata.version(p) for p in ("numpy", "scipy", "soundfile", "rdata")}
    versions["libsndfile"] = sf.__libsndfile_version__
    return versions


def _check_engines() -> None:
    missing = [e for e in ("espeak-ng", "flite", "festival") if shutil.which(e) is None]
    if missing:
        raise RuntimeError(
            f"TTS engines not found: {', '.join(missing)}. Install them with\n  apt-get install "
            "-y espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts "
            "r-cran-janeaustenr r-cran-stringr"
        )


# --------------------------------------------------------------------------------------------
# Execution.


def _to_int16(audio: np.ndarray) -> np.ndarray:
    return np.clip(np.round(audio * 32767.0), -32768, 32767).astype(np.int16)


def _write_chapter(chapter: Chapter, root: Path, tmp: Path) -> dict[str, list[int]]:
    """Synthesise and write one chapter (and its corrupted copies); returns samples per split.

    The transcript is written last and atomically: its presence marks the chapter complete,
    which is what a resumed run checks.
    """
    done = _completed_samples(chapter, root)
    if done is not None:
        return done
    audio = synthesize(chapter.voice, [s.spoken for s in chapter.sentences], tmp)
    lengths: dict[str, list[int]] = {}
    for split, chapter_id, seeds in chapter.copies():
        clips = [corrupt(a, s)[0] for a, s in zip(audio, seeds, strict=True)] if seeds else audio
        lengths[split] = [a.size for a in clips]
        directory = chapter.directory(root, split, chapter_id)
        directory.mkdir(parents=True, exist_ok=True)
        lines = []
        for i, (clip, sentence) in enumerate(zip(clips, chapter.sentences, strict=True)):
            uid = chapter.utterance_id(i, chapter_id)
            sf.write(
                directory / f"{uid}.flac",
                _to_int16(clip),
                SAMPLE_RATE,
                format="FLAC",
                subtype="PCM_16",
            )
            lines.append(f"{uid} {sentence.text}\n")
        trans = directory / f"{chapter.speaker}-{chapter_id}.trans.txt"
        partial = trans.with_suffix(".partial")
        partial.write_text("".join(lines))
        os.replace(partial, trans)
    return lengths


def _completed_samples(chapter: Chapter, root: Path) -> dict[str, list[int]] | None:
    """Sample counts of a chapter a previous (interrupted) run finished, else None."""
    lengths: dict[str, list[int]] = {}
    for split, chapter_id, _ in chapter.copies():
        directory = chapter.directory(root, split, chapter_id)
        if not (directory / f"{chapter.speaker}-{chapter_id}.trans.txt").exists():
            return None
        lengths[split] = [
            sf.info(str(directory / f"{chapter.utterance_id(i, chapter_id)}.flac")).frames
            for i in range(len(chapter.sentences))
        ]
    return lengths


def _summarise(
    plan: CorpusPlan, lengths: list[dict[str, list[int]]], root: Path, engines: dict[str, str]
) -> CorpusManifest:
    splits: dict[str, SplitSummary] = {}
    for split in ALL_SPLITS:
        rows = [(c, n[split]) for c, n in zip(plan.chapters, lengths, strict=True) if split in n]
        if split == NOISY_SPLIT and not rows:
            continue  # sizes without it record the four splits they always had
        seconds = sum(sum(n) for _, n in rows) / SAMPLE_RATE
        splits[split] = SplitSummary(
            utterances=sum(len(n) for _, n in rows),
            seconds=round(seconds, 2),
            hours=round(seconds / 3600, 4),
            speakers=len({c.speaker for c, _ in rows}),
            chapters=len(rows),
            sources=sorted({c.source for c, _ in rows}),
        )
    speakers = {str(c.speaker): {"split": c.split, **c.voice.to_dict()} for c in plan.chapters}
    chapters = {
        str(c.chapter): {
            "speaker": c.speaker,
            "split": c.split,
            "source": c.source,
            "first_sentence": c.first_sentence,
            "utterances": len(c.sentences),
        }
        for c in plan.chapters
    }
    for c in plan.chapters:
        if c.noisy_seeds:
            chapters[str(c.chapter + NOISY_CHAPTER_OFFSET)] = {
                **chapters[str(c.chapter)],
                "split": NOISY_SPLIT,
                "copy_of": c.chapter,
            }
    corruptions: dict[str, dict[str, float]] = {}
    for c in plan.chapters:
        for _, chapter_id, seeds in c.copies():
            for i, seed in enumerate(seeds):
                # Redraw the settings (cheap) rather than carry them back from the workers.
                draw = draw_corruption(np.random.default_rng(seed))
                corruptions[c.utterance_id(i, chapter_id)] = {
                    k: round(v, 3) for k, v in asdict(draw).items()
                }
    size_bytes = sum(
        p.stat().st_size for s in ALL_SPLITS for p in (root / s).rglob("*") if p.is_file()
    )
    return CorpusManifest(
        format=FORMAT,
        seed=plan.seed,
        size=plan.size,
        size_spec=size_spec(plan.size),
        engine_versions=engines,
        library_versions=library_versions(),
        splits=splits,
        speakers=speakers,
        chapters=chapters,
        corruptions=corruptions,
        megabytes=round(size_bytes / 1e6, 2),
        root=root,
    )


def generate_corpus(
    out_dir: Path, size: str = "mini", seed: int = 0, workers: int = 2, overwrite: bool = False
) -> CorpusManifest:
    """Generate (or find already generated) the corpus ``size`` for ``seed`` under ``out_dir``.

    If ``out_dir/manifest.json`` records the same seed, size and engine versions, nothing is done.
    An interrupted run with the same settings is resumed chapter by chapter. A different corpus in
    ``out_dir`` is an error unless ``overwrite``, which deletes its splits first. So is a corpus
    (or an interrupted run) of another ``FORMAT``: nothing of an older recipe is ever completed,
    resumed or kept, so old and new splits never mix in one folder.
    """
    if size not in SIZES:
        raise ValueError(f"unknown corpus size {size!r}; known: {', '.join(SIZES)}")
    out_dir = Path(out_dir)
    engines = engine_versions()
    wanted = {
        "format": FORMAT,
        "seed": seed,
        "size": size,
        "size_spec": size_spec(size),
        "engine_versions": engines,
    }
    # JSON round trip so tuples compare equal to the lists read back from disk.
    wanted = json.loads(json.dumps(wanted))
    stamp = out_dir / IN_PROGRESS
    if (out_dir / MANIFEST).exists():
        existing = CorpusManifest.load(out_dir)
        if existing.identity() == wanted:
            log.info(
                "%s already holds the %s corpus for seed %d; nothing to do", out_dir, size, seed
            )
            return existing
        differs = [k for k, v in wanted.items() if existing.identity().get(k) != v]
        found = f"another corpus (its {', '.join(differs)} differ)"
        if existing.format != FORMAT:
            found = _other_format(existing.format)
    elif stamp.exists():
        interrupted = json.loads(stamp.read_text())
        found = "" if interrupted == wanted else "an interrupted run of another corpus"
        if interrupted.get("format") != FORMAT:
            found = f"an interrupted run of {_other_format(interrupted.get('format'))}"
    elif any((out_dir / split).exists() for split in ALL_SPLITS):
        found = "split folders but no manifest.json (not a corpus made here)"
    else:
        found = ""
    if found and not overwrite:
        raise FileExistsError(
            f"{out_dir} holds {found}; remove that folder (rm -r {out_dir}), pass overwrite=True "
            "(--overwrite) to replace its splits, or choose another output folder"
        )
    if found:
        log.info("%s holds %s: deleting its splits", out_dir, found)
        for split in ALL_SPLITS:
            shutil.rmtree(out_dir / split, ignore_errors=True)
        (out_dir / MANIFEST).unlink(missing_ok=True)
    elif stamp.exists():
        log.info("resuming the interrupted run in %s", out_dir)

    _check_engines()
    plan = plan_corpus(size, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(wanted, sort_keys=True))
    tmp = out_dir / ".tmp"
    tmp.mkdir(exist_ok=True)
    log.info(
        "generating %s (seed %d): %d chapters on %d workers",
        size,
        seed,
        len(plan.chapters),
        workers,
    )
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        # Threads suffice: the work is in engine subprocesses and in numpy/libsndfile calls.
        lengths = list(
            _logged(
                pool.map(lambda c: _write_chapter(c, out_dir, tmp), plan.chapters),
                len(plan.chapters),
            )
        )
    shutil.rmtree(tmp, ignore_errors=True)
    manifest = _summarise(plan, lengths, out_dir, engines)
    (out_dir / MANIFEST).write_text(manifest.to_json())
    stamp.unlink()
    # Read back, so a fresh run returns exactly what a later no-op run will.
    return CorpusManifest.load(out_dir)


def _other_format(format_: object) -> str:
    """How the error names a corpus written by another recipe than this ``FORMAT``."""
    return (
        f"a corpus of another recipe (format {format_!r}, this one writes {FORMAT!r}) whose "
        "splits are not this recipe's and must not be mixed with them"
    )


def _logged(results: Iterator[dict[str, list[int]]], total: int) -> Iterator[dict[str, list[int]]]:
    step = max(1, total // 10)
    for i, result in enumerate(results, 1):
        if i % step == 0 or i == total:
            log.info("%d/%d chapters written", i, total)
        yield result


def check_format(root: str | Path) -> None:
    """A generated corpus (a ``manifest.json`` at ``root``) must be of this ``FORMAT``: an older
    recipe's splits are not this one's (corpus v2 enlarged dev and test), so reading them would
    report numbers of another test set. Real LibriSpeech (no manifest) passes."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return
    try:
        found = json.loads(path.read_text(encoding="utf-8")).get("format")
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: unreadable corpus manifest ({err})") from err
    if found != FORMAT:
        raise ValueError(
            f"{root} holds {_other_format(found)}: regenerate it (rm -r {root} && make data, or"
            f" lowbit-asr corpus --out {root} --overwrite)")


def default_root(size: str) -> Path:
    """Where a corpus of ``size`` goes by default: ``data/embedded-<size>``, the root of
    ``conf/dataset/embedded_<size>.yaml`` (a test holds the two together), relative to the
    working directory."""
    return Path("data") / f"embedded-{size}"
