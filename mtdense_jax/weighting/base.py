"""The loss-weighting interface: per-task losses in, total and weights out.

Each ``mtdense_jax/weighting/<name>.py`` defines ``class Weighting(base.
Weighting)`` built from ``config.weighting`` as keyword arguments. The train
step calls it inside jit:

    params, state = weighting.init(task_names)          # once, on the host
    total, state, weights = weighting(params, state, losses, step)

``params`` are trainable (e.g. uncertainty weighting's log-variances; they get
gradients with the model), ``state`` is not (loss history, EMAs) and is carried
through the train step and saved in checkpoints. Both are dicts of jnp arrays
keyed by name so that they checkpoint as plain pytrees.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

Losses = Mapping[str, jax.Array]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Weighting:
  """Base class. `base_weights` are fixed per-task multipliers (e.g. InvPT's
  1/1/10/50) applied to the raw losses before the scheme sees them; tasks not
  listed get 1."""

  base_weights: Mapping[str, float] = dataclasses.field(default_factory=dict)

  def init(self, task_names: Sequence[str]) -> tuple[dict, dict]:
    """Returns (trainable params, state)."""
    del task_names
    return {}, {}

  def scaled(self, losses: Losses) -> dict[str, jax.Array]:
    return {t: l * self.base_weights.get(t, 1.0) for t, l in losses.items()}

  def __call__(self, params: dict, state: dict, losses: Losses,
               step: jax.Array) -> tuple[jax.Array, dict, dict[str, jax.Array]]:
    """Returns (total loss, new state, effective weight per task)."""
    raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class EpochStatistics:
  """Per-task loss means over whole epochs, kept inside the weighting state.

  For schemes defined on epoch-level statistics (MT-CP's released LPS takes
  the ratio of epoch-mean losses): the train step calls the weighting every
  step, so a weighting holds one of these, keeps its dict in its ``state``
  (``init`` under a key of its choice) and calls ``update`` with the step's
  losses. After every ``steps_per_epoch`` calls, ``mean`` holds that epoch's
  per-task mean (stop-gradient) and ``epochs`` counts completed epochs;
  the running sums restart. Pure jnp, so it runs in the jitted step, is
  checkpointed with the state and resumes exactly. steps_per_epoch is
  ``ceil(num_train / global batch)`` for one pass over the data.
  """

  steps_per_epoch: int

  def init(self, task_names: Sequence[str]) -> dict:
    zeros = {t: jnp.zeros((), jnp.float32) for t in task_names}
    return {"sum": dict(zeros), "mean": dict(zeros),
            "n": jnp.zeros((), jnp.int32), "epochs": jnp.zeros((), jnp.int32)}

  def update(self, stats: dict, losses: Losses) -> dict:
    n = stats["n"] + 1
    total = {t: stats["sum"][t] + jax.lax.stop_gradient(losses[t])
             for t in stats["sum"]}
    end = n >= self.steps_per_epoch
    mean = {t: jnp.where(end, total[t] / n, stats["mean"][t])
            for t in total}
    return {"sum": {t: jnp.where(end, 0.0, v) for t, v in total.items()},
            "mean": mean, "n": jnp.where(end, 0, n),
            "epochs": stats["epochs"] + end.astype(jnp.int32)}
