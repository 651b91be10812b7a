"""The Predictor API: a restored model that predicts every task on images.

  p = Predictor.from_workdir("runs/quickstart")
  preds = p.predict([img])          # [{task: (H, W, C) array}]
  rgb = p.panel(img, preds[0])      # input + every task, legends, colour bars

Dataset metadata (tasks, head sizes, class names, ...) comes, first that
applies, from the checkpoint's ``meta`` item (key "dataset_meta", written by
training and the converters), WORKDIR/dataset_meta.json (older workdirs),
or the prepared dataset; explicit `num_classes` overrides it. Head sizes are
never guessed from parameter shapes.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import orbax.checkpoint as ocp

from mtdense_jax import config_check
from mtdense_jax import registry
from mtdense_jax.data import sources
from mtdense_jax.data import transforms as T
from mtdense_jax.predict import geometry
from mtdense_jax.predict import panels
from mtdense_jax.tasks import base as task_base
from mtdense_jax.train import checkpointing as ckpt
from mtdense_jax.train import loop
from mtdense_jax.train import state as state_lib
from mtdense_jax.train import step as step_lib

META_FILE = "dataset_meta.json"
META_KEY = "dataset_meta"


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
    path = pathlib.Path(spec)
    if not path.exists():
      raise FileNotFoundError(
          f"{path} does not exist: is {path.parent} a training workdir? "
          "Otherwise pass --config configs/x.py.")
    return mlc.ConfigDict(_tuples(json.loads(path.read_text())))
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


def latest_step(directory: str | pathlib.Path) -> int:
  """The newest complete checkpoint step, or a FileNotFoundError."""
  directory = pathlib.Path(directory).absolute()
  mngr = ckpt.manager(directory, read_only=True, async_save=False) \
      if directory.is_dir() else None
  step = mngr.latest_step() if mngr else None
  if mngr:
    mngr.close()
  if step is None:
    raise FileNotFoundError(
        f"No checkpoint in {directory}: train first (python launch.py "
        "--config ... --workdir W) or pass --checkpoint DIR.")
  return step


def checkpoint_meta(directory: str | pathlib.Path,
                    step: int) -> dict[str, Any]:
  """The checkpoint's JSON `meta` item ({} when it has none)."""
  directory = pathlib.Path(directory).absolute()
  if not (directory / str(step) / "meta").exists():
    return {}
  mngr = ckpt.manager(directory, read_only=True, async_save=False)
  try:
    out = mngr.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))
    return dict(out["meta"] or {})
  finally:
    mngr.close()


def resolve_meta(config, *, workdir: str | pathlib.Path | None = None,
                 checkpoint: str | pathlib.Path | None = None,
                 step: int | None = None,
                 num_classes: Mapping[str, int] | None = None
                 ) -> dict[str, Any]:
  """Dataset metadata for building the tasks, without preparing a dataset.

  First that applies: the checkpoint's meta["dataset_meta"],
  WORKDIR/dataset_meta.json, the prepared dataset's info. `num_classes`
  entries override whatever was found; a head size found nowhere is an
  error that says how to pass it.
  """
  meta, where = None, []
  if checkpoint is not None:
    step = latest_step(checkpoint) if step is None else step
    meta = checkpoint_meta(checkpoint, step).get(META_KEY)
    where.append(f"{checkpoint}/{step}/meta has no {META_KEY!r}")
  if meta is None and workdir is not None:
    path = pathlib.Path(workdir) / META_FILE
    if path.exists():
      meta = json.loads(path.read_text())
    where.append(f"no {path}")
  if meta is None:
    meta = _prepared_builder_meta(config)
    where.append(f"dataset {config.data.name} is not prepared")
  meta = dict(meta or {})
  meta["num_classes"] = {**dict(meta.get("num_classes", {}) or {}),
                         **dict(num_classes or {})}
  missing = [t for t in _classification_tasks(config)
             if t not in meta["num_classes"]]
  if missing:
    example = ",".join(f"{t}=N" for t in missing)
    raise ValueError(
        f"Unknown head size of {missing} ({'; '.join(where)}); pass "
        f"--num-classes {example} (Predictor(..., num_classes=...)).")
  return meta


def _factory(config, tasks):
  outputs = {n: t.num_outputs for n, t in tasks.items()}
  return state_lib.model_factory(config.model, outputs,
                                 tuple(config.data.image_size), config.seed)


def _abstract_params(config, tasks) -> dict[str, Any]:
  _, params, stats = state_lib.model_defs(_factory(config, tasks))
  return {"params": params, "batch_stats": stats}


# ------------------------------------------------------------- predictor
class Predictor:
  """A restored model that predicts every task on images of any size.

  The model is built at ``config.data.image_size`` (``self.size``), the
  size it was trained or converted at, and only ever sees that size: a
  model whose parameters are sized by its token grid (learned position
  embeddings, token-mixing layers) accepts no other. Each image is fitted
  into it, aspect kept, and centre-padded (geometry.preprocess); each
  prediction is cropped and resized back (geometry.restore).

  Images go through the jitted eval forward in batches of `batch_size`
  (the last one padded), so one compiled program serves every call and an
  image's prediction does not depend on what it is batched with.
  """

  def __init__(self, config, tasks: Mapping[str, task_base.Task],
               params: dict[str, Any], *, batch_size: int = 4,
               upscale: bool = True, step: int | None = None,
               meta: Mapping[str, Any] | None = None):
    self.config, self.tasks, self.step = config, dict(tasks), step
    self.meta = dict(meta or {})
    self.size = tuple(int(s) for s in config.data.image_size)
    self.normalize = T.Normalize.for_config(config.data)
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
    step = latest_step(directory) if step is None else step
    meta = resolve_meta(config, workdir=workdir, checkpoint=directory,
                        step=step, num_classes=num_classes)
    tasks = loop.build_tasks(config, meta)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
        _abstract_params(config, tasks))
    params, got = ckpt.restore_params(directory, abstract, step)
    return cls(config, tasks, params, step=got, meta=meta, **kw)

  @classmethod
  def from_workdir(cls, workdir: str | pathlib.Path, step: int | None = None,
                   *, config=None, **kw) -> "Predictor":
    """A run's latest (or `step`) checkpoint, with WORKDIR/config.json."""
    workdir = pathlib.Path(workdir)
    if not workdir.is_dir():
      raise FileNotFoundError(f"Workdir {workdir} does not exist.")
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
      prepared = [geometry.preprocess(im, self.size, self.upscale,
                                      self.normalize)
                  for im in chunk]
      batch = np.zeros((self.batch_size,) + self.size + (3,), np.float32)
      for i, (x, _) in enumerate(prepared):
        batch[i] = x
      out = self.forward(batch)
      for i, (_, pl) in enumerate(prepared):
        results.append({t: geometry.restore(out[t][i], pl)
                        for t in self.tasks})
    return results

  def colorize(self, preds: Mapping[str, np.ndarray]
               ) -> dict[str, np.ndarray]:
    return {t: self.tasks[t].colorize(preds[t]) for t in self.tasks
            if t in preds}

  def panel(self, image: np.ndarray, preds: Mapping[str, np.ndarray],
            max_cols: int = 4) -> np.ndarray:
    """Input and every task, titled, with class legends and colour bars:
    (H', W', 3) uint8."""
    return panels.task_panel(geometry.as_rgb(image), preds, self.tasks,
                             self.meta, max_cols=max_cols)
