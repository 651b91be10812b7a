"""Surface normals: normalised L1 loss and angular-error metrics.

Ports (facts only, no code copied):
* loss: prismformore/Multi-Task-Transformer@870c6be
  InvPT/losses/loss_functions.py ``L1Loss(normalize=True)``.
* ``protocol="invpt"``: InvPT/evaluation/eval_normals.py ``NormalsMeter``:
  re-normalised float prediction and gt, angle 2*atan2(|p-g|, |p+g|). The
  float (n+1)*255/2 round trip of ``get_output`` is skipped: re-normalising
  undoes it up to float32 rounding. InvPT only reports the mean; the other
  keys use the same angles (MTL-PyTorch's online ``NormalsMeter`` sees the
  same floats: its mean and thresholds match these; its "rmse" is a bug that
  returns the mean and is not reproduced).
* ``protocol="mtl"``: SimonVandenhende/Multi-Task-Learning-PyTorch@ed3d9ac
  evaluation/eval_normals.py ``eval_normals`` on the uint8 PNGs that
  ``save_model_predictions`` writes: (n+1)*255/2 truncated to uint8, read back
  as 2p/255-1, re-normalised (norm + 1e-12), angle acos(clip(p.g)).
  Percentages, as the reference. XLA's float32 norm can differ from
  PyTorch's by an ulp (FMA contraction), which flips the truncation where
  (n+1)*255/2 lands on an integer: 1 channel in 23040 in the golden, far
  below the metric tolerance.

* ``protocol="mtan"``: Dimitri-Sinodinos/CTAL@b2d3bb9
  code_cnn/evaluation/eval_normals.py ``NormalsMeter`` (MTAN style,
  methods.md b.5): the raw head output divided by its norm (no uint8 round
  trip), the gt as stored (not re-normalised), angle acos(clip(p.g)); valid
  = channel sum != 0 on the gt. Reports mean (degrees) and the FRACTIONS
  (not percents) below 11.25, 22.5 and 30 degrees; no median or rmse.

Loss options (``loss_type=``): "l1" (default, InvPT above), "mse"
(Klodivio355/MT-CP@08c068e losses/loss_functions.py ``NormalsLoss`` with its
defaults norm=2, normalize=False: squared error of the raw output, summed
over non-ignored elements / their count, channels counted), "cosine" (CTAL's
MTAN-style loss: 1 - sum over valid pixels of <p / |p|, g> / #valid, valid =
not ignored and channel sum != 0), "l1_raw" (sarashoouri/EfficientMTL@6946429
Codes/Pascal_Train_VIT/normal/Step1.py ``L1Loss(normalize=False)``: the raw
output, sum of |p - g| over valid pixels and channels / #valid pixels).

Every statistic pools all valid pixels of the dataset. The median is not a
sum, so it comes from a mergeable histogram: bins of 2**-11 deg (~4.9e-4 deg)
over [0, 180] holding the count and the sum of in-bin offsets. An order
statistic alone in its bin is recovered exactly (offsets are exact in
float32 because bin edges are dyadic); in a shared bin it is interpolated
around the bin mean, so the error is below one bin width (relative error
< 2e-5 for a median above 25 deg, typically far less).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mtdense_jax.tasks import base
from mtdense_jax.tasks import common

BIN_DEG = 2.0**-11  # median histogram resolution, degrees
NUM_BINS = int(180 / BIN_DEG)
THRESHOLDS = (11.25, 22.5, 30.0)
_THRESHOLD_KEYS = ("11.25", "22.5", "30")
LOSSES = ("l1", "mse", "cosine", "l1_raw")
# Stored unit vectors may exceed 1 by rounding; anything beyond is wrong.
_UNIT_SLACK = 1e-3


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """``F.normalize(x, dim=-1)``: x / max(||x||, eps), in value.

  Where ||x|| <= eps (a ReLU head can emit an exact zero vector) the
  direction is undefined: the value is the reference's x / eps, but no
  gradient flows there. PyTorch's gradient at such a pixel is ~1/eps = 1e12,
  which with global-norm clipping would freeze every other parameter.
  """
  sq = jnp.sum(x * x, axis=-1, keepdims=True)
  ok = sq > eps * eps
  unit = x * jax.lax.rsqrt(jnp.where(ok, sq, 1.0))
  return jnp.where(ok, unit, jax.lax.stop_gradient(x / eps))


def _invpt_angles(pred: jax.Array, gt: jax.Array) -> jax.Array:
  """InvPT meter: both re-normalised (zero norm -> 0), stable atan2 form."""
  def unit(v):
    norm = jnp.sqrt(jnp.sum(v * v, axis=-1, keepdims=True))
    return jnp.where(norm == 0, 0.0, v / jnp.where(norm == 0, 1.0, norm))
  p, g = unit(pred), unit(gt)
  num = jnp.sqrt(jnp.sum(jnp.square(p - g), axis=-1))
  den = jnp.sqrt(jnp.sum(jnp.square(p + g), axis=-1))
  return jnp.rad2deg(2.0 * jnp.arctan2(num, den))


def quantize_u8(unit: jax.Array) -> jax.Array:
  """The PNG the MTL code saves: ((n+1)*255/2).astype(uint8) (truncation)."""
  return jnp.floor(jnp.clip((unit + 1.0) * 255.0 / 2.0, 0.0, 255.0))


def _mtl_angles(pred: jax.Array, gt: jax.Array) -> jax.Array:
  """Offline MTL ``eval_normals`` on the uint8 round trip of ``pred``."""
  def unit(v):
    return v / (jnp.sqrt(jnp.sum(v * v, axis=-1, keepdims=True)) + 1e-12)
  p = unit(2.0 * quantize_u8(l2_normalize(pred)) / 255.0 - 1.0)
  g = unit(gt)
  cos = jnp.clip(jnp.sum(p * g, axis=-1), -1.0, 1.0)
  return jnp.rad2deg(jnp.arccos(cos))


def _mtan_angles(pred: jax.Array, gt: jax.Array) -> jax.Array:
  """CTAL CNN meter: p / |p| against the stored gt, acos of the clipped dot."""
  cos = jnp.clip(jnp.sum(l2_normalize(pred) * gt, axis=-1), -1.0, 1.0)
  return jnp.rad2deg(jnp.arccos(cos))


def _histogram(angle: jax.Array, ok: jax.Array):
  """Per-bin count and sum of (angle - bin edge) over the ``ok`` pixels."""
  idx = jnp.clip(jnp.floor(angle / BIN_DEG), 0, NUM_BINS - 1)
  offset = angle - idx * BIN_DEG  # exact: dyadic edges, Sterbenz
  idx = jnp.where(ok, idx.astype(jnp.int32), 0).ravel()
  count = jnp.zeros((NUM_BINS,), jnp.int32).at[idx].add(
      ok.ravel().astype(jnp.int32))
  offs = jnp.zeros((NUM_BINS,), jnp.float32).at[idx].add(
      jnp.where(ok, offset, 0.0).ravel())
  return count, offs


def _order_statistic(count: np.ndarray, offs: np.ndarray, k: int) -> float:
  """k-th smallest angle (0-based) from the histogram (see module doc)."""
  cum = np.cumsum(count, dtype=np.int64)
  b = int(np.searchsorted(cum, k, side="right"))
  c = int(count[b])
  j = k - (int(cum[b]) - c)  # rank inside the bin
  mean_off = float(offs[b]) / c
  off = mean_off + (j - (c - 1) / 2.0) * BIN_DEG / c
  return b * BIN_DEG + float(np.clip(off, 0.0, BIN_DEG))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Task(base.Task):
  """Unit surface normals, 3-channel head; label (H, W, 3), 255 = invalid.

  Attributes:
    loss_type: one of LOSSES (see the module docstring).
  """

  name: ClassVar[str] = "normals"
  label_channels: ClassVar[int] = 3
  label_dtype: ClassVar[str] = "float32"
  protocols: ClassVar[tuple[str, ...]] = ("invpt", "mtl", "mtan")

  loss_type: str = "l1"

  def __post_init__(self):
    super().__post_init__()
    if self.loss_type not in LOSSES:
      raise ValueError(f"Task 'normals': unknown loss_type "
                       f"{self.loss_type!r}; expected one of {LOSSES}.")

  @property
  def metric_directions(self) -> Mapping[str, bool]:
    """The mean angle first; "mtan" has no median or rmse."""
    if self.protocol == "mtan":
      return {"mean": False, "11.25": True, "22.5": True, "30": True}
    return {"mean": False, "median": False, "rmse": False,
            "11.25": True, "22.5": True, "30": True}

  @property
  def num_outputs(self) -> int:
    return 3

  @property
  def label_spec(self) -> base.LabelSpec:
    """float32 unit vectors (stored 0 = none), zlib; x flips sign."""
    s = 1.0 + _UNIT_SLACK
    return base.LabelSpec(channels=3, dtype="float32", flip_negate=(0,),
                          encoding="zlib", value_range=(-s, s))

  def ignore_regions(self, label: np.ndarray) -> np.ndarray:
    """All-zero vectors (no normal) -> 255 in all three channels."""
    zero = (label[..., 0] == 0) & (label[..., 1] == 0) & (label[..., 2] == 0)
    if zero.any():
      label = label.copy()
      label[zero] = self.fill
    return label

  def loss(self, pred: jax.Array, label: jax.Array) -> jax.Array:
    """The configured loss (module docstring); 0 when nothing is valid."""
    pred = pred.astype(jnp.float32)
    label = label.astype(jnp.float32)
    if self.loss_type == "mse":
      ok = label != base.IGNORE
      err = jnp.where(ok, jnp.square(pred - label), 0.0)
      return jnp.sum(err) / jnp.maximum(jnp.sum(ok), 1).astype(jnp.float32)
    out = pred if self.loss_type == "l1_raw" else l2_normalize(pred)
    ok = base.valid_pixels(label)
    if self.loss_type == "cosine":
      ok &= jnp.sum(jnp.where(ok[..., None], label, 0.0), axis=-1) != 0
      dot = jnp.sum(jnp.where(ok[..., None], out * label, 0.0))
      return 1.0 - dot / jnp.maximum(jnp.sum(ok), 1).astype(jnp.float32)
    err = jnp.where(ok[..., None], jnp.abs(out - label), 0.0)
    return jnp.sum(err) / jnp.maximum(jnp.sum(ok), 1).astype(jnp.float32)

  def postprocess(self, pred: jax.Array) -> jax.Array:
    """Unit vectors (InvPT ``get_output`` before its (n+1)*255/2 mapping)."""
    return l2_normalize(pred.astype(jnp.float32))

  def metric_init(self) -> dict[str, jax.Array]:
    z2 = common.acc_zeros()
    return {"n": jnp.zeros((), jnp.int32), "sum": z2, "sum_sq": z2,
            "below": jnp.zeros((len(THRESHOLDS),), jnp.int32),
            "hist_count": jnp.zeros((NUM_BINS,), jnp.int32),
            "hist_offset": jnp.zeros((NUM_BINS,), jnp.float32)}

  def metric_update(self, stats, pred, label, valid):
    pred = pred.astype(jnp.float32)
    gt = label.astype(jnp.float32)
    ok = base.valid_pixels(gt, valid)
    gt = jnp.where(ok[..., None], gt, 0.0)
    if self.protocol == "mtl":
      ok &= jnp.sum(gt * gt, axis=-1) != 0  # offline: |gt| = 0 is invalid
      angle = _mtl_angles(pred, gt)
    elif self.protocol == "mtan":
      ok &= jnp.sum(gt, axis=-1) != 0  # the reference's validity rule
      angle = _mtan_angles(pred, gt)
    else:
      angle = _invpt_angles(pred, gt)
    angle = jnp.where(ok, angle, 0.0)
    count, offs = _histogram(angle, ok)
    below = jnp.stack([jnp.sum(ok & (angle < t), dtype=jnp.int32)
                       for t in THRESHOLDS])
    return {"n": stats["n"] + jnp.sum(ok, dtype=jnp.int32),
            "sum": common.acc_add(stats["sum"], jnp.sum(angle)),
            "sum_sq": common.acc_add(stats["sum_sq"], jnp.sum(angle * angle)),
            "below": stats["below"] + below,
            "hist_count": stats["hist_count"] + count,
            "hist_offset": stats["hist_offset"] + offs}

  def metric_compute(self, stats) -> dict[str, float]:
    n = int(stats["n"])
    if n == 0:
      return {k: float("nan") for k in self.metric_directions}
    below = np.asarray(stats["below"], np.float64)
    if self.protocol == "mtan":
      out = {"mean": common.acc_value(stats["sum"]) / n}
      out.update({k: float(c) / n for k, c in zip(_THRESHOLD_KEYS, below)})
      return out
    count = np.asarray(stats["hist_count"], np.int64)
    offs = np.asarray(stats["hist_offset"], np.float64)
    # numpy's median: the middle value, or the mean of the two middle ones.
    lo = _order_statistic(count, offs, (n - 1) // 2)
    hi = _order_statistic(count, offs, n // 2)
    out = {"mean": common.acc_value(stats["sum"]) / n,
           "median": 0.5 * (lo + hi),
           "rmse": float(np.sqrt(common.acc_value(stats["sum_sq"]) / n))}
    for key, cnt in zip(_THRESHOLD_KEYS, below):
      out[key] = 100.0 * float(cnt) / n
    return out

  def colorize(self, x: np.ndarray) -> np.ndarray:
    """Unit normals (H, W, 3) -> (n+1)/2*255 RGB; invalid (255) -> black."""
    x = np.asarray(x, np.float32)
    ok = np.all(x != base.IGNORE, axis=-1, keepdims=True)
    rgb = np.clip((x + 1.0) / 2.0 * 255.0, 0.0, 255.0).astype(np.uint8)
    return np.where(ok, rgb, 0).astype(np.uint8)
