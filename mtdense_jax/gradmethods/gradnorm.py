"""GradNorm (Chen et al., "GradNorm: Gradient Normalization for Adaptive
Loss Balancing in Deep Multitask Networks", ICML 2018).

Loss weights w_t (state, initialised to 1) are trained so that the weighted
gradient norms G_t = w_t ||g_t|| follow each task's relative training rate:

    r_t   = (L_t / L_t(0)) / mean_s (L_s / L_s(0))
    L_gr  = sum_t | G_t - mean_s(G_s) * r_t^alpha |   (target held constant)
    w    <- Adam step on dL_gr/dw_t = sign(G_t - target_t) ||g_t||,
    w    <- T * w / sum(w)                           (renormalised)

This step's update uses the current w; the new w serves the next step.
L_t(0) is the first loss seen. Only the norms ||g_t|| (the Gram diagonal)
are used. The paper takes g_t on the last shared layer; mode ``"params"``
uses all shared parameters, ``"representation"`` the shared feature (as
LibMTL's rep_grad). Paper default alpha = 1.5 (NYUv2); the weights' learning
rate ``lr`` is not fixed by the paper (Adam, 0.025 here; Adam makes it
independent of the gradients' scale).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax.numpy as jnp

from mtdense_jax.gradmethods import base


@dataclasses.dataclass(frozen=True, kw_only=True)
class Method(base.Method):
  """Gradient-norm balancing; state: weights, first losses, Adam moments."""

  alpha: float = 1.5
  lr: float = 0.025
  min_weight: float = 1e-3

  def init(self, task_names: Sequence[str]) -> dict:
    t = len(task_names)
    return {"w": jnp.ones((t,), jnp.float32),
            "loss0": jnp.ones((t,), jnp.float32),
            "m": jnp.zeros((t,), jnp.float32),
            "v": jnp.zeros((t,), jnp.float32),
            "count": jnp.zeros((), jnp.int32)}

  def weights(self, gram, losses, state, step):
    del step
    t = gram.shape[0]
    w, count = state["w"], state["count"]
    loss0 = jnp.where(count == 0, losses, state["loss0"])
    norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0))
    ratio = losses / jnp.maximum(loss0, 1e-12)
    rate = ratio / jnp.maximum(jnp.mean(ratio), 1e-12)
    weighted = w * norms
    target = jnp.mean(weighted) * rate ** self.alpha
    grad = jnp.sign(weighted - target) * norms
    # Adam (b1 0.9, b2 0.999, eps 1e-8) on the weights.
    n = (count + 1).astype(jnp.float32)
    m = 0.9 * state["m"] + 0.1 * grad
    v = 0.999 * state["v"] + 0.001 * grad * grad
    step_w = self.lr * (m / (1 - 0.9 ** n)) / (
        jnp.sqrt(v / (1 - 0.999 ** n)) + 1e-8)
    new_w = jnp.maximum(w - step_w, self.min_weight)
    new_w = t * new_w / jnp.sum(new_w)
    new_state = {"w": new_w, "loss0": loss0, "m": m, "v": v,
                 "count": count + 1}
    return w, new_state
