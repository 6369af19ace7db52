"""One source of truth each, and a non-editable install that finds its configs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lowbit_asr.cli import CONF_DIR
from lowbit_asr.commands.reproduce import sweep_quantizers
from lowbit_asr.data.corpus import SIZES, debian_packages, default_root

ROOT = Path(__file__).resolve().parents[1]


def test_the_package_configs_are_the_repository_configs():
    assert CONF_DIR.resolve() == (ROOT / "conf").resolve()


@pytest.mark.parametrize("size", sorted(SIZES))
def test_corpus_default_root_is_where_the_dataset_config_looks(size):
    config = ROOT / "conf" / "dataset" / f"embedded_{size}.yaml"
    assert OmegaConf.load(config).root == str(default_root(size))


def test_make_installs_the_one_debian_list():
    dry = subprocess.run(["make", "-n", "debs"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    loop = dry[dry.index("for p in ") + len("for p in "):dry.index("; do")]
    assert loop.split() == debian_packages()
    assert "sctk" in debian_packages() and "sctk" not in debian_packages("corpus")
    assert {"espeak-ng", "flite", "festival"} <= set(debian_packages("corpus"))


def test_reproduce_grid_is_the_sweep_configs_list():
    grid = sweep_quantizers()
    assert grid[0] == "none" and len(grid) == len(set(grid))
    assert all((ROOT / "conf" / "quantizer" / f"{name}.yaml").is_file() for name in grid)


def test_a_wheel_install_runs_the_hydra_commands(tmp_path):
    """Build a wheel, install it (no deps) into a fresh venv that borrows this environment's
    libraries, and run Hydra commands from a folder with no conf/ in sight."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps",
                    "--no-build-isolation", "-q", "-w", str(tmp_path / "dist")],
                   check=True, capture_output=True, cwd=tmp_path)
    shutil.rmtree(ROOT / "build", ignore_errors=True)  # setuptools' staging folder
    wheel = next((tmp_path / "dist").glob("lowbit_asr-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], capture_output=True, text=True,
                          check=True).stdout.strip()
    # torch, lightning, hydra … from this environment; lowbit_asr only from the wheel (a .pth
    # line adds a folder to sys.path but runs no .pth inside it: the editable finder stays off).
    Path(site, "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--no-deps", str(wheel)], check=True, capture_output=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    where = subprocess.run([str(python), "-c", "import lowbit_asr.cli as c; print(c.__file__);"
                            " print(c.CONF_DIR)"], capture_output=True, text=True, cwd=work,
                           env=env, check=True).stdout.split()
    assert where[0].startswith(site) and where[1].startswith(site)  # the wheel, not src/
    size = subprocess.run([str(venv / "bin" / "lowbit-asr"), "size", "quantizer=int4_asym",
                           "format=json"], capture_output=True, text=True, cwd=work, env=env)
    assert size.returncode == 0, size.stderr
    assert '"total_bytes"' in size.stdout
    job = subprocess.run([str(venv / "bin" / "lowbit-asr"), "train", "experiment=float_mini",
                          "--cfg", "job"], capture_output=True, text=True, cwd=work, env=env)
    assert job.returncode == 0, job.stderr
    assert "normalisation: utterance" in job.stdout and "max_steps: 8000" in job.stdout
