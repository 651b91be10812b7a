"""The Task interface: everything task-specific lives in one task file.

Each ``mtdense_jax/tasks/<name>.py`` defines ``class Task(base.Task)``; generic
code builds it with ``Task(num_classes=..., protocol=...)`` and only loops over
the configured tasks. Conventions shared by every task:

* Layout is NHWC. A prediction is the raw network output ``(B, H, W, C)``
  (logits or regressions); a label is ``(B, H, W, channels)`` as its
  `LabelSpec` says, with ``spec.fill`` (255 unless a task option changes it)
  marking ignored pixels, also the padding value.
* A task owns its label: the input pipeline, the augmentation and the
  dataset builders only loop over tasks and call the label hooks below
  (``label_spec``, ``rescale_label``, ``flip_label``, ``ignore_regions``,
  ``label_problem``, ``encode_label``, ``scene_label``); none of them names a
  task.
* The key of a task everywhere (batch, heads, metrics, ``task_kw``, loss
  weights, dataset metadata) is its ``name``. ``config.tasks`` lists plugin
  entries: a built-in module name (``"depth"``, equal to its name) or a dotted
  module path (``"my_lab.tasks.curvature"``) whose ``Task.name`` is the key.
* ``metric_update`` is pure and jit-able: it folds one batch into mergeable
  running totals (sufficient statistics) on device. ``valid`` is a ``(B,)``
  bool mask that is False for examples added to pad the last eval batch.
  ``metric_compute`` turns the totals into floats on the host.
* ``protocol`` selects the evaluation protocol: ``"invpt"`` (the online meters
  of InvPT/TaskPrompter; the default), ``"mtl"`` (the offline file-based
  functions of Multi-Task-Learning-PyTorch) or ``"mtan"`` (the MTAN-style
  meters of CTAL's CNN code, only for the tasks that list it in their
  ``protocols``). See ../shared/notes/methods.md d and b.5.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mtdense_jax import registry

PyTree = Any
IGNORE = 255
PROTOCOLS = ("invpt", "mtl", "mtan")  # every protocol some task knows


@dataclasses.dataclass(frozen=True)
class LabelSpec:
  """What generic data code needs to know about one task's label.

  Attributes:
    channels: trailing channels of the label (H, W, channels).
    dtype: numpy dtype name the pipeline delivers.
    fill: the "no label here" value: padding, blanked examples and ignore
      regions; the task's loss and metrics skip it.
    resize: "nearest" (labels must not blend) or "bilinear", when the train
      augmentation rescales the example.
    flip_negate: channels whose sign changes under a horizontal flip (the x
      component of a normal).
    encoding: how builders store it: "png" (a uint8 map) or "zlib" (a float
      tensor).
    value_range: closed range of the stored values a builder accepts
      (besides `extra_values`); values outside, NaN or inf are refused.
    extra_values: further accepted stored values (e.g. 255 = ignore).
  """

  channels: int = 1
  dtype: str = "uint8"
  fill: float = IGNORE
  resize: str = "nearest"
  flip_negate: tuple[int, ...] = ()
  encoding: str = "png"
  value_range: tuple[float, float] = (0.0, 255.0)
  extra_values: tuple[float, ...] = ()

  def __post_init__(self):
    if self.resize not in ("nearest", "bilinear"):
      raise ValueError(f"LabelSpec.resize must be 'nearest' or 'bilinear', "
                       f"got {self.resize!r}.")
    if self.encoding not in ("png", "zlib"):
      raise ValueError(f"LabelSpec.encoding must be 'png' or 'zlib', got "
                       f"{self.encoding!r}.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Task:
  """Base class; subclasses set the class variables and implement the hooks.

  Attributes:
    num_classes: output channels for classification-like tasks (semseg,
      human_parts); taken from the dataset's metadata. Unused by regression
      tasks, whose channel count is fixed.
    protocol: evaluation protocol, one of the class's `protocols`.
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
  # True if the train crop should be re-drawn until this (class) label is
  # not dominated by one class (InvPT's cat_max_ratio rule). The first such
  # task of the configured ones is used.
  balances_crop: ClassVar[bool] = False
  # The evaluation protocols this task implements (a subset of PROTOCOLS).
  protocols: ClassVar[tuple[str, ...]] = ("invpt", "mtl")

  num_classes: int | None = None
  protocol: str = "invpt"

  def __post_init__(self):
    if self.protocol not in self.protocols:
      raise ValueError(
          f"Task {self.name!r}: unknown metric protocol {self.protocol!r}; "
          f"expected one of {self.protocols}.")

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

  # ------------------------------------------------------------ label hooks
  # Per-example numpy code run by the input pipeline (in grain workers) and
  # by the dataset builders. Defaults suit a class map; override what the
  # label needs.

  @property
  def label_spec(self) -> LabelSpec:
    """Channels, dtype, fill, resize/flip rule and storage of the label."""
    return LabelSpec(channels=self.label_channels, dtype=self.label_dtype)

  @property
  def fill(self):
    """`label_spec.fill` as a scalar of the label dtype."""
    spec = self.label_spec
    return np.asarray(spec.fill, spec.dtype)[()]

  def rescale_label(self, label: np.ndarray, factor: float) -> np.ndarray:
    """Values after the image was scaled by `factor` (already resized)."""
    del factor
    return label

  def flip_label(self, label: np.ndarray) -> np.ndarray:
    """Values after a horizontal mirror (already mirrored, a fresh copy)."""
    neg = self.label_spec.flip_negate
    if neg:
      fill = self.fill
      for c in neg:
        x = label[..., c]
        np.negative(x, out=x, where=x != fill)
    return label

  def ignore_regions(self, label: np.ndarray) -> np.ndarray:
    """Marks stored "no label" values with `fill` (after padding)."""
    return label

  def label_problem(self, label: np.ndarray) -> str | None:
    """Why a stored label is unacceptable (None if fine); builders refuse
    the example with this text, naming the member and the image id."""
    spec = self.label_spec
    y = np.asarray(label)
    if np.issubdtype(y.dtype, np.floating):
      bad = ~np.isfinite(y)
      if bad.any():
        kinds = sorted({"NaN" if np.isnan(v) else "inf" for v in y[bad]})
        return (f"{self.name} label holds {' and '.join(kinds)} at "
                f"{int(bad.sum())} value(s)")
    lo, hi = spec.value_range
    out = (y < lo) | (y > hi)
    for v in spec.extra_values:
      out &= y != v
    if out.any():
      vals = np.unique(y[out])
      extra = f" or {list(spec.extra_values)}" if spec.extra_values else ""
      return (f"{self.name} label has {int(out.sum())} value(s) outside "
              f"[{lo:g}, {hi:g}]{extra}, e.g. {vals[:5].tolist()}")
    return None

  def label_feature(self):
    """The TFDS feature builders store the label as."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    spec = self.label_spec
    if spec.encoding == "png":
      return tfds.features.Image(shape=(None, None, spec.channels),
                                 encoding_format="png")
    return tfds.features.Tensor(shape=(None, None, spec.channels),
                                dtype=np.dtype(spec.dtype), encoding="zlib")

  def encode_label(self, label: np.ndarray):
    """A decoded label as `label_feature` stores it (PNG bytes or array)."""
    spec = self.label_spec
    y = np.asarray(label)
    if y.ndim == 2:
      y = y[..., None]
    if spec.encoding == "png":
      import io  # pylint: disable=g-import-not-at-top
      from PIL import Image  # pylint: disable=g-import-not-at-top
      if y.dtype != np.uint8:
        raise TypeError(f"{self.name}: a PNG label must be uint8, got "
                        f"{y.dtype}")
      buf = io.BytesIO()
      Image.fromarray(y[..., 0] if spec.channels == 1 else y).save(
          buf, format="PNG", compress_level=1)
      return buf.getvalue()
    return y.astype(spec.dtype)

  def scene_label(self, scene: Mapping[str, np.ndarray]) -> np.ndarray:
    """This task's label from a rendered scene's geometric buffers.

    Synthetic datasets call it for tasks they do not label themselves; see
    data_builders/synthetic_scenes/render.py (``BUFFERS``) for the keys.
    """
    raise NotImplementedError(
        f"Task {self.name!r} cannot be derived from a rendered scene: "
        "implement Task.scene_label.")


def task_class(entry: str) -> type[Task]:
  """The Task class of a config.tasks entry (a name or a dotted module)."""
  return registry.lookup("task", entry).Task


def build(entry: str | Task, *,
          num_classes: Mapping[str, int] | None = None,
          **kw) -> Task:
  """A Task from a config entry, sized from a dataset's num_classes.

  Default options; tasks built this way serve label handling (pipeline,
  builders, tools). Training builds its tasks with config.task_kw.
  """
  if isinstance(entry, Task):
    return entry
  cls = task_class(entry)
  return cls(num_classes=(num_classes or {}).get(cls.name), **kw)


def build_all(entries: Sequence[str | Task] | Mapping[str, Task], *,
              num_classes: Mapping[str, int] | None = None
              ) -> tuple[Task, ...]:
  """`build` over entries (a mapping's values); names must be unique."""
  if isinstance(entries, Mapping):
    entries = list(entries.values())
  tasks = tuple(build(e, num_classes=num_classes) for e in entries)
  names = [t.name for t in tasks]
  dup = sorted({n for n in names if names.count(n) > 1})
  if dup:
    raise ValueError(f"Two configured tasks are both named {dup}; each "
                     "task name must be unique.")
  return tasks


def merge_stats(a: PyTree, b: PyTree) -> PyTree:
  """Running totals are sums, so merging is addition."""
  return jax.tree.map(jnp.add, a, b)


def valid_pixels(label: jax.Array, valid: jax.Array | None = None) -> jax.Array:
  """(B, H, W) bool: pixels whose label channels are all != IGNORE."""
  ok = jnp.all(label != IGNORE, axis=-1)
  if valid is not None:
    ok = ok & valid[:, None, None]
  return ok
