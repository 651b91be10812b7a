"""The train-step speed formulations equal the plain ones they replace.

Each fast op (issue 17) is checked against the straightforward JAX
formulation it stands in for, values and gradients, on random inputs:
float32 rounding differences only (tolerances relative to the magnitudes).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtdense_jax.models.layers import common

RTOL = 2e-6


def _close(a, b, rtol=RTOL):
  a, b = np.asarray(a), np.asarray(b)
  assert a.shape == b.shape
  scale = max(float(np.max(np.abs(b))), 1e-6)
  np.testing.assert_allclose(a, b, rtol=0, atol=rtol * scale)


def _jax_resize(x, size):
  b, _, _, c = x.shape
  return jax.image.resize(x, (b, *size, c), method="linear", antialias=False)


@pytest.mark.parametrize("shape,size", [
    ((2, 4, 8, 5), (64, 128)),    # x16 / x16 (InvPT stage sums)
    ((1, 2, 4, 3), (64, 128)),    # x32 (intermediate predictions)
    ((3, 3, 5, 2), (6, 15)),      # non-square, x2 / x3 (odd factor)
    ((2, 8, 12, 3), (4, 6)),      # /2 (the decoder's first resize)
    ((1, 16, 8, 2), (4, 32)),     # /4 and x4 mixed
    ((2, 6, 6, 1), (9, 4)),       # non-integer ratios: jax.image.resize
])
def test_resize_bilinear_matches_jax_image_resize(shape, size):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  g = jnp.asarray(rng.normal(size=(shape[0], *size, shape[3])), jnp.float32)
  _close(common.resize_bilinear(x, size), _jax_resize(x, size))
  grad_fast = jax.grad(lambda x: jnp.sum(common.resize_bilinear(x, size) * g))
  grad_ref = jax.grad(lambda x: jnp.sum(_jax_resize(x, size) * g))
  _close(grad_fast(x), grad_ref(x))


def test_resize_bilinear_same_size_is_identity():
  x = jnp.ones((1, 4, 4, 2))
  assert common.resize_bilinear(x, (4, 4)) is x
