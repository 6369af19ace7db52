"""Read a split in LibriSpeech's layout: real LibriSpeech or the generated corpus.

Layout: ``<root>/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac`` with one
``<speaker>-<chapter>.trans.txt`` per chapter holding ``ID TEXT`` lines.

:func:`read_split` scans a split with ``soundfile.info`` (headers only, nothing decoded), checks
every utterance, and caches the result as JSONL (beside the data, or in ``cache_dir``), keyed by
the folder's listing so that a changed folder is rescanned. :func:`load_audio` decodes one file
to 16 kHz mono float32.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import soundfile as sf

from lowbit_asr.data.audio import SAMPLE_RATE, BadUtteranceError
from lowbit_asr.files import write_text_atomic

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".flac", ".wav")
LIBRISPEECH_SPLITS = (
    "train-clean-100",
    "train-clean-360",
    "train-other-500",
    "dev-clean",
    "dev-other",
    "test-clean",
    "test-other",
)
BAD_UTTERANCE_MODES = ("stop", "skip")
UNREADABLE_TRANSCRIPT = "transcript is not valid UTF-8"
CACHE_VERSION = 1
# Fallback for manifests of read-only data when no cache_dir is given.
USER_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lowbit-asr"


@dataclass(frozen=True)
class Utterance:
    """One utterance of a split."""

    id: str  #: LibriSpeech id, ``<speaker>-<chapter>-<utt>``
    path: str  #: absolute path of the audio file
    duration: float  #: seconds
    text: str  #: transcript as written in the trans.txt file
    speaker: str  #: speaker id (the first part of ``id``)


@dataclass(frozen=True)
class Skipped:
    """An item left out by ``on_bad_utterance="skip"``."""

    path: str  #: the audio file, or the transcript file for a line without audio
    reason: str  #: why, e.g. "zero-length audio"


@dataclass
class SplitManifest:
    """The utterances of one split, and what was skipped or needs converting on load."""

    root: str  #: the split's folder
    utterances: list[Utterance]  #: sorted by id
    skipped: list[Skipped] = field(default_factory=list)  #: bad items (only in "skip" mode)
    resampled: int = 0  #: utterances not at 16 kHz (load_audio resamples them)
    downmixed: int = 0  #: utterances with several channels (load_audio averages them)
    cache_path: str | None = None  #: the JSONL cache this came from or went to

    @property
    def hours(self) -> float:
        """Total duration in hours."""
        return sum(u.duration for u in self.utterances) / 3600

    def __len__(self) -> int:
        return len(self.utterances)


def read_split(
    root: str | Path, split: str, on_bad_utterance: str = "stop", cache_dir: Path | None = None
) -> SplitManifest:
    """Read the split ``<root>/<split>`` into a SplitManifest (cached as JSONL).

    ``on_bad_utterance``: "stop" raises BadUtteranceError at the first bad item (unreadable or
    zero-length audio, audio without a transcript line, a line without audio, an empty
    transcript); "skip" leaves bad items out, counts them and lists them in a ``skipped.jsonl``
    beside the cached manifest. ``cache_dir``: where to cache (default: beside the data, or the
    user cache if the data's folder is read-only).
    """
    if on_bad_utterance not in BAD_UTTERANCE_MODES:
        raise ValueError(
            f"on_bad_utterance must be one of {BAD_UTTERANCE_MODES}, not {on_bad_utterance!r}"
        )
    split_dir = _find_split(Path(root), split)
    listing = _listing(split_dir)
    key = hashlib.sha256(
        json.dumps([CACHE_VERSION, listing], separators=(",", ":")).encode()
    ).hexdigest()
    cache = _cache_path(split_dir, split, cache_dir)
    manifest = _read_cache(cache, key, split_dir)
    if manifest is None:
        manifest = _scan(split_dir, listing)
        cache = _write_cache(cache, key, manifest, split_dir, split)
    manifest.cache_path = str(cache) if cache else None
    if manifest.skipped and on_bad_utterance == "stop":
        # An unreadable transcript first: its audio files' "no transcript line" follow from it.
        first = min(manifest.skipped, key=lambda s: not s.reason.startswith(UNREADABLE_TRANSCRIPT))
        raise BadUtteranceError(first.path, first.reason)
    if manifest.skipped:
        log.warning(
            "%s: skipped %d bad utterances (listed in %s)",
            split_dir,
            len(manifest.skipped),
            _skipped_path(cache) if cache else "nowhere",
        )
    return manifest


def _find_split(root: Path, split: str) -> Path:
    if not root.is_dir():
        raise FileNotFoundError(f"corpus root {root} does not exist or is not a folder")
    split_dir = root / split
    if not split_dir.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        raise FileNotFoundError(
            f"split {split!r} not found: {split_dir} does not exist; splits in {root}: "
            f"{', '.join(found) if found else '(none)'}"
        )
    return split_dir.resolve()


def _listing(split_dir: Path) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime_ns) of every file: the cache key, cheap even for 280k files."""
    out: list[tuple[str, int, int]] = []
    stack = [split_dir]
    while stack:
        directory = stack.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=True):
                    stack.append(Path(entry.path))
                elif entry.name.endswith((*AUDIO_EXTENSIONS, ".trans.txt")):
                    st = entry.stat()
                    rel = os.path.relpath(entry.path, split_dir)
                    out.append((rel, st.st_size, st.st_mtime_ns))
    out.sort()
    return out


def _scan(split_dir: Path, listing: list[tuple[str, int, int]]) -> SplitManifest:
    """Pair audio with transcript lines in every chapter folder; collect what is bad."""
    audio: dict[str, Path] = {}  # utterance id -> path
    transcripts: list[Path] = []
    skipped: list[Skipped] = []
    for rel, _, _ in listing:
        path = split_dir / rel
        if rel.endswith(".trans.txt"):
            transcripts.append(path)
            continue
        uid = path.name.rsplit(".", 1)[0]
        if uid in audio:
            skipped.append(Skipped(str(path), f"second audio file for {uid} (first: {audio[uid]})"))
        else:
            audio[uid] = path
    if not audio and not transcripts:
        raise FileNotFoundError(
            f"{split_dir} holds no audio ({', '.join(AUDIO_EXTENSIONS)}) and "
            "no transcripts: not a split in LibriSpeech's layout"
        )
    lines: dict[str, tuple[str, Path]] = {}  # utterance id -> (text, transcript file)
    for trans in transcripts:
        try:
            content = trans.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            skipped.append(Skipped(str(trans), f"{UNREADABLE_TRANSCRIPT} ({err})"))
            continue
        for number, line in enumerate(content.splitlines(), 1):
            if not line.strip():
                continue
            uid, _, text = line.strip().partition(" ")
            if uid in lines:
                skipped.append(Skipped(f"{trans}:{number}", f"duplicate transcript line for {uid}"))
                continue
            lines[uid] = (text.strip(), trans)
    paired = []
    for uid in sorted(audio):
        path = audio[uid]
        if uid not in lines:
            skipped.append(Skipped(str(path), "no transcript line for this audio file"))
        elif not lines[uid][0]:
            skipped.append(Skipped(str(path), "empty transcript"))
        else:
            paired.append(uid)
    # Headers only; threads because the time goes to file system latency (cffi drops the GIL).
    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        infos = list(pool.map(_info, [audio[uid] for uid in paired]))
    utterances: list[Utterance] = []
    resampled = downmixed = 0
    for uid, info in zip(paired, infos, strict=True):
        path = audio[uid]
        if isinstance(info, str):
            skipped.append(Skipped(str(path), info))
            continue
        frames, rate, channels = info
        if frames <= 0 or rate <= 0:
            skipped.append(Skipped(str(path), "zero-length audio"))
            continue
        resampled += rate != SAMPLE_RATE
        downmixed += channels != 1
        utterances.append(
            Utterance(uid, str(path), frames / rate, lines[uid][0], speaker=uid.split("-", 1)[0])
        )
    for uid in sorted(set(lines) - set(audio)):
        skipped.append(Skipped(str(lines[uid][1]), f"transcript line {uid} has no audio file"))
    skipped.sort(key=lambda s: (s.path, s.reason))
    return SplitManifest(str(split_dir), utterances, skipped, resampled, downmixed)


def _info(path: Path) -> tuple[int, int, int] | str:
    """(frames, sample rate, channels) from the file's header, or why it cannot be read."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        return f"unreadable audio ({err})"
    return info.frames, info.samplerate, info.channels


def _cache_path(split_dir: Path, split: str, cache_dir: Path | None) -> Path | None:
    name = split.replace("/", "_")
    if cache_dir is not None:
        # Several corpora may share one cache_dir: tell them apart by the split's full path.
        tag = hashlib.sha256(str(split_dir).encode()).hexdigest()[:12]
        return Path(cache_dir) / f"{name}-{tag}.jsonl"
    if os.access(split_dir.parent, os.W_OK):
        return split_dir.parent / f"{name}.jsonl"
    return _cache_path(split_dir, split, USER_CACHE)


def _skipped_path(cache: Path) -> Path:
    return cache.with_name(cache.name.removesuffix(".jsonl") + ".skipped.jsonl")


def _read_cache(cache: Path | None, key: str, split_dir: Path) -> SplitManifest | None:
    if cache is None or not cache.exists():
        return None
    try:
        with open(cache, encoding="utf-8") as f:
            header = json.loads(f.readline())
            if header.get("key") != key:
                return None
            utterances = []
            for line in f:
                row = json.loads(line)
                row["path"] = str(split_dir / row["path"])
                utterances.append(Utterance(**row))
        skipped = []
        if header["skipped"]:
            with open(_skipped_path(cache), encoding="utf-8") as f:
                skipped = [Skipped(**json.loads(line)) for line in f]
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("unreadable manifest cache %s: rescanning", cache)
        return None
    if len(skipped) != header["skipped"]:
        return None
    return SplitManifest(
        str(split_dir), utterances, skipped, header["resampled"], header["downmixed"]
    )


def _write_cache(
    cache: Path | None, key: str, manifest: SplitManifest, split_dir: Path, split: str
) -> Path | None:
    """Write the JSONL cache (header line, then one utterance per line, paths relative)."""
    if cache is None:
        return None
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        header = {
            "key": key,
            "version": CACHE_VERSION,
            "split": split,
            "root": str(split_dir),
            "utterances": len(manifest.utterances),
            "skipped": len(manifest.skipped),
            "resampled": manifest.resampled,
            "downmixed": manifest.downmixed,
        }
        skipped_file = _skipped_path(cache)
        if manifest.skipped:
            _atomic_write(skipped_file, [asdict(s) for s in manifest.skipped])
        else:
            skipped_file.unlink(missing_ok=True)  # a stale list would mislead
        rows = [
            {**asdict(u), "path": os.path.relpath(u.path, split_dir)} for u in manifest.utterances
        ]
        _atomic_write(cache, [header, *rows])
    except OSError as err:
        log.warning("cannot cache the manifest of %s at %s (%s)", split_dir, cache, err)
        return None
    return cache


def _atomic_write(path: Path, rows: list[dict[str, object]]) -> None:
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
