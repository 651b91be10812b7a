"""Multi-scale deformable attention (Zhu et al., Deformable DETR, ICLR 2021)
in pure JAX.

Each query attends to ``n_points`` learned sampling locations per head and
per feature level around its reference point; the values there are read by
bilinear interpolation and averaged with softmax weights. The reference
implementations use a CUDA kernel, or PyTorch's ``F.grid_sample`` (HF's
``multi_scale_deformable_attention``); here sampling is four gathers with
exactly ``grid_sample``'s semantics (``mode="bilinear"``,
``padding_mode="zeros"``, ``align_corners=False``), so it runs on any backend,
differentiates with respect to values and locations, and needs no custom op.

Layout: values ``(B, S, heads, head_dim)`` with the levels' ``h*w`` pixels
concatenated row-major along S; locations are (x, y) in [0, 1] of each
level's extent.
"""

from __future__ import annotations

from typing import Any, Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

Shapes = Sequence[tuple[int, int]]


def grid_sample(value: jax.Array, grid: jax.Array) -> jax.Array:
  """``F.grid_sample(bilinear, zeros, align_corners=False)``, channels last.

  Args:
    value: ``(N, H, W, C)``.
    grid: ``(N, K, 2)`` sample points, (x, y) in [-1, 1] (-1: the left/top
      edge of the first pixel, 1: the right/bottom edge of the last).

  Returns:
    ``(N, K, C)``; corners outside the map contribute zero.
  """
  n, h, w, c = value.shape
  # align_corners=False: pixel i covers [i, i + 1) and has its centre at i.
  x = ((grid[..., 0] + 1) * w - 1) / 2
  y = ((grid[..., 1] + 1) * h - 1) / 2
  x0, y0 = jnp.floor(x), jnp.floor(y)
  fx, fy = x - x0, y - y0
  flat = value.reshape(n * h * w, c)
  base = (jnp.arange(n) * (h * w))[:, None]
  out = jnp.zeros((*grid.shape[:-1], c), value.dtype)
  for dy, wy in ((0, 1 - fy), (1, fy)):
    for dx, wx in ((0, 1 - fx), (1, fx)):
      xi, yi = x0 + dx, y0 + dy
      inside = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
      idx = (jnp.clip(yi, 0, h - 1).astype(jnp.int32) * w
             + jnp.clip(xi, 0, w - 1).astype(jnp.int32))
      weight = jnp.where(inside, wx * wy, 0).astype(value.dtype)
      out = out + flat[base + idx] * weight[..., None]
  return out


def multi_scale_deformable_attention(value: jax.Array, shapes: Shapes,
                                     locations: jax.Array,
                                     weights: jax.Array) -> jax.Array:
  """Samples every level at its points and sums them with the weights.

  Args:
    value: ``(B, S, heads, head_dim)``, S = sum of h*w over ``shapes``.
    shapes: ``[(h, w), ...]`` per level (static).
    locations: ``(B, Q, heads, levels, points, 2)``, (x, y) in [0, 1].
    weights: ``(B, Q, heads, levels, points)`` (already normalised).

  Returns:
    ``(B, Q, heads * head_dim)``, head-major channels.
  """
  b, _, heads, hd = value.shape
  q, points = locations.shape[1], locations.shape[4]
  if sum(h * w for h, w in shapes) != value.shape[1]:
    raise ValueError(f"value has {value.shape[1]} positions but the level "
                     f"shapes {list(shapes)} hold "
                     f"{sum(h * w for h, w in shapes)}")
  out = jnp.zeros((b, heads, q, hd), value.dtype)
  start = 0
  for lvl, (h, w) in enumerate(shapes):
    v = value[:, start:start + h * w].transpose(0, 2, 1, 3)
    start += h * w
    grid = 2 * locations[:, :, :, lvl] - 1           # (B, Q, heads, P, 2)
    grid = grid.transpose(0, 2, 1, 3, 4).reshape(b * heads, q * points, 2)
    s = grid_sample(v.reshape(b * heads, h, w, hd), grid)
    s = s.reshape(b, heads, q, points, hd)
    a = weights[:, :, :, lvl].transpose(0, 2, 1, 3).astype(value.dtype)
    out = out + jnp.einsum("bhqpd,bhqp->bhqd", s, a)
  return out.transpose(0, 2, 1, 3).reshape(b, q, heads * hd)


def reference_points(shapes: Shapes) -> np.ndarray:
  """``(S, 2)`` pixel centres (x, y) of every level, normalised to [0, 1]
  (Deformable DETR's encoder reference points without padding)."""
  pts = []
  for h, w in shapes:
    y, x = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w,
                       indexing="ij")
    pts.append(np.stack([x.reshape(-1), y.reshape(-1)], -1))
  return np.concatenate(pts).astype(np.float32)


class MSDeformAttn(nnx.Module):
  """Queries attend to sampled points of a multi-scale value map.

  The names follow Deformable DETR (``sampling_offsets``,
  ``attention_weights``, ``value_proj``, ``output_proj``) so converters map
  checkpoints one to one. Offsets are in pixels of each level.
  """

  def __init__(self, dim: int, num_heads: int, n_levels: int, n_points: int,
               *, rngs: nnx.Rngs, dtype: Any = jnp.float32):
    if dim % num_heads:
      raise ValueError(f"MSDeformAttn dim {dim} is not divisible by "
                       f"num_heads {num_heads}")
    self.num_heads, self.n_levels, self.n_points = num_heads, n_levels, n_points
    n = num_heads * n_levels * n_points
    # Deformable DETR's init: zero offset weights, biases spreading each
    # head's points along its own direction (so training starts sampling a
    # neighbourhood, not one point).
    theta = np.arange(num_heads) * (2 * np.pi / num_heads)
    d = np.stack([np.cos(theta), np.sin(theta)], -1)
    d = d / np.abs(d).max(-1, keepdims=True)
    bias = d[:, None, None] * np.arange(1, n_points + 1)[None, None, :, None]
    bias = np.broadcast_to(bias, (num_heads, n_levels, n_points, 2))
    self.sampling_offsets = nnx.Linear(
        dim, 2 * n, kernel_init=nnx.initializers.zeros,
        bias_init=lambda *_: jnp.asarray(bias.reshape(-1), jnp.float32),
        dtype=dtype, rngs=rngs)
    self.attention_weights = nnx.Linear(
        dim, n, kernel_init=nnx.initializers.zeros, dtype=dtype, rngs=rngs)
    xavier = nnx.initializers.xavier_uniform()
    self.value_proj = nnx.Linear(dim, dim, kernel_init=xavier, dtype=dtype,
                                 rngs=rngs)
    self.output_proj = nnx.Linear(dim, dim, kernel_init=xavier, dtype=dtype,
                                  rngs=rngs)

  def __call__(self, query: jax.Array, reference: jax.Array,
               value: jax.Array, shapes: Shapes) -> jax.Array:
    """query ``(B, Q, dim)`` (with position added), reference ``(Q, 2)`` or
    ``(B, Q, 2)`` in [0, 1], value ``(B, S, dim)`` -> ``(B, Q, dim)``."""
    b, q, _ = query.shape
    heads, lv, pts = self.num_heads, self.n_levels, self.n_points
    if len(shapes) != lv:
      raise ValueError(f"MSDeformAttn built for {lv} levels, got "
                       f"{len(shapes)} shapes")
    v = self.value_proj(value).reshape(b, value.shape[1], heads, -1)
    # Locations stay float32 under a bf16 compute dtype: bf16 cannot tell
    # neighbouring pixels apart past ~256 (8-bit mantissa).
    off = self.sampling_offsets(query).astype(jnp.float32).reshape(
        b, q, heads, lv, pts, 2)
    logits = self.attention_weights(query).reshape(b, q, heads, lv * pts)
    attn = jax.nn.softmax(logits.astype(jnp.float32), -1).reshape(
        b, q, heads, lv, pts)
    norm = np.array([[w, h] for h, w in shapes], np.float32)
    ref = jnp.broadcast_to(jnp.asarray(reference, jnp.float32), (b, q, 2))
    loc = ref[:, :, None, None, None, :] + off / norm[None, None, None, :,
                                                      None, :]
    out = multi_scale_deformable_attention(v, shapes, loc, attn)
    return self.output_proj(out)
