"""A toy task in ONE file: height of the visible surface above the floor.

The proof that a task is a plugin: nothing else in the repository names it.
Listed as ``config.tasks = ("semseg", "tests.toy_height_task")`` (its batch
key, head, metrics and dataset feature are all ``"height"``, the name below)
and added to the synthetic scenes with ``data.builder_kwargs.tasks``. The
scenes do not label it: `scene_label` derives it from the renderer's world
points (y up, floor at y = 0). The label spec says the rest: float32 metres
stored as a zlib tensor, -1 where nothing is seen (also the padding), values
unchanged by the train rescale and the flip (a height is not a distance to
the camera), nearest resizing.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Mapping

import jax.numpy as jnp
import numpy as np

from mtdense_jax.tasks import base
from mtdense_jax.tasks import common

NO_HEIGHT = -1.0
MAX_HEIGHT = 10.0  # metres; the synthetic rooms are at most 3.2 m high


@dataclasses.dataclass(frozen=True, kw_only=True)
class Task(base.Task):
  """Height above the floor in metres, 1-channel head, L1 loss, pooled MAE."""

  name: ClassVar[str] = "height"
  metric_directions: ClassVar[Mapping[str, bool]] = {"mae": False}

  @property
  def num_outputs(self) -> int:
    return 1

  @property
  def label_spec(self) -> base.LabelSpec:
    return base.LabelSpec(dtype="float32", fill=NO_HEIGHT, encoding="zlib",
                          value_range=(0.0, MAX_HEIGHT),
                          extra_values=(NO_HEIGHT,))

  def scene_label(self, scene):
    y = scene["points"][..., 1]
    return np.where(scene["valid"], np.maximum(y, 0.0),
                    NO_HEIGHT).astype(np.float32)[..., None]

  def loss(self, pred, label):
    ok = label != NO_HEIGHT
    err = jnp.where(ok, jnp.abs(pred.astype(jnp.float32) - label), 0.0)
    return jnp.sum(err) / jnp.maximum(jnp.sum(ok), 1).astype(jnp.float32)

  def postprocess(self, pred):
    return pred.astype(jnp.float32)

  def metric_init(self):
    return {"abs": common.acc_zeros(), "n": jnp.zeros((), jnp.int32)}

  def metric_update(self, stats, pred, label, valid):
    ok = (label != NO_HEIGHT) & valid[:, None, None, None]
    err = jnp.where(ok, jnp.abs(self.postprocess(pred) - label), 0.0)
    return {"abs": common.acc_add(stats["abs"], jnp.sum(err)),
            "n": stats["n"] + jnp.sum(ok, dtype=jnp.int32)}

  def metric_compute(self, stats) -> dict[str, float]:
    n = int(stats["n"])
    return {"mae": common.acc_value(stats["abs"]) / n if n else float("nan")}

  def colorize(self, x: np.ndarray) -> np.ndarray:
    h = np.asarray(x, np.float32)[..., 0]
    g = np.where(h == NO_HEIGHT, 0.0, np.clip(h / 3.0, 0.0, 1.0))
    return np.repeat((g * 255.0 + 0.5).astype(np.uint8)[..., None], 3, -1)
