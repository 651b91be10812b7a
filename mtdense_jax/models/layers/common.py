"""Shared building blocks with PyTorch semantics (NHWC).

The ports in this package reproduce PyTorch models to float32 noise, so the
blocks here pin the PyTorch conventions that Flax defaults differ from:
exact-erf GELU (``nn.GELU()``; Flax defaults to tanh), bilinear resizing with
``align_corners=False`` and no antialiasing (``F.interpolate``; JAX
antialiases when downsampling by default), BatchNorm momentum 0.1 (Flax 0.9)
and eps 1e-5, and DropPath as in timm (``timm/models/layers/drop.py``).
"""

from __future__ import annotations

from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp

Dtype = Any


def gelu(x: jax.Array) -> jax.Array:
  """Exact (erf) GELU, PyTorch's ``nn.GELU()`` default."""
  return jax.nn.gelu(x, approximate=False)


def resize_bilinear(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """``F.interpolate(x, size, mode='bilinear', align_corners=False)``, NHWC.

  Also equals ``scale_factor=`` calls when the factor is an exact ratio.
  Integer up- and downsampling factors (all of InvPT's resizes) run as
  shifted lerps per axis (:func:`_resize_axis`), equal to
  ``jax.image.resize`` up to float32 rounding: its dense interpolation
  matrices and their transposes cost a fifth of a small train step on CPU.
  Other ratios use ``jax.image.resize``.
  """
  b, h, w, c = x.shape
  size = (int(size[0]), int(size[1]))
  if (h, w) == size:
    return x
  if all(_integer_ratio(n, m) for n, m in zip((h, w), size)):
    return _resize_axis(_resize_axis(x, 1, size[0]), 2, size[1])
  return jax.image.resize(x, (b, *size, c), method="linear", antialias=False)


def _integer_ratio(n: int, m: int) -> bool:
  """True when resizing n -> m is an integer up- or downsampling factor."""
  return m % n == 0 or (n % m == 0 and (n // m) % 2 == 0) or n == m


def _resize_axis(x: jax.Array, axis: int, m: int) -> jax.Array:
  """Half-pixel bilinear resize of one axis from n to m = s*n or n/s.

  Output i samples input coordinate (i + 0.5) * n / m - 0.5, clamped at the
  edges. Upsampling by s: output s*k + r is a fixed lerp of input k and its
  neighbour k - 1 or k + 1 (offset (r + 0.5) / s - 0.5), so every phase r is
  one elementwise expression of shifted copies and the phases interleave by a
  reshape. Downsampling by an even s averages inputs s*k + s/2 - 1 and
  s*k + s/2 (their weights are exactly 0.5 without antialiasing).
  """
  n = x.shape[axis]
  if m == n:
    return x
  if n % m == 0:  # Downsample by an even factor.
    s = n // m
    y = x.reshape(x.shape[:axis] + (m, s) + x.shape[axis + 1:])
    lo = jax.lax.index_in_dim(y, s // 2 - 1, axis + 1, keepdims=False)
    hi = jax.lax.index_in_dim(y, s // 2, axis + 1, keepdims=False)
    return lo * 0.5 + hi * 0.5
  s = m // n
  pad = [(0, 0)] * x.ndim
  pad[axis] = (1, 1)
  xp = jnp.pad(x, pad, mode="edge")
  prev = jax.lax.slice_in_dim(xp, 0, n, axis=axis)
  nxt = jax.lax.slice_in_dim(xp, 2, n + 2, axis=axis)
  phases = []
  for r in range(s):
    d = (r + 0.5) / s - 0.5
    if d < 0:
      phases.append(prev * (-d) + x * (1.0 + d))
    else:
      phases.append(x * (1.0 - d) + nxt * d)
  y = jnp.stack(phases, axis=axis + 1)
  return y.reshape(x.shape[:axis] + (m,) + x.shape[axis + 1:])


def next_key(rngs: Any, stream: str = "dropout") -> jax.Array:
  """A fresh PRNG key from ``nnx.Rngs`` (named stream or default) or a key."""
  if isinstance(rngs, nnx.Rngs):
    return getattr(rngs, stream)() if stream in rngs else rngs()
  return rngs


REMAT_MODES = ("none", "block")


def remat_policy(remat: str = "none",
                 policy: str = "nothing_saveable") -> str | None:
  """Validates ``config.model.remat``; the policy name to use, or None."""
  if remat not in REMAT_MODES:
    raise ValueError(f"config.model.remat={remat!r}; expected one of "
                     f"{REMAT_MODES}.")
  if remat == "none":
    return None
  if not hasattr(jax.checkpoint_policies, policy):
    raise ValueError(f"config.model.remat_policy={policy!r} is not a "
                     "jax.checkpoint_policies member (e.g. nothing_saveable, "
                     "dots_saveable).")
  return policy


def call_block(block: nnx.Module, policy: str | None, *args, **kwargs):
  """``block(*args, **kwargs)``, rematerialised in the backward pass when
  ``policy`` names a ``jax.checkpoint_policies`` member.

  Trades one recomputed forward of the block for not keeping its
  activations (activation memory ~ 1 block instead of all of them).
  """
  if policy is None:
    return block(*args, **kwargs)
  fn = nnx.remat(lambda mod, a, kw: mod(*a, **kw),
                 policy=getattr(jax.checkpoint_policies, policy))
  return fn(block, args, kwargs)


class DropPath(nnx.Module):
  """Stochastic depth per sample (timm ``DropPath``, ``scale_by_keep``).

  Stores no RNG state: ``rngs`` is given at call time. Identity when
  ``deterministic`` (``model.eval()``), ``rngs is None`` or the rate is 0.
  """

  def __init__(self, rate: float, *, deterministic: bool = False):
    self.rate = float(rate)
    self.deterministic = deterministic

  def __call__(self, x: jax.Array, *, rngs: Any = None) -> jax.Array:
    if self.deterministic or rngs is None or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = jax.random.bernoulli(next_key(rngs), keep, shape)
    return x * mask.astype(x.dtype) / jnp.asarray(keep, x.dtype)


class Mlp(nnx.Module):
  """Linear -> exact GELU -> Linear (timm ``Mlp``; names fc1, fc2)."""

  def __init__(self, dim: int, hidden: int, *, rngs: nnx.Rngs,
               dtype: Dtype = jnp.float32):
    self.fc1 = nnx.Linear(dim, hidden, dtype=dtype, rngs=rngs)
    self.fc2 = nnx.Linear(hidden, dim, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(gelu(self.fc1(x)))


def batch_norm(features: int, *, rngs: nnx.Rngs, dtype: Dtype = jnp.float32,
               axis_name: str | None = None) -> nnx.BatchNorm:
  """``nn.BatchNorm2d`` defaults: eps 1e-5, torch momentum 0.1 (Flax 0.9).

  ``axis_name`` makes it a SyncBatchNorm over that mapped mesh axis.
  """
  return nnx.BatchNorm(features, momentum=0.9, epsilon=1e-5, dtype=dtype,
                       axis_name=axis_name, rngs=rngs)


# Output positions per image up to which a convolution runs as one im2col
# matmul on CPU (`conv_general_dilated`). XLA CPU's convolutions over such
# small grids (InvPT's preliminary decoder at H/32, its first UpEmbed and
# skip at H/16) spend their time transposing and reversing the kernel for
# the gradients: forward + backward of a 3x3 conv at 4x4 (384 -> 384) is
# 2.5x faster as a matmul, at 8x8 1.4x; at 16x16 and above XLA's own
# convolution is level or ahead.
IM2COL_MAX_POSITIONS = 128
_NHWC = ("NHWC", "HWIO", "NHWC")


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides,
                         padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count: int = 1,
                         precision=None, **kwargs) -> jax.Array:
  """``lax.conv_general_dilated``; an im2col matmul for some on CPU.

  The matmul form (:func:`im2col_conv`) is taken on CPU for ungrouped,
  stride-1 NHWC/HWIO convolutions with explicit padding that either have at
  most ``IM2COL_MAX_POSITIONS`` outputs per image or dilate their input
  (transposed convolutions, whose weight gradient XLA CPU runs as a generic
  convolution); it sums the same products in another order (float32
  rounding). Plugged into ``nnx.Conv`` by `conv`.
  """
  lhs_dilation = tuple(lhs_dilation or (1,) * (lhs.ndim - 2))
  rhs_dilation = tuple(rhs_dilation or (1,) * (lhs.ndim - 2))
  if (jax.default_backend() == "cpu" and lhs.ndim == 4
      and feature_group_count == 1 and not kwargs.get(
      "out_sharding") and kwargs.get("preferred_element_type") is None
      and not isinstance(padding, str)
      and all(s == 1 for s in window_strides)
      and dimension_numbers == jax.lax.conv_dimension_numbers(
          lhs.shape, rhs.shape, _NHWC)):
    out_hw = [(n - 1) * ld + 1 + lo + hi - (k - 1) * rd for n, k, (lo, hi),
              ld, rd in zip(lhs.shape[1:3], rhs.shape[:2], padding,
                            lhs_dilation, rhs_dilation)]
    if (out_hw[0] * out_hw[1] <= IM2COL_MAX_POSITIONS
        or max(lhs_dilation) > 1):
      return im2col_conv(lhs, rhs, padding, lhs_dilation=lhs_dilation,
                         rhs_dilation=rhs_dilation, precision=precision)
  return jax.lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count, precision=precision, **kwargs)


def im2col_conv(x: jax.Array, kernel: jax.Array, padding,
                lhs_dilation=(1, 1), rhs_dilation=(1, 1),
                precision=None) -> jax.Array:
  """Stride-1 NHWC x HWIO convolution as patches (B*H*W, kh*kw*I) @ kernel.

  ``lhs_dilation`` inserts zeros between input pixels (a transposed
  convolution); ``padding`` is ((top, bottom), (left, right)).
  """
  kh, kw, cin, cout = kernel.shape
  (pt, pb), (pl, pr) = padding
  (sh, sw), (dh, dw) = lhs_dilation, rhs_dilation
  xp = jax.lax.pad(x, jnp.zeros((), x.dtype),
                   [(0, 0, 0), (pt, pb, sh - 1), (pl, pr, sw - 1), (0, 0, 0)])
  oh, ow = xp.shape[1] - dh * (kh - 1), xp.shape[2] - dw * (kw - 1)
  cols = [xp[:, i * dh:i * dh + oh, j * dw:j * dw + ow]
          for i in range(kh) for j in range(kw)]
  cols = jnp.concatenate(cols, axis=-1) if len(cols) > 1 else cols[0]
  y = jnp.dot(cols.reshape(-1, kh * kw * cin), kernel.reshape(-1, cout),
              precision=precision)
  return y.reshape(x.shape[0], oh, ow, cout)


def conv(cin: int, cout: int, kernel: int, *, rngs: nnx.Rngs,
         dtype: Dtype = jnp.float32, padding: int = 0, stride: int = 1,
         dilation: int = 1, groups: int = 1, bias: bool = True) -> nnx.Conv:
  """``nn.Conv2d`` with symmetric integer padding, as a Flax conv."""
  return nnx.Conv(cin, cout, (kernel, kernel), strides=(stride, stride),
                  padding=((padding, padding), (padding, padding)),
                  kernel_dilation=(dilation, dilation),
                  feature_group_count=groups, use_bias=bias, dtype=dtype,
                  conv_general_dilated=conv_general_dilated, rngs=rngs)


class ConvTranspose(nnx.ConvTranspose):
  """``nnx.ConvTranspose`` (explicit padding, unflipped kernel) computed as
  an input-dilated convolution through `conv_general_dilated`.

  ``lax.conv_transpose`` is that same convolution; as an im2col matmul its
  weight gradient is one matmul instead of XLA CPU's generic convolution.
  Same parameters (and converter layout) as ``nnx.ConvTranspose``.
  """

  def __call__(self, inputs: jax.Array, out_sharding=None) -> jax.Array:
    if (self.transpose_kernel or self.mask is not None or out_sharding
        is not None or self.preferred_element_type is not None
        or isinstance(self.padding, (str, int)) or inputs.ndim != 4):
      return super().__call__(inputs, out_sharding)
    strides = self.strides or (1, 1)
    strides = (strides,) * 2 if isinstance(strides, int) else tuple(strides)
    dilation = self.kernel_dilation or (1, 1)
    dilation = ((dilation,) * 2 if isinstance(dilation, int)
                else tuple(dilation))
    bias = self.bias[...] if self.bias is not None else None
    x, kernel, bias = self.promote_dtype(
        (inputs, self.kernel[...], bias), dtype=self.dtype)
    dn = jax.lax.conv_dimension_numbers(x.shape, kernel.shape, _NHWC)
    y = conv_general_dilated(
        x, kernel, (1, 1), tuple(tuple(p) for p in self.padding),
        lhs_dilation=strides, rhs_dilation=dilation, dimension_numbers=dn,
        precision=self.precision)
    if bias is not None:
      y = y + bias
    return y


class ConvBNReLU(nnx.Module):
  """Conv (no bias by default) -> BatchNorm -> ReLU; names ``conv``, ``bn``."""

  def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs,
               dtype: Dtype = jnp.float32, kernel: int = 3, padding: int = 1,
               dilation: int = 1, bias: bool = False,
               bn_axis_name: str | None = None):
    self.conv = conv(cin, cout, kernel, padding=padding, dilation=dilation,
                     bias=bias, dtype=dtype, rngs=rngs)
    self.bn = batch_norm(cout, dtype=dtype, axis_name=bn_axis_name, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return jax.nn.relu(self.bn(self.conv(x)))
