"""The Task interface: everything task-specific lives in one task file.

Each ``mtdense_jax/tasks/<name>.py`` defines ``class Task(base.Task)``; generic
code builds it with ``Task(num_classes=..., protocol=...)`` and only loops over
the configured tasks. Conventions shared by every task:

* Layout is NHWC. A prediction is the raw network output ``(B, H, W, C)``
  (logits or regressions); a label is ``(B, H, W, label_channels)`` in
  ``label_dtype`` with 255 marking ignored pixels (also the padding value).
* ``metric_update`` is pure and jit-able: it folds one batch into mergeable
  running totals (sufficient statistics) on device. ``valid`` is a ``(B,)``
  bool mask that is False for examples added to pad the last eval batch.
  ``metric_compute`` turns the totals into floats on the host.
* ``protocol`` selects the evaluation protocol: ``"invpt"`` (the online meters
  of InvPT/TaskPrompter; the default) or ``"mtl"`` (the offline file-based
  functions of Multi-Task-Learning-PyTorch). See ../shared/notes/methods.md d.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
IGNORE = 255
PROTOCOLS = ("invpt", "mtl")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Task:
  """Base class; subclasses set the class variables and implement the hooks.

  Attributes:
    num_classes: output channels for classification-like tasks (semseg,
      human_parts); taken from the dataset's metadata. Unused by regression
      tasks, whose channel count is fixed.
    protocol: evaluation protocol, one of PROTOCOLS.
  """

  name: ClassVar[str]
  # Channels and dtype of the label as the input pipeline delivers it.
  label_channels: ClassVar[int] = 1
  label_dtype: ClassVar[str] = "uint8"
  # Metric name -> True if higher is better. Used for delta_m and for picking
  # the best checkpoint; the first entry is the primary metric.
  metric_directions: ClassVar[Mapping[str, bool]] = {}
  # True for boundary tasks: the evaluator adds the offline boundary
  # benchmark (odsF, oisF, AP) on the postprocessed predictions when
  # config.eval.boundary.enabled.
  boundary_metric: ClassVar[bool] = False

  num_classes: int | None = None
  protocol: str = "invpt"

  def __post_init__(self):
    if self.protocol not in PROTOCOLS:
      raise ValueError(
          f"Task {self.name!r}: unknown metric protocol {self.protocol!r}; "
          f"expected one of {PROTOCOLS}.")

  @property
  def primary_metric(self) -> str:
    return next(iter(self.metric_directions))

  @property
  def num_outputs(self) -> int:
    """Channels of this task's head."""
    raise NotImplementedError

  def loss(self, pred: jax.Array, label: jax.Array) -> jax.Array:
    """Scalar loss of one prediction (reference reduction, see methods)."""
    raise NotImplementedError

  def postprocess(self, pred: jax.Array) -> jax.Array:
    """Network output -> the task's prediction (label map, depth, ...)."""
    raise NotImplementedError

  def metric_init(self) -> PyTree:
    """Zero running totals (a pytree of jnp arrays)."""
    raise NotImplementedError

  def metric_update(self, stats: PyTree, pred: jax.Array, label: jax.Array,
                    valid: jax.Array) -> PyTree:
    """Folds one batch into the running totals. Pure, jit-able."""
    raise NotImplementedError

  def metric_compute(self, stats: PyTree) -> dict[str, float]:
    """Running totals -> metrics (host side, floats)."""
    raise NotImplementedError

  def colorize(self, x: np.ndarray) -> np.ndarray:
    """A postprocessed prediction or a label (H, W, C) -> RGB uint8."""
    raise NotImplementedError


def merge_stats(a: PyTree, b: PyTree) -> PyTree:
  """Running totals are sums, so merging is addition."""
  return jax.tree.map(jnp.add, a, b)


def valid_pixels(label: jax.Array, valid: jax.Array | None = None) -> jax.Array:
  """(B, H, W) bool: pixels whose label channels are all != IGNORE."""
  ok = jnp.all(label != IGNORE, axis=-1)
  if valid is not None:
    ok = ok & valid[:, None, None]
  return ok
