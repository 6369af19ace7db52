"""Tokenizers: round trips, blank never produced, unknown characters, save/load, the cache."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from pipeline_corpus import sentences

from lowbit_asr.data import tokenizer as tok
from lowbit_asr.data.tokenizer import (
    BLANK_ID,
    CharTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    TokenizerConfig,
    UnknownCharacterError,
    build_tokenizer,
    tokenizer_cache_path,
)

TRAIN = sentences(300, seed=1)
UNSEEN = sentences(50, seed=2)  # same words, other sentences


@pytest.fixture(scope="module", params=["unigram", "bpe"])
def sp(request: pytest.FixtureRequest) -> SentencePieceTokenizer:
    """A SentencePiece tokenizer of 64 ids trained on TRAIN."""
    return SentencePieceTokenizer.train(TRAIN, vocab_size=64, model_type=request.param)


@pytest.fixture(scope="module", params=["char", "unigram", "bpe"])
def any_tokenizer(request: pytest.FixtureRequest) -> Tokenizer:
    """Each kind of tokenizer (SentencePiece ones trained on TRAIN)."""
    if request.param == "char":
        return CharTokenizer()
    return SentencePieceTokenizer.train(TRAIN, vocab_size=64, model_type=request.param)


def test_char_ids_are_fixed() -> None:
    char = CharTokenizer()
    assert char.vocab_size == 29  # blank, word boundary, apostrophe, A-Z
    assert char.encode("A'B Z") == [3, 2, 4, 1, 28]
    assert [char.id_to_unit(i) for i in (0, 1, 2, 3)] == ["<blank>", "▁", "'", "A"]


def test_round_trip_and_no_blank(any_tokenizer: Tokenizer) -> None:
    t = any_tokenizer
    for text in TRAIN + UNSEEN:
        ids = t.encode(text)
        assert ids and all(BLANK_ID < i < t.vocab_size for i in ids)
        assert t.decode(ids) == text


def test_sentencepiece_vocab_size_counts_blank(sp: SentencePieceTokenizer) -> None:
    assert sp.vocab_size == 64
    assert sp.id_to_unit(0) == "<blank>" and sp.id_to_unit(1) == "<unk>"
    assert max(i for t in TRAIN for i in sp.encode(t)) <= 63


def test_white_space_is_normalised() -> None:
    char = CharTokenizer()
    assert char.encode("  HE  SAID \t NO ") == char.encode("HE SAID NO")
    assert char.decode(char.encode(" HE  SAID ")) == "HE SAID"
    # A hypothesis may start or end with a word boundary or hold two: decode tidies it.
    assert char.decode([1, 3, 1, 1, 4, 1]) == "A B"


def test_unknown_character_names_char_and_utterance(any_tokenizer: Tokenizer) -> None:
    t = any_tokenizer
    with pytest.raises(UnknownCharacterError, match=r"utterance 1-2-0003: character 'é'") as info:
        t.encode("CAFé AU LAIT", utterance_id="1-2-0003")
    assert info.value.char == "é" and info.value.utterance_id == "1-2-0003"
    assert t.unknown_characters("a QUITE b a") == ["a", "b"]
    with pytest.raises(UnknownCharacterError, match="'-'"):
        t.encode("WELL-KNOWN")


def test_decode_rejects_blank_and_out_of_range_ids() -> None:
    char = CharTokenizer()
    with pytest.raises(ValueError, match="blank"):
        char.decode([3, 0, 4])
    with pytest.raises(ValueError, match=r"1\.\.28"):
        char.decode([29])


def test_state_save_load_pickle(any_tokenizer: Tokenizer, tmp_path: Path) -> None:
    t = any_tokenizer
    state = t.state_dict()
    json.dumps(state)  # checkpoint- and JSON-safe
    t.save(tmp_path / "tok.json")
    for copy in (
        Tokenizer.from_state(state),
        Tokenizer.load(tmp_path / "tok.json"),
        pickle.loads(pickle.dumps(t)),
    ):
        assert copy == t and type(copy) is type(t)
        assert [copy.encode(s) for s in UNSEEN] == [t.encode(s) for s in UNSEEN]
    with pytest.raises(ValueError, match="version"):
        Tokenizer.from_state({**state, "version": 99})


def test_sentencepiece_training_is_deterministic() -> None:
    a = SentencePieceTokenizer.train(TRAIN, 48)
    b = SentencePieceTokenizer.train(TRAIN, 48)
    assert a.model_proto == b.model_proto


def test_too_large_vocab_names_the_field() -> None:
    with pytest.raises(ValueError, match="tokenizer.vocab_size=5000"):
        SentencePieceTokenizer.train(TRAIN[:10], 5000)


def test_cache_is_reused_and_invalidated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = TokenizerConfig(units="sentencepiece", vocab_size=48)
    first = build_tokenizer(cfg, TRAIN, tmp_path)
    path = tokenizer_cache_path(cfg, TRAIN, tmp_path)
    assert path.exists() and list(tmp_path.iterdir()) == [path]

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("retrained although cached")

    with monkeypatch.context() as m:
        m.setattr(tok.SentencePieceTokenizer, "train", no_training)
        assert build_tokenizer(cfg, TRAIN, tmp_path) == first  # reused
    changed = [*TRAIN[:-1], "QUITE A DIFFERENT LAST LINE"]
    assert tokenizer_cache_path(cfg, changed, tmp_path) != path
    build_tokenizer(cfg, changed, tmp_path)
    build_tokenizer(TokenizerConfig(vocab_size=40), TRAIN, tmp_path)
    build_tokenizer(TokenizerConfig(vocab_size=48, model_type="bpe"), TRAIN, tmp_path)
    assert len(list(tmp_path.glob("tokenizer-*.json"))) == 4


def test_char_needs_no_cache(tmp_path: Path) -> None:
    t = build_tokenizer(TokenizerConfig(units="char"), TRAIN, tmp_path)
    assert isinstance(t, CharTokenizer) and not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"units": "word"}, "tokenizer.units"),
        ({"model_type": "wordpiece"}, "tokenizer.model_type"),
        ({"vocab_size": 2}, "tokenizer.vocab_size"),
        ({"vocab_size": 25.5}, "tokenizer.vocab_size"),
    ],
)
def test_config_errors_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        TokenizerConfig(**kwargs)  # type: ignore[arg-type]
