"""InvPT's UP-Transformer stage: UpEmbed, joint task/spatial attention.

Port of prismformore/Multi-Task-Transformer ``InvPT/models/transformers/
invpt.py`` (``UpEmbed``, ``SelfAttention``, ``InvPTBlock``, ``InvPTStage``;
commit 870c6be100b95d44ffa0a9591775dd3faa2d5664); see
``shared/notes/invpt_architecture.md`` section 4. Task maps are stacked as
(B, T, h, w, C); flattening gives the reference's task-major token order.
Parity traps kept here: attention scale C^-0.5 with the FULL stage width,
message passing of the previous stage's PRE-softmax scores, LayerNorm eps
1e-5, exact GELU, bilinear resizes without antialias.
"""

from __future__ import annotations

from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp

from mtdense_jax.models.layers import common


class UpEmbed(nnx.Module):
  """x2 bilinear upsample -> 2 x (dilated conv3x3, no bias -> BN -> ReLU).

  Reference ``proj`` Sequential indices 1, 2, 4, 5 = conv1, bn1, conv2, bn2.
  """

  def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs, dtype: Any,
               bn_axis_name: str | None):
    kw = dict(padding=2, dilation=2, bias=False, dtype=dtype, rngs=rngs)
    bn = dict(dtype=dtype, axis_name=bn_axis_name, rngs=rngs)
    self.conv1 = common.conv(cin, cout, 3, **kw)
    self.bn1 = common.batch_norm(cout, **bn)
    self.conv2 = common.conv(cout, cout, 3, **kw)
    self.bn2 = common.batch_norm(cout, **bn)

  def __call__(self, x: jax.Array) -> jax.Array:
    _, h, w, _ = x.shape
    x = common.resize_bilinear(x, (2 * h, 2 * w))
    x = jax.nn.relu(self.bn1(self.conv1(x)))
    return jax.nn.relu(self.bn2(self.conv2(x)))


class QProj(nnx.Module):
  """Query projection "dw_bn": depthwise conv3x3 stride 2 (no bias) -> BN."""

  def __init__(self, dim: int, *, rngs: nnx.Rngs, dtype: Any,
               bn_axis_name: str | None):
    self.conv = common.conv(dim, dim, 3, stride=2, padding=1, groups=dim,
                            bias=False, dtype=dtype, rngs=rngs)
    self.bn = common.batch_norm(dim, dtype=dtype, axis_name=bn_axis_name,
                                rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.bn(self.conv(x))


class SelfAttention(nnx.Module):
  """Joint spatial and cross-task attention with score message passing."""

  def __init__(self, stage: int, num_tasks: int, dim: int, *,
               num_heads: int, kv_stride: int, rngs: nnx.Rngs, dtype: Any,
               bn_axis_name: str | None):
    self.num_heads = num_heads
    self.kv_stride = kv_stride
    self.scale = dim ** -0.5  # Full width, not the head width (reference).
    self.conv_proj_q = nnx.List([
        QProj(dim, rngs=rngs, dtype=dtype, bn_axis_name=bn_axis_name)
        for _ in range(num_tasks)])
    for name in ("proj_q", "proj_k", "proj_v", "proj"):
      setattr(self, name, nnx.Linear(dim, dim, dtype=dtype, rngs=rngs))
    # Stage 0 has no previous score; its reference fuse_attn is dead.
    self.fuse_attn = (common.conv(2 * num_heads, num_heads, 1, dtype=dtype,
                                  rngs=rngs) if stage else None)

  def _fuse(self, score: jax.Array, prev: jax.Array,
            grid: tuple[int, int, int]) -> jax.Array:
    """cat(score, x2 bilinear upsample of prev over the query grid) -> 1x1."""
    b, nh, _, nk = prev.shape
    n_t, hq, wq = grid
    up = prev.reshape(b * nh * n_t, hq // 2, wq // 2, nk)
    up = common.resize_bilinear(up, (hq, wq)).reshape(b, nh, -1, nk)
    both = jnp.concatenate([score, up], axis=1)  # current heads first
    # The 1x1 fuse_attn conv mixes heads; as an einsum over the head axis it
    # needs no moves of the (large) score tensors to channels-last and back.
    conv = self.fuse_attn
    both, kernel, bias = conv.promote_dtype(
        (both, conv.kernel[...], conv.bias[...]), dtype=conv.dtype)
    fused = jnp.einsum("bjqk,jh->bhqk", both, kernel[0, 0])
    return fused + bias[:, None, None]

  def __call__(self, y: jax.Array, prev: jax.Array | None
               ) -> tuple[jax.Array, jax.Array]:
    """(B, T, h, w, C) -> (output (B, T, h/2, w/2, C), pre-softmax score)."""
    b, n_t, h, w, c = y.shape
    s = self.kv_stride
    if h % s or w % s:
      raise ValueError(f"stage grid {h}x{w} not divisible by {s}")
    q = jnp.stack([proj(y[:, i]) for i, proj in enumerate(self.conv_proj_q)],
                  axis=1)
    hq, wq = q.shape[2:4]
    kv = y.reshape(b, n_t, h // s, s, w // s, s, c).mean(axis=(3, 5))
    kv = kv.reshape(b, -1, c)
    nh, hd = self.num_heads, c // self.num_heads
    q = self.proj_q(q.reshape(b, -1, c)).reshape(b, -1, nh, hd)
    k = self.proj_k(kv).reshape(b, -1, nh, hd)
    v = self.proj_v(kv).reshape(b, -1, nh, hd)
    score = jnp.einsum("bqhd,bkhd->bhqk", q, k) * self.scale
    if prev is not None:
      score = self._fuse(score, prev, (n_t, hq, wq))
    attn = jax.nn.softmax(score.astype(jnp.float32), axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", attn.astype(v.dtype), v)
    out = self.proj(out.reshape(b, -1, c))
    return out.reshape(b, n_t, hq, wq, c), score


class InvPTBlock(nnx.Module):
  """x += Up(Attn(LN1(x))); x += MLP(LN2(x)) on all task tokens jointly."""

  def __init__(self, stage: int, num_tasks: int, dim: int, *, num_heads: int,
               mlp_ratio: float, kv_stride: int, rngs: nnx.Rngs, dtype: Any,
               bn_axis_name: str | None):
    self.norm1 = nnx.LayerNorm(dim, epsilon=1e-5, dtype=dtype, rngs=rngs)
    self.attn = SelfAttention(stage, num_tasks, dim, num_heads=num_heads,
                              kv_stride=kv_stride, rngs=rngs, dtype=dtype,
                              bn_axis_name=bn_axis_name)
    self.norm2 = nnx.LayerNorm(dim, epsilon=1e-5, dtype=dtype, rngs=rngs)
    self.mlp = common.Mlp(dim, int(dim * mlp_ratio), rngs=rngs, dtype=dtype)

  def __call__(self, x: jax.Array, prev: jax.Array | None,
               capture: dict | None = None, name: str = ""
               ) -> tuple[jax.Array, jax.Array]:
    b, n_t, h, w, c = x.shape
    out, score = self.attn(self.norm1(x), prev)
    if capture is not None:
      capture[f"{name}/attn_score"] = score
      capture[f"{name}/attn_out"] = out.reshape(b, -1, c)
    hq, wq = out.shape[2:4]
    up = common.resize_bilinear(out.reshape(b * n_t, hq, wq, c), (h, w))
    x = x + up.reshape(x.shape)
    return x + self.mlp(self.norm2(x)), score


class InvPTStage(nnx.Module):
  """Optional per-task UpEmbed (+ backbone skip), then one InvPTBlock."""

  def __init__(self, stage: int, num_tasks: int, dim: int,
               in_dim: int | None, *, num_heads: int, mlp_ratio: float,
               kv_stride: int, rngs: nnx.Rngs, dtype: Any,
               bn_axis_name: str | None):
    self.stage = stage
    kw = dict(rngs=rngs, dtype=dtype, bn_axis_name=bn_axis_name)
    self.patch_embed = (nnx.List([UpEmbed(in_dim, dim, **kw)
                                  for _ in range(num_tasks)])
                        if stage else None)
    self.blocks = nnx.List([InvPTBlock(
        stage, num_tasks, dim, num_heads=num_heads, mlp_ratio=mlp_ratio,
        kv_stride=kv_stride, **kw)])

  def __call__(self, x: jax.Array, prev: jax.Array | None,
               skip: jax.Array | None, capture: dict | None = None
               ) -> tuple[jax.Array, jax.Array]:
    name = f"invpt/stage{self.stage}"
    if self.patch_embed is not None:
      x = jnp.stack([emb(x[:, i]) for i, emb in enumerate(self.patch_embed)],
                    axis=1)
      if capture is not None:
        capture[f"{name}/up_embed"] = x
      x = x + skip[:, None]
    score = prev
    for blk in self.blocks:
      x, score = blk(x, score, capture, name)
    return x, score
