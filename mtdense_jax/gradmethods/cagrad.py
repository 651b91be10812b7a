"""CAGrad (Liu et al., "Conflict-Averse Gradient Descent for Multi-task
Learning", NeurIPS 2021; Cranial-XIX/CAGrad).

With g0 = mean_t g_t, CAGrad maximises the worst task's improvement within a
ball around g0:  max_d min_t <g_t, d>  s.t.  ||d - g0|| <= c ||g0||. Its dual
over the simplex is

    w* = argmin_{w in simplex}  <g_w, g0> + c ||g0|| ||g_w||,
         g_w = sum_t w_t g_t,
    d  = g0 + (c ||g0|| / ||g_w*||) g_w*,

returned divided by (1 + c^2) (the official ``rescale=1``). All terms are
quadratic forms of the Gram matrix. The official code solves the dual with
scipy SLSQP; here it is accelerated projected gradient with ``iters`` fixed
steps (jit-able): the objective's curvature is at most
c ||g0|| lambda_max(G) / min_w ||g_w||, and min_w ||g_w|| is MGDA's min-norm
point, solved first, which fixes a safe step. Default c = 0.5 (``alpha``
in the official code), rescale 1; the paper tunes c per benchmark.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from mtdense_jax.gradmethods import _simplex
from mtdense_jax.gradmethods import base


@dataclasses.dataclass(frozen=True, kw_only=True)
class Method(base.Method):
  """Conflict-averse direction; no state."""

  c: float = 0.5
  rescale: bool = True
  iters: int = 500

  def weights(self, gram, losses, state, step):
    del losses, step
    g = _simplex.normalised(gram)
    t = g.shape[0]
    cg0 = self.c * jnp.sqrt(jnp.mean(g) + 1e-8)
    b = jnp.full((t,), 1.0 / t, g.dtype)
    w_mgda = _simplex.min_norm(g, 100)
    min_sq = jnp.maximum(w_mgda @ g @ w_mgda, 1e-4)
    lip = cg0 * jnp.max(jnp.linalg.eigvalsh(g)) / jnp.sqrt(min_sq)

    def grad(w):
      return g @ b + cg0 * (g @ w) / jnp.sqrt(w @ g @ w + 1e-8)

    w = _simplex.fista(grad, b, 1.0 / jnp.maximum(lip, 1e-12), self.iters)
    lam = cg0 / (jnp.sqrt(w @ g @ w + 1e-8))
    out = b + lam * w
    if self.rescale:
      out = out / (1.0 + self.c ** 2)
    return out, state
