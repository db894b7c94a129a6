"""The documentation's code runs as written: docs/tutorial.ipynb (executed with nbclient) and the
README's Python snippet on the files of the README's `comptonsky simulate` command."""

from __future__ import annotations

import os
import re
import shlex
import time
from pathlib import Path

import pytest

from comptonsky.cli import main

pytestmark = pytest.mark.slow  # end-to-end

REPO = Path(__file__).resolve().parents[1]


def fenced_blocks(text: str, language: str) -> list[str]:
    """The bodies of the ```language fenced blocks of a Markdown text."""
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def test_tutorial_notebook_runs(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    notebook = nbformat.read(REPO / "docs" / "tutorial.ipynb", as_version=4)
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    monkeypatch.setenv("PYTHONPATH", path)  # the kernel imports this checkout
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend shows plots
    start = time.perf_counter()
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    elapsed = time.perf_counter() - start
    outputs = "".join(out.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                      for out in cell.get("outputs", []))
    assert "iterations, log L" in outputs and "all_sky" in outputs
    images = sum("image/png" in out.get("data", {}) for cell in notebook.cells
                 if cell.cell_type == "code" for out in cell.get("outputs", []))
    assert images >= 3
    assert (tmp_path / "tutorial-results" / "results.fits").exists()
    assert elapsed < 240, f"the notebook took {elapsed:.0f} s"


def test_readme_snippet_runs_on_simulated_files(tmp_path, monkeypatch):
    readme = (REPO / "README.md").read_text()
    commands = [line.strip() for block in fenced_blocks(readme, "sh")
                for line in block.splitlines() if line.strip().startswith("comptonsky simulate")]
    assert commands, "the README shows the `comptonsky simulate` command its snippet uses"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    assert main(shlex.split(commands[0])[1:] + ["--no-progress"]) == 0
    snippet = fenced_blocks(readme, "python")[0]
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)  # noqa: S102 (our own README)
    deconv = namespace["image_deconvolution"]
    assert deconv.results and list(deconv.results[-1]["model"].axes.labels) == ["lb", "Ei"]
    assert (tmp_path / "out" / "results.fits").exists()
    assert (tmp_path / "model.png").exists()
