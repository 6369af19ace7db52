"""Bit allocation under a size budget: one spec per weight, chosen by an integer program.

Each quantizable weight ``t`` has candidate choices ``c`` (bit widths × granularities, plus "keep
float"), each with its accounted size ``bits[t, c]`` (METHOD.md's formula, the one
:func:`~lowbit_asr.quant.size.size_report` counts) and a sensitivity ``cost[t, c]``:

- ``probe``: the loss increase when only ``t`` is quantized with ``c`` (:func:`probe_costs`);
- ``hessian``: HAWQ-v2 (Dong et al. 2020), the mean Hessian diagonal Tr(H_t)/n_t (Hutchinson)
  times ‖Q_c(W_t) − W_t‖² (:func:`hutchinson_traces`, :func:`hessian_costs`);
- ``weight_error``: ‖Q_c(W_t) − W_t‖² alone, data-free (HAWQ with the identity Hessian), for a
  model with no data, e.g. a configuration with random weights.

Picking one choice per tensor that minimises Σ cost subject to Σ bits ≤ budget is a
multiple-choice knapsack. It is solved exactly by ``scipy.optimize.milp`` (HiGHS branch and
bound, relative gap 0): a greedy or a hand-written search gives no optimality guarantee.

Imports nothing from the ASR side: losses come in as callables, and the solution is an ordinary
:class:`~lowbit_asr.quant.policy.QuantPolicy` with one explicit rule per weight.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from lowbit_asr.quant.fake_quant import dequantize, quantize
from lowbit_asr.quant.policy import PolicyRule, QuantPolicy, quantizable_weights
from lowbit_asr.quant.size import quantized_bits, size_report
from lowbit_asr.quant.spec import QuantSpec

DEFAULT_BITS = (2, 3, 4, 8)
"""Candidate integer widths."""
DEFAULT_GROUP_SIZES = (16, 32, 64, 128)
"""Candidate sub-channel group sizes; a size is offered for a weight only when it divides the
weight's K (and is smaller than K: equal to K is per-channel)."""
SENSITIVITIES = ("probe", "hessian", "weight_error")
"""The sensitivity estimates :mod:`lowbit_asr.commands.allocate` offers."""


class BudgetTooSmall(ValueError):
    """No choice of candidates fits the budget."""


@dataclass(frozen=True)
class Choice:
    """One way to store one weight: a spec (``None`` = keep float) and its accounted bits."""

    spec: QuantSpec | None
    group_size: int | None
    """Resolved group length (K when per-channel); ``None`` for float."""
    bits: int
    """Accounted bits of the whole tensor stored this way (scales and offsets included)."""

    @property
    def label(self) -> str:
        """``float`` or the spec's short form (``int2-asym-g32-f16``)."""
        return "float" if self.spec is None else self.spec.short()


@dataclass(frozen=True)
class TensorChoices:
    """A quantizable weight and its candidate choices."""

    name: str
    shape: tuple[int, ...]
    choices: tuple[Choice, ...]

    @property
    def numel(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)


@dataclass(frozen=True)
class AllocationProblem:
    """Every quantizable weight's choices, and the bits of everything else."""

    tensors: tuple[TensorChoices, ...]
    fixed_bits: int
    """Accounted bits of the tensors that are never quantized (biases, norms, buffers)."""
    float_bits: int
    """Bits per element of float tensors (the policy's ``float_bits``)."""

    @property
    def min_bits(self) -> int:
        """The smallest size any choice reaches."""
        return self.fixed_bits + sum(min(c.bits for c in t.choices) for t in self.tensors)

    @property
    def weights(self) -> int:
        """Elements of the quantizable weights."""
        return sum(t.numel for t in self.tensors)

    def budget_for_bits_per_weight(self, bits_per_weight: float) -> int:
        """Budget (bits) that gives the quantizable weights ``bits_per_weight`` on average,
        scales and float choices included, on top of the fixed tensors."""
        return self.fixed_bits + math.floor(bits_per_weight * self.weights)


def candidate_specs(k: int, bits: Sequence[int] = DEFAULT_BITS,
                    group_sizes: Sequence[int] = DEFAULT_GROUP_SIZES, symmetric: bool = False,
                    scale_dtype: str = "float16") -> list[QuantSpec]:
    """Per bit width: per-channel, then every group size in ``group_sizes`` that divides ``k``
    (and is smaller than ``k``)."""
    specs = []
    for b in bits:
        specs.append(QuantSpec(bits=b, symmetric=symmetric, scale_dtype=scale_dtype))
        for g in group_sizes:
            if g < k and k % g == 0:
                specs.append(QuantSpec(bits=b, symmetric=symmetric, group_size=g,
                                       scale_dtype=scale_dtype))
    return specs


def build_problem(model: nn.Module, bits: Sequence[int] = DEFAULT_BITS,
                  group_sizes: Sequence[int] = DEFAULT_GROUP_SIZES, keep_float: bool = True,
                  symmetric: bool = False, scale_dtype: str = "float16",
                  float_bits: int = 32) -> AllocationProblem:
    """The choices of every quantizable weight of ``model`` (shapes only: a model on the meta
    device will do) and the accounted bits of the rest, as :func:`size_report` counts them."""
    if not bits:
        raise ValueError("allocation: no candidate bit width (bits is empty)")
    tensors = []
    for name, weight in quantizable_weights(model):
        k = weight.numel() // weight.shape[0]
        choices = []
        if keep_float:
            choices.append(Choice(None, None, weight.numel() * float_bits))
        for spec in candidate_specs(k, bits, group_sizes, symmetric, scale_dtype):
            g = spec.group_size_for(k, name)
            choices.append(Choice(spec, g, quantized_bits(weight.numel(), spec, g)[2]))
        tensors.append(TensorChoices(name, tuple(weight.shape), tuple(choices)))
    if not tensors:
        raise ValueError(f"{type(model).__name__} has no quantizable weight")
    total_float = size_report(model, QuantPolicy(float_bits=float_bits)).total_bits
    fixed = total_float - sum(t.numel * float_bits for t in tensors)
    return AllocationProblem(tuple(tensors), fixed, float_bits)


@dataclass(frozen=True)
class Allocation:
    """The solved program: one choice index per tensor."""

    problem: AllocationProblem
    picks: tuple[int, ...]
    cost: float
    """Σ cost of the picked choices (the minimised objective)."""
    budget_bits: int

    @property
    def chosen(self) -> list[tuple[TensorChoices, Choice]]:
        """(tensor, its choice), in model order."""
        return [(t, t.choices[i]) for t, i in zip(self.problem.tensors, self.picks, strict=True)]

    @property
    def total_bits(self) -> int:
        """Accounted bits of the whole model under the allocation."""
        return self.problem.fixed_bits + sum(c.bits for _, c in self.chosen)

    @property
    def total_bytes(self) -> int:
        """Accounted bytes (bits / 8 rounded up, as :class:`SizeReport` does)."""
        return math.ceil(self.total_bits / 8)

    def policy(self, name: str) -> QuantPolicy:
        """One explicit rule per quantizable weight (its exact name), no default."""
        rules = tuple(PolicyRule(pattern=t.name, spec=c.spec) for t, c in self.chosen)
        return QuantPolicy(rules=rules, default=None, float_bits=self.problem.float_bits,
                           indivisible="error", name=name)


def solve(problem: AllocationProblem, costs: Sequence[Sequence[float]],
          budget_bits: int, time_limit: float = 300.0) -> Allocation:
    """The choices of least total cost whose accounted size is at most ``budget_bits``.

    Raises :class:`BudgetTooSmall` naming the smallest reachable size when no choice fits, and
    ``RuntimeError`` when HiGHS does not prove optimality within ``time_limit`` seconds.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_array

    if len(costs) != len(problem.tensors):
        raise ValueError(f"costs: {len(costs)} rows for {len(problem.tensors)} tensors")
    flat_cost, flat_bits, rows, cols = [], [], [], []
    for t_index, (tensor, row) in enumerate(zip(problem.tensors, costs, strict=True)):
        if len(row) != len(tensor.choices):
            raise ValueError(f"costs of {tensor.name}: {len(row)} values for"
                             f" {len(tensor.choices)} choices")
        for choice, cost in zip(tensor.choices, row, strict=True):
            if not math.isfinite(cost):
                raise ValueError(f"cost of {tensor.name} as {choice.label} is {cost}")
            rows.append(t_index)
            cols.append(len(flat_cost))
            flat_cost.append(float(cost))
            flat_bits.append(choice.bits)
    if budget_bits < problem.min_bits:
        raise BudgetTooSmall(
            f"budget {budget_bits:,} bits ({math.ceil(budget_bits / 8):,} bytes) is below the"
            f" smallest size these candidates reach: {problem.min_bits:,} bits"
            f" ({math.ceil(problem.min_bits / 8):,} bytes ="
            f" {math.ceil(problem.min_bits / 8) / 1e6:.6f} MB, every weight at its cheapest"
            " choice and the float tensors as they are)")
    n = len(flat_cost)
    one_each = coo_array((np.ones(n), (rows, cols)), shape=(len(problem.tensors), n)).tocsr()
    sizes = np.asarray(flat_bits, dtype=np.float64)[None, :]
    rhs = float(budget_bits - problem.fixed_bits)
    for _ in range(3):  # HiGHS' feasibility tolerance may let the sum overshoot by a hair
        result = milp(
            np.asarray(flat_cost), integrality=np.ones(n), bounds=Bounds(0, 1),
            constraints=[LinearConstraint(one_each, 1, 1), LinearConstraint(sizes, -np.inf, rhs)],
            options={"mip_rel_gap": 0.0, "time_limit": time_limit, "presolve": True})
        if result.status != 0 or result.x is None:
            raise RuntimeError(f"milp did not find an optimal allocation: {result.message}")
        picks, start = [], 0
        for tensor in problem.tensors:
            values = result.x[start:start + len(tensor.choices)]
            picks.append(int(np.argmax(values)))
            start += len(tensor.choices)
        allocation = Allocation(problem, tuple(picks), 0.0, budget_bits)
        overshoot = allocation.total_bits - budget_bits
        if overshoot <= 0:
            cost = sum(costs[t][i] for t, i in enumerate(picks))
            return Allocation(problem, tuple(picks), float(cost), budget_bits)
        rhs -= overshoot
    raise RuntimeError("milp's solution exceeds the budget after rounding, three times")


# ---- sensitivities ------------------------------------------------------------------------------
def _quantized(weight: Tensor, choice: Choice, name: str) -> Tensor:
    assert choice.spec is not None
    qw = quantize(weight, choice.spec, name, choice.group_size)
    return dequantize(qw, weight.dtype)


@torch.no_grad()
def weight_errors(model: nn.Module, problem: AllocationProblem) -> list[list[float]]:
    """‖Q_c(W_t) − W_t‖² per tensor and choice (0 for float)."""
    out = []
    for tensor in problem.tensors:
        weight = model.get_parameter(tensor.name).detach()
        out.append([0.0 if c.spec is None else
                    float((_quantized(weight, c, tensor.name) - weight).double().square().sum())
                    for c in tensor.choices])
    return out


@torch.no_grad()
def probe_costs(model: nn.Module, problem: AllocationProblem, loss: Callable[[str], float],
                progress: Callable[[int, int, str], None] | None = None,
                ) -> tuple[list[list[float]], float]:
    """Loss increase when only one tensor is quantized one way, for every (tensor, choice);
    and the float loss.

    ``loss(name)`` evaluates the model as it currently is; ``name`` is the one weight that
    differs from float (``""`` for none), so that the caller may reuse what it computed before
    that weight (cached activations). Each weight is restored before the next.
    """
    base = loss("")
    out = []
    for index, tensor in enumerate(problem.tensors):
        weight = model.get_parameter(tensor.name)
        saved = weight.detach().clone()
        row = []
        try:
            for choice in tensor.choices:
                if choice.spec is None:
                    row.append(0.0)
                    continue
                weight.copy_(_quantized(saved, choice, tensor.name))
                row.append(loss(tensor.name) - base)
        finally:
            weight.copy_(saved)
        out.append(row)
        if progress:
            progress(index + 1, len(problem.tensors), tensor.name)
    return out, base


def hutchinson_traces(model: nn.Module, names: Sequence[str], backward: Callable[[], None],
                      samples: int = 16, seed: int = 0, relative_step: float = 1e-3,
                      ) -> dict[str, tuple[float, float]]:
    """Hutchinson estimate of the mean Hessian diagonal Tr(H_tt)/n_t of every named weight:
    (mean, standard error over the samples).

    ``backward()`` must compute the loss with gradients and call ``.backward()`` on it (it
    starts from cleared ``.grad``). Hessian-vector products are taken by central differences
    of gradients, Hv ≈ (∇L(w + εv) − ∇L(w − εv)) / 2ε, with ε per weight = ``relative_step`` ×
    its RMS: this needs only first derivatives, which matters because fused RNN-T losses
    (torchaudio's, the pruned lattice's) have no double backward. Rademacher probes v (one per
    sample, over every weight at once; cross-weight terms vanish in expectation).
    """
    if samples < 1:
        raise ValueError(f"hutchinson samples must be >= 1, got {samples}")
    params = {name: model.get_parameter(name) for name in names}
    steps = {name: relative_step * max(float(p.detach().double().square().mean().sqrt()), 1e-8)
             for name, p in params.items()}
    generator = torch.Generator().manual_seed(seed)
    saved = {name: p.detach().clone() for name, p in params.items()}

    def gradients() -> dict[str, Tensor]:
        for p in model.parameters():
            p.grad = None
        backward()
        return {name: (p.grad.detach().double().clone() if p.grad is not None
                       else torch.zeros_like(p, dtype=torch.float64))
                for name, p in params.items()}

    values: dict[str, list[float]] = defaultdict(list)
    try:
        for _ in range(samples):
            probes = {name: torch.randint(0, 2, p.shape, generator=generator).mul_(2).sub_(1)
                      .to(p.dtype) for name, p in params.items()}
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(saved[name] + steps[name] * probes[name])
            plus = gradients()
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(saved[name] - steps[name] * probes[name])
            minus = gradients()
            for name, p in params.items():
                hv = (plus[name] - minus[name]) / (2 * steps[name])
                values[name].append(float((probes[name].double() * hv).sum()) / p.numel())
    finally:
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(saved[name])
        for p in model.parameters():
            p.grad = None
    out = {}
    for name, v in values.items():
        mean = sum(v) / len(v)
        var = sum((x - mean) ** 2 for x in v) / max(len(v) - 1, 1)
        out[name] = (mean, math.sqrt(var / len(v)))
    return out


def hessian_costs(errors: Sequence[Sequence[float]], problem: AllocationProblem,
                  traces: dict[str, tuple[float, float]]) -> list[list[float]]:
    """HAWQ-v2's sensitivity: mean Hessian diagonal × ‖Q(W) − W‖². A negative trace estimate
    (noise, or a saddle) counts as 0: a second-order model that predicts a loss *decrease* from
    rounding is not one to trust."""
    return [[max(traces[t.name][0], 0.0) * e for e in row]
            for t, row in zip(problem.tensors, errors, strict=True)]


# ---- reporting ----------------------------------------------------------------------------------
def layer_type(name: str) -> str:
    """A weight's name with its layer indices as ``*`` (``encoder.blocks.*.ff1.linear1.weight``)."""
    return re.sub(r"(?<=\.)\d+(?=\.)", "*", name)


def choice_table(allocation: Allocation) -> str:
    """Markdown: per layer type, how many weights got which choice, and the average bits per
    weight (scales included)."""
    groups: dict[str, list[tuple[TensorChoices, Choice]]] = defaultdict(list)
    for tensor, choice in allocation.chosen:
        groups[layer_type(tensor.name)].append((tensor, choice))
    lines = ["| layer type | tensors | weights | chosen | bits / weight |",
             "|---|---:|---:|---|---:|"]
    for kind, items in groups.items():
        counts = Counter(c.label for _, c in items)
        numel = sum(t.numel for t, _ in items)
        bits = sum(c.bits for _, c in items)
        chosen = ", ".join(f"{label} ×{n}" for label, n in counts.most_common())
        lines.append(f"| `{kind}` | {len(items)} | {numel:,} | {chosen} | {bits / numel:.2f} |")
    return "\n".join(lines)


def _spec_flow(spec: QuantSpec | None) -> str:
    """A spec as a one-line YAML mapping, non-default keys only (bits, grid and scale dtype
    always)."""
    if spec is None:
        return "null"
    parts = [f"bits: {spec.bits}", f"symmetric: {str(spec.symmetric).lower()}"]
    if spec.group_size is not None:
        parts.append(f"group_size: {spec.group_size}")
    if spec.sub_channels is not None:
        parts.append(f"sub_channels: {spec.sub_channels}")
    if float(spec.clip) != 1.0:
        parts.append(f"clip: {spec.clip}")
    if spec.clip_search is not None:
        cs = spec.clip_search
        parts.append(f"clip_search: {{min: {cs.min}, steps: {cs.steps},"
                     f" per_channel: {str(cs.per_channel).lower()}}}")
    parts.append(f"scale_dtype: {spec.scale_dtype}")
    return "{" + ", ".join(parts) + "}"


def policy_yaml(policy: QuantPolicy, header: Sequence[str] = ()) -> str:
    """The policy as a quantizer config file (``conf/quantizer`` format), ``header`` lines as
    its leading comment; :meth:`QuantPolicy.from_config` of its YAML gives ``policy`` back."""
    lines = [f"# {line}".rstrip() for line in header]
    lines += [f"name: {policy.name}",
              f"default: {_spec_flow(policy.default)}",
              f"float_bits: {policy.float_bits}", f"indivisible: {policy.indivisible}",
              "rules:" if policy.rules else "rules: []"]
    lines += [f'  - {{pattern: "{r.pattern}", spec: {_spec_flow(r.spec)}}}' for r in policy.rules]
    return "\n".join(lines) + "\n"
