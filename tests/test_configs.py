"""Every shipped config composes, validates and instantiates; bad values fail with their key."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lowbit_asr.data.config import DatasetConfig
from lowbit_asr.model.rnnt import build_model, count_parameters
from lowbit_asr.train.config import recipe_id, validate

CONF = Path(__file__).resolve().parents[1] / "conf"


def _names(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _compose(*overrides: str, root: Path) -> dict:
    # hydra:runtime values only exist inside a Hydra app; name them explicitly here.
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("train", overrides=[*overrides, "experiment_name=test",
                                          f"output_dir={root}", f"dataset.root={root}"])
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    return plain


GROUPS = ("model", "dataset", "quantizer", "trainer", "logger", "experiment", "sweep")


@pytest.mark.parametrize("group,name", [(g, n) for g in GROUPS for n in _names(g)])
def test_every_config_composes_and_validates(group, name, tmp_path):
    overrides = [f"{group}={name}"]
    if name.startswith("qat_") or group == "sweep":
        overrides.append(f"init.checkpoint={tmp_path / 'float.ckpt'}")  # a required value
    cfg = validate(_compose(*overrides, root=tmp_path))
    if group == "model" and name in ("conformer_tiny", "conformer_s"):
        assert count_parameters(build_model(cfg.model, vocab_size=256)) > 1e6
    if group == "trainer" and cfg.trainer.accelerator == "cpu":
        trainer = L.Trainer(**cfg.trainer.lightning_kwargs(), logger=False,
                            enable_checkpointing=False)
        assert trainer.max_steps == cfg.trainer.max_steps
    if group == "dataset":
        assert isinstance(cfg.dataset, DatasetConfig)


def test_experiment_is_a_delta_over_defaults(tmp_path):
    base = _compose(root=tmp_path)
    float_mini = _compose("experiment=float_mini", root=tmp_path)
    assert float_mini["model"]["ctc_weight"] == 1.0 and base["model"]["ctc_weight"] == 0.0
    assert float_mini["model"]["frontend"]["normalisation"] == "utterance"
    assert base["model"]["frontend"]["normalisation"] == "global"
    # What the experiment does not set is inherited from the groups.
    assert float_mini["model"]["encoder"]["conv_kernel"] == base["model"]["encoder"]["conv_kernel"]
    assert (float_mini["model"]["encoder"]["d_model"], base["model"]["encoder"]["d_model"]) == (
        160, 144)
    assert (float_mini["model"]["encoder"]["ff_expansion"],
            base["model"]["encoder"]["ff_expansion"]) == (2, 4)
    assert float_mini["dataset"]["tokenizer"]["units"] == "char"
    assert float_mini["dataset"]["perturb"]["speed"] == [0.9, 1.1]
    assert base["dataset"]["perturb"]["speed"] == [1.0, 1.0]
    assert float_mini["model"]["rnnt_loss_impl"] == "pruned"
    assert float_mini["trainer"]["precision"] == "32-true"  # bf16 is emulated (slow) on AVX2 CPUs
    qat = _compose("experiment=qat_mini", "init.checkpoint=x.ckpt", root=tmp_path)
    assert qat["model"]["rnnt_loss_impl"] == "pruned"


@pytest.mark.parametrize("overrides,message", [
    (["optim.lr=-1"], "optim.lr"),
    (["+optim.lr_max=1"], "optim: unknown field"),
    (["model.encoder.num_heads=7"], "encoder.d_model"),
    (["+model.encoder.width=7"], "width"),
    (["trainer.precision=64"], "trainer.precision"),
    (["logger.wandb.mode=sometimes"], "logger.wandb.mode"),
    (["init.mode=float_ckpt"], "init.checkpoint"),
    (["dataset.max_batch_seconds=-5"], "max_batch_seconds"),
    (["dataset.tokenizer.units=phones"], "tokenizer.units"),
    (["quantizer=int2_asym", "quantizer.default.bits=9"], "QuantSpec.bits"),
    (["quantizer=int2_asym_g16", "quantizer.rules=[{pattern:'decoder.*',spec:null}]"],
     "matches no quantizable weight"),
    (["quantizer=int2_asym_g16", "quantizer.indivisible=error"], "does not divide"),
])
def test_bad_values_fail_with_their_key(overrides, message, tmp_path):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        validate(_compose(*overrides, root=tmp_path))


def test_missing_dataset_root_is_named(tmp_path):
    plain = _compose(root=tmp_path)
    plain["dataset"]["root"] = str(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"dataset\.root: no such directory .*nowhere"):
        validate(plain)


# ---- keys that did nothing now act or are refused (issue 15) --------------------------------
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["init.checkpoint=float.ckpt"], "init.checkpoint=float.ckpt does nothing with"
                                         " init.mode=scratch"),
        (["+logger.csv.enabeld=false"], r"logger.csv: unknown field\(s\) \['enabeld'\]"),
        (["trainer.check_val_every_n_epoch=2"], "check_val_every_n_epoch=2 does nothing with an"
                                                " integer trainer.val_check_interval"),
        (["+dataset.seed=3"], "dataset.seed is now seed"),
        (["+logger.wandb.enabled=false"], "logger.wandb.enabled is now logger.wandb.mode"),
    ],
)
def test_no_op_keys_are_refused(overrides, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        validate(_compose(*overrides, root=tmp_path))


def test_the_run_seed_seeds_the_data_too(tmp_path):
    assert validate(_compose("seed=7", root=tmp_path)).dataset.seed == 7
    assert validate(_compose(root=tmp_path)).dataset.seed == 0
    # An epoch-based validation schedule is still possible, with a fractional interval.
    cfg = validate(_compose("trainer.val_check_interval=1.0",
                            "trainer.check_val_every_n_epoch=2", root=tmp_path))
    assert cfg.trainer.lightning_kwargs()["check_val_every_n_epoch"] == 2
    assert validate(_compose("logger=csv", root=tmp_path)).logger.wandb.mode == "disabled"


def test_recipe_id_leaves_out_the_seed_and_locations_only(tmp_path):
    # Trainings of one recipe (another seed, another cache folder, logger or progress bar) share
    # the fingerprint the frontier groups them by; any key that changes training does not.
    base = recipe_id(validate(_compose("experiment=float_mini", root=tmp_path)))
    same = [("seed=3",), ("dataset.cache_dir=/elsewhere", "logger=csv"),
            ("trainer.enable_progress_bar=false", "dataset.num_workers=0")]
    for overrides in same:
        assert recipe_id(validate(_compose("experiment=float_mini", *overrides,
                                           root=tmp_path))) == base, overrides
    other = [("optim.lr=1e-3",), ("trainer.threads=1",), ("quantizer=int2_asym",),
             ("trainer.max_steps=100",), ("model.encoder.d_model=144",)]
    ids = {recipe_id(validate(_compose("experiment=float_mini", *o, root=tmp_path)))
           for o in other}
    assert base not in ids and len(ids) == len(other)


def test_recipe_id_counts_an_init_checkpoint_by_the_recipe_that_trained_it(tmp_path):
    # Fine-tunes of two float trainings of one recipe are trainings of one recipe; of another
    # float recipe, of another checkpoint of the run, or of a file outside a run: not.
    def run(name: str, recipe: str | None) -> Path:
        (tmp_path / name / "checkpoints").mkdir(parents=True)
        row = {"status": "ok", **({"recipe": recipe} if recipe else {})}
        (tmp_path / name / "results.json").write_text(json.dumps(row))
        return tmp_path / name / "checkpoints"

    def fine_tune(checkpoint: Path) -> str:
        return recipe_id(validate(_compose("experiment=qat_mini", f"init.checkpoint={checkpoint}",
                                           root=tmp_path)))

    seed0, seed1, other, old = run("f0", "r1"), run("f1", "r1"), run("f2", "r2"), run("f3", None)
    assert fine_tune(seed0 / "best.ckpt") == fine_tune(seed1 / "best.ckpt")
    ids = [fine_tune(p) for p in (seed0 / "best.ckpt", seed0 / "last.ckpt", other / "best.ckpt",
                                  old / "best.ckpt", tmp_path / "elsewhere.ckpt")]
    assert len(set(ids)) == len(ids)
    assert fine_tune(old / "best.ckpt") != fine_tune(old / "last.ckpt")  # by path
