"""The size-vs-WER frontier of a sweep: rows -> Pareto front -> CSV, markdown table, plot.

Reads the ``results.json`` row every run writes (see :mod:`lowbit_asr.train.results`);
failed runs are listed in the outputs, never dropped.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from lowbit_asr.train.results import RESULT_FILE

BIT_COLOURS = {1: "#7f0000", 2: "#d62728", 3: "#ff7f0e", 4: "#1f77b4", 8: "#2ca02c",
               32: "#000000", "mixed": "#9467bd"}
GRANULARITY_MARKERS = {"per_channel": "o", "sub_channel": "s", "float": "*", "mixed": "D"}


def load_rows(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Every run's row under ``sweep_dir`` (recursively), sorted by path; unreadable files
    become failed rows naming the file."""
    rows = []
    for path in sorted(Path(sweep_dir).rglob(RESULT_FILE)):
        try:
            row = json.loads(path.read_text())
            if not isinstance(row, dict) or "status" not in row:
                raise ValueError("not a result row")
        except (OSError, ValueError) as err:
            row = {"status": "failed", "run_id": path.parent.name, "error": f"{path}: {err}"}
        row["path"] = str(path.parent)
        rows.append(row)
    return rows


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both size and WER (smaller is better),
    ordered by size. Ties in both coordinates keep the first."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1], i))
    front, best_wer = [], math.inf
    for i in order:
        if points[i][1] < best_wer:
            front.append(i)
            best_wer = points[i][1]
    return front


def _mean_wer(row: dict[str, Any]) -> float:
    values = list(row["wer"].values())
    return sum(values) / len(values)


def frontier_rows(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Flat rows of the successful runs with Pareto flags and relative numbers, and the splits.

    ``rel_size_vs_int4``: size over the size of the best (lowest mean WER) 4-bit run.
    ``rel_wer_<split>``: WER over the float run's WER on that split.
    """
    ok = [r for r in rows if r.get("status") == "ok"]
    splits = sorted({s for r in ok for s in r["wer"]})
    int4 = [r for r in ok if r.get("quant_bits") == 4]
    ref4 = min(int4, key=_mean_wer)["size_bytes"] if int4 else None
    floats = [r for r in ok if r.get("quant_bits") == 32]
    ref_float = min(floats, key=_mean_wer)["wer"] if floats else None
    flat = []
    for r in ok:
        item = {
            "run_id": r["run_id"], "experiment": r.get("experiment", ""),
            "quantizer": r.get("quantizer", ""), "bits": r.get("quant_bits"),
            "symmetric": r.get("quant_symmetric"), "granularity": r.get("quant_granularity"),
            "group": r.get("quant_group", ""), "clip": r.get("quant_clip", ""),
            "size_bytes": r["size_bytes"], "size_mb": r["size_mb"],
            "bits_per_weight": r.get("bits_per_quantized_weight", 0.0),
            "rel_size_vs_int4": r["size_bytes"] / ref4 if ref4 else None,
        }
        for s in splits:
            wer = r["wer"].get(s)
            item[f"wer_{s}"] = wer
            item[f"rel_wer_{s}"] = (wer / ref_float[s] if ref_float and wer is not None
                                    and ref_float.get(s) else None)
        item["commit"], item["command"] = r.get("commit", ""), r.get("command", "")
        flat.append(item)
    for s in splits:
        usable = [i for i, item in enumerate(flat) if item[f"wer_{s}"] is not None]
        front = {usable[j] for j in pareto_front(
            [(flat[i]["size_bytes"], flat[i][f"wer_{s}"]) for i in usable])}
        for i, item in enumerate(flat):
            item[f"front_{s}"] = i in front
    flat.sort(key=lambda item: item["size_bytes"])
    return flat, splits


def _fmt(value: Any, pattern: str = "{:.3f}") -> str:
    if value is None:
        return "–"
    return pattern.format(value) if isinstance(value, float) else str(value)


def to_markdown(flat: list[dict[str, Any]], splits: list[str],
                failed: list[dict[str, Any]]) -> str:
    """The frontier table (every run, front members in bold), then the failed runs."""
    head = ["quantizer", "bits", "sym", "granularity", "clip", "size MB", "× int4 size",
            *[f"WER {s} %" for s in splits], *[f"× float WER {s}" for s in splits]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    repeated = {q for q in (i["quantizer"] for i in flat)
                if sum(i["quantizer"] == q for i in flat) > 1}
    for item in flat:
        on_front = any(item[f"front_{s}"] for s in splits)
        name = item["quantizer"]
        if name in repeated:  # e.g. the float baseline and the float fine-tuned like the grid
            name = f"{name} ({item['experiment'] or item['run_id']})"
        name = f"**{name}**" if on_front else name
        sym = {True: "sym", False: "asym"}.get(item["symmetric"], _fmt(item["symmetric"]))
        group = item["group"]  # e.g. g16; not repeated when it says the same as the granularity
        granularity = (item["granularity"] if group in (None, "", item["granularity"])
                       else f"{item['granularity']} {group}")
        cells = [name, _fmt(item["bits"]), sym, granularity,
                 _fmt(item["clip"]), f"{item['size_mb']:.3f}",
                 _fmt(item["rel_size_vs_int4"], "{:.2f}"),
                 *[_fmt(None if item[f"wer_{s}"] is None else 100 * item[f"wer_{s}"], "{:.2f}")
                   for s in splits],
                 *[_fmt(item[f"rel_wer_{s}"], "{:.2f}") for s in splits]]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Bold: on the size-vs-WER Pareto front of at least one split.")
    if failed:
        lines.append("")
        lines.append(f"Failed runs ({len(failed)}):")
        lines.append("")
        for r in failed:
            lines.append(f"- `{r.get('run_id', '?')}` ({r.get('quantizer', '?')}):"
                         f" {r.get('error', 'unknown error')}")
    return "\n".join(lines)


def plot(flat: list[dict[str, Any]], splits: list[str], path: Path) -> None:
    """x = size MB, y = WER %, colour = bits, marker = granularity, front as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(1, max(len(splits), 1), figsize=(6 * max(len(splits), 1), 4.5),
                             squeeze=False)
    for ax, split in zip(axes[0], splits, strict=False):
        for item in flat:
            if item[f"wer_{split}"] is None:
                continue
            ax.scatter(item["size_mb"], 100 * item[f"wer_{split}"],
                       c=BIT_COLOURS.get(item["bits"], "#7f7f7f"),
                       marker=GRANULARITY_MARKERS.get(item["granularity"], "x"), s=55,
                       edgecolors="white", linewidths=0.5, zorder=3)
        front = sorted((i for i in flat if i[f"front_{split}"]), key=lambda i: i["size_mb"])
        ax.step([i["size_mb"] for i in front], [100 * i[f"wer_{split}"] for i in front],
                where="post", color="#555555", linewidth=1, zorder=2)
        ax.set_title(split)
        ax.set_xlabel("model size (MB, 10^6 bytes)")
        ax.set_ylabel("WER (%)")
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], marker="o", linestyle="", color=c, label=f"{b} bits" if b != 32
                      else "float") for b, c in BIT_COLOURS.items()
               if any(i["bits"] == b for i in flat)]
    handles += [Line2D([], [], marker=m, linestyle="", color="#7f7f7f", label=g)
                for g, m in GRANULARITY_MARKERS.items() if any(i["granularity"] == g for i in flat)]
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_frontier(sweep_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Read the rows under ``sweep_dir``; write frontier.csv/.md/.png to ``out_dir``."""
    rows = load_rows(sweep_dir)
    if not rows:
        raise FileNotFoundError(f"{sweep_dir}: no {RESULT_FILE} found (is it a sweep directory?)")
    out = Path(out_dir or sweep_dir)
    out.mkdir(parents=True, exist_ok=True)
    flat, splits = frontier_rows(rows)
    failed = [r for r in rows if r.get("status") != "ok"]
    paths = {"csv": out / "frontier.csv", "md": out / "frontier.md", "png": out / "frontier.png"}
    columns = list(flat[0]) if flat else ["run_id"]
    with paths["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*columns, "status", "error"],
                                extrasaction="ignore")
        writer.writeheader()
        for item in flat:
            writer.writerow({**item, "status": "ok", "error": ""})
        for r in failed:
            writer.writerow({"run_id": r.get("run_id"), "quantizer": r.get("quantizer"),
                             "status": "failed", "error": r.get("error", "")})
    paths["md"].write_text(to_markdown(flat, splits, failed) + "\n")
    plot(flat, splits, paths["png"])
    return paths
