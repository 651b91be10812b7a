"""Semantic segmentation: InvPT's CE loss and the pooled-IoU mIoU.

Loss: prismformore/Multi-Task-Transformer (commit 870c6be1)
InvPT/losses/loss_functions.py CrossEntropyLoss(ignore_index=255).
Post-processing: InvPT/utils/utils.py get_output (argmax).
Metric: InvPT/evaluation/eval_semseg.py SemsegMeter and
SimonVandenhende/Multi-Task-Learning-PyTorch (commit ed3d9ac1)
evaluation/eval_semseg.py (SemsegMeter, eval_semseg). Both protocols give the
same number on the same label map: tp/fp/fn pooled over every non-ignored
pixel, IoU_c = tp / max(tp + fp + fn, 1e-8), mean over ALL classes
(methods.md d.2). The offline path writes argmax as a uint8 PNG, which is
lossless for class ids < 256, so "mtl" needs nothing extra.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mtdense_jax.tasks import base
from mtdense_jax.tasks import common


@dataclasses.dataclass(frozen=True, kw_only=True)
class Task(base.Task):
  """Per-pixel classification into num_classes classes (255 = ignore)."""

  name: ClassVar[str] = "semseg"
  metric_directions: ClassVar[Mapping[str, bool]] = {"mIoU": True}

  def __post_init__(self):
    super().__post_init__()
    common.require_num_classes(self)

  @property
  def num_outputs(self) -> int:
    return self.num_classes

  def loss(self, pred: jax.Array, label: jax.Array) -> jax.Array:
    return common.masked_cross_entropy(pred, label)

  def postprocess(self, pred: jax.Array) -> jax.Array:
    """(B, H, W, K) logits -> (B, H, W, 1) int32 class ids."""
    return jnp.argmax(pred, axis=-1, keepdims=True).astype(jnp.int32)

  def metric_init(self) -> dict[str, jax.Array]:
    k = self.num_classes
    return {"confusion": jnp.zeros((k, k), jnp.int32)}

  def metric_update(self, stats, pred, label, valid):
    confusion = common.confusion_update(
        stats["confusion"], self.postprocess(pred), label, valid)
    return {"confusion": confusion}

  def metric_compute(self, stats) -> dict[str, float]:
    return {"mIoU": float(np.mean(common.class_iou(stats["confusion"])))}

  def colorize(self, x: np.ndarray) -> np.ndarray:
    return common.colorize_labels(x)
