"""notebooks/pareto.ipynb runs top to bottom on a small results fixture; outputs stay out of git."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

from lowbit_asr.train.frontier import write_frontier

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "pareto.ipynb"


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") and not c.get("execution_count")
               for c in nb.cells if c.cell_type == "code")


def _run_notebook(sweep, tmp_path, monkeypatch):
    """Execute the notebook on the frontier of ``sweep``: (notebook, its text outputs)."""
    paths = write_frontier(sweep, tmp_path / "out")
    monkeypatch.setenv("LOWBIT_FRONTIER_CSV", str(paths["csv"]))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    text = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                     for c in nb.cells for o in c.get("outputs", []))
    return nb, text


def test_notebook_runs_on_a_results_fixture(make_sweep, tmp_path, monkeypatch):
    nb, text = _run_notebook(make_sweep(tmp_path / "sweep"), tmp_path, monkeypatch)
    assert "6 runs, 2 failed" in text
    assert "int2_asym_g16" in text and "int4_asym" in text
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors


def test_notebook_shows_the_verdicts(make_evaluated_sweep, tmp_path, monkeypatch):
    nb, text = _run_notebook(make_evaluated_sweep(tmp_path / "sweep"), tmp_path, monkeypatch)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
    assert "Holm" in text and "int2_sym" in text
    assert "'low': 'int2_asym'" in text  # the computed headline
