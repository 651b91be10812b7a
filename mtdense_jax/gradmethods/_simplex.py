"""Jit-able solvers on the probability simplex for the T x T problems of
MGDA and CAGrad (fixed iteration counts, so they compile to one loop)."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def project(v: jax.Array) -> jax.Array:
  """Euclidean projection onto {w >= 0, sum w = 1} (sort-based, exact)."""
  n = v.shape[0]
  u = jnp.sort(v)[::-1]
  css = jnp.cumsum(u) - 1.0
  k = jnp.arange(1, n + 1, dtype=v.dtype)
  rho = jnp.max(jnp.where(u - css / k > 0, jnp.arange(n), 0))
  theta = css[rho] / (rho + 1).astype(v.dtype)
  return jnp.maximum(v - theta, 0.0)


def fista(grad_fn: Callable[[jax.Array], jax.Array], w0: jax.Array,
          step: jax.Array, iters: int) -> jax.Array:
  """Accelerated projected gradient (FISTA) with a fixed step 1/L; the
  error in the objective falls as O(L / iters^2)."""
  def body(_, carry):
    w, y, t = carry
    w_new = project(y - step * grad_fn(y))
    t_new = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * t * t))
    y = w_new + ((t - 1.0) / t_new) * (w_new - w)
    return w_new, y, t_new
  w, _, _ = jax.lax.fori_loop(0, iters, body,
                              (w0, w0, jnp.ones((), w0.dtype)))
  return w


def normalised(gram: jax.Array) -> jax.Array:
  """Gram / its mean diagonal: the solvers' step sizes become scale-free."""
  return gram / jnp.maximum(jnp.mean(jnp.diag(gram)), 1e-30)


def min_norm(gram: jax.Array, iters: int) -> jax.Array:
  """argmin over the simplex of w^T G w (MGDA's min-norm point)."""
  g = normalised(gram)
  t = g.shape[0]
  lip = 2.0 * jnp.max(jnp.linalg.eigvalsh(g))
  return fista(lambda w: 2.0 * g @ w, jnp.full((t,), 1.0 / t, g.dtype),
               1.0 / jnp.maximum(lip, 1e-12), iters)
