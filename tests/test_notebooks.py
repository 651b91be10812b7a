"""The notebooks run end to end at tiny settings, so they cannot rot.

Executes notebooks/quickstart.ipynb (a 4-step `runlocal` training, curves,
metrics table, validation panels; the default config, and TaskPrompter's
under -m slow) and then notebooks/inference.ipynb on the quickstart's
workdir, each in a fresh kernel of this interpreter with cwd
notebooks/, as Jupyter would; the notebooks find the checkout by walking up
from there, so their Colab clone/install branch never runs here.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import sys

import numpy as np
from PIL import Image
import pytest

from mtdense_jax import config_check
from tests.conftest import REPO

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel", reason="needs ipykernel to start a kernel")

NOTEBOOKS = REPO / "notebooks"
CELL_TIMEOUT_S = 600


def _run(name: str) -> nbformat.NotebookNode:
  """Executes notebook `name`; a cell error raises CellExecutionError."""
  nb = nbformat.read(NOTEBOOKS / name, as_version=4)
  client = nbclient.NotebookClient(
      nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
      resources={"metadata": {"path": str(NOTEBOOKS)}})
  client.execute()
  return nb


def _kernel_env(monkeypatch, tmp_path: pathlib.Path) -> None:
  """Kernels of this interpreter (a "python3" kernelspec on JUPYTER_PATH,
  which comes before any user-level one) that see what a user's kernel
  sees: the machine's own devices (not the suite's 8 fake CPUs, see
  conftest) and the checkout found from the cwd."""
  spec = tmp_path / "jupyter" / "kernels" / "python3"
  spec.mkdir(parents=True)
  (spec / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f",
               "{connection_file}"],
      "display_name": "Python 3 (test)", "language": "python"}))
  monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
  (tmp_path / "tmp").mkdir()
  monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # the notebooks' mkdtemp
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  monkeypatch.delenv("MTDENSE_REPO", raising=False)


def _outputs(nb, mime: str) -> list:
  return [o for c in nb.cells if c.cell_type == "code"
          for o in c.get("outputs", []) if mime in o.get("data", {})]


def _stdout(nb) -> str:
  return "".join(o.get("text", "") for c in nb.cells
                 if c.cell_type == "code" for o in c.get("outputs", [])
                 if o.get("name") == "stdout")


def test_notebooks_are_clean_and_generated():
  """Committed without outputs, valid v4, and what make_notebooks.py makes
  (the generator is where the cells are edited)."""
  spec = importlib.util.spec_from_file_location(
      "make_notebooks", NOTEBOOKS / "make_notebooks.py")
  gen = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(gen)
  for name in ("quickstart.ipynb", "inference.ipynb"):
    text = (NOTEBOOKS / name).read_text()
    nb = nbformat.reads(text, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
      if cell.cell_type == "code":
        assert not cell.outputs and cell.execution_count is None, name
    assert text == gen.render(name), (
        f"{name} differs from notebooks/make_notebooks.py: edit the cells "
        "there and run it")
    # The Colab install must be guarded: only when no checkout is found.
    assert "REPO_URL" in nb.cells[1].source, name


@pytest.mark.parametrize("config", [
    None,   # the notebooks' default, configs/synthetic_baseline.py
    # A model tied to one token grid: a second pair of notebook runs.
    pytest.param("synthetic_taskprompter.py", marks=pytest.mark.slow)])
def test_quickstart_then_inference(config, tmp_path, monkeypatch):
  work, data, out = tmp_path / "run", tmp_path / "tfds", tmp_path / "preds"
  work.mkdir()
  own = tmp_path / "my_photo.jpg"
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 256, (41, 67, 3), np.uint8)).save(own)
  monkeypatch.setenv("MTDENSE_NOTEBOOK_TINY", "1")
  monkeypatch.setenv("MTDENSE_NOTEBOOK_WORKDIR", str(work))
  monkeypatch.setenv("MTDENSE_NOTEBOOK_DATA_DIR", str(data))
  monkeypatch.setenv("MTDENSE_NOTEBOOK_OUT", str(out))
  monkeypatch.setenv("MTDENSE_NOTEBOOK_IMAGES", str(own))
  _kernel_env(monkeypatch, tmp_path)
  if config:
    monkeypatch.setenv("MTDENSE_NOTEBOOK_CONFIG",
                       str(REPO / "configs" / config))

  nb = _run("quickstart.ipynb")
  if config:   # The run is of the chosen model.
    want = config_check.load_config_file(str(REPO / "configs" / config))
    saved = json.loads((work / "config.json").read_text())["model"]
    assert (saved["encoder"], saved["decoder"]) == (want.model.encoder,
                                                    want.model.decoder)
  assert (work / "metrics.jsonl").read_text().strip()
  assert (work / "curves.png").is_file()
  panels = sorted((work / "notebook_panels").glob("validation*_pred.png"))
  assert len(panels) == 3
  assert len(_outputs(nb, "image/png")) >= 4  # curves + 3 validation figures
  assert _outputs(nb, "text/markdown")  # the metrics table
  assert "last LPS weights" in _stdout(nb)

  nb = _run("inference.ipynb")
  assert "training a tiny model" not in _stdout(nb)  # reused the checkpoint
  assert (out / "my_photo_panel.png").is_file()
  with Image.open(out / "my_photo_depth.png") as im:
    assert im.size == (67, 41)  # the prediction is at the image's own size
  for i, (h, w) in enumerate([(75, 140), (120, 90), (64, 64)]):
    with Image.open(out / f"scene{i}_depth.png") as im:
      assert im.size == (w, h), i
  assert len(list(out.glob("scene*_panel.png"))) == 3
  assert len(_outputs(nb, "image/png")) == 4  # 3 scenes + the user's image


def test_inference_trains_when_no_checkpoint(tmp_path, monkeypatch):
  """Colab without a quickstart run: the notebook trains a tiny model."""
  monkeypatch.setenv("MTDENSE_NOTEBOOK_TINY", "1")
  monkeypatch.setenv("MTDENSE_NOTEBOOK_WORKDIR", str(tmp_path / "missing"))
  monkeypatch.setenv("MTDENSE_NOTEBOOK_DATA_DIR", str(tmp_path / "tfds"))
  monkeypatch.setenv("MTDENSE_NOTEBOOK_OUT", str(tmp_path / "preds"))
  monkeypatch.delenv("MTDENSE_NOTEBOOK_IMAGES", raising=False)
  _kernel_env(monkeypatch, tmp_path)
  nb = _run("inference.ipynb")
  assert "training a tiny model" in _stdout(nb)
  assert len(list((tmp_path / "preds").glob("*_panel.png"))) == 3
