"""Homoscedastic-uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

One trainable log-variance s_t = log(sigma_t^2) per task, in ``params``
(``params["log_var"][task]``, initialised to ``init_log_var``), trained with
the model. With the base-weighted losses L_t:

    total = c * sum_t [ exp(-s_t) * L_t + s_t ],   c = 0.5 if half else 1.

The paper's regression term is L/(2 sigma^2) + log sigma = 0.5 (exp(-s) L + s)
(``half=True``); its classification term is L/sigma^2 + log sigma, and most
implementations (e.g. the "plain" form used by MTL codebases) drop the 0.5
factors for every task (``half=False``, the default). Both have the same
minimiser in s (s* = log L_t), so they differ only by a global factor 2 on the
task terms, i.e. an effective learning-rate change. The returned weights are
the effective multipliers c * exp(-s_t) (= exp(-s_t) by default), stop-gradient
(they are for logging).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp

from mtdense_jax.weighting import base


@dataclasses.dataclass(frozen=True, kw_only=True)
class Weighting(base.Weighting):
  """Learned per-task log-variances; no state."""

  init_log_var: float = 0.0
  half: bool = False

  def init(self, task_names: Sequence[str]) -> tuple[dict, dict]:
    log_var = {t: jnp.asarray(self.init_log_var, jnp.float32)
               for t in task_names}
    return {"log_var": log_var}, {}

  def __call__(self, params: dict, state: dict, losses: base.Losses,
               step: jax.Array) -> tuple[jax.Array, dict, dict[str, jax.Array]]:
    del step
    c = 0.5 if self.half else 1.0
    scaled = self.scaled(losses)
    log_var = params["log_var"]
    terms = [jnp.exp(-log_var[t]) * scaled[t] + log_var[t] for t in losses]
    total = c * sum(terms)
    weights = {t: jax.lax.stop_gradient(c * jnp.exp(-log_var[t]))
               for t in losses}
    return total, state, weights
