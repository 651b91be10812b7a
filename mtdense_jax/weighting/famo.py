"""FAMO (Liu et al., "FAMO: Fast Adaptive Multitask Optimization", NeurIPS
2023; Cranial-XIX/FAMO).

A loss weighting, not a gradient method: it needs no per-task gradients (one
backward pass, O(1) extra cost), so it lives here. Logits xi (state, zeros
at start), z = softmax(xi), D_t = L_t - min_t + 1e-8 (``min_losses``,
default 0) on the base-weighted losses:

    total = sum_t z_t log D_t / c,   c = sum_t z_t / D_t  (z, c stop-grad)

so dtotal/dL_t = z_t / (c D_t); these effective weights sum to 1 and are
the ones reported. The logits learn from each task's log-loss decrease
delta_t = log D_t(prev) - log D_t(now): xi takes an Adam step (``lr``,
weight decay ``gamma`` added to the gradient as torch's Adam does) along
J_softmax(xi)^T delta, which lowers the weight of tasks that improved most.
The official code measures the decrease on the same batch after the step
(an extra forward pass); here it is measured between consecutive steps'
batches (no extra pass), and the logits update before this step's weights
are formed. Official defaults: gamma = 0.01, lr (w_lr) = 0.025.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

from mtdense_jax.weighting import base


@dataclasses.dataclass(frozen=True, kw_only=True)
class Weighting(base.Weighting):
  """FAMO: state holds the logits, their Adam moments and the last log-loss."""

  gamma: float = 0.01
  lr: float = 0.025
  min_losses: Mapping[str, float] = dataclasses.field(default_factory=dict)

  def init(self, task_names: Sequence[str]) -> tuple[dict, dict]:
    t = len(task_names)
    zeros = jnp.zeros((t,), jnp.float32)
    return {}, {"xi": zeros, "m": zeros, "v": zeros, "prev_log": zeros,
                "count": jnp.zeros((), jnp.int32)}

  def __call__(self, params: dict, state: dict, losses: base.Losses,
               step: jax.Array) -> tuple[jax.Array, dict, dict[str, jax.Array]]:
    del params, step
    tasks = list(losses)
    scaled = self.scaled(losses)
    lows = jnp.asarray([self.min_losses.get(t, 0.0) for t in tasks],
                       jnp.float32)
    d = jnp.stack([scaled[t] for t in tasks]).astype(jnp.float32) - lows
    d = d + 1e-8
    log_d = jnp.log(jax.lax.stop_gradient(d))
    count = state["count"]

    # Logit update from the previous step's log-losses (none at step 0).
    xi = state["xi"]
    delta = state["prev_log"] - log_d
    _, pullback = jax.vjp(jax.nn.softmax, xi)
    (grad,) = pullback(delta)
    grad = grad + self.gamma * xi
    n = count.astype(jnp.float32)
    m = 0.9 * state["m"] + 0.1 * grad
    v = 0.999 * state["v"] + 0.001 * grad * grad
    upd = self.lr * (m / (1 - 0.9 ** jnp.maximum(n, 1))) / (
        jnp.sqrt(v / (1 - 0.999 ** jnp.maximum(n, 1))) + 1e-8)
    first = count == 0
    xi = jnp.where(first, xi, xi - upd)
    m = jnp.where(first, state["m"], m)
    v = jnp.where(first, state["v"], v)

    z = jax.nn.softmax(xi)
    c = jnp.sum(z / jax.lax.stop_gradient(d))
    total = jnp.sum(z * jnp.log(d)) / c
    w = z / (c * jax.lax.stop_gradient(d))
    new_state = {"xi": xi, "m": m, "v": v, "prev_log": log_d,
                 "count": count + 1}
    return total, new_state, dict(zip(tasks, w))
