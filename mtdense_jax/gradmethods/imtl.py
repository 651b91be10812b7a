"""IMTL-G (Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021).

The gradient part of IMTL: find g = sum_t a_t g_t, sum_t a_t = 1, whose
projections onto every task's unit gradient u_t = g_t / ||g_t|| are equal,
g.u_1 = g.u_t. With D = [g_1 - g_t]_{t>=2} and U = [u_1 - u_t]_{t>=2}:

    a_{2:T} = g_1 U^T (D U^T)^{-1},   a_1 = 1 - sum a_{2:T}

(closed form; every product is a Gram-matrix entry divided by norms). The
paper computes it on the shared feature (mode ``"representation"``, the
default) and scales the result; its loss part (IMTL-L, learned loss scales)
is not implemented. The paper has no hyperparameters (default: none).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from mtdense_jax.gradmethods import _simplex
from mtdense_jax.gradmethods import base


@dataclasses.dataclass(frozen=True, kw_only=True)
class Method(base.Method):
  """Impartial (equal-projection) combination; no state."""

  mode: str = "representation"

  def weights(self, gram, losses, state, step):
    del losses, step
    # a is scale-free; normalising keeps tiny gradients out of underflow.
    gram = _simplex.normalised(gram)
    norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 1e-12))
    gu = gram / norms[None, :]                  # gu[i, j] = g_i . u_j
    g1u = gu[0, 0] - gu[0, 1:]                  # g_1 U^T
    du = (gu[0, 0] - gu[1:, 0][:, None]) - (gu[0, 1:][None, :] - gu[1:, 1:])
    # a (D U^T) = g_1 U^T; the pseudo-inverse keeps identical gradients
    # (singular D U^T) finite.
    rest = jnp.linalg.pinv(du.T) @ g1u
    return jnp.concatenate([1.0 - rest.sum(keepdims=True), rest]), state
