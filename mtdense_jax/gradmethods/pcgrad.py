"""PCGrad (Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS
2020; tianheyu927/PCGrad).

For each task i, in a random order of the other tasks j:

    if <g_i^PC, g_j> < 0:  g_i^PC <- g_i^PC - <g_i^PC, g_j> / ||g_j||^2 g_j

(projection onto the normal plane of a conflicting gradient; g_j are the
original gradients), and g = sum_i g_i^PC. Every g_i^PC stays a linear
combination of the original g's, so the surgery runs on T x T coefficients
and the Gram matrix only; the result is sum_t w_t g_t with w_t the summed
coefficients. The order is drawn from ``seed`` folded with the step
(``random_order=False``: j in task order, for tests). The paper has no
hyperparameters; defaults follow it (random order, ``reduction="sum"``);
``"mean"`` divides by T, as some reimplementations do.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mtdense_jax.gradmethods import base


@dataclasses.dataclass(frozen=True, kw_only=True)
class Method(base.Method):
  """Projecting conflicting gradients; no state."""

  seed: int = 0
  random_order: bool = True
  reduction: str = "sum"

  def __post_init__(self):
    super().__post_init__()
    if self.reduction not in ("sum", "mean"):
      raise ValueError(f"pcgrad: reduction must be 'sum' or 'mean', got "
                       f"{self.reduction!r}")

  def weights(self, gram, losses, state, step):
    del losses
    t = gram.shape[0]
    if self.random_order:
      keys = jax.random.split(
          jax.random.fold_in(jax.random.PRNGKey(self.seed), step), t)
      order = jax.vmap(lambda k: jax.random.permutation(k, t))(keys)
    else:
      order = jnp.tile(jnp.arange(t), (t, 1))
    sq = jnp.maximum(jnp.diag(gram), 1e-30)

    def project_one(i, row_order):
      # c: coefficients of g_i^PC in the basis of the original gradients.
      c = jax.nn.one_hot(i, t, dtype=gram.dtype)
      for k in range(t):
        j = row_order[k]
        dot = c @ gram[:, j]
        conflict = (dot < 0) & (j != i)
        c = c - jnp.where(conflict, dot / sq[j], 0.0) * jax.nn.one_hot(
            j, t, dtype=gram.dtype)
      return c

    coeffs = jax.vmap(project_one)(jnp.arange(t), order)
    w = coeffs.sum(axis=0)
    return (w / t if self.reduction == "mean" else w), state
