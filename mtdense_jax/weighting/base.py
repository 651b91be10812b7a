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
