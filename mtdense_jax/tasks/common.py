"""Helpers shared by several tasks: losses, confusion counts, running sums.

semseg, human_parts and sal all train with InvPT's ignore-aware
cross-entropy and (semseg, human_parts) score with a pooled confusion count,
so those two are one `ClassificationTask`. depth, edge and normals keep
dataset-long float sums as TwoSum pairs (`acc_add`, `acc_value`).

References:
  prismformore/Multi-Task-Transformer (commit 870c6be1)
    InvPT/losses/loss_functions.py (CrossEntropyLoss),
    InvPT/evaluation/eval_semseg.py, eval_human_parts.py (SemsegMeter, ...).
  SimonVandenhende/Multi-Task-Learning-PyTorch (commit ed3d9ac1)
    evaluation/eval_semseg.py (eval_semseg: same pooled tp/fp/fn).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mtdense_jax.tasks import base


def require_num_classes(task: base.Task) -> None:
  """Classification heads have no sensible default width: fail early."""
  if task.num_classes is None:
    raise ValueError(
        f"Task {task.name!r} needs num_classes (the dataset metadata's "
        f"num_classes[{task.name!r}]); got None.")
  if task.num_classes < 1:
    raise ValueError(
        f"Task {task.name!r}: num_classes must be >= 1, got "
        f"{task.num_classes}.")


def pixel_cross_entropy(logits: jax.Array, label: jax.Array,
                        class_weight: jax.Array | None = None) -> jax.Array:
  """(B, H, W) per-pixel CE, 0 at ignored pixels (torch reduction='none').

  Args:
    logits: (B, H, W, C) raw scores; computed in float32 whatever the dtype.
    label: (B, H, W, 1) class ids, IGNORE (255) = no loss.
    class_weight: optional (C,) factor on each pixel's CE, by its label.
  """
  lab = label[..., 0].astype(jnp.int32)
  ok = lab != base.IGNORE
  safe = jnp.where(ok, lab, 0)
  # -log_softmax(x)[label] as logsumexp - x[label], both of the max-shifted
  # logits (the same float ops as jax.nn.log_softmax). The label's logit is
  # a one-hot masked sum (one nonzero term, exact) rather than a
  # take_along_axis, whose gradient scatters into zeros; this one is dense.
  x = logits.astype(jnp.float32)
  shifted = x - jax.lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True))
  lse = jnp.log(jnp.sum(jnp.exp(shifted), axis=-1))
  hot = jnp.arange(x.shape[-1]) == safe[..., None]
  nll = lse - jnp.sum(jnp.where(hot, shifted, 0.0), axis=-1)
  if class_weight is not None:
    nll = nll * jnp.asarray(class_weight, jnp.float32)[safe]
  return jnp.where(ok, nll, 0.0)


def masked_cross_entropy(logits: jax.Array, label: jax.Array,
                         class_weight: jax.Array | None = None) -> jax.Array:
  """InvPT CE: sum over non-ignored pixels of the batch / max(n_valid, 1).

  Not a per-image mean and not divided by the weight sum (InvPT divides by
  the pixel count even when class weights are given); all-ignored -> 0.
  """
  n_valid = jnp.sum(label[..., 0] != base.IGNORE)
  total = jnp.sum(pixel_cross_entropy(logits, label, class_weight))
  return total / jnp.maximum(n_valid, 1).astype(jnp.float32)


def confusion_update(confusion: jax.Array, pred_labels: jax.Array,
                     label: jax.Array, valid: jax.Array | None) -> jax.Array:
  """Adds one batch to a (K, K) int32 count: rows gt class, columns pred.

  Only pixels with a label in [0, K) of valid examples count (255 and padded
  examples are skipped), as in the reference meters. bincount keeps the
  counts exact in int32; a running total stays exact up to 2**31 pixels per
  cell (PASCAL val at 512x512 is 1.3e9 pixels in all).

  Args:
    confusion: (K, K) int32 running counts.
    pred_labels: (B, H, W) or (B, H, W, 1) predicted class ids.
    label: (B, H, W, 1) gt class ids, 255 = ignore.
    valid: (B,) bool, False for padding examples; None = all valid.
  """
  k = confusion.shape[0]
  if pred_labels.ndim == label.ndim:
    pred_labels = pred_labels[..., 0]
  gt = label[..., 0].astype(jnp.int32)
  pred = pred_labels.astype(jnp.int32)
  ok = base.valid_pixels(label, valid) & (gt >= 0) & (gt < k)
  ok &= (pred >= 0) & (pred < k)
  # Skipped pixels go to an extra bin that is dropped.
  idx = jnp.where(ok, gt * k + pred, k * k).reshape(-1)
  counts = jnp.bincount(idx, length=k * k + 1)[:k * k]
  return confusion + counts.reshape(k, k).astype(confusion.dtype)


def mtan_scores(confusion: np.ndarray) -> dict[str, float]:
  """MTAN-style mIoU and pixel accuracy of a (K, K) confusion count.

  CTAL code_cnn/evaluation/eval_semseg.py (notes/methods.md b.5): IoU_c =
  diag / (row + col - diag) with 0/0 = NaN, and the mean skips those
  classes (absent from gt and prediction), unlike `class_iou`'s mean over
  all classes. pix_acc = trace / total. Fractions.
  """
  cm = np.asarray(confusion, np.float64)
  tp = np.diag(cm)
  union = cm.sum(axis=0) + cm.sum(axis=1) - tp
  with np.errstate(invalid="ignore", divide="ignore"):
    iou = tp / union
    acc = tp.sum() / cm.sum()
  present = ~np.isnan(iou)
  miou = float(np.mean(iou[present])) if present.any() else float("nan")
  return {"mIoU": miou, "pix_acc": float(acc)}


def class_iou(confusion: np.ndarray) -> np.ndarray:
  """Per-class IoU tp / max(tp + fp + fn, 1e-8) in float64 (ASTMT rule).

  Classes absent from gt and prediction get 0, which the plain mean over all
  classes then counts (not a nanmean; methods.md d.2).
  """
  cm = np.asarray(confusion, np.float64)
  tp = np.diag(cm)
  fp = cm.sum(axis=0) - tp
  fn = cm.sum(axis=1) - tp
  return tp / np.maximum(tp + fp + fn, 1e-8)


@functools.cache
def voc_palette() -> np.ndarray:
  """(256, 3) uint8 PASCAL VOC colour map; index 255 (ignore) is black.

  Colour of id i: the bits of i, taken three at a time (r, g, b), fill the
  channels from the most significant bit down. Deterministic for any class
  count up to 255.
  """
  ids = np.arange(256)
  rgb = np.zeros((256, 3), np.int64)
  for shift in range(8):
    for ch in range(3):
      bit = (ids >> (3 * shift + ch)) & 1
      rgb[:, ch] |= bit << (7 - shift)
  rgb[base.IGNORE] = 0
  rgb = rgb.astype(np.uint8)
  rgb.setflags(write=False)
  return rgb


def colorize_labels(x: np.ndarray) -> np.ndarray:
  """(H, W) or (H, W, 1) class ids -> (H, W, 3) uint8 via the VOC palette."""
  x = np.asarray(x)
  if x.ndim == 3:
    x = x[..., 0]
  return voc_palette()[np.clip(x.astype(np.int64), 0, 255)]


def acc_zeros() -> jax.Array:
  """An empty ``[hi, lo]`` running sum for `acc_add`."""
  return jnp.zeros((2,), jnp.float32)


def acc_add(total: jax.Array, x: jax.Array) -> jax.Array:
  """Adds ``x`` to a float32 ``[hi, lo]`` pair with Knuth's TwoSum.

  Keeps a dataset-long running sum accurate to ~float64 on devices without
  float64; ``merge_stats`` (plain addition of both words) stays valid.
  """
  hi, lo = total[0], total[1]
  s = hi + x
  b = s - hi
  err = (hi - (s - b)) + (x - b)
  return jnp.stack([s, lo + err])


def acc_value(total: Any) -> float:
  """The float64 value of an `acc_add` pair."""
  t = np.asarray(total, np.float64)
  return float(t[0] + t[1])


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClassificationTask(base.Task):
  """Per-pixel classes (255 = ignore): CE loss, argmax, pooled-IoU mIoU.

  semseg and human_parts differ only in name and in what feeds their labels;
  each task file subclasses this as its ``Task`` and sets ``name``.
  """

  def __post_init__(self):
    super().__post_init__()
    require_num_classes(self)

  @property
  def metric_directions(self) -> Mapping[str, bool]:
    """mIoU first; the MTAN protocol also reports pixel accuracy."""
    if self.protocol == "mtan":
      return {"mIoU": True, "pix_acc": True}
    return {"mIoU": True}

  @property
  def num_outputs(self) -> int:
    return self.num_classes

  @property
  def label_spec(self) -> base.LabelSpec:
    """uint8 class ids < num_classes, 255 = ignore, stored as PNG."""
    return base.LabelSpec(value_range=(0, self.num_classes - 1),
                          extra_values=(base.IGNORE,))

  def loss(self, pred: jax.Array, label: jax.Array) -> jax.Array:
    return masked_cross_entropy(pred, label)

  def postprocess(self, pred: jax.Array) -> jax.Array:
    """(B, H, W, K) logits -> (B, H, W, 1) int32 class ids."""
    return jnp.argmax(pred, axis=-1, keepdims=True).astype(jnp.int32)

  def metric_init(self) -> dict[str, jax.Array]:
    k = self.num_classes
    return {"confusion": jnp.zeros((k, k), jnp.int32)}

  def metric_update(self, stats, pred, label, valid):
    confusion = confusion_update(
        stats["confusion"], self.postprocess(pred), label, valid)
    return {"confusion": confusion}

  def metric_compute(self, stats) -> dict[str, float]:
    if self.protocol == "mtan":
      return mtan_scores(stats["confusion"])
    return {"mIoU": float(np.mean(class_iou(stats["confusion"])))}

  def colorize(self, x: np.ndarray) -> np.ndarray:
    return colorize_labels(x)
