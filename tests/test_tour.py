"""examples/tour.ipynb, the notebook tour: it runs top to bottom, and git holds it without
outputs (they would go stale and bloat the diffs)."""

import os
from pathlib import Path

import nbclient
import nbformat
import pytest

TOUR = Path(__file__).parents[1] / "examples" / "tour.ipynb"


def test_the_committed_tour_has_no_outputs():
    nb = nbformat.read(TOUR, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert len(code) >= 10
    assert all(c.outputs == [] and c.execution_count is None for c in code)


@pytest.mark.slow
def test_the_tour_runs_without_a_cell_error(tmp_path, monkeypatch):
    # the kernel imports the count01 this test runs against (a PYTHONPATH of src/ included)
    src = str(Path(__file__).parents[1] / "src")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [src, os.environ.get(
        "PYTHONPATH")])))
    nb = nbformat.read(TOUR, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, naming the cell, on any error
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "bit-identical weights: True" in text and "same head table: True" in text
