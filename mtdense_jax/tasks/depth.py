"""Monocular depth (NYUD): L1 loss and pooled RMSE / log-RMSE metrics.

Ports (facts only, no code copied):
* loss: prismformore/Multi-Task-Transformer@870c6be
  InvPT/losses/loss_functions.py ``L1Loss`` (sum over valid / max(n, 1)).
* ``protocol="invpt"``: InvPT/evaluation/eval_depth.py ``DepthMeter`` fed
  with ``get_output`` (clamp >= 0); adds abs_rel and sq_rel.
* ``protocol="mtl"``: SimonVandenhende/Multi-Task-Learning-PyTorch@ed3d9ac
  evaluation/eval_depth.py ``eval_depth`` / ``DepthMeter``.
* ``max_depth``: Klodivio355/MT-CP@08c068e evaluation/eval_depth.py, which
  silently drops gt >= 65535 * 1e-4 = 6.5535 m (pass ``max_depth=6.5535``).
  The metrics then carry the range in their names (``rmse_lt6.5535m``...):
  they are not comparable with full-range ones.
* ``loss_max_depth``: MT-CP losses/loss_functions.py ``DepthLoss``, whose L1
  also drops gt >= 6.5535 m (pass ``loss_max_depth=6.5535``).
* ``invalid_value``: InvPT marks missing depth (stored 0) and padding 255;
  TaskPrompter (same repository, TaskPrompter/data/transforms.py and
  losses/loss_functions.py ``L1Loss(ignore_index=-1)``) writes -1 there, so
  a label of 255 counts as valid depth (pass ``invalid_value=-1``).

* ``protocol="mtan"``: Dimitri-Sinodinos/CTAL@b2d3bb9
  code_cnn/evaluation/eval_depth.py ``DepthMeter`` (MTAN style, methods.md
  b.5): the same pooled mask and clamp, reporting the reference's keys
  ``abs`` (mean |gt - pred|), ``rel`` (mean |gt - pred| / gt), ``rmse`` and
  ``log_rmse``. Its valid mask is gt != 0 on the raw label; our pipeline
  turns stored 0 into the invalid value, which is skipped as well. CTAL's
  CNN loss (L1 over gt != 0, summed / #valid) is this task's default loss
  on those labels.

All protocols pool squared errors over every valid pixel of the whole set
(not a mean of per-image RMSEs) and clamp predictions <= 0 to 1e-9, which
dominates log_rmse when the network predicts non-positive depth
(../shared/notes/methods.md d.3). They are numerically the same; "invpt"
names the InvPT meter whose extra keys are reported by both.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mtdense_jax import viz
from mtdense_jax.tasks import base
from mtdense_jax.tasks import common

_EPS = 1e-9  # what the references clamp non-positive predictions to
_VIS_MAX_DEPTH = 10.0  # NYUD range: fixed so prediction and label compare


@dataclasses.dataclass(frozen=True, kw_only=True)
class Task(base.Task):
  """Depth in metres, 1-channel head.

  Attributes:
    max_depth: if set, pixels with gt >= max_depth are excluded from the
      metrics (MT-CP: 6.5535).
    loss_max_depth: if set, pixels with gt >= it are excluded from the loss
      (MT-CP: 6.5535).
    invalid_value: the label value of missing depth and padding (InvPT 255,
      TaskPrompter -1); the loss and metrics skip it.
    max_stored_depth: builders refuse stored depth above this (metres).
  """

  name: ClassVar[str] = "depth"
  label_channels: ClassVar[int] = 1
  label_dtype: ClassVar[str] = "float32"
  protocols: ClassVar[tuple[str, ...]] = ("invpt", "mtl", "mtan")

  max_depth: float | None = None
  loss_max_depth: float | None = None
  invalid_value: float = float(base.IGNORE)
  max_stored_depth: float = 1000.0

  @property
  def metric_suffix(self) -> str:
    """"" on the full range; "_lt<max_depth>m" when gt >= max_depth is
    dropped (MT-CP's protocol), so a truncated-range RMSE is never printed,
    logged or compared (Delta_m, keep-best) under the plain name."""
    return "" if self.max_depth is None else f"_lt{self.max_depth:g}m"

  @property
  def metric_directions(self) -> Mapping[str, bool]:
    """All lower-is-better; the first is the primary metric."""
    keys = (("abs", "rel", "rmse", "log_rmse") if self.protocol == "mtan"
            else ("rmse", "log_rmse", "abs_rel", "sq_rel"))
    return {k + self.metric_suffix: False for k in keys}

  @property
  def num_outputs(self) -> int:
    return 1

  @property
  def label_spec(self) -> base.LabelSpec:
    """float32 metres (stored 0 = missing), zlib; scaled with the image."""
    return base.LabelSpec(dtype="float32", fill=self.invalid_value,
                          encoding="zlib",
                          value_range=(0.0, self.max_stored_depth))

  def rescale_label(self, label: np.ndarray, factor: float) -> np.ndarray:
    """Enlarged by `factor` = seen from 1/factor as far; fill stays."""
    fill = self.fill
    return np.where(label == fill, label, label / factor).astype(label.dtype)

  def ignore_regions(self, label: np.ndarray) -> np.ndarray:
    """Stored 0 (no measurement) -> the invalid value."""
    return np.where(label == 0, self.fill, label)

  def loss(self, pred: jax.Array, label: jax.Array) -> jax.Array:
    """L1 over valid pixels / max(n, 1); the prediction is not clamped."""
    pred = pred.astype(jnp.float32)
    label = label.astype(jnp.float32)
    ok = label != self.invalid_value
    if self.loss_max_depth is not None:
      ok &= label < self.loss_max_depth
    err = jnp.where(ok, jnp.abs(pred - label), 0.0)
    return jnp.sum(err) / jnp.maximum(jnp.sum(ok), 1).astype(jnp.float32)

  def postprocess(self, pred: jax.Array) -> jax.Array:
    """InvPT ``get_output``: depth clamped to >= 0."""
    return jnp.maximum(pred.astype(jnp.float32), 0.0)

  def metric_init(self) -> dict[str, jax.Array]:
    z2 = common.acc_zeros()
    return {"n": jnp.zeros((), jnp.int32), "sq": z2, "log_sq": z2,
            "abs_rel": z2, "sq_rel": z2, "abs": z2}

  def metric_update(self, stats, pred, label, valid):
    pred = self.postprocess(pred)[..., 0]
    gt = label.astype(jnp.float32)[..., 0]
    ok = (gt != self.invalid_value) & (gt > 0) & valid[:, None, None]
    if self.max_depth is not None:
      ok &= gt < self.max_depth
    pred = jnp.where(pred <= 0, _EPS, pred)
    gt = jnp.where(ok, gt, 1.0)  # keeps log / division finite off-mask
    diff = gt - pred
    terms = {
        "sq": diff * diff,
        "log_sq": jnp.square(jnp.log(gt) - jnp.log(pred)),
        "abs_rel": jnp.abs(diff) / gt,
        "sq_rel": diff * diff / gt,
        "abs": jnp.abs(diff),
    }
    out = {"n": stats["n"] + jnp.sum(ok, dtype=jnp.int32)}
    for k, v in terms.items():
      out[k] = common.acc_add(stats[k], jnp.sum(jnp.where(ok, v, 0.0)))
    return out

  def metric_compute(self, stats) -> dict[str, float]:
    n = int(stats["n"])
    if n == 0:
      return {k: float("nan") for k in self.metric_directions}
    mean = {k: common.acc_value(stats[k]) / n
            for k in ("sq", "log_sq", "abs_rel", "sq_rel", "abs")}
    if self.protocol == "mtan":
      out = {"abs": mean["abs"], "rel": mean["abs_rel"],
             "rmse": float(np.sqrt(mean["sq"])),
             "log_rmse": float(np.sqrt(mean["log_sq"]))}
    else:
      out = {"rmse": float(np.sqrt(mean["sq"])),
             "log_rmse": float(np.sqrt(mean["log_sq"])),
             "abs_rel": mean["abs_rel"], "sq_rel": mean["sq_rel"]}
    return {k + self.metric_suffix: v for k, v in out.items()}

  # What the panels' colour bar shows (mtdense_jax/viz.py).
  units: ClassVar[str] = "m"
  vis_range: ClassVar[tuple[float, float]] = (0.0, _VIS_MAX_DEPTH)

  def colorize(self, x: np.ndarray) -> np.ndarray:
    """Depth (H, W, 1) -> the shared scalar map over [0, 10] m; invalid
    pixels (ignore value, <= 0) as viz's grey checkerboard."""
    d = np.asarray(x, np.float32)[..., 0]
    return viz.scalar_rgb(d, *self.vis_range,
                          valid=(d != self.invalid_value) & (d > 0))
