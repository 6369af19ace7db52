"""Every key of every shipped config does something: changed, it either changes the validated
run config (the typed schemas that the code reads) or is refused with an error. A key that does
neither is dead weight a user could set and believe (issue 15)."""

from __future__ import annotations

import copy
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lowbit_asr.train.config import validate

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ("model", "dataset", "quantizer", "trainer", "logger")
EXEMPT = {"output_dir": "Hydra's run folder: where the run writes, read by the train command"}
"""Keys that act outside the validated config, each with where it acts."""


def _files() -> list[tuple[str, str]]:
    return [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]


def _leaves(tree: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if isinstance(tree, dict) and tree:
        return [leaf for k, v in tree.items() for leaf in _leaves(v, (*prefix, k))]
    return [prefix]


def _changed(value: Any) -> Any:
    """Another value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1 if value != -1 else 2
    if isinstance(value, float):
        return value + 0.01 if value < 0.99 else value - 0.01
    if isinstance(value, str):
        return f"{value}_changed"
    if isinstance(value, list):
        return value[:-1] if value else ["x"]
    if value is None:
        return 1
    if isinstance(value, dict):  # an empty mapping
        return {"x": 1}
    raise TypeError(f"no change rule for {value!r}")


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree[key]
    tree[path[-1]] = value


def _get(tree: dict, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


@pytest.mark.parametrize(("group", "name"), _files())
def test_every_key_acts_or_is_refused(group, name, tmp_path):
    overrides = [f"{group}={name}", "experiment_name=test", f"output_dir={tmp_path}",
                 f"dataset.root={tmp_path}"]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("train", overrides=overrides)
    plain = OmegaConf.to_container(cfg, resolve=True)
    base = asdict(validate(plain))  # asdict: labels (compare=False fields) count too
    dead = []
    for path in _leaves(plain[group], (group,)):
        if ".".join(path) in EXEMPT:
            continue
        changed = copy.deepcopy(plain)
        _set(changed, path, _changed(_get(plain, path)))
        try:
            after = validate(changed)
        except (ValueError, TypeError):
            continue  # refused: the key is checked
        if asdict(after) == base:
            dead.append(".".join(path))
    assert not dead, f"{group}/{name}.yaml: keys that change nothing: {dead}"


def test_top_level_keys_act(tmp_path):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("train", overrides=["experiment_name=test", f"output_dir={tmp_path}",
                                          f"dataset.root={tmp_path}"])
    plain = OmegaConf.to_container(cfg, resolve=True)
    base = asdict(validate(plain))
    for key in ("seed", "experiment_name", "optim", "init"):
        for path in _leaves(plain[key], (key,)):
            changed = copy.deepcopy(plain)
            _set(changed, path, _changed(_get(plain, path)))
            try:
                assert asdict(validate(changed)) != base, ".".join(path)
            except (ValueError, TypeError):
                pass
