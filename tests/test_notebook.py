"""The quickstart notebook runs top to bottom in a real Jupyter kernel, with small settings."""

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "notebook_quickstart.ipynb"
SMALL = """N_CLIENTS = 8
N_ROUNDS = 3
FOLDS = 2
N_JOBS = 1
FRACTIONS = [0.2]
DEFAULTS = {"n_rounds": 3}"""


def with_small_settings(nb):
    """Insert a cell after the one tagged "parameters", as papermill does: the notebook stays as users see it."""
    position = next(i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", []))
    nb.cells.insert(position + 1, nbformat.v4.new_code_cell(SMALL))
    return nb


def test_notebook_runs_and_draws_its_figures(tmp_path):
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        pytest.skip("no python3 Jupyter kernel")
    nb = with_small_settings(nbformat.read(NOTEBOOK, as_version=4))
    nbclient.NotebookClient(nb, timeout=240, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]
    assert not [out for out in outputs if out.output_type == "error"]

    def images_of(call):
        cell = next(cell for cell in nb.cells if call in cell.source)
        return [out for out in cell.outputs if "image/png" in out.get("data", {})]

    assert len(images_of("plot_grid_search(")) == 1
    assert len(images_of("plot_client_change(")) == 1  # change and scatter, side by side in one figure
    text = "".join(out.get("text", "") + str(out.get("data", {}).get("text/plain", "")) for out in outputs)
    assert "8 clients" in text and "best:" in text and "personal head:" in text
    assert "<ClientReport of 8 clients" in text
