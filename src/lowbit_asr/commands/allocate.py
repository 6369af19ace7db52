"""``lowbit-asr allocate checkpoint=… budget_mb=… | budget_bits=… | budget_quantizer=…``: the
quantizer config that fits a size budget with the least estimated damage.

    lowbit-asr allocate checkpoint=runs/float_mini/checkpoints/best.ckpt budget_quantizer=int4_asym
    lowbit-asr allocate checkpoint=best.ckpt budget_mb=0.9 sensitivity=hessian
    lowbit-asr allocate checkpoint=null model=conformer_l budget_bits=3 sensitivity=weight_error

Every quantizable weight gets candidate specs (``bits`` × {per-channel, each of ``group_sizes``
that divides its K}, asymmetric by default, plus "keep float"), a sensitivity per candidate
(``probe``: the dev-set loss increase when only that weight is quantized so; ``hessian``: HAWQ-v2;
``weight_error``: data-free), and :func:`lowbit_asr.quant.allocate.solve` picks one per weight
(``scipy.optimize.milp``). Writes ``<out>/quantizer/<name>.yaml`` (an ordinary quantizer config:
one rule per weight, the budget and predicted size in its header), ``allocation.json`` (every
candidate's size and sensitivity) and ``allocation.md`` (chosen bits per layer type). The
predicted size is checked against ``size_report`` of the written file before it is announced::

    lowbit-asr train experiment=qat_mini quantizer=<name> hydra.searchpath=[file://<out>] \\
        init.checkpoint=<the same checkpoint>
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from lowbit_asr.cli import CONF_DIR, hydra_overrides
from lowbit_asr.files import write_text_atomic
from lowbit_asr.quant import QuantPolicy, size_report
from lowbit_asr.quant.allocate import (
    SENSITIVITIES,
    AllocationProblem,
    build_problem,
    choice_table,
    hessian_costs,
    hutchinson_traces,
    layer_type,
    policy_yaml,
    probe_costs,
    solve,
    weight_errors,
)

ALLOCATION_FILE = "allocation.json"


@dataclass
class AllocateConfig:
    """``conf/allocate.yaml``, validated before any model or data is touched."""

    checkpoint: str | None
    model: dict[str, Any]
    dataset: dict[str, Any]
    vocab_size: int = 256
    model_name: str = ""
    budget_mb: float | None = None
    budget_bits: float | None = None
    budget_quantizer: str | None = None
    bits: list[int] = field(default_factory=lambda: [2, 3, 4, 8])
    group_sizes: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    symmetric: bool = False
    scale_dtype: str = "float16"
    keep_float: bool = True
    float_bits: int = 32
    sensitivity: str = "probe"
    probe_utterances: int = 32
    hessian_samples: int = 16
    sensitivity_file: str | None = None
    seed: int = 0
    name: str | None = None
    out: str | None = None
    threads: int = 0

    def __post_init__(self) -> None:
        budgets = {k: getattr(self, k) for k in ("budget_mb", "budget_bits", "budget_quantizer")}
        given = [k for k, v in budgets.items() if v is not None]
        if len(given) != 1:
            raise ValueError("allocate needs exactly one budget: budget_mb=<MB>,"
                             " budget_bits=<bits per weight> or budget_quantizer=<config name>;"
                             f" got {given or 'none'}")
        for key in ("budget_mb", "budget_bits"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                      or value <= 0):
                raise ValueError(f"{key} must be a positive number, got {value!r}")
        if self.sensitivity not in SENSITIVITIES:
            raise ValueError(f"sensitivity must be one of {SENSITIVITIES}, got"
                             f" {self.sensitivity!r}")
        if self.checkpoint is None and self.sensitivity != "weight_error" \
                and self.sensitivity_file is None:
            raise ValueError(f"sensitivity={self.sensitivity} needs a trained model and its data:"
                             " give checkpoint=<float ckpt>, or use sensitivity=weight_error with"
                             " checkpoint=null (random weights)")
        for key in ("probe_utterances", "hessian_samples", "vocab_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
        if not isinstance(self.threads, int) or isinstance(self.threads, bool) or self.threads < 0:
            raise ValueError(f"threads must be an integer >= 0, got {self.threads!r}")
        if self.float_bits not in (16, 32):
            raise ValueError(f"float_bits must be 16 or 32, got {self.float_bits!r}")
        if not self.bits:
            raise ValueError("bits: at least one candidate bit width")

    @property
    def budget_label(self) -> str:
        """``int4_asym``, ``0.9mb`` or ``3bits``: the budget in a name."""
        if self.budget_quantizer is not None:
            return Path(self.budget_quantizer).stem
        if self.budget_mb is not None:
            return f"{self.budget_mb:g}mb"
        return f"{self.budget_bits:g}bits"

    @property
    def budget_text(self) -> str:
        """The budget as the user gave it, for the header: ``budget_bits=3 (…)``."""
        if self.budget_quantizer is not None:
            return f"budget_quantizer={self.budget_quantizer} (its accounted size)"
        if self.budget_mb is not None:
            return f"budget_mb={self.budget_mb:g}"
        return (f"budget_bits={self.budget_bits:g} (bits per quantized weight on average,"
                " scales included)")


def validate(plain: dict[str, Any]) -> AllocateConfig:
    """The typed config; an unknown key is an error naming it."""
    known = set(AllocateConfig.__dataclass_fields__)
    unknown = sorted(set(plain) - known)
    if unknown:
        raise ValueError(f"allocate: unknown key(s) {unknown}; known: {sorted(known)}")
    return AllocateConfig(**plain)


def load_quantizer(name: str) -> QuantPolicy:
    """A ``conf/quantizer`` config by name, or a quantizer YAML file by path."""
    path = (Path(name) if name.endswith((".yaml", ".yml"))
            else CONF_DIR / "quantizer" / f"{name}.yaml")
    if not path.is_file():
        raise FileNotFoundError(f"budget_quantizer={name}: no such quantizer config {path}")
    data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    try:
        return QuantPolicy.from_config(data)
    except ValueError as err:
        raise ValueError(f"budget_quantizer={name} ({path}): {err}") from err


def budget_bits(cfg: AllocateConfig, model: torch.nn.Module, problem: AllocationProblem) -> int:
    """The budget in bits: whole bytes for ``budget_mb``/``budget_quantizer``."""
    if cfg.budget_quantizer is not None:
        return 8 * size_report(model, load_quantizer(cfg.budget_quantizer)).total_bytes
    if cfg.budget_mb is not None:
        return 8 * math.floor(cfg.budget_mb * 1e6)
    return problem.budget_for_bits_per_weight(float(cfg.budget_bits))


def probe_batches(cfg: AllocateConfig, module: Any) -> list[dict[str, Any]]:
    """Whole dev batches, chosen with ``seed``, until ``probe_utterances`` are in."""
    from lowbit_asr.data.config import DatasetConfig
    from lowbit_asr.data.datamodule import AsrDataModule

    dataset = DatasetConfig(**cfg.dataset)
    data = AsrDataModule(dataset, tokenizer=module.tokenizer, frontend=module.model.frontend)
    batches = list(data.eval_dataloader(dataset.root, dataset.dev_split))
    order = list(range(len(batches)))
    random.Random(cfg.seed).shuffle(order)
    chosen, count = [], 0
    for i in order:
        if count >= cfg.probe_utterances:
            break
        chosen.append(batches[i])
        count += len(batches[i]["ids"])
    if count < cfg.probe_utterances:
        raise ValueError(f"{dataset.root}/{dataset.dev_split} has {count} utterances, fewer"
                         f" than probe_utterances={cfg.probe_utterances}")
    return [{k: v for k, v in b.items() if k in ("feats", "feat_lens", "targets", "target_lens")}
            for b in chosen]


def _labels(problem: AllocationProblem) -> dict[str, list[str]]:
    return {t.name: [c.label for c in t.choices] for t in problem.tensors}


def reuse_costs(path: str, problem: AllocationProblem, cfg: AllocateConfig) -> dict[str, Any]:
    """The sensitivities of an earlier allocation, checked to be for the same candidates."""
    data = json.loads(Path(path).read_text())
    saved = data.get("sensitivities") or {}
    if data.get("sensitivity") != cfg.sensitivity or data.get("checkpoint") != cfg.checkpoint:
        raise ValueError(f"sensitivity_file={path}: computed with sensitivity="
                         f"{data.get('sensitivity')} on {data.get('checkpoint')}, not"
                         f" {cfg.sensitivity} on {cfg.checkpoint}")
    labels = _labels(problem)
    if {n: v["choices"] for n, v in saved.items()} != labels:
        raise ValueError(f"sensitivity_file={path}: its candidates differ from this run's"
                         " (bits, group_sizes, symmetric, scale_dtype, keep_float or the model)")
    return data


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="allocate")
def main(dict_cfg: DictConfig) -> dict[str, Any]:
    """Estimate, solve, write and check the allocated quantizer config."""
    plain = OmegaConf.to_container(dict_cfg, resolve=True)
    cfg = validate(plain)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    module = None
    if cfg.checkpoint is not None:
        from lowbit_asr.train.checkpoint import read_checkpoint, restore

        module, _ = restore(read_checkpoint(cfg.checkpoint))
        if not module.policy.is_float:
            raise ValueError(f"checkpoint={cfg.checkpoint} was trained with quantizer"
                             f" {module.policy.name!r}: allocate starts from a float checkpoint")
        model = module.model
    else:
        from lowbit_asr.model.rnnt import build_model

        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, cfg.vocab_size)
    model.eval()
    problem = build_problem(model, cfg.bits, cfg.group_sizes, cfg.keep_float, cfg.symmetric,
                            cfg.scale_dtype, cfg.float_bits)
    budget = budget_bits(cfg, model, problem)
    name = cfg.name or f"alloc_{cfg.budget_label}"
    out = Path(cfg.out or Path("runs") / "allocate" / name)
    n_choices = sum(len(t.choices) for t in problem.tensors)
    print(f"{len(problem.tensors)} quantizable weights, {n_choices} candidates;"
          f" budget {budget:,} bits = {math.ceil(budget / 8):,} bytes")

    start = time.perf_counter()
    info: dict[str, Any] = {}
    if cfg.sensitivity_file:
        saved = reuse_costs(cfg.sensitivity_file, problem, cfg)
        costs = [saved["sensitivities"][t.name]["costs"] for t in problem.tensors]
        info = {k: saved[k] for k in ("float_loss", "probe_utterances", "traces") if k in saved}
        info["reused_from"] = cfg.sensitivity_file
    elif cfg.sensitivity == "weight_error":
        costs = weight_errors(model, problem)
    else:
        from lowbit_asr.model.probe import ProbeLoss

        batches = probe_batches(cfg, module)
        loss = ProbeLoss(model, batches)
        info["probe_utterances"] = sum(int(b["feats"].size(0)) for b in batches)
        info["float_loss"] = loss.float_loss
        if cfg.sensitivity == "probe":
            def progress(i: int, n: int, tensor: str) -> None:
                if i % 10 == 0 or i == n:
                    print(f"  probed {i}/{n} weights ({time.perf_counter() - start:.0f} s)",
                          flush=True)

            costs, _ = probe_costs(model, problem, loss, progress)
            info["loss_evaluations"] = loss.evaluations
        else:
            traces = hutchinson_traces(model, [t.name for t in problem.tensors], loss.backward,
                                       cfg.hessian_samples, cfg.seed)
            costs = hessian_costs(weight_errors(model, problem), problem, traces)
            info["traces"] = {k: {"mean": m, "stderr": s} for k, (m, s) in traces.items()}
    sensitivity_seconds = time.perf_counter() - start

    start = time.perf_counter()
    allocation = solve(problem, costs, budget)
    solve_seconds = time.perf_counter() - start
    policy = allocation.policy(name)
    header = [
        f"{name}: allocated by `lowbit-asr allocate` (scipy.optimize.milp: least summed"
        f" {cfg.sensitivity} sensitivity within the budget).",
        f"Budget: {budget:,} bits ({math.ceil(budget / 8):,} bytes; {cfg.budget_text});"
        f" predicted size {allocation.total_bytes:,} bytes = {allocation.total_bytes / 1e6:.6f} MB"
        " (`lowbit-asr size` counts the same).",
        "From: " + (cfg.checkpoint or f"random weights of model={cfg.model_name}, vocab"
                    f" {cfg.vocab_size} (seed {cfg.seed})") + ".",
        f"Candidates: bits {list(cfg.bits)} x per-channel/groups {list(cfg.group_sizes)},"
        f" {'symmetric' if cfg.symmetric else 'asymmetric'}, scales {cfg.scale_dtype}"
        + (", or float" if cfg.keep_float else "") + ".",
        f"Use: lowbit-asr train quantizer={name} hydra.searchpath=[file://{out.resolve()}] ...",
    ]
    yaml_path = out / "quantizer" / f"{name}.yaml"
    yaml_path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(yaml_path, policy_yaml(policy, header))
    # The file as train and size will read it: its size must be the predicted one, to the byte.
    written = QuantPolicy.from_config(OmegaConf.to_container(OmegaConf.load(yaml_path)))
    counted = size_report(model, written).total_bytes
    if counted != allocation.total_bytes or written != policy:
        raise RuntimeError(f"{yaml_path}: size_report counts {counted:,} bytes, the allocation"
                           f" predicted {allocation.total_bytes:,}")

    from lowbit_asr.train.results import git_commit

    table = choice_table(allocation)
    result = {
        "name": name, "checkpoint": cfg.checkpoint, "sensitivity": cfg.sensitivity,
        "budget_bits": budget, "budget": cfg.budget_label,
        "predicted_bits": allocation.total_bits, "predicted_bytes": allocation.total_bytes,
        "predicted_mb": allocation.total_bytes / 1e6, "objective": allocation.cost,
        "quantizer_file": str(yaml_path), "sensitivity_seconds": sensitivity_seconds,
        "solve_seconds": solve_seconds, "commit": git_commit(),
        "command": "lowbit-asr allocate " + " ".join(hydra_overrides()), **info,
        "chosen": {t.name: c.label for t, c in allocation.chosen},
        "sensitivities": {t.name: {"layer_type": layer_type(t.name),
                                   "choices": [c.label for c in t.choices],
                                   "bits": [c.bits for c in t.choices], "costs": list(row)}
                          for t, row in zip(problem.tensors, costs, strict=True)},
    }
    write_text_atomic(out / ALLOCATION_FILE, json.dumps(result, indent=1))
    write_text_atomic(out / "allocation.md", f"# {name}\n\n" + "\n".join(
        f"{line}  " for line in header) + "\n\n" + table + "\n")
    print(table)
    print(f"\n{yaml_path}: {allocation.total_bytes:,} bytes ({allocation.total_bytes / 1e6:.6f} MB)"
          f" within the budget of {math.ceil(budget / 8):,}; sensitivity {sensitivity_seconds:.1f}"
          f" s, milp {solve_seconds:.2f} s")
    if cfg.checkpoint:
        print(f"next: lowbit-asr train experiment=qat_mini quantizer={name}"
              f" hydra.searchpath=[file://{out.resolve()}] init.checkpoint={cfg.checkpoint}")
    return result


if __name__ == "__main__":
    main()
