"""``lowbit-asr reproduce``: data -> float baseline -> QAT grid -> frontier -> RESULTS.md.

Stages: corpus, float baseline, the QAT grid (each point then exported to its packed ``.lbq``
file, whose bytes are compared with the accounted size; for the ``--packed-eval`` points the
packed file is also evaluated, and its WER compared with the fake-quant one), frontier and the
RESULTS.md section. Staged and resumable: every stage and every grid point lives in its own
folder under ``--out`` and is skipped when its ``results.json`` says ``ok``; an interrupted
training run resumes from its ``last.ckpt`` (the train command does that by itself). Each stage
runs the public CLI (``lowbit-asr train …``) in a subprocess, so what it does is what a user can
type, and one failing grid point (or export) is recorded and does not stop the others.

    lowbit-asr reproduce                                   # generated mini corpus, CPU
    lowbit-asr reproduce --dataset librispeech --data-root /data/LibriSpeech --trainer ddp \\
        --float-experiment float_librispeech --qat-experiment qat_librispeech
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from lowbit_asr.packed import export_packed
from lowbit_asr.train.frontier import write_frontier
from lowbit_asr.train.results import RESULT_FILE, git_commit

DEFAULT_GRID = (
    # "none" first: the float model fine-tuned with the grid's own schedule, the fair reference
    # for "lossless" (an under-trained float baseline gains from any extra steps, QAT or not).
    "none", "int8_asym", "int4_sym", "int4_asym", "int2_sym", "int2_asym", "int2_asym_g16",
    "int2_asym_sc4", "int2_asym_clipsearch", "mixed_int2_ffn_attn_int4_rest",
    "mixed_int2_encoder_int8_rest",
)
PACKED_EVAL = ("int4_asym", "int2_asym", "mixed_int2_ffn_attn_int4_rest")
"""Grid points whose packed file is evaluated by default (the others are only exported)."""
PACKED_FILE = "packed.json"
"""Per grid point: the packed file's bytes against the accounted ones, and its WER if asked."""
MARK = "<!-- reproduce:{dataset} -->"


def _done(run_dir: Path) -> dict | None:
    path = run_dir / RESULT_FILE
    if path.is_file():
        row = json.loads(path.read_text())
        if row.get("status") == "ok":
            return row
    return None


def _train(args: list[str], run_dir: Path, log_path: Path) -> int:
    """One ``lowbit-asr train`` run, its output appended to ``log_path``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    command = [str(Path(sys.executable).parent / "lowbit-asr"), "train", *args,
               f"hydra.run.dir={run_dir}"]
    with log_path.open("a") as log:
        log.write(f"\n$ {' '.join(command)}\n")
        log.flush()
        return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode


def _evaluate(checkpoint: str | Path, out: Path, common: list[str], log_path: Path) -> dict:
    """``lowbit-asr evaluate`` of a checkpoint or packed file; its per-split results."""
    command = [str(Path(sys.executable).parent / "lowbit-asr"), "evaluate",
               f"checkpoint={checkpoint}", f"out={out}",
               *[c for c in common if c.startswith("dataset")]]
    with log_path.open("a") as log:
        log.write(f"\n$ {' '.join(command)}\n")
        log.flush()
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True)
    return json.loads(out.read_text())["splits"]


def _same_errors(packed: dict[str, dict], fake_quant: dict[str, dict]) -> bool:
    """Whether two evaluations count the same word errors of the same words on every split."""
    return packed.keys() == fake_quant.keys() and all(
        (packed[s]["errors"], packed[s]["words"]) == (r["errors"], r["words"])
        for s, r in fake_quant.items())


def _pack(point: Path, row: dict, evaluate: bool, common: list[str], log_path: Path) -> dict:
    """Export a finished grid point to ``model.lbq`` (and evaluate it): its ``packed.json``.

    With ``evaluate``, the packed file and the fake-quant checkpoint it came from are both run
    through ``lowbit-asr evaluate`` with the same data and batches, and must count the same
    errors. (The WER logged at the end of training is not the reference: Lightning's test loop
    batches as the experiment's dataset config says, and another batching changes float
    rounding in the encoder, which can flip a word or two of greedy search.)
    """
    path = point / PACKED_FILE
    if path.is_file():
        done = json.loads(path.read_text())
        if "fake_quant_wer" in done or not evaluate:
            return done
    ckpt = row.get("best_checkpoint") or str(point / "checkpoints" / "last.ckpt")
    lbq = point / "model.lbq"
    report = export_packed(ckpt, lbq)
    packed = {"checkpoint": ckpt, "file": str(lbq), "file_bytes": report.file_bytes,
              "accounted_bytes": report.accounted_bytes, "ratio": report.ratio,
              "header_bytes": report.header_bytes}
    if evaluate:
        fake_quant = _evaluate(ckpt, point / "fake_quant_eval.json", common, log_path)
        from_file = _evaluate(lbq, point / "packed_eval.json", common, log_path)
        packed["fake_quant_wer"] = {s: r["wer"] for s, r in fake_quant.items()}
        packed["packed_wer"] = {s: r["wer"] for s, r in from_file.items()}
        packed["wer_equal"] = _same_errors(from_file, fake_quant)
    path.write_text(json.dumps(packed, indent=1))
    return packed


def packed_table(out: Path) -> str:
    """Markdown: each grid point's packed file against its accounted size (and WER)."""
    lines = ["| quantizer | accounted bytes | file bytes | file / accounted |"
             " packed WER = fake-quant WER |", "|---|---:|---:|---:|---|"]
    for path in sorted((out / "grid").glob(f"*/{PACKED_FILE}")):
        p = json.loads(path.read_text())
        same = ("–" if "wer_equal" not in p else
                ("yes (" if p["wer_equal"] else "**NO** (")
                + ", ".join(f"{s} {100 * w:.2f}%" for s, w in p["packed_wer"].items()) + ")")
        lines.append(f"| `{path.parent.name}` | {p['accounted_bytes']:,} | {p['file_bytes']:,} |"
                     f" {p['ratio']:.4f} | {same} |")
    return "\n".join(lines)


def write_results_section(results_md: Path, dataset: str, out: Path, command: str) -> None:
    """Replace (or append) this dataset's section of RESULTS.md with the frontier table."""
    mark = MARK.format(dataset=dataset)
    table = (out / "frontier.md").read_text().strip()
    # The plot goes beside RESULTS.md (runs/ is not kept in git), named by the dataset.
    plot = results_md.parent / "results" / f"frontier_{dataset}.png"
    plot.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / "frontier.png", plot)
    float_row = _done(out / "float") or {}
    section = "\n".join([
        mark,
        f"## `make reproduce` on {dataset}",
        "",
        f"Command: `{command}`; commit `{git_commit()}`; float baseline"
        f" `{float_row.get('command', '?')}` ({float_row.get('train_seconds', 0) / 60:.1f} min)."
        f" Files: `{out}/frontier.csv`, `{out}/frontier.md`.",
        "",
        table,
        "",
        f"![size vs WER]({plot.relative_to(results_md.parent).as_posix()})",
        "",
        "Packed files (`lowbit-asr export`; for the evaluated ones, `lowbit-asr evaluate` on the"
        " `.lbq` file and on the fake-quant checkpoint it came from, with the same batches):",
        "",
        packed_table(out),
        mark,
    ])
    text = results_md.read_text() if results_md.is_file() else "# Results\n"
    if mark in text:
        head, _, rest = text.partition(mark)
        _, _, tail = rest.partition(mark)
        text = head + section + tail
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    results_md.write_text(text)


def main(argv: list[str] | None = None) -> int:
    """Run the stages that are not finished yet."""
    parser = argparse.ArgumentParser(prog="lowbit-asr reproduce", description=__doc__)
    parser.add_argument("--dataset", default="embedded_mini", help="a conf/dataset name")
    parser.add_argument("--data-root", default=None, help="dataset.root (LibriSpeech folder)")
    parser.add_argument("--trainer", default="cpu", help="a conf/trainer name")
    parser.add_argument("--float-experiment", default="float_mini")
    parser.add_argument("--qat-experiment", default="qat_mini")
    parser.add_argument("--grid", nargs="+", default=list(DEFAULT_GRID),
                        help="quantizer configs (conf/quantizer) to fine-tune")
    parser.add_argument("--out", type=Path, default=None,
                        help="stage folders (default runs/reproduce/<dataset>)")
    parser.add_argument("--results-md", type=Path, default=Path("RESULTS.md"))
    parser.add_argument("--extra", nargs="*", default=[], help="more Hydra overrides for train")
    parser.add_argument("--packed-eval", nargs="*", default=list(PACKED_EVAL),
                        help="grid points whose packed file is also evaluated")
    args = parser.parse_args(argv)
    out = args.out or Path("runs") / "reproduce" / args.dataset
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "reproduce.log"
    common = [f"dataset={args.dataset}", f"trainer={args.trainer}", *args.extra]
    if args.data_root:
        common.append(f"dataset.root={args.data_root}")
    start = time.perf_counter()

    def say(message: str) -> None:
        print(f"[reproduce {time.perf_counter() - start:7.0f} s] {message}", flush=True)

    if args.dataset.startswith("embedded_") and not args.data_root:
        size = args.dataset.removeprefix("embedded_")
        say(f"stage 1/4: corpus ({size})")
        subprocess.run([str(Path(sys.executable).parent / "lowbit-asr"), "corpus", "--size",
                        size, "--out", f"data/embedded-{size}"], check=True)

    float_dir = out / "float"
    if _done(float_dir):
        say("stage 2/4: float baseline — done before, skipped")
    else:
        say(f"stage 2/4: float baseline ({args.float_experiment}); log in {log_path}")
        if _train([f"experiment={args.float_experiment}", *common], float_dir, log_path):
            say(f"float baseline failed: see {log_path}")
            return 1
    float_row = _done(float_dir)
    assert float_row is not None
    say(f"float baseline: WER {float_row['wer']}, {float_row['size_mb']:.3f} MB")
    best = float_row.get("best_checkpoint") or str(float_dir / "checkpoints" / "last.ckpt")

    for i, quantizer in enumerate(args.grid, 1):
        point = out / "grid" / quantizer
        row = _done(point)
        if row:
            say(f"stage 3/4: grid {i}/{len(args.grid)} {quantizer} — done before, skipped")
        else:
            code = _train([f"experiment={args.qat_experiment}", f"quantizer={quantizer}",
                           f"init.checkpoint={best}", *common], point, log_path)
            row = _done(point)
            if not row:
                say(f"stage 3/4: grid {i}/{len(args.grid)} {quantizer} FAILED (exit {code});"
                    f" see {point / RESULT_FILE} and {log_path}")
                continue
            say(f"stage 3/4: grid {i}/{len(args.grid)} {quantizer}: {row['size_mb']:.3f} MB,"
                f" WER {', '.join(f'{s} {100 * w:.1f}%' for s, w in row['wer'].items())}")
        try:
            packed = _pack(point, row, quantizer in args.packed_eval, common, log_path)
        except Exception as err:  # a failed export is reported, it does not sink the sweep
            say(f"stage 3/4: {quantizer}: packed export FAILED ({err}); see {log_path}")
            continue
        wer_note = ("" if "wer_equal" not in packed else
                    f", packed WER {'equal' if packed['wer_equal'] else 'DIFFERS'}")
        say(f"stage 3/4: {quantizer}: packed {packed['file_bytes']:,} bytes ="
            f" accounted x {packed['ratio']:.4f}{wer_note}")

    say("stage 4/4: frontier and RESULTS.md")
    paths = write_frontier(out)
    command = "make reproduce" + (f" DATASET={args.dataset}" if args.dataset != "embedded_mini"
                                  else "")
    write_results_section(args.results_md, args.dataset, out, command)
    say(f"done: {paths['md']}, {paths['png']}; section written to {args.results_md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
