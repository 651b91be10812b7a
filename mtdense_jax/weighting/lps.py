"""Loss Prioritisation Scheme (LPS), a stable per-iteration variant.

MT-CP (Klodivio355/MT-CP @ 08c068e, WACV 2025) describes "a log-scale loss
projection and a history-based, spread-controlled task prioritisation". Its
released code has two incompatible pieces (``lps_reference.py`` reproduces
both): a per-iteration recurrence (``MultiTaskLoss2``) that diverges to inf/0
within ~10 iterations, and an epoch-level ratio-plus-spread whose weights the
released loss then ignores. This module keeps the well-defined ingredients
(the log projection, the ratio of task progress to overall progress, the
spread around the mean) and makes them stable.

With T tasks, base-weighted raw losses L_t (``base_weights``), step counter n
(calls so far, kept in ``state``), EMA decay beta, warmup W >= 1, period P,
spread s and floor f:

    l_t   = log(L_t + 1 + eps)                          (log projection)
    m_t   = l_t                         if n = 0
          = beta m_t + (1 - beta) l_t   otherwise       (EMA of sg(l_t);
                                                         skipped if l_t is
                                                         not finite)
    p_t   = (m_t / m*_t) / (sum_i m_i / sum_i m*_i)     (task progress over
                                                         overall progress)
    v_t   = mean(p) + s (p_t - mean(p))                 (spread)
    u_t   = max(v_t, f)
    c_t   = T u_t / sum_i u_i                           (>= 0, sums to T)
    total = sum_t sg(w_t) l_t                           (sg = stop-gradient)

where m* (the reference) and w (the weights used) follow ``reference``:

  * ``"period"`` (default): at the update steps n = W - 1 + jP, j = 0, 1, ...,
    first w <- c (for j >= 1) and then m* <- m; w is held between updates and
    is 1 before the first weight update (n < W - 1 + P). p_t is then a task's
    progress over the last period relative to the overall progress: the
    released epoch-level scheme with an epoch replaced by P steps and the
    epoch means by the EMA.
  * ``"initial"``: m* <- m once, at n = W - 1; w = c at every step n >= W and
    1 before. p_t is the inverse training rate since the warmup (as in
    GradNorm's L_t(t)/L_t(0)).

So d total / d L_t = w_t / (L_t + 1 + eps): every task's gradient is rescaled
by 1/(L_t + 1 + eps) (the log projection) and by its priority w_t. A task
whose smoothed log-loss fell less than the overall one (p_t > 1) gets w_t > 1.

Both modes are stable where the released recurrence is not: both sides of
the ratio come from the *unweighted* smoothed log-losses, so the weights never
feed back into the quantities that define them (``MultiTaskLoss2`` divides by
the previous *weighted* total, giving w^{k+1} ~ w^{k-1} / w^k), and the EMA
removes per-batch noise before the ratio. "period" is the default because the
"initial" ratio is cumulative: a task that converged early keeps a small
weight for the rest of training (1e-3 on a synthetic run where one loss fell
by e^10), while per-period progress returns to ~1 for any task that has
stopped improving.

Defaults: decay 0.99 (~100-step window), warmup 200, period 500, spread 1
(no amplification; MT-CP's NYUD run used 7.5 and PASCAL 1.6 on per-epoch
ratios; with large spreads set a floor, e.g. 0.1, so no task is switched
off), floor 0.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp

from mtdense_jax.weighting import base

_TINY = 1e-12


def priority_weights(ema: jax.Array, ref: jax.Array, spread: float,
                     min_weight: float) -> jax.Array:
  """w from smoothed log-losses `ema` and reference `ref` (both (T,) > 0)."""
  ema = jnp.maximum(ema, _TINY)
  ref = jnp.maximum(ref, _TINY)
  progress = (ema / ref) / (jnp.sum(ema) / jnp.sum(ref))
  mean = jnp.mean(progress)
  w = jnp.maximum(mean + spread * (progress - mean), min_weight)
  return ema.shape[0] * w / jnp.maximum(jnp.sum(w), _TINY)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Weighting(base.Weighting):
  """Log-projected losses weighted by EMA-based relative progress."""

  eps: float = 1e-6
  ema_decay: float = 0.99
  warmup: int = 200
  reference: str = "period"
  period: int = 500
  spread: float = 1.0
  min_weight: float = 0.0

  def __post_init__(self):
    if self.warmup < 1:
      raise ValueError(f"warmup must be >= 1 (the reference is the EMA at "
                       f"step warmup-1), got {self.warmup}")
    if not 0.0 <= self.ema_decay < 1.0:
      raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
    if self.reference not in ("initial", "period"):
      raise ValueError(f"reference must be 'initial' or 'period', got "
                       f"{self.reference!r}")
    if self.period < 1:
      raise ValueError(f"period must be >= 1, got {self.period}")
    if self.min_weight < 0:
      raise ValueError(f"min_weight must be >= 0, got {self.min_weight}")

  def init(self, task_names: Sequence[str]) -> tuple[dict, dict]:
    def full(v):
      return {t: jnp.full((), v, jnp.float32) for t in task_names}
    state = {"count": jnp.zeros((), jnp.int32), "ema": full(0.0),
             "ref": full(1.0), "weights": full(1.0)}
    return {}, state

  def log_losses(self, losses: base.Losses) -> dict[str, jax.Array]:
    """The log projection of the base-weighted losses."""
    return {t: jnp.log(v + 1.0 + self.eps)
            for t, v in self.scaled(losses).items()}

  def __call__(self, params: dict, state: dict, losses: base.Losses,
               step: jax.Array) -> tuple[jax.Array, dict, dict[str, jax.Array]]:
    del params, step  # The scheme counts its own calls (checkpointed).
    tasks = list(losses)
    logs = self.log_losses(losses)
    l = jax.lax.stop_gradient(
        jnp.stack([logs[t] for t in tasks]).astype(jnp.float32))
    n = state["count"]
    ema = jnp.stack([state["ema"][t] for t in tasks])
    ref = jnp.stack([state["ref"][t] for t in tasks])
    held = jnp.stack([state["weights"][t] for t in tasks])

    beta = self.ema_decay
    smoothed = jnp.where(n == 0, l, beta * ema + (1.0 - beta) * l)
    ema = jnp.where(jnp.isfinite(l), smoothed, ema)
    candidate = priority_weights(ema, ref, self.spread, self.min_weight)
    start = n == self.warmup - 1
    if self.reference == "initial":
      w = jnp.where(n >= self.warmup, candidate, held)
      ref = jnp.where(start, ema, ref)
    else:
      since = n - (self.warmup - 1)
      update = (since >= 0) & (since % self.period == 0)
      w = jnp.where(update & ~start, candidate, held)
      ref = jnp.where(update, ema, ref)
    w = jax.lax.stop_gradient(w)

    total = sum(w[i] * logs[t] for i, t in enumerate(tasks))
    new_state = {"count": n + 1, "ema": dict(zip(tasks, ema)),
                 "ref": dict(zip(tasks, ref)), "weights": dict(zip(tasks, w))}
    return total, new_state, dict(zip(tasks, w))
