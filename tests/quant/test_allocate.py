"""Bit allocation: the milp solution is optimal (brute force), never over budget, refuses a budget
below the smallest size by naming it; sizes equal ``size_report``; the written YAML reads back
as the same policy; Hutchinson traces match a known Hessian; conformer_l works on the meta
device."""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from torch import nn

from lowbit_asr.model.rnnt import build_model
from lowbit_asr.quant import PolicyRule, QuantPolicy, size_report
from lowbit_asr.quant.allocate import (
    AllocationProblem,
    BudgetTooSmall,
    Choice,
    TensorChoices,
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

CONF = Path(__file__).resolve().parents[2] / "conf"


def _toy_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                         nn.Linear(128, 12), nn.LayerNorm(12))


def _brute_force(problem: AllocationProblem, costs, budget: int) -> float | None:
    best = None
    for picks in itertools.product(*[range(len(t.choices)) for t in problem.tensors]):
        bits = problem.fixed_bits + sum(
            t.choices[i].bits for t, i in zip(problem.tensors, picks, strict=True))
        if bits <= budget:
            cost = sum(costs[t][i] for t, i in enumerate(picks))
            best = cost if best is None else min(best, cost)
    return best


def _random_instance(rng: random.Random, tensors: int, choices: int) -> tuple:
    items = []
    for t in range(tensors):
        bits = sorted(rng.sample(range(50, 2000), choices))
        # Cheaper storage costs more sensitivity, roughly, with noise so that no order is given.
        items.append(TensorChoices(f"t{t}.weight", (1, 1), tuple(
            Choice(None, None, b) for b in bits)))
    costs = [[rng.uniform(0, 10) for _ in t.choices] for t in items]
    return AllocationProblem(tuple(items), fixed_bits=rng.randint(0, 500), float_bits=32), costs


@pytest.mark.parametrize("seed", range(12))
def test_the_milp_solution_is_optimal_and_within_budget(seed):
    rng = random.Random(seed)
    problem, costs = _random_instance(rng, tensors=rng.randint(3, 5), choices=rng.randint(2, 4))
    low = problem.min_bits
    high = problem.fixed_bits + sum(max(c.bits for c in t.choices) for t in problem.tensors)
    for budget in sorted({low, rng.randint(low, high), rng.randint(low, high), high}):
        allocation = solve(problem, costs, budget)
        assert allocation.total_bits <= budget
        expected = _brute_force(problem, costs, budget)
        assert allocation.cost == pytest.approx(expected, abs=1e-9)


def test_a_budget_below_the_smallest_size_names_it():
    problem, costs = _random_instance(random.Random(3), tensors=3, choices=3)
    smallest = math.ceil(problem.min_bits / 8)
    with pytest.raises(BudgetTooSmall, match=f"{smallest:,} bytes"):
        solve(problem, costs, problem.min_bits - 1)
    assert solve(problem, costs, problem.min_bits).total_bits == problem.min_bits


def test_costs_must_fit_the_choices():
    problem, costs = _random_instance(random.Random(4), tensors=3, choices=3)
    with pytest.raises(ValueError, match="t1.weight"):
        solve(problem, [costs[0], costs[1][:2], costs[2]], problem.min_bits + 10**6)
    with pytest.raises(ValueError, match="is nan"):
        solve(problem, [costs[0], [math.nan] * 3, costs[2]], problem.min_bits + 10**6)


def test_problem_sizes_are_size_report_sizes_to_the_bit():
    model = _toy_model()
    problem = build_problem(model, bits=(2, 4), group_sizes=(32, 128, 256))
    rng = random.Random(0)
    for _ in range(5):
        picks = [rng.randrange(len(t.choices)) for t in problem.tensors]
        chosen = [(t, t.choices[i]) for t, i in zip(problem.tensors, picks, strict=True)]
        policy = QuantPolicy(rules=tuple(PolicyRule(t.name, c.spec) for t, c in chosen))
        bits = problem.fixed_bits + sum(c.bits for _, c in chosen)
        assert size_report(model, policy).total_bits == bits
    # Group sizes are offered only where they divide K and are below it: K = 64 gets g32 only.
    labels = [c.label for c in problem.tensors[0].choices]
    assert labels == ["float", "int2-asym-per_channel-f16", "int2-asym-g32-f16",
                      "int4-asym-per_channel-f16", "int4-asym-g32-f16"]


def test_the_written_yaml_is_the_allocated_policy_and_size():
    model = _toy_model()
    problem = build_problem(model)
    costs = weight_errors(model, problem)
    budget = problem.budget_for_bits_per_weight(3.0)
    allocation = solve(problem, costs, budget)
    policy = allocation.policy("alloc_test")
    text = policy_yaml(policy, ["a header", "second line"])
    assert text.startswith("# a header\n# second line\n")
    again = QuantPolicy.from_config(yaml.safe_load(text))
    assert again == policy and again.name == "alloc_test"
    assert size_report(model, again).total_bytes == allocation.total_bytes
    assert allocation.total_bits <= budget
    # 3 bits per weight on average: a mix, not one width everywhere.
    assert len({c.label for _, c in allocation.chosen}) > 1
    assert "| `0.weight` | 1 |" in choice_table(allocation)


def test_layer_type_replaces_layer_indices():
    assert (layer_type("encoder.blocks.11.ff1.linear1.weight")
            == "encoder.blocks.*.ff1.linear1.weight")
    assert layer_type("predictor.lstm.weight_ih_l0") == "predictor.lstm.weight_ih_l0"
    assert layer_type("encoder.subsampling.conv.0.weight") == "encoder.subsampling.conv.*.weight"


def test_probe_costs_restore_every_weight_and_rank_a_destructive_tensor_first():
    model = _toy_model()
    with torch.no_grad():  # one huge outlier per row: even 8 bits round the rest to 1-2 levels
        model[2].weight[:, 0] = 100.0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
    target = model(x).detach()

    def loss(_name: str) -> float:
        return float((model(x) - target).square().mean())

    problem = build_problem(model, bits=(8,), group_sizes=())
    costs, base = probe_costs(model, problem, loss)
    assert base == 0.0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    int8 = {t.name: row[1] for t, row in zip(problem.tensors, costs, strict=True)}
    assert max(int8, key=int8.get) == "2.weight"
    assert all(row[0] == 0.0 for row in costs)  # float costs nothing


def test_hutchinson_estimates_the_mean_hessian_diagonal_of_a_quadratic():
    torch.manual_seed(0)
    a = nn.Parameter(torch.randn(6, 5))
    b = nn.Parameter(torch.randn(4, 3))
    model = nn.Module()
    model.a, model.b = a, b
    m = torch.randn(42, 42)
    hessian = m @ m.T / 42 + torch.eye(42)  # over the concatenation of a (30) and b (12)

    def backward() -> None:
        w = torch.cat([a.flatten(), b.flatten()])
        (0.5 * w @ hessian @ w).backward()

    traces = hutchinson_traces(model, ["a", "b"], backward, samples=400, seed=1)
    for name, block in (("a", slice(0, 30)), ("b", slice(30, 42))):
        expected = float(torch.diagonal(hessian[block, block]).mean())
        mean, stderr = traces[name]
        assert abs(mean - expected) < 4 * stderr + 1e-3, (mean, expected, stderr)
    assert torch.isfinite(a).all() and a.grad is None  # restored, gradients cleared


def test_hessian_costs_scale_the_weight_error_by_the_trace():
    model = _toy_model()
    problem = build_problem(model, bits=(2, 8), group_sizes=())
    errors = weight_errors(model, problem)
    traces = {t.name: (2.0 if i == 0 else -1.0, 0.1) for i, t in enumerate(problem.tensors)}
    costs = hessian_costs(errors, problem, traces)
    assert costs[0] == [2.0 * e for e in errors[0]]
    assert all(c == 0.0 for c in costs[1])  # a negative trace counts as 0
    assert errors[0][1] > errors[0][2] > 0.0 == errors[0][0]  # int2 worse than int8, float exact


def test_conformer_l_allocates_on_the_meta_device():
    config = OmegaConf.to_container(OmegaConf.load(CONF / "model" / "conformer_l.yaml"))
    with torch.device("meta"):
        model = build_model(config, 1024)
    problem = build_problem(model)
    assert problem.weights > 100e6
    rng = random.Random(0)
    # Sensitivities that fall with the bits: the allocation spends the budget where it pays.
    costs = [[0.0 if c.spec is None else rng.uniform(1, 2) / c.spec.bits for c in t.choices]
             for t in problem.tensors]
    budget = problem.budget_for_bits_per_weight(3.0)
    allocation = solve(problem, costs, budget)
    assert allocation.total_bits <= budget
    policy = allocation.policy("alloc_l")
    assert size_report(model, policy).total_bytes == allocation.total_bytes
