"""Fixed per-task loss weights: total = sum_t w_t * L_t.

Recipes carry their numbers as config data (e.g. configs/nyud_invpt.py:
InvPT's ``loss_kwargs.loss_weights``, 1/1/10/50 for NYUD and 1/2/5/10/50 for
PASCAL-Context), so no task name lives here.

For this scheme the fixed weights ARE ``base.Weighting.base_weights``: they
are applied once. Give them as ``weights`` (the config name) or as
``base_weights``; giving both is an error (which one would win is not
obvious). Tasks not listed get 1.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

from mtdense_jax.weighting import base

@dataclasses.dataclass(frozen=True, kw_only=True)
class Weighting(base.Weighting):
  """Static weights; no params, no state."""

  weights: Mapping[str, float] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if self.weights and self.base_weights:
      raise ValueError(
          "fixed weighting: give the weights once, as `weights` or as "
          "`base_weights` (they are the same multipliers here).")
    merged = dict(self.base_weights or self.weights)
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
