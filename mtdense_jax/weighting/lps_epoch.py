"""MT-CP's released epoch-level LPS (``weighting.name = "lps_epoch"``).

Klodivio355/MT-CP@08c068e ``main_CL_nyud.py`` (the block after
``train_nyud``) with ``models/utils.py: spread_transformation``; numpy
reference and notes in ``lps_reference.epoch_level_lps`` and
shared/notes/methods.md a.3. With L_t^e the mean of task t's (base-weighted)
raw loss over epoch e and L^e = sum_t L_t^e, at the end of epoch e:

    e = 0:   w_t = L^0 / L_t^0                                  (no spread)
    e >= 1:  v_t = (L_t^e / L_t^{e-1}) / (L^e / L^{e-1})
             w_t = mean(v) + spread (v_t - mean(v))             (may be < 0)

and w is used during epoch e + 1 (1 before the first epoch ends). The epoch
means come from ``base.EpochStatistics`` in the weighting state, inside the
jitted step; an "epoch" is ``steps_per_epoch`` calls (set it to
ceil(num_train / global batch) for the released meaning).

``apply_weights=False`` (the default) is the released behaviour: its
``MultiTaskLoss.forward`` computes the weighted sum and then overwrites it
with the plain sum, so the total is sum_t L_t, the reported weights are 1
and the LPS weights only live in ``state["lps"]`` (the golden
``epoch/mtl_total_with_weights`` equals ``epoch/sum_of_losses``).
``apply_weights=True`` trains with total = sum_t sg(w_t) L_t instead, the
weights the code computes but never uses (they can be negative with spread
7.5: a negative weight makes the optimizer *increase* that task's loss).
Spread: 7.5 for the released NYUD run, 1.6 for PASCAL (whose run disables
the block).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp

from mtdense_jax.weighting import base


def epoch_weights(mean: jax.Array, prev: jax.Array, first: jax.Array,
                  spread: float) -> jax.Array:
  """The released weights from this epoch's means `mean` and the previous
  epoch's `prev` ((T,) each); `first` selects the e = 0 rule."""
  total = jnp.sum(mean)
  initial = total / mean
  ratio = (mean / prev) / (total / jnp.sum(prev))
  centre = jnp.mean(ratio)
  spread_out = centre + spread * (ratio - centre)
  return jnp.where(first, initial, spread_out)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Weighting(base.Weighting):
  """Released epoch-level LPS; its weights applied only if asked."""

  steps_per_epoch: int = 500
  spread: float = 7.5
  apply_weights: bool = False

  def __post_init__(self):
    if self.steps_per_epoch < 1:
      raise ValueError("weighting.kw.steps_per_epoch must be >= 1, got "
                       f"{self.steps_per_epoch}")

  @property
  def statistics(self) -> base.EpochStatistics:
    return base.EpochStatistics(steps_per_epoch=self.steps_per_epoch)

  def init(self, task_names: Sequence[str]) -> tuple[dict, dict]:
    ones = {t: jnp.ones((), jnp.float32) for t in task_names}
    zeros = {t: jnp.zeros((), jnp.float32) for t in task_names}
    return {}, {"stats": self.statistics.init(task_names),
                "prev": zeros, "lps": ones}

  def __call__(self, params: dict, state: dict, losses: base.Losses,
               step: jax.Array) -> tuple[jax.Array, dict, dict[str, jax.Array]]:
    del params, step  # Epochs are counted by the statistics (checkpointed).
    tasks = list(losses)
    scaled = self.scaled(losses)
    held = jnp.stack([state["lps"][t] for t in tasks])
    if self.apply_weights:
      w = jax.lax.stop_gradient(held)
    else:
      w = jnp.ones_like(held)
    total = sum(w[i] * scaled[t] for i, t in enumerate(tasks))

    stats = self.statistics.update(state["stats"], scaled)
    ended = stats["epochs"] > state["stats"]["epochs"]
    mean = jnp.stack([stats["mean"][t] for t in tasks])
    prev = jnp.stack([state["prev"][t] for t in tasks])
    new = epoch_weights(mean, prev, state["stats"]["epochs"] == 0,
                        self.spread)
    lps = jnp.where(ended, new, held)
    prev = jnp.where(ended, mean, prev)
    new_state = {"stats": stats, "prev": dict(zip(tasks, prev)),
                 "lps": dict(zip(tasks, lps))}
    return total, new_state, dict(zip(tasks, w))
