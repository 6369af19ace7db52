"""Audio files (or waveforms) -> text with a trained model: a checkpoint or a packed file.

    from lowbit_asr.transcribe import Recognizer
    asr = Recognizer.load("model.lbq")                 # or runs/.../checkpoints/best.ckpt
    asr.transcribe(waveform, sample_rate)              # (T,) or (channels, T), any rate -> str
    for t in asr.transcribe_files(["a.wav", "b.flac"]): print(t.path, t.text or t.error)

The model carries everything between the audio and the text: its front end (log-mel, the train
statistics, normalisation, lifter) and its tokenizer. Files are read with the data path's own
decoder (any format soundfile reads, resampled to 16 kHz, channels averaged), their features made
on the CPU by the model's front end as the data path makes them, and batched by duration with
the data path's sampler and ``eval_batch_seconds``: the same audio gives the same text here as in
``lowbit-asr evaluate``.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import soundfile as sf
import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from lowbit_asr.data.audio import N_MELS, BadUtteranceError, load_audio, to_model_audio
from lowbit_asr.data.config import DatasetConfig
from lowbit_asr.data.sampler import BucketingBatchSampler
from lowbit_asr.data.tokenizer import Tokenizer
from lowbit_asr.model.frontend import FrontEnd
from lowbit_asr.model.rnnt import RNNT
from lowbit_asr.packed import load_for_evaluation

log = logging.getLogger(__name__)

LIST_SUFFIXES = (".txt", ".lst", ".list", ".scp")
"""A file with one of these suffixes is a list of audio paths, one per line."""
_DEFAULTS = {f.name: f.default for f in fields(DatasetConfig)}
EVAL_BATCH_SECONDS: float = _DEFAULTS["eval_batch_seconds"]  # type: ignore[assignment]
"""Padded audio per batch: the dataset default of ``evaluate`` (``dataset.eval_batch_seconds``)."""
NUM_BUCKETS: int = _DEFAULTS["num_buckets"]  # type: ignore[assignment]
"""Duration buckets of the sampler: the dataset default, so batches match ``evaluate``'s."""


def audio_suffixes() -> set[str]:
    """File suffixes soundfile (libsndfile) can read here, e.g. ``.wav``, ``.flac``, ``.ogg``."""
    suffixes = {f".{name.lower()}" for name in sf.available_formats()}
    if ".aiff" in suffixes:
        suffixes.add(".aif")
    if ".ogg" in suffixes:
        suffixes |= {".oga", ".opus"}
    return suffixes


def expand_inputs(inputs: str | Path | Sequence[str | Path]) -> list[Path]:
    """The audio files of ``inputs``: files as given, folders searched recursively for files
    with a suffix soundfile reads (sorted), list files (:data:`LIST_SUFFIXES`) read line by
    line (blank lines and ``#`` comments skipped; relative paths are relative to the list's
    folder). A missing folder or list file is an error naming it; a missing audio file is
    reported with the others, per file."""
    items = [inputs] if isinstance(inputs, str | Path) else list(inputs)
    if not items:
        raise ValueError("audio: no input given (a file, a folder or a list file)")
    suffixes = audio_suffixes()
    paths: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*")
                           if p.is_file() and p.suffix.lower() in suffixes)
            if not found:
                log.warning("audio: no audio files under %s", path)
            paths += found
        elif path.suffix.lower() in LIST_SUFFIXES:
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as err:
                raise ValueError(f"audio list {path}: cannot be read ({err})") from err
            for line in lines:
                entry = line.strip()
                if entry and not entry.startswith("#"):
                    listed = Path(entry)
                    paths.append(listed if listed.is_absolute() else path.parent / listed)
        else:
            paths.append(path)
    return paths


@dataclass
class Transcript:
    """One file's result: its text, or the reason it has none."""

    path: str
    text: str | None
    error: str | None = None
    seconds: float = 0.0  #: audio duration

    def tsv(self) -> str:
        """``path<TAB>text`` (an error has no line: it goes to the log)."""
        return f"{self.path}\t{self.text}"

    def as_dict(self) -> dict[str, Any]:
        """For JSON lines: path, text or error, seconds."""
        row = asdict(self)
        return {k: v for k, v in row.items() if v is not None}


class Recognizer:
    """A model and its tokenizer, ready to turn audio into text (eval mode, no gradients)."""

    def __init__(self, model: RNNT, tokenizer: Tokenizer, name: str = "") -> None:
        model.frontend.require_stats()
        if model.cfg.encoder.feat_dim != N_MELS:
            raise ValueError(f"{name or 'model'}: encoder.feat_dim={model.cfg.encoder.feat_dim},"
                             f" but the front end makes {N_MELS} log-mel bins")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self._cpu_frontend: FrontEnd | None = None

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> Recognizer:
        """From a training checkpoint (``.ckpt``, read weights-only) or a packed file
        (``.lbq``), on ``device``."""
        module, _ = load_for_evaluation(path)
        return cls(module.model, module.tokenizer, name=str(path)).to(device)

    def to(self, device: str | torch.device) -> Recognizer:
        """Move the model (features are still made on the CPU, as the data path makes them)."""
        self.model.to(device)
        self._cpu_frontend = None
        return self

    @property
    def device(self) -> torch.device:
        """Where the model runs."""
        return self.model.frontend.mean.device

    # ---- features and decoding --------------------------------------------------------------
    def features(self, audio: Tensor) -> Tensor:
        """16 kHz mono ``(T,)`` -> normalised ``(frames, 80)`` on the CPU, as the data path
        computes them (``FeatureSource.extract``, then the front end's ``normalise``)."""
        if self._cpu_frontend is None:
            frontend = self.model.frontend
            self._cpu_frontend = (frontend if self.device.type == "cpu"
                                  else copy.deepcopy(frontend).cpu())
        with torch.no_grad():
            return self._cpu_frontend.normalise(self._cpu_frontend.logmel(audio.cpu()))

    @torch.no_grad()
    def decode_features(self, feats: Sequence[Tensor]) -> list[str]:
        """Texts of normalised features ``[(T_i, 80)]``, decoded as one padded batch."""
        if not feats:
            return []
        lens = torch.tensor([f.shape[0] for f in feats], dtype=torch.int64)  # (N,)
        batch = pad_sequence(list(feats), batch_first=True)  # (N, T, 80), as collate pads
        ids = self.model.decode(batch.to(self.device), lens.to(self.device))
        return [self.tokenizer.decode(seq) for seq in ids]

    def transcribe(self, waveform: Tensor, sample_rate: int) -> str:
        """Text of one waveform: ``(T,)`` or ``(channels, T)`` at ``sample_rate`` Hz."""
        return self.transcribe_batch([waveform], sample_rate)[0]

    def transcribe_batch(self, waveforms: Sequence[Tensor], sample_rate: int) -> list[str]:
        """Texts of several waveforms at one sample rate, decoded as one batch."""
        return self.decode_features([self.features(to_model_audio(w, sample_rate))
                                     for w in waveforms])

    def transcribe_files(
        self, paths: Sequence[str | Path], batch_seconds: float = EVAL_BATCH_SECONDS,
        num_buckets: int = NUM_BUCKETS,
    ) -> list[Transcript]:
        """One :class:`Transcript` per path, in the order given. A file that cannot be read
        gets its error and the others go on. Batched by duration as ``evaluate`` batches."""
        results: dict[int, Transcript] = {}
        durations: dict[int, float] = {}
        for i, path in enumerate(paths):
            if not Path(path).is_file():
                results[i] = Transcript(str(path), None, "no such file")
                continue
            try:
                info = sf.info(str(path))
                if info.frames <= 0 or info.samplerate <= 0:
                    raise BadUtteranceError(path, "zero-length audio")
                durations[i] = info.frames / info.samplerate
            except (sf.LibsndfileError, RuntimeError, OSError, BadUtteranceError) as err:
                reason = err.reason if isinstance(err, BadUtteranceError) else str(err)
                results[i] = Transcript(str(path), None, f"unreadable audio ({reason})")
        good = sorted(durations)
        sampler = BucketingBatchSampler([durations[i] for i in good], batch_seconds,
                                        num_buckets=num_buckets, shuffle=False)
        start, done = time.perf_counter(), 0
        for batch in sampler:
            members, feats = [], []
            for j in batch:
                i = good[j]
                try:
                    feats.append(self.features(load_audio(paths[i])))
                    members.append(i)
                except BadUtteranceError as err:
                    results[i] = Transcript(str(paths[i]), None, err.reason, durations[i])
            for i, text in zip(members, self.decode_features(feats), strict=True):
                results[i] = Transcript(str(paths[i]), text, None, durations[i])
            done += len(batch)
            log.info("transcribed %d of %d files (%.1f s)", done, len(good),
                     time.perf_counter() - start)
        return [results[i] for i in range(len(paths))]
