"""Dynamic Weight Average (Liu, Johns & Davison, "End-to-End Multi-Task
Learning with Attention", CVPR 2019; lorenmt/mtan ``*_mtan.py``).

The paper works per epoch; here an "epoch" is a period of ``period`` steps.
With Lbar_t(k) the mean of task t's (base-weighted) loss over period k and
T the number of tasks, during period k >= 2:

    r_t = Lbar_t(k-1) / Lbar_t(k-2)
    w_t = T * exp(r_t / temperature) / sum_i exp(r_i / temperature)

and w_t = 1 during periods 0 and 1 (no history yet). total = sum_t w_t L_t;
the weights are stop-gradient (they come from loss history only).

The period is counted with the scheme's own step counter in ``state`` (not the
``step`` argument), so the running sums and the period boundaries always
agree, also after restoring a checkpoint. State: ``count`` (int32 calls so
far), ``sum`` (running sum in the current period), ``prev1`` / ``prev2`` (the
means of the last two completed periods), all per task.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp

from mtdense_jax.weighting import base


@dataclasses.dataclass(frozen=True, kw_only=True)
class Weighting(base.Weighting):
  """DWA over periods of `period` steps, softmax temperature `temperature`."""

  period: int = 500
  temperature: float = 2.0

  def __post_init__(self):
    if self.period < 1:
      raise ValueError(f"period must be >= 1, got {self.period}")
    if self.temperature <= 0:
      raise ValueError(f"temperature must be > 0, got {self.temperature}")

  def init(self, task_names: Sequence[str]) -> tuple[dict, dict]:
    def zeros():
      return {t: jnp.zeros((), jnp.float32) for t in task_names}
    state = {"count": jnp.zeros((), jnp.int32), "sum": zeros(),
             "prev1": zeros(), "prev2": zeros()}
    return {}, state

  def __call__(self, params: dict, state: dict, losses: base.Losses,
               step: jax.Array) -> tuple[jax.Array, dict, dict[str, jax.Array]]:
    del params, step
    tasks = list(losses)
    scaled = self.scaled(losses)
    count = state["count"]
    prev1 = jnp.stack([state["prev1"][t] for t in tasks])
    prev2 = jnp.stack([state["prev2"][t] for t in tasks])
    ratio = prev1 / jnp.maximum(prev2, jnp.finfo(jnp.float32).tiny)
    w = len(tasks) * jax.nn.softmax(ratio / self.temperature)
    w = jnp.where(count // self.period >= 2, w, jnp.ones_like(w))
    w = jax.lax.stop_gradient(w)
    total = sum(w[i] * scaled[t] for i, t in enumerate(tasks))

    # Accumulate this step's losses; at the end of a period shift the means.
    sums = jnp.stack([state["sum"][t] for t in tasks])
    sums = sums + jax.lax.stop_gradient(
        jnp.stack([scaled[t] for t in tasks]).astype(jnp.float32))
    ends = (count + 1) % self.period == 0
    new_prev2 = jnp.where(ends, prev1, prev2)
    new_prev1 = jnp.where(ends, sums / self.period, prev1)
    sums = jnp.where(ends, jnp.zeros_like(sums), sums)
    new_state = {
        "count": count + 1,
        "sum": dict(zip(tasks, sums)),
        "prev1": dict(zip(tasks, new_prev1)),
        "prev2": dict(zip(tasks, new_prev2)),
    }
    return total, new_state, dict(zip(tasks, w))
