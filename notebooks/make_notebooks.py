r"""Writes notebooks/quickstart.ipynb and notebooks/inference.ipynb.

The notebooks are generated so that their code stays reviewable as Python
and they are committed without outputs (tests/test_notebooks.py checks both
and executes them at tiny settings). Edit the cells here, then:

  python notebooks/make_notebooks.py
"""

from __future__ import annotations

import pathlib
import sys

import nbformat
from nbformat import v4

HERE = pathlib.Path(__file__).resolve().parent

# ------------------------------------------------------------ shared cells
SETUP = r'''# Colab: set REPO_URL to this repository's public URL. Inside a
# checkout (a local Jupyter, CI) nothing is cloned or installed.
REPO_URL = "https://github.com/YOUR_ORG/mtdense_jax"  # <-- EDIT ME

import os
import pathlib
import subprocess
import sys
import tempfile


def find_repo() -> pathlib.Path | None:
  """The checkout root (the folder with launch.py): $MTDENSE_REPO, or the
  working directory or one of its parents."""
  if os.environ.get("MTDENSE_REPO"):
    return pathlib.Path(os.environ["MTDENSE_REPO"]).resolve()
  cwd = pathlib.Path.cwd().resolve()
  for d in (cwd, *cwd.parents):
    if (d / "launch.py").is_file() and (d / "mtdense_jax").is_dir():
      return d
  return None


REPO = find_repo()
if REPO is None:  # Colab or a bare kernel: clone once, next to the notebook.
  REPO = pathlib.Path.cwd() / "mtdense_jax_repo"
  if not (REPO / "launch.py").is_file():
    subprocess.run(["git", "clone", "--depth", "1", REPO_URL, str(REPO)],
                   check=True)
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))  # configs/, data_builders/ and the package
try:
  from mtdense_jax.train import loop  # all dependencies importable?
except ImportError:
  # On a GPU runtime add the CUDA plugin: pip install "jax[cuda12]==0.10.2".
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r",
                  str(REPO / "requirements.txt")], check=True)
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                  "-e", str(REPO)], check=True)
  from mtdense_jax.train import loop
print("repository:", REPO)'''

RUNTIME = r'''from absl import flags
from absl import logging

if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()  # grain's data workers read absl flags
logging.set_verbosity(logging.WARNING)  # orbax and TFDS are chatty at INFO
import tensorflow_datasets as tfds

tfds.disable_progress_bar()  # one line per dataset, not per example

from mtdense_jax import runtime

runtime.initialize()  # persistent compilation cache (and multi-host, if any)
import jax

print(jax.devices())'''

# ------------------------------------------------------------- quickstart
QUICKSTART = [
    ("md", r'''# mtdense_jax quickstart: multi-task training on synthetic scenes

One small ViT with per-task heads learns **semantic segmentation, depth,
surface normals and boundaries** at once on procedurally rendered indoor
scenes (no downloads: the dataset is rendered once and cached). The losses
are balanced by **LPS** (loss prioritisation: a task that improves more
slowly than the others gets a larger weight).

This notebook trains the quickstart config for a few hundred steps (about
5 minutes on a 2-core CPU, faster on a GPU), then plots the per-task losses
and LPS weights over time, shows the evaluation metrics and predicts on a
few validation images. On **Colab**: set `REPO_URL` in the first cell and
run all; if Colab asks to restart the runtime after the install, restart
and run all again (the install is then skipped).'''),
    ("code", SETUP),
    ("md", r'''## Settings

`CONFIG_FILE` picks the model: the default `configs/synthetic_baseline.py`
(ViT + per-task heads), or e.g. `configs/synthetic_taskprompter.py`
(TaskPrompter: task prompts through the ViT) or `configs/synthetic_invpt.py`
(InvPT); `MTDENSE_NOTEBOOK_CONFIG` sets it without editing.
`MTDENSE_NOTEBOOK_TINY=1` (what CI sets) switches to the config's
`runlocal` variant: 4 steps on tiny images, in temporary folders.
Running the notebook again with the same `WORKDIR` resumes from its last
checkpoint (and only re-evaluates once training is finished).'''),
    ("code", r'''TINY = os.environ.get("MTDENSE_NOTEBOOK_TINY", "0") == "1"
# Training steps of the full (non-tiny) run.
STEPS = int(os.environ.get("MTDENSE_NOTEBOOK_STEPS", "300"))
CONFIG_FILE = os.environ.get("MTDENSE_NOTEBOOK_CONFIG") or str(
    REPO / "configs" / "synthetic_baseline.py")
CONFIG = CONFIG_FILE + (":runlocal" if TINY else f":steps={STEPS}")
WORKDIR = pathlib.Path(
    os.environ.get("MTDENSE_NOTEBOOK_WORKDIR")
    or (tempfile.mkdtemp(prefix="mtdense_quickstart_") if TINY
        else REPO / "runs" / "notebook_quickstart"))
# Where the rendered dataset is cached (None: TFDS's ~/tensorflow_datasets).
DATA_DIR = os.environ.get("MTDENSE_NOTEBOOK_DATA_DIR") or (
    tempfile.mkdtemp(prefix="mtdense_tfds_") if TINY else None)
print(f"config {CONFIG}\nworkdir {WORKDIR}\ndata_dir {DATA_DIR}")'''),
    ("code", RUNTIME),
    ("md", r'''## The config

Configs are `ml_collections` files (`CONFIG_FILE`; every key and its
default: `mtdense_jax/config_defaults.py`). LPS's defaults
(warm-up 200 steps, weights recomputed every 500) suit runs of thousands of
steps; for this short run they are scaled down so the weights move (and
so is the learning-rate warm-up).'''),
    ("code", r'''import ml_collections as mlc

from mtdense_jax import config_check

cfg = config_check.load_config_file(CONFIG)
cfg.data.data_dir = DATA_DIR
steps = cfg.train.steps
cfg.optim.warmup_steps = max(1, min(cfg.optim.warmup_steps, steps // 6))
cfg.weighting.kw = mlc.ConfigDict(dict(warmup=max(1, steps // 6),
                                       period=max(1, steps // 6)))
cfg.train.log_every = max(1, steps // 30)
cfg.train.eval_every = cfg.train.ckpt_every = max(1, steps // 2)
config_check.validate(cfg)
print("tasks:", cfg.tasks, "| image size:", cfg.data.image_size,
      "| model:", cfg.model.encoder, cfg.model.variant, "+",
      cfg.model.decoder, "| weighting:", cfg.weighting.name,
      dict(cfg.weighting.kw), "| steps:", steps)'''),
    ("md", r'''## Train and evaluate

`train_and_evaluate` is what `python launch.py --config ... --workdir ...`
runs: it writes checkpoints, TensorBoard scalars (`train/loss/<task>`,
`train/weight/<task>`, `train/lr`, ...) and one `metrics.jsonl` row per
evaluation into `WORKDIR`.'''),
    ("code", r'''import time

from mtdense_jax.train import loop

t0 = time.time()
final_metrics = loop.train_and_evaluate(cfg, str(WORKDIR))
print(f"finished in {time.time() - t0:.0f} s")'''),
    ("md", r'''## Losses and LPS weights over time

Top row: each task's training loss, the loss weight LPS gives it (the
weights sum to the number of tasks; they stay 1 during the warm-up) and the
learning rate. Below: the evaluation metrics per task.'''),
    ("code", r'''from IPython.display import Image as ShowImage

from mtdense_jax import plots

plots.plot_training(WORKDIR, WORKDIR / "curves.png")
display(ShowImage(filename=str(WORKDIR / "curves.png")))
scalars = plots.load_scalars(WORKDIR)
print("last LPS weights:", {
    tag.rpartition("/")[2]: round(float(values[-1]), 3)
    for tag, (_, values) in sorted(scalars.items())
    if tag.startswith("train/weight/")})'''),
    ("md", r'''## Evaluation metrics

One column per evaluation (`metrics.jsonl`). Higher is better for mIoU and
the normals' within-angle percentages, lower for the errors.'''),
    ("code", r'''from IPython.display import Markdown

rows = plots.load_evals(WORKDIR)
names = [k for k in rows[-1] if k != "step"]
table = ["| metric | " + " | ".join(f"step {r['step']}" for r in rows) + " |",
         "|---|" + "---:|" * len(rows)]
for name in names:
  table.append(f"| {name} | " + " | ".join(
      f"{r.get(name, float('nan')):.4g}" for r in rows) + " |")
display(Markdown("\n".join(table)))'''),
    ("md", r'''## Predictions on validation images

`Predictor` restores the latest checkpoint once and predicts on images of
any size. Each figure: the prediction panel (left) and the labels (right).
The panels are also saved as PNGs in `WORKDIR/notebook_panels`.'''),
    ("code", r'''import matplotlib.pyplot as plt
from PIL import Image

from mtdense_jax import predict
from mtdense_jax.data import sources

predictor = predict.Predictor.from_workdir(WORKDIR)
validation = sources.load(cfg.data, cfg.tasks, "validation")
examples = [validation[i] for i in range(3)]
preds = predictor.predict([ex["image"] for ex in examples])
panel_dir = WORKDIR / "notebook_panels"
panel_dir.mkdir(exist_ok=True)
for i, (ex, pred) in enumerate(zip(examples, preds)):
  predicted = predictor.panel(ex["image"], pred)
  labels = predict.panel([("input", ex["image"])] + [
      (f"{name} (label)", task.colorize(ex[name]))
      for name, task in predictor.tasks.items()])
  Image.fromarray(predicted).save(panel_dir / f"validation{i}_pred.png")
  fig, axes = plt.subplots(1, 2, figsize=(14, 4.5))
  for ax, rgb, title in (
      (axes[0], predicted, f"prediction (step {predictor.step})"),
      (axes[1], labels, "labels")):
    ax.imshow(rgb)
    ax.set_title(f"{ex['id'].decode()}: {title}")
    ax.axis("off")
  plt.show()'''),
    ("md", r'''Next: `inference.ipynb` loads this run's checkpoint and predicts
on images of any size, including your own.'''),
]

# -------------------------------------------------------------- inference
INFERENCE = [
    ("md", r'''# mtdense_jax inference: predict every task on any image

Loads a trained multi-task model (by default the checkpoint that
`quickstart.ipynb` wrote) and predicts semantic segmentation, depth,
normals and boundaries on images of any size and aspect ratio: each image
is resized to fit the model's input (aspect ratio kept), padded as in
evaluation, and every prediction is mapped back to the original size.

Without a checkpoint the notebook first trains a seconds-long tiny model,
so it always runs end to end (its predictions are then rough). On
**Colab**: set `REPO_URL` in the first cell and run all.'''),
    ("code", SETUP),
    ("md", r'''## Settings

- `CHECKPOINT_WORKDIR`: a training run's workdir (`checkpoints/` and
  `config.json`), e.g. `runs/quickstart` from `python launch.py ...`.
- `IMAGE_PATHS`: your own images (any size); synthetic scenes are always
  added.
- For a params-only checkpoint (e.g. converted published weights:
  `python -m mtdense_jax.convert --from taskprompter --config
  configs/pascal_taskprompter.py ...`) use
  `predict.Predictor.from_checkpoint(directory, config)`, with the config
  it was converted with, instead of `from_workdir` below.
- Without a checkpoint a tiny model of `MTDENSE_NOTEBOOK_CONFIG` (default
  `configs/synthetic_baseline.py`) is trained first.'''),
    ("code", r'''TINY = os.environ.get("MTDENSE_NOTEBOOK_TINY", "0") == "1"
CHECKPOINT_WORKDIR = pathlib.Path(
    os.environ.get("MTDENSE_NOTEBOOK_WORKDIR")
    or REPO / "runs" / "notebook_quickstart")
IMAGE_PATHS = [p for p in os.environ.get(
    "MTDENSE_NOTEBOOK_IMAGES", "").split(os.pathsep) if p]
OUT_DIR = pathlib.Path(
    os.environ.get("MTDENSE_NOTEBOOK_OUT")
    or (tempfile.mkdtemp(prefix="mtdense_predictions_") if TINY
        else REPO / "runs" / "notebook_predictions"))
print(f"checkpoint workdir {CHECKPOINT_WORKDIR}\nimages {IMAGE_PATHS}\n"
      f"outputs {OUT_DIR}")'''),
    ("code", RUNTIME),
    ("md", r'''## A checkpoint

Uses `CHECKPOINT_WORKDIR` when it holds a checkpoint; otherwise trains the
`runlocal` variant of `MTDENSE_NOTEBOOK_CONFIG` (default the quickstart
config; 4 steps on tiny images) in a temporary folder.'''),
    ("code", r'''from mtdense_jax import config_check
from mtdense_jax.train import loop


def has_checkpoint(workdir: pathlib.Path) -> bool:
  ckpts = workdir / "checkpoints"
  return (workdir / "config.json").is_file() and ckpts.is_dir() and any(
      d.name.isdigit() for d in ckpts.iterdir())


if not has_checkpoint(CHECKPOINT_WORKDIR):
  print(f"No checkpoint in {CHECKPOINT_WORKDIR}: training a tiny model "
        "(run quickstart.ipynb for a useful one).")
  cfg = config_check.load_config_file((
      os.environ.get("MTDENSE_NOTEBOOK_CONFIG")
      or str(REPO / "configs" / "synthetic_baseline.py")) + ":runlocal")
  cfg.data.data_dir = os.environ.get("MTDENSE_NOTEBOOK_DATA_DIR") or (
      tempfile.mkdtemp(prefix="mtdense_tfds_"))
  CHECKPOINT_WORKDIR = pathlib.Path(tempfile.mkdtemp(prefix="mtdense_tiny_"))
  loop.train_and_evaluate(cfg, str(CHECKPOINT_WORKDIR))
print("using", CHECKPOINT_WORKDIR)'''),
    ("md", r'''## Load once

`Predictor.from_workdir` rebuilds the model from the run's `config.json`,
restores only the parameters of the latest checkpoint and compiles one
forward pass that serves every later call. The model always sees the
input size it was trained at (`predictor.size`): models tied to one token
grid, like TaskPrompter and InvPT, accept no other.'''),
    ("code", r'''from mtdense_jax import predict

predictor = predict.Predictor.from_workdir(CHECKPOINT_WORKDIR)
print(f"step {predictor.step}, tasks {list(predictor.tasks)}, "
      f"model input {predictor.size} (H, W)")'''),
    ("md", r'''## Sample images

Synthetic scenes rendered at sizes the model was not trained on (and from
another seed, so unseen), plus the files in `IMAGE_PATHS`.'''),
    ("code", r'''from data_builders.synthetic_scenes import builder as scenes

samples = {}
for i, (h, w) in enumerate([(75, 140), (120, 90), (64, 64)]):
  scene_cfg = scenes.derive_config("nyud_like", height=h, width=w, seed=7)
  samples[f"scene{i}"] = scenes.render_example(
      scene_cfg, "validation", i)["image"]
for path in IMAGE_PATHS:
  samples[pathlib.Path(path).stem] = predict.read_image(path)
print({name: image.shape for name, image in samples.items()})'''),
    ("md", r'''## Predict and show panels

`predict` returns, per image, `{task: (H, W, C) array}` at the image's own
size: class ids for segmentation, metres for depth, unit vectors for
normals, boundary probabilities for edges. `write_outputs` saves each
task's colour map and the panel (what `python -m mtdense_jax.predict`
writes).'''),
    ("code", r'''import matplotlib.pyplot as plt

images = list(samples.values())
preds = predictor.predict(images)
written = predict.write_outputs(
    predictor, OUT_DIR, [pathlib.Path(f"{name}.png") for name in samples],
    images, preds)
print(f"wrote {len(written)} files to {OUT_DIR}")
for (name, image), pred in zip(samples.items(), preds):
  plt.figure(figsize=(12, 4))
  plt.imshow(predictor.panel(image, pred))
  plt.title(f"{name}: {image.shape[0]}x{image.shape[1]} pixels, "
            f"model step {predictor.step}")
  plt.axis("off")
  plt.show()'''),
    ("md", r'''## The raw predictions

The arrays behind the first panel.'''),
    ("code", r'''name, pred = next(iter(samples)), preds[0]
for task, x in pred.items():
  print(f"{name} {task:8s} shape {x.shape} {x.dtype} "
        f"range [{x.min():.3g}, {x.max():.3g}]")'''),
]


def build(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
  """A v4 notebook without outputs, with stable cell ids (a rerun of this
  script changes nothing unless a cell did)."""
  nb = v4.new_notebook()
  nb.metadata = {
      "kernelspec": {"name": "python3", "display_name": "Python 3",
                     "language": "python"},
      "language_info": {"name": "python"},
      "colab": {"provenance": []},
  }
  for i, (kind, source) in enumerate(cells):
    make = v4.new_markdown_cell if kind == "md" else v4.new_code_cell
    nb.cells.append(make(source, id=f"cell-{i:02d}"))
  nbformat.validate(nb)
  return nb


NOTEBOOKS = {"quickstart.ipynb": QUICKSTART, "inference.ipynb": INFERENCE}


def render(name: str) -> str:
  """The file text of notebook `name`."""
  return nbformat.writes(build(NOTEBOOKS[name])) + "\n"


def main() -> int:
  for name in NOTEBOOKS:
    (HERE / name).write_text(render(name))
    print("wrote", HERE / name)
  return 0


if __name__ == "__main__":
  sys.exit(main())
