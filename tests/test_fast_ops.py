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
from mtdense_jax.tasks import base
from mtdense_jax.tasks import common as task_common

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


def _take_along_axis_ce(logits, label, class_weight=None):
  """The log_softmax + take_along_axis formulation (scatter gradient)."""
  lab = label[..., 0].astype(jnp.int32)
  ok = lab != base.IGNORE
  safe = jnp.where(ok, lab, 0)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
  if class_weight is not None:
    nll = nll * jnp.asarray(class_weight, jnp.float32)[safe]
  return jnp.where(ok, nll, 0.0)


@pytest.mark.parametrize("weighted", [False, True])
def test_pixel_cross_entropy_matches_take_along_axis(weighted):
  rng = np.random.default_rng(1)
  k = 7
  logits = jnp.asarray(5 * rng.normal(size=(2, 9, 6, k)), jnp.float32)
  label = rng.integers(0, k, (2, 9, 6, 1))
  label[rng.random((2, 9, 6)) < 0.3] = base.IGNORE
  label = jnp.asarray(label.astype(np.uint8))
  cw = (jnp.asarray(rng.uniform(0.5, 2.0, k), jnp.float32) if weighted
        else None)
  fast = task_common.pixel_cross_entropy(logits, label, cw)
  ref = _take_along_axis_ce(logits, label, cw)
  # Same float ops in the same order: the values are bitwise equal.
  np.testing.assert_array_equal(np.asarray(fast), np.asarray(ref))
  assert float(jnp.sum(fast)) > 0 and np.all(np.asarray(fast)[
      np.asarray(label[..., 0]) == base.IGNORE] == 0)
  g = jnp.asarray(rng.normal(size=fast.shape), jnp.float32)
  grad_fast = jax.grad(lambda x: jnp.sum(
      task_common.pixel_cross_entropy(x, label, cw) * g))(logits)
  grad_ref = jax.grad(lambda x: jnp.sum(
      _take_along_axis_ce(x, label, cw) * g))(logits)
  _close(grad_fast, grad_ref)


def _lax_conv(x, kernel, padding, lhs_dilation=(1, 1), rhs_dilation=(1, 1)):
  dn = jax.lax.conv_dimension_numbers(x.shape, kernel.shape,
                                      ("NHWC", "HWIO", "NHWC"))
  return jax.lax.conv_general_dilated(
      x, kernel, (1, 1), padding, lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation, dimension_numbers=dn)


@pytest.mark.parametrize("shape,k,cout,padding,lhs_dil,rhs_dil", [
    ((2, 4, 4, 16), 3, 8, ((1, 1), (1, 1)), (1, 1), (1, 1)),
    ((2, 5, 3, 6), 3, 4, ((2, 2), (2, 2)), (1, 1), (2, 2)),   # dilated
    ((1, 4, 6, 8), 3, 5, ((1, 2), (1, 2)), (2, 2), (1, 1)),   # transposed
    ((2, 4, 4, 8), 1, 3, ((0, 0), (0, 0)), (1, 1), (1, 1)),   # 1x1
])
def test_im2col_conv_matches_lax(shape, k, cout, padding, lhs_dil, rhs_dil):
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k, k, shape[-1], cout)), jnp.float32)

  def loss(conv_fn, x, w):
    y = conv_fn(x, w, padding, lhs_dil, rhs_dil)
    return jnp.sum(y * jnp.cos(y)), y

  (_, ref), ref_g = jax.value_and_grad(
      lambda x, w: loss(_lax_conv, x, w), (0, 1), has_aux=True)(x, w)
  (_, out), out_g = jax.value_and_grad(
      lambda x, w: loss(common.im2col_conv, x, w), (0, 1),
      has_aux=True)(x, w)
  _close(out, ref)
  for a, b in zip(out_g, ref_g):
    _close(a, b, 1e-5)


def test_conv_and_conv_transpose_modules_match_flax():
  """common.conv / ConvTranspose (im2col on small grids) = nnx's lax path."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 4, 6, 12)),
                  jnp.float32)
  fast = common.conv(12, 5, 3, padding=2, dilation=2, rngs=nnx.Rngs(0))
  ref = nnx.Conv(12, 5, (3, 3), padding=((2, 2), (2, 2)), kernel_dilation=2,
                 rngs=nnx.Rngs(0))
  _close(fast(x), ref(x))
  fast_t = common.ConvTranspose(12, 5, (3, 3), strides=(2, 2),
                                padding=((1, 2), (1, 2)), rngs=nnx.Rngs(0))
  ref_t = nnx.ConvTranspose(12, 5, (3, 3), strides=(2, 2),
                            padding=((1, 2), (1, 2)), rngs=nnx.Rngs(0))
  assert fast_t(x).shape == (2, 8, 12, 5)
  _close(fast_t(x), ref_t(x))


def test_invpt_fuse_attn_einsum_matches_conv():
  """SelfAttention._fuse mixes heads by einsum = its 1x1 conv channels-last."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from mtdense_jax.models.layers import invpt_blocks  # pylint: disable=g-import-not-at-top
  attn = invpt_blocks.SelfAttention(1, 2, 8, num_heads=2, kv_stride=2,
                                    rngs=nnx.Rngs(0), dtype=jnp.float32,
                                    bn_axis_name=None)
  rng = np.random.default_rng(4)
  n_t, hq, wq, nk = 2, 4, 6, 5
  score = jnp.asarray(rng.normal(size=(2, 2, n_t * hq * wq, nk)), jnp.float32)
  prev = jnp.asarray(rng.normal(size=(2, 2, n_t * hq * wq // 4, nk)),
                     jnp.float32)
  up = common.resize_bilinear(prev.reshape(2 * 2 * n_t, hq // 2, wq // 2, nk),
                              (hq, wq)).reshape(2, 2, -1, nk)
  both = jnp.concatenate([score, up], axis=1)
  ref = jnp.moveaxis(attn.fuse_attn(jnp.moveaxis(both, 1, -1)), -1, 1)
  _close(attn._fuse(score, prev, (n_t, hq, wq)), ref)  # pylint: disable=protected-access
