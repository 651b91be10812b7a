"""Aligned-MTL (Senushkin et al., "Independent Component Alignment for
Multi-Task Learning", CVPR 2023; SamsungLabs/MTL).

With the Gram matrix G = V diag(lambda) V^T (eigenvalues above a rank
tolerance kept), the task gradients are replaced by the aligned ones
g'_t = sum_s B_st g_s, B = V diag(sqrt(lambda_min / lambda)) V^T, which are
orthogonal with equal norms sqrt(lambda_min) (their Gram matrix is
lambda_min times the projector onto range(G)): the linear system of task
gradients gets condition number 1. The update is g = sum_t g'_t, i.e.
weights w = B 1. ``scale`` picks the common norm: "min" (the default,
smallest eigenvalue), "median" or "rmse" (mean eigenvalue). Mode
``"representation"`` is the paper's Aligned-MTL-UB. No other hyperparameters.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from mtdense_jax.gradmethods import base


def alignment(gram: jnp.ndarray, scale: str = "min") -> jnp.ndarray:
  """B above (T x T); eigenvalues under max * T * float eps are dropped."""
  lam, vec = jnp.linalg.eigh(gram)
  keep = lam > jnp.max(lam) * gram.shape[0] * jnp.finfo(gram.dtype).eps
  safe = jnp.where(keep, lam, 1.0)
  if scale == "min":
    target = jnp.min(jnp.where(keep, lam, jnp.inf))
  elif scale == "median":
    # Lower median of the kept eigenvalues (torch.median's convention).
    s = jnp.sort(jnp.where(keep, lam, jnp.inf))
    target = s[(jnp.sum(keep) - 1) // 2]
  else:
    target = jnp.sum(jnp.where(keep, lam, 0.0)) / jnp.sum(keep)
  d = jnp.where(keep, jnp.sqrt(target / safe), 0.0)
  return (vec * d[None, :]) @ vec.T


@dataclasses.dataclass(frozen=True, kw_only=True)
class Method(base.Method):
  """Gradients aligned to an orthogonal, equal-norm system; no state."""

  scale: str = "min"

  def __post_init__(self):
    super().__post_init__()
    if self.scale not in ("min", "median", "rmse"):
      raise ValueError(f"aligned_mtl: scale must be 'min', 'median' or "
                       f"'rmse', got {self.scale!r}")

  def weights(self, gram, losses, state, step):
    del losses, step
    return alignment(gram, self.scale).sum(axis=1), state
