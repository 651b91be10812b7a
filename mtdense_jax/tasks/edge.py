"""Boundary detection: balanced BCE loss and InvPT's online edge "loss" meter.

Ports (facts only, no code copied), prismformore/Multi-Task-Transformer@870c6be:
* loss: InvPT/losses/loss_functions.py ``BalancedBinaryCrossEntropyLoss``
  with ``pos_weight = p.edge_w = 0.95``: on non-ignored pixels,
  mean(w*y*softplus(-x) + (1-w)*(1-y)*softplus(x)). ``pos_weight=None`` is
  the HED-style w = #negatives / #valid of the batch. The reference returns
  NaN on a fully ignored batch (mean of nothing); we return 0 so one such
  batch cannot poison training.
* metric: InvPT/evaluation/eval_edge.py ``EdgeMeter``: the same loss applied
  to ``get_output`` / 255 = sigmoid(x), i.e. a *second* sigmoid inside the
  BCE-with-logits (reproduced: it is what InvPT logs and selects on), pooled
  over valid pixels (per-batch mean times pixel count). It is not odsF: the
  boundary benchmark (SEISM, ../shared/notes/methods.md d.6) is offline and
  adds ``odsF`` to the metrics dict, which delta_m then prefers.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mtdense_jax.tasks import base
from mtdense_jax.tasks import common


def balanced_bce_sum(logits: jax.Array, label: jax.Array, ok: jax.Array,
                     pos_weight: float | None) -> tuple[jax.Array, jax.Array]:
  """Sum over ``ok`` pixels of the balanced BCE terms, and their count."""
  y = jnp.where(ok, label, 0.0)
  n = jnp.sum(ok, dtype=jnp.int32)
  if pos_weight is None:  # HED-style: fraction of negatives in the batch
    w = jnp.sum(jnp.where(ok, 1.0 - y, 0.0)) / jnp.maximum(n, 1)
  else:
    w = pos_weight
  terms = (w * y * jax.nn.softplus(-logits)
           + (1.0 - w) * (1.0 - y) * jax.nn.softplus(logits))
  return jnp.sum(jnp.where(ok, terms, 0.0)), n


@dataclasses.dataclass(frozen=True, kw_only=True)
class Task(base.Task):
  """Edges, 1-channel head; label uint8 (H, W, 1) in {0, 1} (or soft).

  Attributes:
    pos_weight: w of the balanced BCE (InvPT ``edge_w``: 0.95 on both
      datasets); None for the per-batch HED weighting.
  """

  name: ClassVar[str] = "edge"
  label_channels: ClassVar[int] = 1
  label_dtype: ClassVar[str] = "uint8"
  metric_directions: ClassVar[Mapping[str, bool]] = {"loss": False}
  # Metrics produced by offline evaluators that delta_m prefers when present.
  delta_m_metrics: ClassVar[Mapping[str, bool]] = {"odsF": True}
  boundary_metric: ClassVar[bool] = True

  pos_weight: float | None = 0.95

  @property
  def num_outputs(self) -> int:
    return 1

  @property
  def label_spec(self) -> base.LabelSpec:
    """A uint8 {0, 1} map (255 = ignore), stored as PNG."""
    return base.LabelSpec(value_range=(0, 1), extra_values=(base.IGNORE,))

  def loss(self, pred: jax.Array, label: jax.Array) -> jax.Array:
    """Mean balanced BCE over non-ignored pixels; 0 if all are ignored."""
    label = label.astype(jnp.float32)
    total, n = balanced_bce_sum(pred.astype(jnp.float32), label,
                                label != base.IGNORE, self.pos_weight)
    return total / jnp.maximum(n, 1).astype(jnp.float32)

  def postprocess(self, pred: jax.Array) -> jax.Array:
    """Edge probability in [0, 1] (InvPT stores 255 * this)."""
    return jax.nn.sigmoid(pred.astype(jnp.float32))

  def metric_init(self) -> dict[str, jax.Array]:
    return {"loss": common.acc_zeros(),
            "n": jnp.zeros((), jnp.int32)}

  def metric_update(self, stats, pred, label, valid):
    label = label.astype(jnp.float32)
    ok = (label != base.IGNORE) & valid[:, None, None, None]
    # EdgeMeter feeds probabilities where the loss expects logits.
    total, n = balanced_bce_sum(self.postprocess(pred), label, ok,
                                self.pos_weight)
    return {"loss": common.acc_add(stats["loss"], total), "n": stats["n"] + n}

  def metric_compute(self, stats) -> dict[str, float]:
    n = int(stats["n"])
    return {"loss": common.acc_value(stats["loss"]) / n if n else float("nan")}

  def colorize(self, x: np.ndarray) -> np.ndarray:
    """Probability or label (H, W, 1) -> grayscale RGB; ignore (255) black."""
    x = np.asarray(x, np.float32)[..., 0]
    v = np.where(x == base.IGNORE, 0.0, np.clip(x, 0.0, 1.0))
    g = (v * 255.0 + 0.5).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=-1)
