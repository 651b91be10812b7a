"""Saliency: InvPT's balanced CE on a 2-channel head and two metric protocols.

Loss: prismformore/Multi-Task-Transformer (commit 870c6be1)
InvPT/losses/loss_functions.py CrossEntropyLoss(balanced=True): w_pos =
#neg / #valid over the batch, class weights [1 - w_pos, w_pos], sum / n_valid.
The reference asserts on an all-ignored batch; here w_pos uses max(n_valid, 1)
so that batch gives loss 0 and zero gradient, like the unbalanced CE.
Post-processing: InvPT/utils/utils.py get_output = 255 * softmax[..., 1].

``loss_type="hed_bce"`` is MT-CP's saliency loss (Klodivio355/MT-CP@08c068e
losses/loss_functions.py ``BalancedCrossEntropyLoss``, default size_average):
a 1-channel head, y = label >= 0.5 (no ignore: a 255 pixel counts as
positive), w = #negatives / #pixels of the batch, loss = (w * sum y *
softplus(-x) + (1 - w) * sum (1 - y) * softplus(x)) / #pixels; the
prediction is 255 * sigmoid(x).

Metrics (methods.md d.5):
* "invpt": InvPT/evaluation/eval_sal.py SaliencyMeter(threshold_step=0.05,
  beta_squared=0.3) including its second sigmoid on p/255; counts pooled over
  valid pixels; maxF.
* "mtl": SimonVandenhende/Multi-Task-Learning-PyTorch (commit ed3d9ac1)
  evaluation/eval_sal.py eval_sal (the offline path): 255 * prob truncated to
  uint8 as the PNG stores it, read back as float32 / 255, strict > against
  float64 linspace(0.2, 0.9, 15); per-image Jaccard / precision / recall
  averaged over images; F = 2PR / (P + R) of the averages; mIoU and maxF are
  maxima over thresholds. The reference has no ignore label (it scores the
  unpadded image); here 255 pixels (padding) are left out, i.e. cropped.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mtdense_jax.tasks import base
from mtdense_jax.tasks import common

# torch.arange(0.05, 1, 0.05) as torch (2.13, CPU) evaluates it in float32;
# its 12th value is 0.59999996, not float32(0.6).
INVPT_THRESHOLDS = np.array(
    [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.59999996,
     0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95], np.float32)
INVPT_BETA_SQUARED = 0.3
MTL_THRESHOLDS = np.linspace(0.2, 0.9, 15)


def _float32_below(t: np.ndarray) -> np.ndarray:
  """Largest float32 <= t: for float32 x, x > t (float64) iff x > this."""
  t32 = t.astype(np.float32)
  return np.where(t32 > t, np.nextafter(t32, np.float32(-np.inf)), t32)


# Exact float64 comparisons without x64: thresholds for float32 inputs, and
# the smallest uint8 k with float32(k) / 255 > t for PNG inputs.
_MTL_THRESHOLDS_F32 = _float32_below(MTL_THRESHOLDS)
_U8_AS_F32 = np.arange(256, dtype=np.float32) / np.float32(255)
MTL_U8_MIN = np.array(
    [np.argmax(np.append(_U8_AS_F32 > t, True)) for t in MTL_THRESHOLDS],
    np.int32)

LOSSES = ("balanced_ce", "hed_bce")

_DIRECTIONS = {
    "invpt": {"maxF": True},
    "mtl": {"mIoU": True, "maxF": True},
}


def positive_weight(label: jax.Array) -> jax.Array:
  """w_pos = #negatives / max(#valid, 1) over the whole batch."""
  lab = label[..., 0]
  ok = lab != base.IGNORE
  n_neg = jnp.sum(ok & (lab == 0))
  return n_neg / jnp.maximum(jnp.sum(ok), 1).astype(jnp.float32)


def saliency_255(pred: jax.Array) -> jax.Array:
  """(B, H, W, 2) logits -> (B, H, W, 1) float32 255 * P(salient).

  A 1-channel head (``loss_type="hed_bce"``) gives 255 * sigmoid.
  """
  pred = pred.astype(jnp.float32)
  if pred.shape[-1] == 1:
    return 255.0 * jax.nn.sigmoid(pred)
  prob = jax.nn.softmax(pred, axis=-1)[..., 1:2]
  return 255.0 * prob


def hed_balanced_bce(logits: jax.Array, label: jax.Array) -> jax.Array:
  """MT-CP's BalancedCrossEntropyLoss (module docstring), no ignore."""
  x = logits.astype(jnp.float32)
  y = (label.astype(jnp.float32) >= 0.5).astype(jnp.float32)
  n = jnp.asarray(y.size, jnp.float32)
  w = jnp.sum(1.0 - y) / n
  pos = jnp.sum(y * jax.nn.softplus(-x))
  neg = jnp.sum((1.0 - y) * jax.nn.softplus(x))
  return (w * pos + (1.0 - w) * neg) / n


def png_quantize(sal255: jax.Array) -> jax.Array:
  """What the offline pipeline stores: astype(uint8) truncates."""
  return jnp.clip(sal255, 0.0, 255.0).astype(jnp.uint8)


def invpt_stats(sal255: jax.Array, label: jax.Array,
                valid: jax.Array | None) -> dict[str, jax.Array]:
  """Pooled TP / predicted / actual positives per threshold (InvPT meter)."""
  p = jax.nn.sigmoid(sal255[..., 0].astype(jnp.float32) / 255.0)
  ok = base.valid_pixels(label, valid)
  gt = (label[..., 0] != 0) & ok
  pos = (p[None] >= jnp.asarray(INVPT_THRESHOLDS)[:, None, None, None]) & ok
  return {
      "tp": jnp.sum(pos & gt, axis=(1, 2, 3), dtype=jnp.int32),
      "pred_pos": jnp.sum(pos, axis=(1, 2, 3), dtype=jnp.int32),
      "gt_pos": jnp.sum(gt, dtype=jnp.int32),
  }


def _mtl_stats(pos: jax.Array, label: jax.Array,
               valid: jax.Array | None) -> dict[str, jax.Array]:
  """Per-image Jaccard / precision / recall summed over valid images.

  Args:
    pos: (T, B, H, W) bool predicted-salient masks, one per threshold.
    label: (B, H, W, 1) {0, 1}, 255 = left out.
    valid: (B,) bool, False for padding examples; None = all valid.
  """
  ok = base.valid_pixels(label)
  gt = (label[..., 0] != 0) & ok
  pos = pos & ok
  tp = jnp.sum(pos & gt, axis=(2, 3)).astype(jnp.float32)
  fp = jnp.sum(pos & ~gt, axis=(2, 3)).astype(jnp.float32)
  fn = jnp.sum(~pos & gt, axis=(2, 3)).astype(jnp.float32)
  union = tp + fp + fn
  # Jaccard is 1 when gt and mask are both empty; the 1e-12 of P and R only
  # turns 0/0 into 0.
  jac = jnp.where(union > 0, tp / jnp.maximum(union, 1.0), 1.0)
  prec = jnp.where(tp + fp > 0, tp / jnp.maximum(tp + fp, 1.0), 0.0)
  rec = jnp.where(tp + fn > 0, tp / jnp.maximum(tp + fn, 1.0), 0.0)
  w = (jnp.ones(label.shape[0], bool) if valid is None else valid)
  w = w.astype(jnp.float32)
  return {
      "jaccard": jnp.sum(jac * w, axis=1),
      "precision": jnp.sum(prec * w, axis=1),
      "recall": jnp.sum(rec * w, axis=1),
      "images": jnp.sum(w),
  }


def mtl_stats_u8(sal_u8: jax.Array, label: jax.Array,
                 valid: jax.Array | None) -> dict[str, jax.Array]:
  """MTL totals from the stored uint8 map (offline eval_sal, PNG quirk)."""
  kmin = jnp.asarray(MTL_U8_MIN)[:, None, None, None]
  pos = sal_u8[None, ..., 0].astype(jnp.int32) >= kmin
  return _mtl_stats(pos, label, valid)


def mtl_stats_float(sal255: jax.Array, label: jax.Array,
                    valid: jax.Array | None) -> dict[str, jax.Array]:
  """MTL totals from an unquantised 255-scaled map (the online MTL meter)."""
  p = sal255[..., 0].astype(jnp.float32) / 255.0
  pos = p[None] > jnp.asarray(_MTL_THRESHOLDS_F32)[:, None, None, None]
  return _mtl_stats(pos, label, valid)


def mtl_curves(stats) -> dict[str, np.ndarray]:
  """Per-threshold mIoUs, mPrec, mRec and F (float64), as eval_sal."""
  n = max(float(stats["images"]), 1.0)
  m_iou = np.asarray(stats["jaccard"], np.float64) / n
  m_prec = np.asarray(stats["precision"], np.float64) / n
  m_rec = np.asarray(stats["recall"], np.float64) / n
  f = 2 * m_prec * m_rec / (m_prec + m_rec + 1e-12)
  return {"mIoUs": m_iou, "mPrec": m_prec, "mRec": m_rec, "F": f}


def invpt_fscores(stats) -> np.ndarray:
  """Per-threshold F_beta (beta^2 = 0.3), NaN (0/0) -> 0, as the meter."""
  tp = np.asarray(stats["tp"], np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    prec = tp / np.asarray(stats["pred_pos"], np.float64)
    rec = tp / np.asarray(stats["gt_pos"], np.float64)
    b2 = INVPT_BETA_SQUARED
    f = (1 + b2) * prec * rec / (b2 * prec + rec)
  return np.nan_to_num(f, nan=0.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Task(base.Task):
  """Binary salient-object map; label {0, 1}, 255 = ignore.

  Attributes:
    loss_type: "balanced_ce" (InvPT, 2-channel head) or "hed_bce" (MT-CP,
      1-channel head); see the module docstring.
  """

  name: ClassVar[str] = "sal"

  loss_type: str = "balanced_ce"

  def __post_init__(self):
    super().__post_init__()
    if self.loss_type not in LOSSES:
      raise ValueError(f"Task 'sal': unknown loss_type {self.loss_type!r}; "
                       f"expected one of {LOSSES}.")

  @property
  def metric_directions(self) -> Mapping[str, bool]:
    """mtl reports mIoU first: MTL-PyTorch's delta_m uses saliency mIoU."""
    return _DIRECTIONS[self.protocol]

  @property
  def num_outputs(self) -> int:
    return 1 if self.loss_type == "hed_bce" else 2

  @property
  def label_spec(self) -> base.LabelSpec:
    """A uint8 {0, 1} map (255 = ignore), stored as PNG."""
    return base.LabelSpec(value_range=(0, 1), extra_values=(base.IGNORE,))

  def loss(self, pred: jax.Array, label: jax.Array) -> jax.Array:
    if self.loss_type == "hed_bce":
      return hed_balanced_bce(pred, label)
    w_pos = positive_weight(label)
    weights = jnp.stack([1.0 - w_pos, w_pos])
    return common.masked_cross_entropy(pred, label, class_weight=weights)

  def postprocess(self, pred: jax.Array) -> jax.Array:
    return saliency_255(pred)

  def metric_init(self):
    if self.protocol == "invpt":
      n = len(INVPT_THRESHOLDS)
      return {"tp": jnp.zeros(n, jnp.int32),
              "pred_pos": jnp.zeros(n, jnp.int32),
              "gt_pos": jnp.zeros((), jnp.int32)}
    n = len(MTL_THRESHOLDS)
    return {"jaccard": jnp.zeros(n, jnp.float32),
            "precision": jnp.zeros(n, jnp.float32),
            "recall": jnp.zeros(n, jnp.float32),
            "images": jnp.zeros((), jnp.float32)}

  def metric_update(self, stats, pred, label, valid):
    sal255 = saliency_255(pred)
    if self.protocol == "invpt":
      new = invpt_stats(sal255, label, valid)
    else:
      new = mtl_stats_u8(png_quantize(sal255), label, valid)
    return base.merge_stats(stats, new)

  def metric_compute(self, stats) -> dict[str, float]:
    if self.protocol == "invpt":
      return {"maxF": float(np.max(invpt_fscores(stats)))}
    curves = mtl_curves(stats)
    return {"mIoU": float(np.max(curves["mIoUs"])),
            "maxF": float(np.max(curves["F"]))}

  def colorize(self, x: np.ndarray) -> np.ndarray:
    """Grey RGB. Floats are 255-scaled maps; integers are {0, 1} labels
    (255 = ignore, shown mid-grey)."""
    x = np.asarray(x)
    if x.ndim == 3:
      x = x[..., 0]
    if np.issubdtype(x.dtype, np.floating):
      grey = np.clip(np.nan_to_num(x), 0, 255).astype(np.uint8)
    else:
      grey = np.where(x == base.IGNORE, 128, np.where(x != 0, 255, 0))
      grey = grey.astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
