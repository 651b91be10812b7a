r"""Multi-task predictions on any image, from a workdir or a params checkpoint.

  python -m mtdense_jax.predict --workdir runs/quickstart \
      --images a.jpg b.png --out preds/
  python -m mtdense_jax.predict --checkpoint ckpt/invpt_pascal \
      --config configs/pascal_invpt.py --images a.jpg --out preds/

The model is tied to one input size (``config.data.image_size``). Each image
is resized (bilinear, aspect ratio kept) to fit that size, normalised with
the ImageNet mean/std and centre-padded with 0, exactly as evaluation pads
(mtdense_jax/data/transforms.py Normalize, Pad). Each task's post-processed
prediction is cropped back to the resized region, as InvPT does before saving
(prismformore/Multi-Task-Transformer, commit 870c6be1,
InvPT/utils/utils.py save_model_pred_for_one_task), then resized to the
original size: nearest for integer label maps, bilinear for continuous maps.

Python API (load once, predict many)::

  p = Predictor.from_workdir("runs/quickstart")
  preds = p.predict([img])          # [{task: (H, W, C) array}]
  rgb = p.panel(img, preds[0])      # input + every task, titled

Writes ``OUT/<stem>_<task>.png`` (each task's ``colorize``) and
``OUT/<stem>_panel.png`` per image (``--save-raw`` adds ``<stem>.npz``).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import pathlib
import sys
from typing import Any, Mapping, Sequence

import cv2
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import orbax.checkpoint as ocp
from PIL import Image, ImageDraw

from mtdense_jax import config_check
from mtdense_jax import registry
from mtdense_jax.data import sources
from mtdense_jax.data import transforms as T
from mtdense_jax.tasks import base as task_base
from mtdense_jax.train import checkpointing as ckpt
from mtdense_jax.train import loop
from mtdense_jax.train import state as state_lib
from mtdense_jax.train import step as step_lib

META_FILE = "dataset_meta.json"


# ----------------------------------------------------------------- config
def _tuples(x: Any) -> Any:
  """JSON lists back to tuples (configs use tuples: image_size, tasks...)."""
  if isinstance(x, dict):
    return {k: _tuples(v) for k, v in x.items()}
  if isinstance(x, list):
    return tuple(_tuples(v) for v in x)
  return x


def load_config(spec: str | pathlib.Path) -> mlc.ConfigDict:
  """A saved WORKDIR/config.json, or a config file 'configs/x.py[:arg]'."""
  spec = str(spec)
  if spec.endswith(".json"):
    return mlc.ConfigDict(_tuples(json.loads(pathlib.Path(spec).read_text())))
  return config_check.load_config_file(spec)


# --------------------------------------------------------------- metadata
def _classification_tasks(config) -> list[str]:
  """Configured tasks that cannot be built without num_classes."""
  out = []
  for name in config.tasks:
    kw = dict(config.get("task_kw", {}).get(name, {}) or {})
    try:
      registry.lookup("task", name).Task(num_classes=None,
                                         protocol=config.eval.protocol, **kw)
    except ValueError:
      out.append(name)
  return out


def _prepared_builder_meta(config) -> dict[str, Any] | None:
  """The dataset's metadata when it is prepared; never prepares it."""
  try:
    builder = sources.get_builder(config.data)
    if builder.is_prepared():
      return sources.dataset_meta(builder)
  except Exception:  # pylint: disable=broad-except
    return None  # An unknown or unavailable dataset: try the next source.
  return None


def _keys(path) -> tuple[str, ...]:
  """A pytree path as plain names, without nnx's trailing 'value'."""
  names = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        names.append(str(getattr(k, attr)))
        break
  while names and names[-1] == "value":
    names.pop()
  return tuple(names)


def _shapes(tree) -> dict[tuple[str, ...], tuple[int, ...]]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {_keys(p): tuple(getattr(v, "shape", ())) for p, v in flat}


def num_classes_from_checkpoint(config, directory: str | pathlib.Path,
                                step: int | None = None) -> dict[str, int]:
  """Head sizes of the classification tasks, read from checkpoint shapes.

  Builds the model abstractly with two distinct probe sizes per task; the
  parameter dimensions that follow the probe are that task's head, and the
  checkpoint's shape there is its num_classes. Generic over decoders.
  """
  names = _classification_tasks(config)
  if not names:
    return {}
  # Far-apart probes, so a dimension derived from a head size (e.g. a
  # concat of features and predictions) cannot pass for another task's.
  probes = [{n: 1009 + 1000 * i + j for i, n in enumerate(names)}
            for j in (0, 1)]
  a, b = (_shapes(_abstract_params(config, loop.build_tasks(
      config, {"num_classes": p}))) for p in probes)
  if step is None:
    mngr = ckpt.manager(directory, read_only=True, async_save=False)
    step = mngr.latest_step()
    mngr.close()
  if step is None:
    raise FileNotFoundError(f"No checkpoint found in {directory}.")
  md = ocp.StandardCheckpointer().metadata(
      pathlib.Path(directory).absolute() / str(step) / "params")
  saved = _shapes(getattr(md, "item_metadata", md))
  votes = collections.defaultdict(collections.Counter)
  for path, sa in a.items():
    if sa == b[path] or len(saved.get(path, ())) != len(sa):
      continue
    for dim, xy in enumerate(zip(sa, b[path])):
      for n in names:
        if xy == (probes[0][n], probes[1][n]):
          votes[n][saved[path][dim]] += 1
  found = {n: c.most_common(1)[0][0] for n, c in votes.items()}
  missing = [n for n in names if n not in found]
  if missing:
    raise ValueError(f"Could not find the head size of {missing} in "
                     f"{directory}; pass num_classes explicitly.")
  return found


def resolve_meta(config, *, workdir: str | pathlib.Path | None = None,
                 checkpoint: str | pathlib.Path | None = None,
                 step: int | None = None,
                 num_classes: Mapping[str, int] | None = None
                 ) -> dict[str, Any]:
  """Dataset metadata for building the tasks, without preparing a dataset.

  First that applies: WORKDIR/dataset_meta.json (written by the loop at
  train start), the prepared builder's info, the checkpoint's head shapes.
  `num_classes` entries override whatever was found.
  """
  meta = None
  if workdir is not None and (pathlib.Path(workdir) / META_FILE).exists():
    meta = json.loads((pathlib.Path(workdir) / META_FILE).read_text())
  if meta is None:
    meta = _prepared_builder_meta(config)
  needed = set(_classification_tasks(config)) - set(num_classes or {})
  if meta is None or not needed <= set(meta.get("num_classes", {})):
    meta = dict(meta or {})
    if checkpoint is not None and needed:
      meta["num_classes"] = {**num_classes_from_checkpoint(
          config, checkpoint, step), **meta.get("num_classes", {})}
  meta = dict(meta)
  meta["num_classes"] = {**dict(meta.get("num_classes", {}) or {}),
                         **dict(num_classes or {})}
  return meta


def _factory(config, tasks):
  outputs = {n: t.num_outputs for n, t in tasks.items()}
  return state_lib.model_factory(config.model, outputs,
                                 tuple(config.data.image_size), config.seed)


def _abstract_params(config, tasks) -> dict[str, Any]:
  _, params, stats = state_lib.model_defs(_factory(config, tasks))
  return {"params": params, "batch_stats": stats}


# -------------------------------------------------------------- geometry
@dataclasses.dataclass(frozen=True)
class Placement:
  """Where an image of size (h, w) sits in the padded model input."""
  h: int
  w: int
  top: int
  left: int
  rh: int  # resized height inside the model input
  rw: int


def place(hw: tuple[int, int], size: tuple[int, int],
          upscale: bool = True) -> Placement:
  """Largest aspect-preserving fit of `hw` into `size`, centred like Pad."""
  h, w = int(hw[0]), int(hw[1])
  scale = min(size[0] / h, size[1] / w)
  if not upscale:
    scale = min(scale, 1.0)
  rh = min(size[0], max(1, round(h * scale)))
  rw = min(size[1], max(1, round(w * scale)))
  return Placement(h, w, (size[0] - rh) // 2, (size[1] - rw) // 2, rh, rw)


def as_rgb(image: np.ndarray) -> np.ndarray:
  """uint8 (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) -> (H, W, 3)."""
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  if image.ndim != 3 or image.shape[-1] not in (3, 4):
    raise ValueError(f"Expected an RGB image (H, W, 3); got {image.shape}.")
  return image[..., :3]


def preprocess(image: np.ndarray, size: tuple[int, int],
               upscale: bool = True) -> tuple[np.ndarray, Placement]:
  """uint8 image -> (normalised padded float32 (H, W, 3), its placement)."""
  image = as_rgb(image).astype(np.float32)
  pl = place(image.shape[:2], size, upscale)
  if (pl.rh, pl.rw) != image.shape[:2]:
    image = cv2.resize(image, (pl.rw, pl.rh), interpolation=cv2.INTER_LINEAR)
  ex = T.Normalize().map({"image": image})
  ex = T.Pad(tuple(size)).map(ex)
  return ex["image"], pl


def _resize_nearest(x: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  """Nearest with pixel-centre sampling (exact for any dtype)."""
  rows = np.minimum(((np.arange(hw[0]) + 0.5) * x.shape[0] / hw[0]).astype(
      np.int64), x.shape[0] - 1)
  cols = np.minimum(((np.arange(hw[1]) + 0.5) * x.shape[1] / hw[1]).astype(
      np.int64), x.shape[1] - 1)
  return x[rows][:, cols]


def restore(pred: np.ndarray, pl: Placement) -> np.ndarray:
  """(H, W, C) model-size prediction -> (h, w, C) at the original size."""
  x = pred[pl.top:pl.top + pl.rh, pl.left:pl.left + pl.rw]
  if (pl.rh, pl.rw) == (pl.h, pl.w):
    return np.ascontiguousarray(x)
  if not np.issubdtype(x.dtype, np.floating):
    return _resize_nearest(x, (pl.h, pl.w))
  out = cv2.resize(x.astype(np.float32), (pl.w, pl.h),
                   interpolation=cv2.INTER_LINEAR)
  return out.reshape(pl.h, pl.w, x.shape[-1]).astype(x.dtype)


# ------------------------------------------------------------- predictor
class Predictor:
  """A restored model that predicts every task on images of any size.

  Images go through the jitted eval forward in batches of `batch_size`
  (the last one padded), so one compiled program serves every call and an
  image's prediction does not depend on what it is batched with.
  """

  def __init__(self, config, tasks: Mapping[str, task_base.Task],
               params: dict[str, Any], *, batch_size: int = 4,
               upscale: bool = True, step: int | None = None):
    self.config, self.tasks, self.step = config, dict(tasks), step
    self.size = tuple(int(s) for s in config.data.image_size)
    self.batch_size, self.upscale = int(batch_size), upscale
    defs, _, _ = state_lib.model_defs(_factory(config, self.tasks))
    self.params = params
    self._forward = jax.jit(step_lib.bind(
        step_lib.predict_step, defs=defs, tasks=self.tasks))

  @classmethod
  def from_checkpoint(cls, directory: str | pathlib.Path, config, *,
                      step: int | None = None, workdir=None,
                      num_classes: Mapping[str, int] | None = None,
                      **kw) -> "Predictor":
    """Params-only restore from a checkpoints dir (a run's or a converter's).

    `config` is a ConfigDict or a spec for `load_config`.
    """
    if not isinstance(config, mlc.ConfigDict):
      config = load_config(config)
    directory = pathlib.Path(directory).absolute()
    meta = resolve_meta(config, workdir=workdir, checkpoint=directory,
                        step=step, num_classes=num_classes)
    tasks = loop.build_tasks(config, meta)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
        _abstract_params(config, tasks))
    params, got = ckpt.restore_params(directory, abstract, step)
    return cls(config, tasks, params, step=got, **kw)

  @classmethod
  def from_workdir(cls, workdir: str | pathlib.Path, step: int | None = None,
                   *, config=None, **kw) -> "Predictor":
    """A run's latest (or `step`) checkpoint, with WORKDIR/config.json."""
    workdir = pathlib.Path(workdir)
    config = config if config is not None else workdir / "config.json"
    return cls.from_checkpoint(workdir / "checkpoints", config, step=step,
                               workdir=workdir, **kw)

  def forward(self, batch: np.ndarray) -> dict[str, np.ndarray]:
    """(B, H, W, 3) normalised model-size images -> post-processed preds."""
    out = self._forward(self.params["params"], self.params["batch_stats"],
                        jnp.asarray(batch, jnp.float32))
    return jax.tree.map(np.asarray, out)

  def predict(self, images: Sequence[np.ndarray]
              ) -> list[dict[str, np.ndarray]]:
    """uint8 (H, W, 3) images -> per image {task: (H, W, C)} at its size."""
    results = []
    for start in range(0, len(images), self.batch_size):
      chunk = images[start:start + self.batch_size]
      prepared = [preprocess(im, self.size, self.upscale) for im in chunk]
      batch = np.zeros((self.batch_size,) + self.size + (3,), np.float32)
      for i, (x, _) in enumerate(prepared):
        batch[i] = x
      out = self.forward(batch)
      for i, (_, pl) in enumerate(prepared):
        results.append({t: restore(out[t][i], pl) for t in self.tasks})
    return results

  def colorize(self, preds: Mapping[str, np.ndarray]
               ) -> dict[str, np.ndarray]:
    return {t: self.tasks[t].colorize(preds[t]) for t in self.tasks
            if t in preds}

  def panel(self, image: np.ndarray, preds: Mapping[str, np.ndarray],
            max_cols: int = 4) -> np.ndarray:
    """Input and every task side by side, titled: (H', W', 3) uint8."""
    tiles = [("input", as_rgb(image))] + list(self.colorize(preds).items())
    return panel(tiles, max_cols=max_cols)


def panel(tiles: Sequence[tuple[str, np.ndarray]], *, max_cols: int = 4,
          min_height: int = 160, max_height: int = 480,
          max_width: int = 640) -> np.ndarray:
  """Titled RGB tiles on a grid near 16:9; tiny images are enlarged."""
  h, w = tiles[0][1].shape[:2]
  th = int(np.clip(h, min_height, max_height))
  th = max(1, min(th, round(max_width * h / w)))
  tw = max(1, round(w * th / h))
  bar = 18
  n = len(tiles)

  def aspect_error(cols: int) -> float:
    rows = -(-n // cols)
    return abs(np.log(cols * tw / (rows * (th + bar)) / (16 / 9)))

  ncols = min(range(1, min(n, max_cols) + 1), key=aspect_error)
  nrows = -(-n // ncols)
  canvas = Image.new("RGB", (ncols * tw, nrows * (th + bar)), "white")
  draw = ImageDraw.Draw(canvas)
  for k, (title, rgb) in enumerate(tiles):
    r, c = divmod(k, ncols)
    resample = Image.BILINEAR if k == 0 else Image.NEAREST
    tile = Image.fromarray(np.asarray(rgb, np.uint8)).resize((tw, th),
                                                             resample)
    canvas.paste(tile, (c * tw, r * (th + bar) + bar))
    draw.text((c * tw + 4, r * (th + bar) + 3), title, fill="black")
  return np.asarray(canvas)


# -------------------------------------------------------------------- CLI
def read_image(path: str | pathlib.Path) -> np.ndarray:
  with Image.open(path) as im:
    return np.asarray(im.convert("RGB"))


def write_outputs(predictor: Predictor, out: pathlib.Path,
                  paths: Sequence[pathlib.Path],
                  images: Sequence[np.ndarray],
                  preds: Sequence[Mapping[str, np.ndarray]],
                  save_raw: bool = False) -> list[pathlib.Path]:
  """<stem>_<task>.png, <stem>_panel.png (and <stem>.npz) per image."""
  out.mkdir(parents=True, exist_ok=True)
  written, seen = [], {}
  for path, image, pred in zip(paths, images, preds):
    stem = path.stem
    seen[stem] = seen.get(stem, 0) + 1
    if seen[stem] > 1:  # a.jpg and a.png, or the same name in two folders
      stem = f"{stem}_{seen[stem]}"
    for task, rgb in predictor.colorize(pred).items():
      written.append(out / f"{stem}_{task}.png")
      Image.fromarray(rgb).save(written[-1])
    written.append(out / f"{stem}_panel.png")
    Image.fromarray(predictor.panel(image, pred)).save(written[-1])
    if save_raw:
      written.append(out / f"{stem}.npz")
      np.savez_compressed(written[-1], **pred)
  return written


def _num_classes_arg(spec: str) -> dict[str, int]:
  out = {}
  for item in filter(None, spec.split(",")):
    name, _, n = item.partition("=")
    out[name.strip()] = int(n)
  return out


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m mtdense_jax.predict",
      description="Predicts every task of a trained model on images.")
  src = parser.add_mutually_exclusive_group(required=True)
  src.add_argument("--workdir", help="a training run's workdir")
  src.add_argument("--checkpoint", help="a checkpoints dir (e.g. converted)")
  parser.add_argument("--config", default=None,
                      help="configs/x.py[:arg] or a config.json (default "
                           "WORKDIR/config.json; required with --checkpoint)")
  parser.add_argument("--step", type=int, default=None)
  parser.add_argument("--images", nargs="+", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--batch-size", type=int, default=4)
  parser.add_argument("--no-upscale", action="store_true",
                      help="pad smaller images instead of enlarging them")
  parser.add_argument("--num-classes", default="",
                      help="e.g. semseg=21,human_parts=7 (default: dataset "
                           "metadata or the checkpoint's head shapes)")
  parser.add_argument("--save-raw", action="store_true",
                      help="also write <stem>.npz with the predicted arrays")
  args = parser.parse_args(argv)
  if args.checkpoint and not args.config:
    parser.error("--checkpoint needs --config")
  kw = dict(batch_size=args.batch_size, upscale=not args.no_upscale,
            num_classes=_num_classes_arg(args.num_classes) or None)
  paths = [pathlib.Path(p) for p in args.images]
  images = [read_image(p) for p in paths]  # Fail on a bad path before loading.
  if args.workdir:
    predictor = Predictor.from_workdir(args.workdir, args.step,
                                       config=args.config, **kw)
  else:
    predictor = Predictor.from_checkpoint(args.checkpoint, args.config,
                                          step=args.step, **kw)
  preds = predictor.predict(images)
  written = write_outputs(predictor, pathlib.Path(args.out), paths, images,
                          preds, args.save_raw)
  print(f"step {predictor.step}: wrote {len(written)} files to {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
