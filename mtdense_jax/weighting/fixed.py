"""Fixed per-task loss weights: total = sum_t w_t * L_t.

The InvPT recipe (prismformore/Multi-Task-Transformer @ 870c6be,
``InvPT/configs/*.yml`` ``loss_kwargs.loss_weights``, consumed by
``losses/loss_schemes.py: MultiTaskLoss``) weights NYUD semseg/depth/normals/
edge by 1/1/10/50 and PASCAL semseg/human_parts/sal/normals/edge by
1/2/5/10/50; the presets below carry those numbers.

For this scheme the fixed weights ARE ``base.Weighting.base_weights``: they
are applied once. Give them as ``weights`` (the config name), as
``base_weights``, or through ``preset``; ``weights`` overrides a preset
entry, and giving both ``weights`` and ``base_weights`` is an error (which
one would win is not obvious). Tasks not listed get 1.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

from mtdense_jax.weighting import base

INVPT_NYUD = {"semseg": 1.0, "depth": 1.0, "normals": 10.0, "edge": 50.0}
INVPT_PASCAL = {"semseg": 1.0, "human_parts": 2.0, "sal": 5.0,
                "normals": 10.0, "edge": 50.0}
PRESETS = {"invpt_nyud": INVPT_NYUD, "invpt_pascal": INVPT_PASCAL}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Weighting(base.Weighting):
  """Static weights; no params, no state."""

  weights: Mapping[str, float] = dataclasses.field(default_factory=dict)
  preset: str | None = None

  def __post_init__(self):
    if self.weights and self.base_weights:
      raise ValueError(
          "fixed weighting: give the weights once, as `weights` or as "
          "`base_weights` (they are the same multipliers here).")
    if self.preset is not None and self.preset not in PRESETS:
      raise ValueError(f"Unknown preset {self.preset!r}; one of "
                       f"{sorted(PRESETS)}")
    merged = dict(PRESETS.get(self.preset, {}))
    merged.update(self.base_weights or self.weights)
    # Frozen dataclass: store the resolved table as the base weights so that
    # `scaled` applies them exactly once.
    object.__setattr__(self, "base_weights",
                       {k: float(v) for k, v in merged.items()})

  def init(self, task_names: Sequence[str]) -> tuple[dict, dict]:
    del task_names
    return {}, {}

  def __call__(self, params: dict, state: dict, losses: base.Losses,
               step: jax.Array) -> tuple[jax.Array, dict, dict[str, jax.Array]]:
    del params, step
    scaled = self.scaled(losses)
    total = sum(scaled[t] for t in losses)
    weights = {t: jnp.asarray(self.base_weights.get(t, 1.0), jnp.float32)
               for t in losses}
    return total, state, weights
