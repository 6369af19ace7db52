"""``lowbit-asr transcribe model=<.lbq|.ckpt> audio=<file|folder|list.txt> [out=…]``: text of
audio files, one line per file.

    lowbit-asr transcribe model=int2.lbq audio=talk.wav               # path<TAB>text on stdout
    lowbit-asr transcribe model=best.ckpt audio=recordings/ out=texts.tsv
    lowbit-asr transcribe model=int2.lbq audio=files.txt format=jsonl out=texts.jsonl

Any format soundfile reads, any sample rate (resampled to 16 kHz), several channels averaged. A
file that cannot be read is named on stderr (and as an ``error`` line in jsonl); the others go
on, and the exit code is 1 at the end. In Python: ``Recognizer.load(path).transcribe(waveform,
sample_rate)`` (:mod:`lowbit_asr.transcribe`).
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from lowbit_asr.cli import CONF_DIR
from lowbit_asr.commands import apply_threads
from lowbit_asr.files import write_text_atomic
from lowbit_asr.transcribe import EVAL_BATCH_SECONDS, Recognizer, expand_inputs

# Its own folder: conf/ has a `model` group, and here `model=` is a file.
TRANSCRIBE_CONF = str(CONF_DIR / "transcribe")
FORMATS = ("tsv", "jsonl")
log = logging.getLogger("lowbit_asr.transcribe")


def _write(lines: list[str], out: str | None) -> None:
    """To stdout, or atomically to ``out`` (a temporary file in its folder, then renamed)."""
    text = "".join(f"{line}\n" for line in lines)
    if out is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    path = Path(out)
    if not path.parent.is_dir():
        raise ValueError(f"out={out}: the folder {path.parent} does not exist")
    write_text_atomic(path, text)


@hydra.main(version_base="1.3", config_path=TRANSCRIBE_CONF, config_name="transcribe")
def main(cfg: DictConfig) -> int:
    """Transcribe every file; 1 if any could not be read."""
    if cfg.format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {cfg.format!r}")
    apply_threads(cfg.threads)
    inputs = list(cfg.audio) if isinstance(cfg.audio, ListConfig) else [str(cfg.audio)]
    paths = expand_inputs(inputs)
    if cfg.out is not None:
        out = Path(cfg.out).resolve()
        if out == Path(cfg.model).resolve() or out in {p.resolve() for p in paths} or any(
                out == Path(i).resolve() for i in inputs):
            raise ValueError(f"out={cfg.out} is the model or one of the inputs: refusing to"
                             " overwrite it")
        if out.is_dir():
            raise ValueError(f"out={cfg.out} is a folder: transcripts are written to a file")
    asr = Recognizer.load(cfg.model, device=cfg.device)
    overrides = {k: v for k, v in OmegaConf.to_container(cfg.decoding).items() if v is not None}
    asr.model.cfg.decoding = replace(asr.model.cfg.decoding, **overrides)
    batch_seconds = EVAL_BATCH_SECONDS if cfg.batch_seconds is None else float(cfg.batch_seconds)
    results = asr.transcribe_files(paths, batch_seconds=batch_seconds)
    lines: list[str] = []
    for t in results:
        if t.error is not None:
            log.error("%s: %s", t.path, t.error)
        if cfg.format == "jsonl":
            lines.append(json.dumps(t.as_dict(), ensure_ascii=False))
        elif t.error is None:
            lines.append(t.tsv())
    _write(lines, cfg.out)
    failed = sum(t.error is not None for t in results)
    log.info("%d of %d files transcribed%s", len(results) - failed, len(results),
             f"; {failed} could not be read" if failed else "")
    if failed:  # after writing the others: a script sees the failure, and keeps the texts
        raise SystemExit(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
