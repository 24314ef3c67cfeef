"""The quickstart notebook runs top to bottom (so it can't rot)."""

import os

import pytest

NOTEBOOK = os.path.join(os.path.dirname(__file__), "..", "..", "notebooks", "quickstart.ipynb")


@pytest.mark.slow
def test_quickstart_notebook_executes(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                      for o in c.get("outputs", []))
    assert "Total number of TensorRT engines" in outputs
    assert "engines rebuilt on load: 0" in outputs
    assert "same outputs: True" in outputs
    # the engines ran (a native run gives the same outputs and proves nothing)
    import re
    runs = re.search(r"engine runs: (\d+) native segment runs: (\d+)", outputs)
    assert runs and int(runs.group(1)) > 0 and int(runs.group(2)) == 0, outputs
    images = [o for c in nb.cells for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert images, "the latency plot was not produced"
