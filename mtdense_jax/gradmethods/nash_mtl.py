"""Nash-MTL (Navon et al., "Multi-Task Learning as a Bargaining Game", ICML
2022; AvivNavon/nash-mtl).

The Nash bargaining direction is g = sum_t a_t g_t with a > 0 solving

    G a = 1 / a   (elementwise),   G the Gram matrix,

i.e. every task gets <g_t, g> = 1 / a_t. That is the stationarity condition
of the strictly convex f(a) = a^T G a / 2 - sum_t log a_t, which is
self-concordant, so damped Newton (a += d / (1 + lambda), lambda the Newton
decrement) stays feasible and converges; ``iters`` fixed steps keep it
jit-able (the official code uses a CCP loop with cvxpy, 20 iterations).
G is divided by its mean diagonal first (a scales back by 1/sqrt) and a
ridge ``eps`` * I keeps linearly dependent gradients solvable (a conflict
g_1 = -g_2 has no solution; a then stays finite, about 1/sqrt(eps)).
Official defaults: update every step, max_norm 1.0 (gradient clipping;
use ``optim`` clipping here).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mtdense_jax.gradmethods import _simplex
from mtdense_jax.gradmethods import base


def bargaining(gram: jax.Array, iters: int = 30,
               eps: float = 1e-6) -> jax.Array:
  """Solves G a = 1/a, a > 0, for a Gram matrix (damped Newton)."""
  scale = jnp.maximum(jnp.mean(jnp.diag(gram)), 1e-30)
  g = _simplex.normalised(gram) + eps * jnp.eye(gram.shape[0])

  def body(_, a):
    grad = g @ a - 1.0 / a
    hess = g + jnp.diag(1.0 / (a * a))
    d = -jnp.linalg.solve(hess, grad)
    decrement = jnp.sqrt(jnp.maximum(d @ hess @ d, 0.0))
    return a + d / (1.0 + decrement)

  a0 = 1.0 / jnp.sqrt(jnp.diag(g))
  return jax.lax.fori_loop(0, iters, body, a0) / jnp.sqrt(scale)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Method(base.Method):
  """Bargaining-game weights; no state."""

  iters: int = 30
  eps: float = 1e-6

  def weights(self, gram, losses, state, step):
    del losses, step
    return bargaining(gram, self.iters, self.eps), state
