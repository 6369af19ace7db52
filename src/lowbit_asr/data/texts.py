"""Public-domain texts for the generated corpus: Jane Austen's novels and the Harvard sentences.

Both come from Debian packages of R data (``r-cran-janeaustenr``, ``r-cran-stringr``) and are read
without R through :mod:`rdata`. Sentences are normalised as LibriSpeech transcripts are: upper
case, letters and apostrophes only, no digits.
"""

from __future__ import annotations

import re
import struct
import unicodedata
import warnings
import zlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

R_SITE_LIBRARY = Path("/usr/lib/R/site-library")

#: Object names in ``janeaustenr``'s data, keyed by the short book names used in manifests.
AUSTEN_BOOKS: dict[str, str] = {
    "emma": "emma",
    "mansfield_park": "mansfieldpark",
    "northanger_abbey": "northangerabbey",
    "persuasion": "persuasion",
    "pride_and_prejudice": "prideprejudice",
    "sense_and_sensibility": "sensesensibility",
}
HARVARD = "harvard"

MIN_WORDS = 4
MAX_WORDS = 35

# Expanded before sentence splitting so that their full stops do not end a sentence; every
# engine says them this way, and the transcript must hold what is said.
_ABBREVIATIONS = {
    "Mrs": "Missus",
    "Mr": "Mister",
    "Dr": "Doctor",
    "St": "Saint",
    "Esq": "Esquire",
    "Col": "Colonel",
    "Capt": "Captain",
    "Rev": "Reverend",
}
_ABBREV_RE = re.compile(r"\b(" + "|".join(_ABBREVIATIONS) + r")\b\.?")
# A sentence ends at . ! or ? (perhaps followed by closing quotes/brackets) and white space.
_SENTENCE_END_RE = re.compile(r"(?<=[.!?])[\"')\]]*\s+")
# What an engine would read out as something other than its letters (digits, symbols), or
# blanks that Austen prints as dashes ("Mr. ----"): such sentences are dropped, not repaired.
_UNSPEAKABLE_RE = re.compile(r"[0-9&£$%*#@/\\\[\]]|-{3,}")
_HEADING_RE = re.compile(r"^((chapter|volume)\s+\w+|finis|the end)\.?$", re.IGNORECASE)
_TOKEN_RE = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*|[,;:.!?]")


@dataclass(frozen=True)
class Sentence:
    """One normalised sentence of a source text."""

    source: str  #: book name (a key of AUSTEN_BOOKS) or "harvard"
    index: int  #: position among the usable sentences of that source
    text: str  #: the transcript: upper-case words, letters and apostrophes only
    spoken: str  #: what the engines read: the same words, lower case, with pause punctuation


def read_r_data(package: str, name: str, site_library: Path = R_SITE_LIBRARY) -> object:
    """Read one object of an installed R package's lazy-load data base, without R.

    ``data/Rdata.rdx`` is a gzip'd RDS index mapping names to (offset, length) in
    ``data/Rdata.rdb``; each object there is a 4-byte big-endian length and a zlib'd RDS stream.
    """
    import rdata  # imported here: only corpus generation needs it

    base = site_library / package / "data" / "Rdata"
    if not base.with_suffix(".rdx").exists():
        raise FileNotFoundError(
            f"{base.with_suffix('.rdx')} not found: install the Debian package "
            f"r-cran-{package} (apt-get install r-cran-{package})"
        )
    with warnings.catch_warnings():
        # rdata warns that it "assumed RDS" for these extension-less streams; that is right.
        warnings.simplefilter("ignore", UserWarning)
        index = rdata.conversion.convert(
            rdata.parser.parse_data(base.with_suffix(".rdx").read_bytes(), extension=".rds")
        )
        variables = {str(k): v for k, v in index["variables"].items()}
        if name not in variables:
            raise KeyError(f"{package} has no data object {name!r}; it has {sorted(variables)}")
        offset, length = (int(v) for v in variables[name])
        with open(base.with_suffix(".rdb"), "rb") as f:
            f.seek(offset)
            chunk = f.read(length)
        (raw_length,) = struct.unpack(">I", chunk[:4])
        raw = zlib.decompress(chunk[4:])
        if len(raw) != raw_length:
            raise ValueError(f"{package}::{name}: corrupt lazy-load entry")
        return rdata.conversion.convert(rdata.parser.parse_data(raw, extension=".rds"))


def read_r_strings(package: str, name: str) -> list[str]:
    """Read an R character vector (e.g. a novel as lines) from an installed package's data."""
    value = read_r_data(package, name)
    if not isinstance(value, np.ndarray | list) or not all(isinstance(x, str) for x in value):
        raise TypeError(f"{package}::{name} is not a character vector")
    return [str(x) for x in value]


def normalise(sentence: str) -> Sentence | None:
    """Normalise one raw sentence; ``None`` if it cannot be used.

    Returns a Sentence with placeholder source/index, or None when the sentence holds digits or
    symbols an engine would read out, or has fewer than MIN_WORDS or more than MAX_WORDS words.
    """
    if _UNSPEAKABLE_RE.search(sentence):
        return None
    sentence = _ABBREV_RE.sub(lambda m: _ABBREVIATIONS[m.group(1)], sentence)
    # Accented letters (e.g. "eclat") become their base letters, as in LibriSpeech.
    sentence = unicodedata.normalize("NFKD", sentence).encode("ascii", "ignore").decode()
    # Italics are _marked_; dashes join clauses ("Richard--and"), hyphens join words.
    sentence = sentence.replace("_", "").replace("--", ", ").replace("-", " ")
    tokens = _TOKEN_RE.findall(sentence)
    words = [t for t in tokens if t[0].isalpha()]
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return None
    # Both strings come from the same tokens, so the engines say exactly the transcript's words;
    # lower case because some engines spell out all-capital words as acronyms.
    spoken = ""
    for t in tokens:
        if t[0].isalpha():
            spoken += (" " if spoken else "") + t.lower()
        elif spoken and spoken[-1] not in ",;:.!?":
            spoken += t
    if spoken[-1] not in ".!?":
        spoken = spoken.rstrip(",;:") + "."
    return Sentence(source="", index=-1, text=" ".join(w.upper() for w in words), spoken=spoken)


def split_sentences(lines: list[str]) -> list[str]:
    """Split a book given as text lines into raw sentences.

    Paragraphs are separated by blank lines; headings and title lines (all capitals, or
    "Chapter ...") are dropped so they never glue onto the next sentence.
    """
    paragraphs: list[str] = []
    current: list[str] = []
    for line in [*lines, ""]:
        line = line.strip()
        if line:
            current.append(line)
            continue
        if current:
            paragraphs.append(" ".join(current))
            current = []
    sentences: list[str] = []
    for paragraph in paragraphs:
        if _HEADING_RE.match(paragraph) or not any(c.islower() for c in paragraph):
            continue
        paragraph = _ABBREV_RE.sub(lambda m: _ABBREVIATIONS[m.group(1)], paragraph)
        sentences.extend(s.strip() for s in _SENTENCE_END_RE.split(paragraph) if s.strip())
    return sentences


def _usable(source: str, raw: list[str]) -> tuple[Sentence, ...]:
    kept: list[Sentence] = []
    for s in raw:
        n = normalise(s)
        if n is not None:
            kept.append(Sentence(source=source, index=len(kept), text=n.text, spoken=n.spoken))
    return tuple(kept)


@cache
def book_sentences(book: str) -> tuple[Sentence, ...]:
    """The usable, normalised sentences of one Austen novel (a key of AUSTEN_BOOKS), in order."""
    return _usable(book, split_sentences(read_r_strings("janeaustenr", AUSTEN_BOOKS[book])))


@cache
def harvard_sentences() -> tuple[Sentence, ...]:
    """The usable, normalised Harvard sentences (72 lists of 10), in order."""
    return _usable(HARVARD, read_r_strings("stringr", "sentences"))


def source_sentences(source: str) -> tuple[Sentence, ...]:
    """Sentences of a book name or of ``"harvard"``."""
    return harvard_sentences() if source == HARVARD else book_sentences(source)
