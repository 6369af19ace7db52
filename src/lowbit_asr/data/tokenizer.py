"""Text <-> token ids for the RNN-T: characters or a SentencePiece model, id 0 kept for blank.

Two kinds of units (``TokenizerConfig.units``):

* ``char``: a fixed alphabet (the word boundary ``▁``, the apostrophe, ``A``-``Z``), 29 ids with
  blank; nothing is trained, so every corpus gets the same ids.
* ``sentencepiece``: a unigram or BPE model trained on the TRAIN transcripts only and cached
  beside the manifests (:func:`build_tokenizer`), keyed by the transcripts and the settings, so a
  changed corpus retrains. SentencePiece ids are shifted by one: id 0 is the RNN-T blank and
  ``vocab_size`` counts it (``vocab_size=256`` gives 255 pieces, ``<unk>`` included).

Unknown characters are an error, never a silent drop nor a silent ``<unk>``:
:meth:`Tokenizer.encode` raises :class:`UnknownCharacterError` naming the character, the text and
(when given) the utterance; the DataModule checks every transcript before training and either
stops or skips the utterance with a warning, as ``on_bad_utterance`` says.

Text is normalised only by collapsing white space (:func:`normalise_text`): case and punctuation
are the corpus's business, so that a lower-case transcript fails loudly instead of being scored
against an upper-case model.

A tokenizer saves to a self-contained dict (:meth:`Tokenizer.state_dict`; the SentencePiece
model's bytes are inside), so a checkpoint rebuilds the very same tokenizer with
:meth:`Tokenizer.from_state`.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sentencepiece as spm

BLANK_ID = 0
"""Id 0 of every tokenizer: the transducer's blank (also the predictor's start-of-sequence
input); units are 1..vocab_size-1."""

log = logging.getLogger(__name__)

UNITS = ("char", "sentencepiece")
"""Supported kinds of units."""

SENTENCEPIECE_MODEL_TYPES = ("unigram", "bpe")
"""Supported SentencePiece algorithms."""

WORD_BOUNDARY = "▁"
"""The unit that stands for a space (SentencePiece's meta symbol, U+2581)."""

CHAR_ALPHABET = "'ABCDEFGHIJKLMNOPQRSTUVWXYZ"
"""Characters of the ``char`` tokenizer besides the word boundary: LibriSpeech's transcripts."""

FORMAT_VERSION = 1
"""Bump when the saved state or the training recipe changes: cached models are retrained."""


class UnknownCharacterError(ValueError):
    """A transcript holds a character the tokenizer cannot encode."""

    def __init__(self, char: str, text: str, utterance_id: str | None = None) -> None:
        where = f"utterance {utterance_id}" if utterance_id else "text"
        super().__init__(
            f"{where}: character {char!r} (U+{ord(char):04X}) is not in the tokenizer's "
            f"alphabet; text: {text!r}"
        )
        self.char = char
        self.text = text
        self.utterance_id = utterance_id


@dataclass
class TokenizerConfig:
    """Which units the RNN-T predicts (mirrored by ``tokenizer:`` in ``conf/dataset/*.yaml``)."""

    units: str = "sentencepiece"
    """``char`` (fixed 29 ids) or ``sentencepiece`` (trained on the train transcripts)."""
    vocab_size: int = 256
    """SentencePiece only: ids including blank (255 pieces for 256); ``char`` ignores it."""
    model_type: str = "unigram"
    """SentencePiece only: ``unigram`` or ``bpe``."""

    def __post_init__(self) -> None:
        p = "tokenizer"
        if self.units not in UNITS:
            raise ValueError(f"{p}.units must be one of {UNITS}, got {self.units!r}")
        if self.model_type not in SENTENCEPIECE_MODEL_TYPES:
            raise ValueError(
                f"{p}.model_type must be one of {SENTENCEPIECE_MODEL_TYPES}, "
                f"got {self.model_type!r}"
            )
        # 2 = blank + <unk>; SentencePiece needs a few more pieces than the alphabet anyway.
        if not isinstance(self.vocab_size, int) or isinstance(self.vocab_size, bool):
            raise ValueError(f"{p}.vocab_size must be an integer, got {self.vocab_size!r}")
        if self.vocab_size < 3:
            raise ValueError(f"{p}.vocab_size must be >= 3, got {self.vocab_size}")


def normalise_text(text: str) -> str:
    """Collapse runs of white space to one space and strip the ends; nothing else changes."""
    return " ".join(text.split())


class Tokenizer(ABC):
    """Base of the two tokenizers: ids ``1..vocab_size-1`` are units, 0 is the RNN-T blank."""

    units: str = ""
    """``char`` or ``sentencepiece`` (the key of :meth:`from_state`)."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Output size of the RNN-T joiner: the units plus blank."""

    @property
    @abstractmethod
    def alphabet(self) -> frozenset[str]:
        """Characters that can be encoded, besides the space."""

    def unknown_characters(self, text: str) -> list[str]:
        """The characters of ``text`` that cannot be encoded, in order of first appearance."""
        alphabet = self.alphabet
        return list(
            dict.fromkeys(c for c in normalise_text(text) if c != " " and c not in alphabet)
        )

    def encode(self, text: str, utterance_id: str | None = None) -> list[int]:
        """Token ids (all >= 1) of the normalised ``text``; UnknownCharacterError if it can't."""
        text = normalise_text(text)
        unknown = self.unknown_characters(text)
        if unknown:
            raise UnknownCharacterError(unknown[0], text, utterance_id)
        return self._encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` (blank removed); an id outside ``1..vocab_size-1`` is an error."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not BLANK_ID < i < self.vocab_size]
        if bad:
            raise ValueError(
                f"ids must be in 1..{self.vocab_size - 1} (blank {BLANK_ID} removed), got {bad[:5]}"
            )
        return normalise_text(self._decode(ids))

    @abstractmethod
    def id_to_unit(self, i: int) -> str:
        """The unit (character or piece) of id ``i``; ``<blank>`` for 0."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild this tokenizer (JSON- and torch.save-able)."""

    @staticmethod
    def from_state(state: dict[str, Any]) -> Tokenizer:
        """Rebuild the tokenizer saved by :meth:`state_dict` (e.g. from a checkpoint)."""
        if state.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"tokenizer state version {state.get('version')!r}; this code reads "
                f"{FORMAT_VERSION}"
            )
        if state["units"] == "char":
            return CharTokenizer(state["alphabet"])
        if state["units"] == "sentencepiece":
            return SentencePieceTokenizer(base64.b64decode(state["model"]))
        raise ValueError(f"unknown tokenizer units {state['units']!r} in a saved state")

    def save(self, path: str | Path) -> None:
        """Write :meth:`state_dict` as JSON (atomically: readers never see half a file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.state_dict()), encoding="utf-8")
        os.replace(tmp, path)

    @staticmethod
    def load(path: str | Path) -> Tokenizer:
        """Read a tokenizer written by :meth:`save`."""
        return Tokenizer.from_state(json.loads(Path(path).read_text(encoding="utf-8")))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and self.state_dict() == other.state_dict()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"

    @abstractmethod
    def _encode(self, text: str) -> list[int]:
        """Ids of a normalised text whose characters are all known."""

    @abstractmethod
    def _decode(self, ids: list[int]) -> str:
        """Text of valid ids."""


class CharTokenizer(Tokenizer):
    """Characters: id 1 is the word boundary, then ``alphabet`` in order; deterministic."""

    units = "char"

    def __init__(self, alphabet: str = CHAR_ALPHABET) -> None:
        if len(set(alphabet)) != len(alphabet) or " " in alphabet or WORD_BOUNDARY in alphabet:
            raise ValueError(f"alphabet must hold distinct characters, no space: {alphabet!r}")
        self._alphabet = alphabet
        self._units = [WORD_BOUNDARY, *alphabet]  # id i + 1
        self._ids = {u: i + 1 for i, u in enumerate(self._units)}
        self._ids[" "] = self._ids.pop(WORD_BOUNDARY)

    @property
    def vocab_size(self) -> int:
        """Blank, the word boundary and the alphabet."""
        return len(self._units) + 1

    @property
    def alphabet(self) -> frozenset[str]:
        """The characters of the alphabet."""
        return frozenset(self._alphabet)

    def id_to_unit(self, i: int) -> str:
        """The character of id ``i`` (``▁`` for the space, ``<blank>`` for 0)."""
        return "<blank>" if i == BLANK_ID else self._units[i - 1]

    def state_dict(self) -> dict[str, Any]:
        """The alphabet."""
        return {"version": FORMAT_VERSION, "units": self.units, "alphabet": self._alphabet}

    def _encode(self, text: str) -> list[int]:
        return [self._ids[c] for c in text]

    def _decode(self, ids: list[int]) -> str:
        return "".join(self._units[i - 1] for i in ids).replace(WORD_BOUNDARY, " ")


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model; its piece ``p`` has id ``p + 1`` (0 is blank, 1 is ``<unk>``)."""

    units = "sentencepiece"

    def __init__(self, model_proto: bytes) -> None:
        self._proto = bytes(model_proto)
        self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
        pieces = [self._sp.id_to_piece(i) for i in range(self._sp.get_piece_size())]
        self._chars = frozenset(
            c
            for i, p in enumerate(pieces)
            if not (self._sp.is_unknown(i) or self._sp.is_control(i))
            for c in p
            if c != WORD_BOUNDARY
        )

    @classmethod
    def train(
        cls, texts: Iterable[str], vocab_size: int, model_type: str = "unigram"
    ) -> SentencePieceTokenizer:
        """Train on ``texts`` (normalised here) for ``vocab_size`` ids including blank.

        One thread: SentencePiece's scores depend on the thread count, and one thread makes
        the model byte-identical on every machine (about a minute for LibriSpeech's 281k lines).
        """
        if model_type not in SENTENCEPIECE_MODEL_TYPES:
            raise ValueError(f"model_type must be one of {SENTENCEPIECE_MODEL_TYPES}")
        lines = [normalise_text(t) for t in texts]
        out = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(lines),
                model_writer=out,
                model_type=model_type,
                vocab_size=vocab_size - 1,  # blank is ours, not a piece
                character_coverage=1.0,  # every train character gets a piece: no <unk> in train
                normalization_rule_name="identity",  # decode(encode(t)) == t
                unk_id=0,
                bos_id=-1,
                eos_id=-1,
                pad_id=-1,
                num_threads=1,
                minloglevel=2,
            )
        except RuntimeError as err:
            raise ValueError(
                f"cannot train SentencePiece with tokenizer.vocab_size={vocab_size} "
                f"({model_type}) on {len(lines)} transcripts: {err}"
            ) from err
        return cls(out.getvalue())

    @property
    def vocab_size(self) -> int:
        """Blank plus the pieces (``<unk>`` included)."""
        return self._sp.get_piece_size() + 1

    @property
    def alphabet(self) -> frozenset[str]:
        """Characters that occur in some piece (all the training transcripts' characters)."""
        return self._chars

    @property
    def model_proto(self) -> bytes:
        """The serialised SentencePiece model."""
        return self._proto

    def id_to_unit(self, i: int) -> str:
        """The piece of id ``i`` (``<blank>`` for 0)."""
        return "<blank>" if i == BLANK_ID else self._sp.id_to_piece(i - 1)

    def state_dict(self) -> dict[str, Any]:
        """The model's bytes, base64 so that the state is also JSON."""
        return {
            "version": FORMAT_VERSION,
            "units": self.units,
            "model": base64.b64encode(self._proto).decode("ascii"),
        }

    def _encode(self, text: str) -> list[int]:
        return [i + 1 for i in self._sp.encode(text)]

    def _decode(self, ids: list[int]) -> str:
        return self._sp.decode([i - 1 for i in ids])


def tokenizer_cache_path(cfg: TokenizerConfig, texts: Sequence[str], cache_dir: Path) -> Path:
    """Where the SentencePiece model for ``texts`` and ``cfg`` is cached.

    The name holds a hash of the normalised transcripts (in the given order: the training input)
    and of the settings, so a changed corpus or setting gets a new file.
    """
    digest = hashlib.sha256()
    settings = [FORMAT_VERSION, spm.__version__, cfg.model_type, cfg.vocab_size]
    digest.update(json.dumps(settings).encode())
    for text in texts:
        digest.update(normalise_text(text).encode("utf-8") + b"\n")
    name = f"tokenizer-{cfg.model_type}{cfg.vocab_size}-{digest.hexdigest()[:16]}.json"
    return Path(cache_dir) / name


def build_tokenizer(
    cfg: TokenizerConfig, train_texts: Sequence[str], cache_dir: str | Path
) -> Tokenizer:
    """The tokenizer of ``cfg``: the fixed char one, or SentencePiece trained (or cached).

    ``train_texts``: the TRAIN transcripts only, in manifest order.
    """
    if cfg.units == "char":
        return CharTokenizer()
    path = tokenizer_cache_path(cfg, train_texts, Path(cache_dir))
    if path.exists():
        try:
            tokenizer = Tokenizer.load(path)
            log.info("tokenizer: %s (cached)", path)
            return tokenizer
        except (OSError, ValueError, KeyError) as err:
            log.warning("unreadable tokenizer cache %s (%s): retraining", path, err)
    tokenizer = SentencePieceTokenizer.train(train_texts, cfg.vocab_size, cfg.model_type)
    try:
        tokenizer.save(path)
        log.info("tokenizer: trained on %d transcripts, saved to %s", len(train_texts), path)
    except OSError as err:
        log.warning("cannot cache the tokenizer at %s (%s)", path, err)
    return tokenizer
