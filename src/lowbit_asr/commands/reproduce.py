"""``lowbit-asr reproduce``: data -> float baseline -> QAT grid -> frontier -> RESULTS.md.

Stages: corpus, float baseline, the QAT grid (each point then exported to its packed ``.lbq``
file, whose bytes are compared with the accounted size; for the ``--packed-eval`` points the
packed file is also evaluated, and its WER compared with the fake-quant one), the post-training
point of every grid config (``lowbit-asr ptq``, ``--no-ptq`` to skip), the allocated points
(``lowbit-asr allocate`` at the sizes of the ``--allocate`` configs, then trained like a grid
point), frontier and the RESULTS.md section. Staged and resumable: every stage and every point
lives in its own folder under ``--out`` and is skipped when its ``results.json`` says ``ok``; an
interrupted training run resumes from its ``last.ckpt`` (the train command does that by itself).
Each stage runs the public CLI (``lowbit-asr train …``) in a subprocess, so what it does is what a
user can type, and one failing grid point (or export) is recorded and does not stop the others.

``--seeds N`` trains every grid and allocated point N times (``seed=0 … N-1``: batch order,
perturbation, anything random in the fine-tune), all from the one float model; training k > 0
of a point lives in ``<point>.seed<k>`` beside it. The frontier then tests recipes, not models:
each point's trainings against the reference's by a two-level bootstrap (trainings and
speakers; :func:`lowbit_asr.train.significance.compare_recipes_split`), and so do the claims and the
allocation tables; one training per point (the default) keeps the per-model MAPSSWE tests. The
float model's own training noise is not in these tests (every training starts from it) unless
``--float-seeds`` trains the float stage N times too (``float.seed<k>``, ``seed=k``) and starts
training k of every point from float model k: then the tests are over the whole recipe, float
stage included (N × the float stage's time). PTQ points and the allocator's sensitivities use
float model 0. A point trained before from another float model is refused, not reused.

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

from omegaconf import OmegaConf

from lowbit_asr.cli import CONF_DIR
from lowbit_asr.packed import export_packed
from lowbit_asr.train.config import RUN_CONFIG_FILE
from lowbit_asr.train.frontier import display_name, log_frontier_to_wandb, write_frontier
from lowbit_asr.train.results import RESULT_FILE, git_commit
from lowbit_asr.train.scoring import UtteranceScore, load_evaluation, totals
from lowbit_asr.train.significance import compare_split, compare_trainings

REPRODUCE_SWEEP = CONF_DIR / "sweep" / "reproduce_grid.yaml"
"""The grid ``make reproduce`` trains: one list, in the sweep config (a multirun can run it too)."""


def sweep_quantizers(path: Path = REPRODUCE_SWEEP) -> list[str]:
    """The quantizer names of a sweep config's ``hydra.sweeper.params.quantizer``, in order."""
    value = OmegaConf.load(path).hydra.sweeper.params.quantizer
    names = [name.strip() for name in str(value).split(",") if name.strip()]
    if not names:
        raise ValueError(f"{path}: hydra.sweeper.params.quantizer names no quantizer")
    return names


ALLOCATE_BUDGETS = ("int2_asym", "mixed_int2_ffn_attn_int4_rest", "int4_asym")
"""The allocated points' budgets: the accounted sizes of these grid configs on the float model
(``lowbit-asr allocate budget_quantizer=…``)."""
ALLOCATE_EXTRA = ("bits=[1,2,3,4,8]",)
"""The allocations' candidates: 1 bit besides allocate's default {2, 3, 4, 8}, because at the size
of int2_asym per-channel 2 bits is every weight's cheapest candidate, so without a cheaper one the
only allocation that fits that budget is int2_asym itself."""
LEARNED_SCALES = "_lsq"
"""Suffix of the grid configs with learned scales: their PTQ is the min/max one (scales start
from min/max), so they get no PTQ point of their own."""


def ptq_quantizers(grid: list[str]) -> list[str]:
    """The grid configs that get a post-training point: all but float and learned scales."""
    return [q for q in grid if q != "none" and not q.endswith(LEARNED_SCALES)]


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


SEED_SUFFIX = ".seed"
"""Training k > 0 of a point lives in ``<point><SEED_SUFFIX><k>`` beside the point's folder."""


def seed_dir(point: Path, seed: int) -> Path:
    """Where training ``seed`` of a point goes: the point's own folder for seed 0 (so a run
    with one seed is laid out as before), ``<folder>.seed<k>`` beside it for the others."""
    return point if seed == 0 else point.with_name(f"{point.name}{SEED_SUFFIX}{seed}")


def compare_points(split: str, a: list[Path], b: list[Path]) -> dict | None:
    """B's trainings against A's on ``split``: the recipe test (``seeds``) when both have two or
    more, else the per-model test of their first trainings (MAPSSWE); ``p`` and ``test`` name
    the one used. None when a side lacks the split."""
    sa = [load_evaluation(d)[1] for d in a]
    sb = [load_evaluation(d)[1] for d in b]
    if any(split not in x for x in [*sa, *sb]):
        return None
    return compare_trainings(split, [x[split] for x in sa], [x[split] for x in sb])


def started_from(run_dir: Path) -> str | None:
    """The ``init.checkpoint`` a run folder's training was configured with (None: none, or no
    readable run config)."""
    try:
        saved = json.loads((run_dir / RUN_CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return None
    init = saved.get("init") if isinstance(saved, dict) else None
    return init.get("checkpoint") if isinstance(init, dict) else None


def _same_start(run_dir: Path, checkpoint: str, unrecorded_ok: bool) -> str | None:
    """None when ``run_dir`` was trained from ``checkpoint`` (the same string, or the same file
    from here) — or records nothing and ``unrecorded_ok`` (runs older than ``run_config.json``
    could only start from the one float model) — else why it cannot be reused."""
    saved = started_from(run_dir)
    if saved is None:
        return None if unrecorded_ok else (
            f"{run_dir} records no init.checkpoint ({RUN_CONFIG_FILE}), so it cannot be shown"
            f" to start from {checkpoint}: use another --out, or remove the folder")
    if saved == checkpoint or Path(saved).resolve() == Path(checkpoint).resolve():
        return None
    return (f"{run_dir} was trained from {saved}, this run starts it from {checkpoint}"
            " (--float-seeds on or off since?): use another --out, or remove the folder")


def _train(args: list[str], run_dir: Path, log_path: Path) -> int:
    """One ``lowbit-asr train`` run, its output appended to ``log_path``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    command = [str(Path(sys.executable).parent / "lowbit-asr"), "train", *args,
               f"hydra.run.dir={run_dir}"]
    with log_path.open("a") as log:
        log.write(f"\n$ {' '.join(command)}\n")
        log.flush()
        return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode


def _command(name: str, args: list[str], log_path: Path) -> int:
    """``lowbit-asr <name> <args>``, its output appended to ``log_path``; its exit code."""
    command = [str(Path(sys.executable).parent / "lowbit-asr"), name, *args]
    with log_path.open("a") as log:
        log.write(f"\n$ {' '.join(command)}\n")
        log.flush()
        return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode


def _dataset_args(common: list[str]) -> list[str]:
    return [c for c in common if c.startswith("dataset")]


def _evaluate(checkpoint: str | Path, out: Path, common: list[str], log_path: Path,
              ) -> dict[str, list[UtteranceScore]]:
    """``lowbit-asr evaluate`` of a checkpoint or packed file into the folder ``out``; its
    per-utterance results per split."""
    command = [str(Path(sys.executable).parent / "lowbit-asr"), "evaluate",
               f"checkpoint={checkpoint}", f"out={out}",
               *[c for c in common if c.startswith("dataset")]]
    with log_path.open("a") as log:
        log.write(f"\n$ {' '.join(command)}\n")
        log.flush()
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True)
    return load_evaluation(out)[1]


def _differences(packed: dict[str, list[UtteranceScore]],
                 fake_quant: dict[str, list[UtteranceScore]]) -> dict[str, int]:
    """Per split: utterances whose hypothesis differs between two evaluations (every
    utterance of a split missing on one side counts)."""
    out = {}
    for split in sorted(set(packed) | set(fake_quant)):
        a = {s.id: s.hypothesis for s in packed.get(split, [])}
        b = {s.id: s.hypothesis for s in fake_quant.get(split, [])}
        out[split] = sum(a.get(i) != b.get(i) for i in set(a) | set(b))
    return out


def _pack(point: Path, row: dict, evaluate: bool, common: list[str], log_path: Path) -> dict:
    """Export a finished grid point to ``model.lbq`` (and evaluate it): its ``packed.json``.

    With ``evaluate``, the packed file goes through ``lowbit-asr evaluate`` and its
    per-utterance hypotheses are compared with those of the run's own test stage
    (``<point>/eval``: the same scoring, loaders and batches), utterance by utterance.
    """
    path = point / PACKED_FILE
    if path.is_file():
        done = json.loads(path.read_text())
        if "hypotheses_differ" in done or not evaluate:
            return done
    ckpt = row.get("best_checkpoint") or str(point / "checkpoints" / "last.ckpt")
    lbq = point / "model.lbq"
    report = export_packed(ckpt, lbq)
    packed = {"checkpoint": ckpt, "file": str(lbq), "file_bytes": report.file_bytes,
              "accounted_bytes": report.accounted_bytes, "ratio": report.ratio,
              "header_bytes": report.header_bytes}
    if evaluate:
        fake_quant = load_evaluation(point)[1]  # the run's test stage: <point>/eval
        from_file = _evaluate(lbq, point / "packed_eval", common, log_path)
        packed["fake_quant_wer"] = {s: _wer(v) for s, v in fake_quant.items()}
        packed["packed_wer"] = {s: _wer(v) for s, v in from_file.items()}
        packed["hypotheses_differ"] = _differences(from_file, fake_quant)
        packed["wer_equal"] = (packed["packed_wer"] == packed["fake_quant_wer"]
                               and not any(packed["hypotheses_differ"].values()))
    path.write_text(json.dumps(packed, indent=1))
    return packed


def _wer(scores: list[UtteranceScore]) -> float:
    t = totals(scores)
    return t["errors"] / max(t["words"], 1)


def packed_table(out: Path) -> str:
    """Markdown: each grid point's packed file against its accounted size (and WER)."""
    lines = ["| quantizer | accounted bytes | file bytes | file / accounted |"
             " packed WER = fake-quant WER |", "|---|---:|---:|---:|---|"]
    for path in sorted((out / "grid").glob(f"*/{PACKED_FILE}")):
        p = json.loads(path.read_text())
        same = ("–" if "wer_equal" not in p else
                ("yes (" if p["wer_equal"] else "**NO** (")
                + ", ".join(f"{s} {100 * w:.2f}%" for s, w in p["packed_wer"].items()) + ")")
        if "hypotheses_differ" in p:
            same += "; utterances with another hypothesis: " + ", ".join(
                f"{s} {n}" for s, n in p["hypotheses_differ"].items())
        lines.append(f"| `{path.parent.name}` | {p['accounted_bytes']:,} | {p['file_bytes']:,} |"
                     f" {p['ratio']:.4f} | {same} |")
    return "\n".join(lines)


CLAIMS = (
    # (question, A, B): B tested against A on every split (paired bootstrap + MAPSSWE).
    ("Asymmetric better than symmetric at 2 bits?", "int2_sym", "int2_asym"),
    ("Asymmetric better than symmetric at 4 bits?", "int4_sym", "int4_asym"),
    ("Sub-channel (4 groups per row) better than per-channel at 2 bits, scales counted?",
     "int2_asym", "int2_asym_sc4"),
    ("Sub-channel (groups of 16) better than per-channel at 2 bits, scales counted?",
     "int2_asym", "int2_asym_g16"),
    ("Clip search better than min/max at 2 bits?", "int2_asym", "int2_asym_clipsearch"),
    ("Mixed 2-bit FFN/attention + 4-bit rest against uniform 4 bits?", "int4_asym",
     "mixed_int2_ffn_attn_int4_rest"),
    ("Learned scales (LSQ+) better than min/max at 2 bits, per-channel?", "int2_asym",
     "int2_asym_lsq"),
    ("Learned scales (LSQ+) better than min/max at 2 bits, 4 groups per row?", "int2_asym_sc4",
     "int2_asym_sc4_lsq"),
)
"""The paper's qualitative claims, each answered by a paired test in the RESULTS section."""


def _point_dir(points: list[dict], quantizer: str) -> dict | None:
    grid = [p for p in points if p["quantizer"] == quantizer and "/grid/" in f"{p['path']}/"]
    return grid[0] if grid else None


def _point_runs(item: dict) -> list[Path]:
    """The run folders of a frontier item (its trainings)."""
    return [Path(p) for p in item.get("paths") or [item["path"]]]


def claims_text(out: Path) -> str:
    """The answers to :data:`CLAIMS` and the int4/int2 "lossless" questions, from the tests."""
    data = json.loads((out / "frontier.json").read_text())
    points, splits = data["points"], data["splits"]
    lines = ["| question | A → B | size B / A | " + " | ".join(
        f"{s}: WER A → B %, ΔWER [95% CI], p, verdict" for s in splits) + " |",
        "|---|---|---:|" + "---|" * len(splits)]
    seeded = False
    for question, qa, qb in CLAIMS:
        a, b = _point_dir(points, qa), _point_dir(points, qb)
        if not a or not b:
            lines.append(f"| {question} | `{qa}` → `{qb}` | – |" + " not run |" * len(splits))
            continue
        cells = []
        for split in splits:
            c = compare_points(split, _point_runs(a), _point_runs(b))
            if c is None:
                cells.append("–")
                continue
            seeded = seeded or c["test"] == "seeds"
            lo, hi = c["delta_ci"]
            cells.append(f"{100 * c['wer_a']:.2f} → {100 * c['wer_b']:.2f},"
                         f" {100 * c['delta']:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}],"
                         f" {c['test']} p = {c['p']:.3g}, {c['verdict']}")
        lines.append(f"| {question} | `{qa}` → `{qb}` | {b['size_bytes'] / a['size_bytes']:.2f} |"
                     f" " + " | ".join(cells) + " |")
    verdicts = []
    for item in points:
        if item["reference"] or item["lossless"] is None:
            continue
        verdicts.append(f"`{display_name(item, points)}` "
                        + ("lossless" if item["lossless"] else "**not lossless**")
                        + ("" if not item["within3"] else " (within +3%)"))
    how = ("the two-level bootstrap of the points' trainings (`seeds`: trainings and speakers)"
           " where both were trained several times, else MAPSSWE between the two models"
           if seeded else "MAPSSWE")
    return "\n".join([
        f"Paired tests of the paper's claims (B against A; verdict by {how} at α = 0.05,"
        " uncorrected — one test per question):", "", *lines, "",
        "Lossless against the reference float point (Holm-corrected over the grid, every"
        " split): " + ("; ".join(verdicts) or "no point has per-utterance results") + ".",
    ])


def _verdict(c: dict) -> str:
    return {"B worse": "worse", "B better": "better"}.get(c["verdict"], "n.s.")


def _cell(c: dict) -> str:
    lo, hi = c["delta_ci"]
    test = f"{c['test']} " if c.get("test") == "seeds" else ""
    p = c.get("p", c.get("mapsswe_p"))
    return (f"{100 * c['wer_a']:.2f} → {100 * c['wer_b']:.2f}, {100 * c['delta']:+.2f}"
            f" [{100 * lo:+.2f}, {100 * hi:+.2f}], {test}p = {p:.3g}, {_verdict(c)}")


def ptq_table(out: Path) -> str:
    """Markdown: per grid config, its post-training point against its QAT point (QAT = B)."""
    data = json.loads((out / "frontier.json").read_text())
    splits = data["splits"]
    lines = ["| quantizer | size MB | " + " | ".join(
        f"{s}: WER PTQ → QAT %, ΔWER [95% CI], MAPSSWE p, QAT is" for s in splits) + " |",
        "|---|---:|" + "---|" * len(splits)]
    for path in sorted((out / "ptq").glob(f"*/{RESULT_FILE}")):
        q = path.parent.name
        qat = out / "grid" / q
        if not _done(path.parent) or not _done(qat):
            lines.append(f"| `{q}` | – |" + " not run |" * len(splits))
            continue
        _, sp = load_evaluation(path.parent)
        _, sq = load_evaluation(qat)  # its first training (seed 0): PTQ has no seed to vary
        cells = [_cell(compare_split(s, sp[s], sq[s])) if s in sp and s in sq else "–"
                 for s in splits]
        lines.append(f"| `{q}` | {_done(qat)['size_mb']:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def allocation_table(out: Path) -> str:
    """Markdown: each allocated point against every trained grid point of equal or larger size
    (allocated = B), with its own lossless verdict."""
    data = json.loads((out / "frontier.json").read_text())
    splits, points = data["splits"], data["points"]
    by_path = {Path(p["path"]).resolve(): p for p in points}
    grid = [p for p in points if "/grid/" in f"{p['path']}/" and p["bits"] != 32]
    lines = ["| allocated point | size MB | bits / weight | lossless | against (size MB) | "
             + " | ".join(f"{s}: WER other → allocated %, ΔWER [95% CI], p, allocated is"
                          for s in splits) + " | dominates |",
             "|---|---:|---:|---|---|" + "---|" * len(splits) + "---|"]
    for path in sorted((out / "alloc").glob(f"*/{RESULT_FILE}")):
        item = by_path.get(path.parent.resolve())
        if item is None:
            continue
        verdict = {True: "yes", False: "**no**", None: "–"}[item.get("lossless")]
        head = (f"| `{item['quantizer']}` | {item['size_mb']:.3f} |"
                f" {item['bits_per_weight']:.2f} | {verdict} |")
        rivals = sorted((g for g in grid if g["size_bytes"] >= item["size_bytes"]),
                        key=lambda g: g["size_bytes"])
        if not rivals:
            lines.append(head + " none of equal or larger size |" + " – |" * len(splits) + " – |")
        for g in rivals:
            tests = [c for s in splits
                     if (c := compare_points(s, _point_runs(g), _point_runs(item))) is not None]
            cells = [_cell(c) for c in tests]
            dominates = ("yes" if tests and any(c["verdict"] == "B better" for c in tests)
                         and not any(c["verdict"] == "B worse" for c in tests) else
                         "worse" if any(c["verdict"] == "B worse" for c in tests) else "no (n.s.)")
            lines.append(f"{head} `{g['quantizer']}` ({g['size_mb']:.3f}) | " + " | ".join(cells)
                         + f" | {dominates} |")
            head = "| | | | |"
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
        claims_text(out),
        "",
        "QAT against post-training quantization of the same float checkpoint (`lowbit-asr ptq`:"
        " round-to-nearest, clip search where the config has it; paired tests, PTQ = A; a QAT"
        " point trained several times is represented by its first training, seed 0):",
        "",
        ptq_table(out),
        "",
        "Allocated policies (`lowbit-asr allocate budget_quantizer=<config>`: the size of that"
        " config; probe sensitivities, `scipy.optimize.milp`), each against every trained grid"
        " point of equal or larger size (allocated = B; *dominates* = significantly better on"
        " some split and worse on none):",
        "",
        allocation_table(out),
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
    parser.add_argument("--grid", nargs="+", default=None,
                        help="quantizer configs (conf/quantizer) to fine-tune (default: the"
                        " list in conf/sweep/reproduce_grid.yaml)")
    parser.add_argument("--out", type=Path, default=None,
                        help="stage folders (default runs/reproduce/<dataset>)")
    parser.add_argument("--results-md", type=Path, default=Path("RESULTS.md"))
    parser.add_argument("--extra", nargs="*", default=[], help="more Hydra overrides for train")
    parser.add_argument("--packed-eval", nargs="*", default=list(PACKED_EVAL),
                        help="grid points whose packed file is also evaluated")
    parser.add_argument("--ptq", action=argparse.BooleanOptionalAction, default=True,
                        help="post-training points of the grid configs (default: on)")
    parser.add_argument("--allocate", nargs="*", default=list(ALLOCATE_BUDGETS),
                        help="grid configs whose sizes are budgets of allocated points")
    parser.add_argument("--allocate-extra", nargs="*", default=list(ALLOCATE_EXTRA),
                        help="overrides for allocate (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=1,
                        help="trainings per grid and allocated point (seed=0..N-1), tested as"
                        " recipes (default: %(default)s)")
    parser.add_argument("--float-seeds", action="store_true",
                        help="with --seeds N: train the float stage N times too and start"
                        " training k of every point from float model k")
    parser.add_argument("--wandb", choices=["offline", "online", "disabled"], default="offline",
                        help="W&B mode of the frontier run (offline: files under --out/wandb)")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1, not {args.seeds}")
    if args.float_seeds and args.seeds < 2:
        parser.error("--float-seeds does nothing with one seed: add --seeds N (N >= 2)")
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
                        size], check=True)  # into its default root, the dataset config's

    def seeds(k: int) -> list[str]:  # seed 0 is the config's: the one-seed command as before
        return [f"seed={k}"] if k else []

    float_dir = out / "float"
    starts = []  # the float checkpoint of each float training
    for k in range(args.seeds if args.float_seeds else 1):
        run = seed_dir(float_dir, k)
        what = "stage 2/4: float baseline" + (f" seed {k}" if args.float_seeds else "")
        if _done(run):
            say(f"{what} — done before, skipped")
        else:
            say(f"{what} ({args.float_experiment}); log in {log_path}")
            if _train([f"experiment={args.float_experiment}", *seeds(k), *common], run,
                      log_path):
                say(f"{what} failed: see {log_path}")
                return 1
        float_row = _done(run)
        assert float_row is not None
        say(f"{what}: WER {float_row['wer']}, {float_row['size_mb']:.3f} MB")
        starts.append(float_row.get("best_checkpoint") or str(run / "checkpoints" / "last.ckpt"))
    best = starts[0]  # PTQ and the allocator's sensitivities

    def init_of(k: int) -> str:  # where training k of a point starts
        return starts[k] if args.float_seeds else best

    def reusable(run: Path, k: int) -> bool:  # finished, and from the float model it should be
        if not _done(run):
            return False
        if why := _same_start(run, init_of(k), unrecorded_ok=init_of(k) == best):
            raise SystemExit(f"lowbit-asr reproduce: {why}")
        return True

    args.grid = args.grid or sweep_quantizers()
    for i, quantizer in enumerate(args.grid, 1):
        point = out / "grid" / quantizer
        for k in range(args.seeds):
            run = seed_dir(point, k)
            what = (f"stage 3/4: grid {i}/{len(args.grid)} {quantizer}"
                    + (f" seed {k}" if args.seeds > 1 else ""))
            if reusable(run, k):
                say(f"{what} — done before, skipped")
                continue
            code = _train([f"experiment={args.qat_experiment}", f"quantizer={quantizer}",
                           f"init.checkpoint={init_of(k)}", *seeds(k), *common], run, log_path)
            row = _done(run)
            if not row:
                say(f"{what} FAILED (exit {code}); see {run / RESULT_FILE} and {log_path}")
                continue
            say(f"{what}: {row['size_mb']:.3f} MB,"
                f" WER {', '.join(f'{s} {100 * w:.1f}%' for s, w in row['wer'].items())}")
        row = _done(point)
        if not row:
            continue
        try:  # the packed file of the first training (the seeds quantize alike)
            packed = _pack(point, row, quantizer in args.packed_eval, common, log_path)
        except Exception as err:  # a failed export is reported, it does not sink the sweep
            say(f"stage 3/4: {quantizer}: packed export FAILED ({err}); see {log_path}")
            continue
        wer_note = ("" if "wer_equal" not in packed else
                    f", packed WER {'equal' if packed['wer_equal'] else 'DIFFERS'}")
        say(f"stage 3/4: {quantizer}: packed {packed['file_bytes']:,} bytes ="
            f" accounted x {packed['ratio']:.4f}{wer_note}")

    if args.ptq:
        for i, quantizer in enumerate(ptq := ptq_quantizers(args.grid), 1):
            point = out / "ptq" / quantizer
            if _done(point):
                say(f"stage 3/4: PTQ {i}/{len(ptq)} {quantizer} — done before, skipped")
                continue
            code = _command("ptq", [f"checkpoint={best}", f"quantizer={quantizer}",
                                    f"out={point}", *_dataset_args(common)], log_path)
            row = _done(point)
            say(f"stage 3/4: PTQ {i}/{len(ptq)} {quantizer}: " + (
                f"WER {', '.join(f'{s} {100 * w:.1f}%' for s, w in row['wer'].items())}"
                if row else f"FAILED (exit {code}); see {log_path}"))

    sensitivities: Path | None = None
    for i, budget in enumerate(args.allocate, 1):
        name = f"alloc_{budget}"
        policy_dir = (out / "alloc_policies" / name).resolve()
        point = out / "alloc" / name
        what = f"stage 3/4: allocated {i}/{len(args.allocate)} {name}"
        if not (policy_dir / "allocation.json").is_file():
            reuse = [f"sensitivity_file={sensitivities}"] if sensitivities else []
            code = _command("allocate", [f"checkpoint={best}", f"budget_quantizer={budget}",
                                         f"name={name}", f"out={policy_dir}", *reuse,
                                         *_dataset_args(common), *args.allocate_extra],
                            log_path)
            if code:
                say(f"{what}: allocation FAILED (exit {code}); see {log_path}")
                continue
        allocation = json.loads((policy_dir / "allocation.json").read_text())
        sensitivities = sensitivities or policy_dir / "allocation.json"
        for k in range(args.seeds):
            run = seed_dir(point, k)
            this = what + (f" seed {k}" if args.seeds > 1 else "")
            if reusable(run, k):
                say(f"{this} — done before, skipped")
                continue
            say(f"{this}: {allocation['predicted_bytes']:,} bytes within"
                f" {allocation['budget_bits'] // 8:,}; training")
            code = _train([f"experiment={args.qat_experiment}", f"quantizer={name}",
                           f"hydra.searchpath=[file://{policy_dir}]",
                           f"init.checkpoint={init_of(k)}", *seeds(k), *common], run, log_path)
            row = _done(run)
            if not row:
                say(f"{this} FAILED (exit {code}); see {run / RESULT_FILE} and {log_path}")
                continue
            say(f"{this}: {row['size_mb']:.3f} MB,"
                f" WER {', '.join(f'{s} {100 * w:.1f}%' for s, w in row['wer'].items())}")
        row = _done(point)
        if not row:
            continue
        try:  # its packed file: a per-tensor policy exports like any other
            packed = _pack(point, row, False, common, log_path)
            say(f"{what}: packed {packed['file_bytes']:,} bytes = accounted x"
                f" {packed['ratio']:.4f}")
        except Exception as err:  # noqa: BLE001 - reported, the sweep goes on
            say(f"{what}: packed export FAILED ({err}); see {log_path}")

    say("stage 4/4: frontier and RESULTS.md")
    paths = write_frontier(out)
    try:  # W&B (offline by default) is a copy of the frontier files, never their only home
        wandb_dir = log_frontier_to_wandb(paths, args.wandb, name=f"reproduce-{args.dataset}")
        if wandb_dir:
            say(f"frontier logged to W&B ({args.wandb}): {wandb_dir}")
    except Exception as err:  # noqa: BLE001
        say(f"frontier not logged to W&B: {err}")
    command = "make reproduce" + (f" DATASET={args.dataset}" if args.dataset != "embedded_mini"
                                  else "")
    if args.seeds > 1:
        command += f" SEEDS={args.seeds}"
    if args.float_seeds:
        command += " FLOAT_SEEDS=1"
    write_results_section(args.results_md, args.dataset, out, command)
    say(f"done: {paths['md']}, {paths['png']}; section written to {args.results_md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
