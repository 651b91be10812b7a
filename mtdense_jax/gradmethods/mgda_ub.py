"""MGDA-UB (Sener & Koltun, "Multi-Task Learning as Multi-Objective
Optimization", NeurIPS 2018; intel-isl/MultiObjectiveOptimization).

The common descent direction is the min-norm point of the convex hull of the
task gradients:

    w* = argmin_{w >= 0, sum w = 1} || sum_t w_t g_t ||^2 = w^T G w,
    g  = sum_t w*_t g_t.

"UB" (upper bound) is the paper's cheap variant: g_t are the gradients of
the shared representation z (mode ``"representation"``, the default), and the
weights then multiply the losses; mode ``"params"`` is plain MGDA. The paper
solves with Frank-Wolfe; here accelerated projected gradient on the simplex
(``iters`` fixed steps, jit-able) reaches the same optimum. Before solving,
the paper's code can normalise each gradient by ``normalization``: "none"
(default), "l2" (||g_t||), "loss" (L_t) or "loss+" (L_t ||g_t||); the
returned weights apply to the unnormalised gradients. The weights sum to 1
(a convex combination), so the update is about 1/T of a summed-loss one.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from mtdense_jax.gradmethods import _simplex
from mtdense_jax.gradmethods import base

_NORMS = ("none", "l2", "loss", "loss+")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Method(base.Method):
  """Min-norm convex combination; no state."""

  mode: str = "representation"
  normalization: str = "none"
  iters: int = 250

  def __post_init__(self):
    super().__post_init__()
    if self.normalization not in _NORMS:
      raise ValueError(f"mgda_ub: normalization must be one of {_NORMS}, "
                       f"got {self.normalization!r}")

  def weights(self, gram, losses, state, step):
    del step
    norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 1e-30))
    scale = {"none": jnp.ones_like(losses), "l2": norms, "loss": losses,
             "loss+": losses * norms}[self.normalization]
    scale = jnp.maximum(scale, 1e-12)
    w = _simplex.min_norm(gram / scale[:, None] / scale[None, :], self.iters)
    return w / scale, state
