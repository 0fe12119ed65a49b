"""examples/quickstart.ipynb runs top to bottom in the project's venv; a failing cell fails the suite."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest

from conftest import REPO

NOTEBOOK = REPO / "examples" / "quickstart.ipynb"
CELL_TIMEOUT_S = 420  # per cell; the whole notebook takes a few minutes on 2 cores


def _outputs(cell) -> str:
    """A cell's outputs as text: streams, and every mime type of its results and displays."""
    parts = []
    for out in cell.get("outputs", []):
        if out["output_type"] == "stream":
            parts.append(out["text"])
        elif out["output_type"] in ("execute_result", "display_data"):
            parts.extend(str(v) for v in out["data"].values())
        elif out["output_type"] == "error":
            parts.append(f"{out['ename']}: {out['evalue']}")
    return "\n".join(parts)


def _cell(nb, marker: str):
    return next(c for c in nb.cells if c.cell_type == "code" and marker in c.source)


def test_committed_notebook_carries_the_outputs_of_a_full_run():
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), "run it top to bottom, then save"
    assert not [o for c in code for o in c.outputs if o["output_type"] == "error"]
    assert "stopped: monitor, serving, online store, Ray" in _outputs(code[-1])
    assert "ray.shutdown()" in code[-1].source and "ll.serving.down()" in code[-1].source


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_quickstart_notebook_executes_top_to_bottom(tmp_path):
    import nbformat
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    run = copy.deepcopy(nb)
    run.cells.insert(0, nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    km = KernelManager(kernel_name="python3", transport="ipc", ip=str(tmp_path / "kernel"))
    NotebookClient(run, km=km, timeout=CELL_TIMEOUT_S, allow_errors=False,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()  # raises on a failing cell

    assert Path(_outputs(run.cells[0]).strip()) == Path(sys.executable), "the kernel is not the project's venv"
    assert "quarantined rows by rule" in _outputs(_cell(run, "ll.lake.ingest(path"))
    assert "TrainingFrame(" in _outputs(_cell(run, "frame = ll.features.training_frame"))
    automl = _outputs(_cell(run, "ll.automl.run("))
    assert "<progress" in automl and "AutoML search" in automl  # the progress bar renders in Jupyter
    assert "ModelVersion(fraud v1, aliases [champion]" in automl
    assert "live accuracy on" in _outputs(_cell(run, "def send("))
    report = _outputs(_cell(run, "detector.run("))
    assert "DriftReport(drift=True" in report and "data:image/png;base64," in report
    verdict = _outputs(_cell(run, "run_retrain("))
    assert any(f": {outcome}" in verdict for outcome in ("promoted", "rolled_back", "gate_failed")), verdict
    status = _outputs(_cell(run, "ll.status()"))
    assert "lakeloop status of" in status and "served (live)" in status
    assert "stopped: monitor, serving, online store, Ray" in _outputs(run.cells[-1])
