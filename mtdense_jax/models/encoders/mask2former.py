"""Mask2Former (Cheng et al., CVPR 2022) with a Swin backbone, as an encoder.

Port of HF transformers' ``Mask2FormerModel`` (``modeling_mask2former.py``;
MT-CP's shared encoder is ``facebook/mask2former-swin-small-ade-semantic``):

* backbone: our Swin v1 (``swin.py``) computing as HF's ``SwinBackbone``
  does (pad before the shift, windows always partitioned, a LayerNorm on
  every stage output);
* pixel decoder: 1x1 conv + GroupNorm projections of the coarsest
  ``num_feature_levels`` maps, sine position + learned level embeddings,
  ``encoder_layers`` post-norm multi-scale deformable attention layers
  (:mod:`..layers.deform_attn`), then an FPN (lateral 1x1, bilinear
  upsampling, 3x3 conv + GroupNorm + ReLU) down to ``common_stride`` and a
  1x1 ``mask_projection``: the pixel embeddings
  ``pixel_decoder_last_hidden_state``;
* transformer decoder: learned query features and position embeddings,
  ``decoder_layers - 1`` layers of masked cross-attention (each query sees
  only the pixels its previous mask prediction keeps; the levels are
  visited coarse to fine in turn), self-attention and FFN, a shared
  LayerNorm and mask MLP that predict masks after every layer. The last
  prediction is ``masks_queries_logits``; an optional class head
  (``num_labels > 0``) gives ``class_queries_logits``.

Output, channels last (HF returns channels first)::

  {"maps": [pixel embeddings (stride 4, mask_feature_size),
            multi-scale maps (strides 8, 16, 32, feature_size)],
   "pixel_decoder_last_hidden_state": (B, H/4, W/4, mask_feature_size),
   "masks_queries_logits": (B, H/4, W/4, num_queries),
   "encoder_last_hidden_state": the backbone's stride-32 map,
   "transformer_decoder_last_hidden_state": (B, num_queries, hidden_dim),
   ["class_queries_logits": (B, num_queries, num_labels + 1)]}

so a decoder reads the maps (the baseline decoder) or, by name, the pixel
embeddings and mask logits (MT-CP). Every size comes from the config.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from mtdense_jax.models import converters
from mtdense_jax.models import features as feats_lib
from mtdense_jax.models.encoders import swin
from mtdense_jax.models.layers import common
from mtdense_jax.models.layers import deform_attn

_SWIN_S = dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24),
               window_size=7)
# facebook/mask2former-swin-small-ade-semantic (its config.json: HF's
# Mask2FormerConfig defaults with a Swin-S backbone, 150 ADE20k labels).
VARIANTS = {
    "swin_s": dict(**_SWIN_S, feature_size=256, mask_feature_size=256,
                   hidden_dim=256, encoder_layers=6,
                   encoder_feedforward_dim=1024, decoder_layers=10,
                   num_attention_heads=8, dim_feedforward=2048,
                   num_queries=100),
    "tiny": dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2),
                 window_size=4, feature_size=32, mask_feature_size=32,
                 hidden_dim=32, encoder_layers=1, encoder_feedforward_dim=64,
                 decoder_layers=4, num_attention_heads=2, dim_feedforward=64,
                 num_queries=8),
}
_DEFAULTS = dict(patch_size=4, mlp_ratio=4.0, drop_path_rate=0.3,
                 num_feature_levels=3, n_points=4, common_stride=4,
                 num_groups=32, pre_norm=False,
                 enforce_input_projection=False, num_labels=0)
_NEG = float(np.finfo(np.float32).min)


def _ln(dim: int, rngs: nnx.Rngs, dtype: Any) -> nnx.LayerNorm:
  return nnx.LayerNorm(dim, epsilon=1e-5, dtype=dtype, rngs=rngs)


def sine_position(h: int, w: int, dim: int,
                  temperature: float = 10000.0) -> np.ndarray:
  """``(h, w, dim)`` normalised sine embedding (DETR's, as HF's
  ``Mask2FormerSinePositionEmbedding(dim // 2, normalize=True)``): the y
  half then the x half, each alternating sin and cos."""
  if dim % 2:
    raise ValueError(f"sine position embedding needs an even dim, got {dim}")
  npf = dim // 2
  f32 = np.float32
  scale = f32(2 * math.pi)
  y = np.arange(1, h + 1, dtype=f32) / (f32(h) + f32(1e-6)) * scale
  x = np.arange(1, w + 1, dtype=f32) / (f32(w) + f32(1e-6)) * scale
  dim_t = f32(temperature) ** (2 * (np.arange(npf) // 2).astype(f32) / npf)

  def embed(v):  # (n,) -> (n, npf): sin on even channels, cos on odd.
    p = v[:, None] / dim_t
    return np.where(np.arange(npf) % 2 == 0, np.sin(p), np.cos(p))

  py = np.broadcast_to(embed(y)[:, None], (h, w, npf))
  px = np.broadcast_to(embed(x)[None, :], (h, w, npf))
  return np.concatenate([py, px], -1).astype(f32)


def _call(block: nnx.Module, policy: str | None, *args, **static):
  """``block(*args, **static)``, rematerialised under ``policy``; ``static``
  (level shapes) stays Python, which ``common.call_block`` would trace."""
  if policy is None:
    return block(*args, **static)
  fn = nnx.remat(lambda mod, *a: mod(*a, **static),
                 policy=getattr(jax.checkpoint_policies, policy))
  return fn(block, *args)


# -------------------------------------------------------------- pixel decoder

class ConvNorm(nnx.Module):
  """Conv -> GroupNorm (-> ReLU): HF's ``Sequential(conv, norm[, relu])``."""

  def __init__(self, cin: int, cout: int, kernel: int, *, bias: bool,
               relu: bool, groups: int, rngs: nnx.Rngs, dtype: Any):
    if cout % groups:
      raise ValueError(f"GroupNorm: {cout} channels are not divisible into "
                       f"num_groups={groups}")
    self.conv = common.conv(cin, cout, kernel, padding=kernel // 2,
                            bias=bias, rngs=rngs, dtype=dtype)
    self.norm = nnx.GroupNorm(cout, num_groups=groups, epsilon=1e-5,
                              use_fast_variance=False, dtype=dtype, rngs=rngs)
    self.relu = relu

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.norm(self.conv(x))
    return jax.nn.relu(x) if self.relu else x


class DeformEncoderLayer(nnx.Module):
  """Post-norm deformable self-attention over all levels, then a ReLU FFN."""

  def __init__(self, dim: int, heads: int, levels: int, points: int,
               ffn: int, *, rngs: nnx.Rngs, dtype: Any):
    self.self_attn = deform_attn.MSDeformAttn(dim, heads, levels, points,
                                              rngs=rngs, dtype=dtype)
    self.self_attn_layer_norm = _ln(dim, rngs, dtype)
    self.fc1 = nnx.Linear(dim, ffn, dtype=dtype, rngs=rngs)
    self.fc2 = nnx.Linear(ffn, dim, dtype=dtype, rngs=rngs)
    self.final_layer_norm = _ln(dim, rngs, dtype)

  def __call__(self, x: jax.Array, pos: jax.Array, ref: jax.Array, *,
               shapes: tuple[tuple[int, int], ...]) -> jax.Array:
    x = self.self_attn_layer_norm(
        x + self.self_attn(x + pos, ref, x, shapes))
    return self.final_layer_norm(
        x + self.fc2(jax.nn.relu(self.fc1(x))))


class PixelDecoder(nnx.Module):
  """Backbone maps (ascending stride) -> (pixel embeddings, multi-scale
  maps coarsest first)."""

  def __init__(self, in_channels: Sequence[int], strides: Sequence[int], *,
               feature_size: int, mask_feature_size: int, levels: int,
               heads: int, points: int, layers: int, ffn: int,
               common_stride: int, groups: int, rngs: nnx.Rngs, dtype: Any,
               remat_policy: str | None):
    if levels > len(in_channels):
      raise ValueError(f"num_feature_levels={levels} but the backbone has "
                       f"{len(in_channels)} stages")
    self.levels, self.remat_policy = levels, remat_policy
    trans = list(in_channels[-levels:])[::-1]   # coarsest first
    self.level_embed = nnx.Param(
        jax.random.normal(rngs.params(), (levels, feature_size)))
    self.input_projections = nnx.List([
        ConvNorm(c, feature_size, 1, bias=True, relu=False, groups=groups,
                 rngs=rngs, dtype=dtype) for c in trans])
    self.encoder = nnx.List([
        DeformEncoderLayer(feature_size, heads, levels, points, ffn,
                           rngs=rngs, dtype=dtype) for _ in range(layers)])
    self.mask_projection = common.conv(feature_size, mask_feature_size, 1,
                                       rngs=rngs, dtype=dtype)
    finest = min(strides[-levels:])
    self.num_fpn = int(round(math.log2(finest) - math.log2(common_stride)))
    if self.num_fpn < 0 or self.num_fpn > len(in_channels) - levels:
      raise ValueError(f"common_stride={common_stride} needs backbone maps "
                       f"the backbone (strides {tuple(strides)}) lacks")
    self.mask_stride = finest // 2 ** self.num_fpn
    # Indexed by backbone map (HF's adapter_{i+1} / layer_{i+1}).
    self.adapters = nnx.List([
        ConvNorm(c, feature_size, 1, bias=False, relu=False, groups=groups,
                 rngs=rngs, dtype=dtype) for c in in_channels[:self.num_fpn]])
    self.outputs = nnx.List([
        ConvNorm(feature_size, feature_size, 3, bias=False, relu=True,
                 groups=groups, rngs=rngs, dtype=dtype)
        for _ in range(self.num_fpn)])

  def __call__(self, maps: Sequence[jax.Array]):
    srcs = list(maps)[::-1][:self.levels]
    xs = [proj(x) for proj, x in zip(self.input_projections, srcs)]
    b, dim = xs[0].shape[0], xs[0].shape[-1]
    shapes = tuple((x.shape[1], x.shape[2]) for x in xs)
    flat = jnp.concatenate([x.reshape(b, -1, dim) for x in xs], 1)
    lvl = self.level_embed[...]
    pos = jnp.concatenate([
        jnp.asarray(sine_position(h, w, dim).reshape(h * w, dim)) + lvl[i]
        for i, (h, w) in enumerate(shapes)]).astype(flat.dtype)
    ref = jnp.asarray(deform_attn.reference_points(shapes))
    for layer in self.encoder:
      flat = _call(layer, self.remat_policy, flat, pos, ref, shapes=shapes)
    outs, start = [], 0
    for h, w in shapes:
      outs.append(flat[:, start:start + h * w].reshape(b, h, w, dim))
      start += h * w
    for i in reversed(range(self.num_fpn)):   # coarse to fine
      lateral = self.adapters[i](maps[i])
      up = common.resize_bilinear(outs[-1], lateral.shape[1:3])
      outs.append(self.outputs[i](lateral + up))
    return self.mask_projection(outs[-1]), outs[:self.levels]


# --------------------------------------------------------- transformer decoder

def _attend(q: jax.Array, k: jax.Array, v: jax.Array, heads: int,
            block: jax.Array | None = None) -> jax.Array:
  """Multi-head attention of scaled ``q`` (B, Q, D) over (B, S, D);
  ``block`` (B, Q, S) True = may not attend."""
  b, nq, d = q.shape
  hd = d // heads
  q = q.reshape(b, nq, heads, hd)
  k = k.reshape(b, -1, heads, hd)
  v = v.reshape(b, -1, heads, hd)
  s = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
  if block is not None:
    s = jnp.where(block[:, None], _NEG, s)
  a = jax.nn.softmax(s, -1).astype(v.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", a, v).reshape(b, nq, d)


class CrossAttention(nnx.Module):
  """``nn.MultiheadAttention``: packed ``in_proj`` (q, k, v rows), out_proj."""

  def __init__(self, dim: int, heads: int, *, rngs: nnx.Rngs, dtype: Any):
    if dim % heads:
      raise ValueError(f"hidden_dim {dim} is not divisible by {heads} heads")
    self.heads, self.dtype = heads, dtype
    self.in_proj = nnx.Linear(dim, 3 * dim, dtype=dtype, rngs=rngs)
    self.out_proj = nnx.Linear(dim, dim, dtype=dtype, rngs=rngs)

  def _proj(self, x: jax.Array, i: int) -> jax.Array:
    d = x.shape[-1]
    kernel = self.in_proj.kernel[...][:, i * d:(i + 1) * d]
    bias = self.in_proj.bias[...][i * d:(i + 1) * d]
    return x @ kernel.astype(self.dtype) + bias.astype(self.dtype)

  def __call__(self, query: jax.Array, key: jax.Array, value: jax.Array,
               block: jax.Array) -> jax.Array:
    q = self._proj(query, 0) * (query.shape[-1] // self.heads) ** -0.5
    out = _attend(q, self._proj(key, 1), self._proj(value, 2), self.heads,
                  block)
    return self.out_proj(out)


class SelfAttention(nnx.Module):
  """DETR attention: position added to queries and keys, not values."""

  def __init__(self, dim: int, heads: int, *, rngs: nnx.Rngs, dtype: Any):
    self.heads = heads
    self.q_proj = nnx.Linear(dim, dim, dtype=dtype, rngs=rngs)
    self.k_proj = nnx.Linear(dim, dim, dtype=dtype, rngs=rngs)
    self.v_proj = nnx.Linear(dim, dim, dtype=dtype, rngs=rngs)
    self.out_proj = nnx.Linear(dim, dim, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, pos: jax.Array) -> jax.Array:
    qk = x + pos
    q = self.q_proj(qk) * (x.shape[-1] // self.heads) ** -0.5
    return self.out_proj(_attend(q, self.k_proj(qk), self.v_proj(x),
                                 self.heads))


class DecoderLayer(nnx.Module):
  """Masked cross-attention -> self-attention -> FFN (post- or pre-norm)."""

  def __init__(self, dim: int, heads: int, ffn: int, pre_norm: bool, *,
               rngs: nnx.Rngs, dtype: Any):
    self.pre_norm = pre_norm
    self.cross_attn = CrossAttention(dim, heads, rngs=rngs, dtype=dtype)
    self.cross_attn_layer_norm = _ln(dim, rngs, dtype)
    self.self_attn = SelfAttention(dim, heads, rngs=rngs, dtype=dtype)
    self.self_attn_layer_norm = _ln(dim, rngs, dtype)
    self.fc1 = nnx.Linear(dim, ffn, dtype=dtype, rngs=rngs)
    self.fc2 = nnx.Linear(ffn, dim, dtype=dtype, rngs=rngs)
    self.final_layer_norm = _ln(dim, rngs, dtype)

  def __call__(self, x: jax.Array, qpos: jax.Array, mem: jax.Array,
               pos: jax.Array, block: jax.Array) -> jax.Array:
    def cross(h):
      return self.cross_attn(h + qpos, mem + pos, mem, block)

    def ffn(h):
      return self.fc2(jax.nn.relu(self.fc1(h)))

    if self.pre_norm:
      x = x + cross(self.cross_attn_layer_norm(x))
      x = x + self.self_attn(self.self_attn_layer_norm(x), qpos)
      return x + ffn(self.final_layer_norm(x))
    x = self.cross_attn_layer_norm(x + cross(x))
    x = self.self_attn_layer_norm(x + self.self_attn(x, qpos))
    return self.final_layer_norm(x + ffn(x))


class TransformerDecoder(nnx.Module):
  """Learned queries refined against the multi-scale maps; a mask per
  query after every layer, whose foreground the next layer attends to."""

  def __init__(self, in_features: int, *, hidden_dim: int, mask_dim: int,
               levels: int, queries: int, heads: int, ffn: int, layers: int,
               pre_norm: bool, enforce_input_projection: bool,
               rngs: nnx.Rngs, dtype: Any, remat_policy: str | None):
    if layers < 1:
      raise ValueError(f"decoder_layers={layers}; needs at least 1 (the "
                       "prediction from the queries alone)")
    self.levels, self.heads, self.remat_policy = levels, heads, remat_policy
    normal = jax.random.normal
    self.queries_embedder = nnx.Param(normal(rngs.params(),
                                             (queries, hidden_dim)))
    self.queries_features = nnx.Param(normal(rngs.params(),
                                             (queries, hidden_dim)))
    self.level_embed = nnx.Param(normal(rngs.params(), (levels, hidden_dim)))
    project = in_features != hidden_dim or enforce_input_projection
    self.input_projections = nnx.List([
        common.conv(in_features, hidden_dim, 1, rngs=rngs, dtype=dtype)
        for _ in range(levels if project else 0)])
    # HF counts the query-only prediction as a layer.
    self.layers = nnx.List([
        DecoderLayer(hidden_dim, heads, ffn, pre_norm, rngs=rngs, dtype=dtype)
        for _ in range(layers - 1)])
    self.layernorm = _ln(hidden_dim, rngs, dtype)
    self.mask_embedder = nnx.List([
        nnx.Linear(hidden_dim, d, dtype=dtype, rngs=rngs)
        for d in (hidden_dim, hidden_dim, mask_dim)])

  def predict(self, x: jax.Array, pixels: jax.Array,
              size: tuple[int, int]) -> tuple[jax.Array, jax.Array]:
    """LayerNormed queries -> mask logits (B, H, W, Q) at the pixel
    embeddings' size, and the (B, Q, h*w) "may not attend" mask at
    ``size`` (logit < 0 after bilinear resizing), detached."""
    for i, lin in enumerate(self.mask_embedder):
      x = lin(x)
      x = jax.nn.relu(x) if i < len(self.mask_embedder) - 1 else x
    logits = jnp.einsum("bqc,bhwc->bhwq", x, pixels.astype(x.dtype))
    small = common.resize_bilinear(logits, size)
    block = jax.nn.sigmoid(small.astype(jnp.float32)) < 0.5
    b, h, w, q = block.shape
    block = jax.lax.stop_gradient(block.reshape(b, h * w, q).transpose(0, 2, 1))
    return logits, block

  def __call__(self, maps: Sequence[jax.Array], pixels: jax.Array):
    """maps coarsest first (B, h, w, in_features); pixels (B, H, W, M)."""
    mems, poss, sizes = [], [], []
    lvl = self.level_embed[...]
    for i, x in enumerate(maps[:self.levels]):
      b, h, w, _ = x.shape
      if len(self.input_projections):
        x = self.input_projections[i](x)
      d = x.shape[-1]
      mems.append(x.reshape(b, h * w, d) + lvl[i].astype(x.dtype))
      poss.append(jnp.asarray(sine_position(h, w, d).reshape(1, h * w, d),
                              x.dtype))
      sizes.append((h, w))
    dtype = mems[0].dtype
    b = pixels.shape[0]
    x = jnp.broadcast_to(self.queries_features[...].astype(dtype),
                         (b, *self.queries_features.shape))
    qpos = jnp.broadcast_to(self.queries_embedder[...].astype(dtype),
                            x.shape)
    normed = self.layernorm(x)
    logits, block = self.predict(normed, pixels, sizes[0])
    for i, layer in enumerate(self.layers):
      lv = i % self.levels
      # A query whose mask is empty attends everywhere (as HF).
      block = block & ~jnp.all(block, -1, keepdims=True)
      x = common.call_block(layer, self.remat_policy, x, qpos, mems[lv],
                            poss[lv], block)
      normed = self.layernorm(x)
      logits, block = self.predict(normed, pixels,
                                   sizes[(i + 1) % self.levels])
    return x, normed, logits


# -------------------------------------------------------------------- model

class Mask2Former(nnx.Module):
  """Image (B, H, W, 3) -> features dict (see the module docstring)."""

  def __init__(self, *, img_size: tuple[int, int], cfg: Mapping[str, Any],
               rngs: nnx.Rngs, dtype: Any = jnp.float32,
               remat: str = "none", remat_policy: str = "nothing_saveable"):
    c = dict(cfg)
    self.dtype = dtype
    policy = common.remat_policy(remat, remat_policy)
    self.backbone = swin.build(
        "T", img_size=img_size, rngs=rngs, dtype=dtype, remat=remat,
        remat_policy=remat_policy, window_rule="hf", always_partition=True,
        out_norms="all", **{k: c[k] for k in (
            "embed_dim", "depths", "num_heads", "window_size", "patch_size",
            "mlp_ratio", "drop_path_rate")})
    levels, strides = c["num_feature_levels"], self.backbone.out_strides
    self.pixel_decoder = PixelDecoder(
        self.backbone.out_channels, strides,
        feature_size=c["feature_size"],
        mask_feature_size=c["mask_feature_size"], levels=levels,
        heads=c["num_attention_heads"], points=c["n_points"],
        layers=c["encoder_layers"], ffn=c["encoder_feedforward_dim"],
        common_stride=c["common_stride"], groups=c["num_groups"],
        rngs=rngs, dtype=dtype, remat_policy=policy)
    self.transformer = TransformerDecoder(
        c["feature_size"], hidden_dim=c["hidden_dim"],
        mask_dim=c["mask_feature_size"], levels=levels,
        queries=c["num_queries"], heads=c["num_attention_heads"],
        ffn=c["dim_feedforward"], layers=c["decoder_layers"],
        pre_norm=c["pre_norm"],
        enforce_input_projection=c["enforce_input_projection"], rngs=rngs,
        dtype=dtype, remat_policy=policy)
    self.class_predictor = (
        nnx.Linear(c["hidden_dim"], c["num_labels"] + 1, dtype=dtype,
                   rngs=rngs) if c["num_labels"] else None)
    extras = ["pixel_decoder_last_hidden_state", "masks_queries_logits",
              "encoder_last_hidden_state",
              "transformer_decoder_last_hidden_state"]
    if c["num_labels"]:
      extras.append("class_queries_logits")
    ms = sorted(strides[-levels:])
    self.produces = feats_lib.spec(
        (self.pixel_decoder.mask_stride, *ms),
        (c["mask_feature_size"],) + (c["feature_size"],) * levels,
        names=("pixel_decoder_last_hidden_state",
               *(f"multi_scale_s{s}" for s in ms)),
        extras=extras)
    self.out_strides = self.produces.strides
    self.out_channels = self.produces.channels

  def __call__(self, image: jax.Array, *,
               rngs: Any = None) -> feats_lib.Features:
    stages = self.backbone(image.astype(self.dtype), rngs=rngs)
    maps = [stages[s] for s in sorted(stages)]
    pixels, multi = self.pixel_decoder(maps)
    hidden, normed, masks = self.transformer(multi, pixels)
    out = {"maps": [pixels, *multi[::-1]],
           "pixel_decoder_last_hidden_state": pixels,
           "masks_queries_logits": masks,
           "encoder_last_hidden_state": maps[-1],
           "transformer_decoder_last_hidden_state": hidden}
    if self.class_predictor is not None:
      out["class_queries_logits"] = self.class_predictor(normed)
    return out


def config(variant: str, **overrides) -> dict[str, Any]:
  """The variant's full config with ``overrides`` applied (checked)."""
  if variant not in VARIANTS:
    raise KeyError(f"Unknown Mask2Former variant {variant!r}; one of "
                   f"{list(VARIANTS)}")
  cfg = {**_DEFAULTS, **VARIANTS[variant]}
  unknown = set(overrides) - set(cfg)
  if unknown:
    raise TypeError(f"Unknown Mask2Former overrides {sorted(unknown)}; "
                    f"known: {sorted(cfg)}")
  cfg.update(overrides)
  for key in ("depths", "num_heads"):
    cfg[key] = tuple(cfg[key])
  return cfg


def build(variant: str, *, img_size: tuple[int, int], rngs: nnx.Rngs,
          dtype: Any = jnp.float32, remat: str = "none",
          remat_policy: str = "nothing_saveable",
          **overrides) -> Mask2Former:
  """Builds "swin_s" (MT-CP's encoder) or "tiny" (tests, smoke runs).

  Overrides: the Swin backbone's embed_dim, depths, num_heads, window_size,
  patch_size, mlp_ratio, drop_path_rate; HF Mask2FormerConfig's
  feature_size, mask_feature_size, hidden_dim, encoder_layers,
  encoder_feedforward_dim, decoder_layers (counting the query-only
  prediction), num_attention_heads, dim_feedforward, num_queries,
  common_stride, pre_norm, enforce_input_projection, num_labels (> 0 adds
  the class head); num_feature_levels, n_points and num_groups (GroupNorm),
  which HF fixes at 3, 4 and 32. ``remat="block"`` checkpoints every Swin
  block, deformable encoder layer and decoder layer.
  """
  cfg = config(variant, **overrides)
  return Mask2Former(img_size=tuple(img_size), cfg=cfg, rngs=rngs,
                     dtype=dtype, remat=remat, remat_policy=remat_policy)


# ---------------------------------------------------------------- converters

_PIXEL_DECODER = (
    (r"^input_projections\.(\d+)\.conv\.", r"input_projections.\1.0."),
    (r"^input_projections\.(\d+)\.norm\.", r"input_projections.\1.1."),
    (r"^encoder\.(\d+)\.", r"encoder.layers.\1."),
    (r"^adapters\.(\d+)\.(conv|norm)\.",
     lambda m: f"adapter_{int(m[1]) + 1}.{'0' if m[2] == 'conv' else '1'}."),
    (r"^outputs\.(\d+)\.(conv|norm)\.",
     lambda m: f"layer_{int(m[1]) + 1}.{'0' if m[2] == 'conv' else '1'}."),
)
_TRANSFORMER = (
    (r"^(queries_embedder|queries_features|level_embed)$", r"\1.weight"),
    (r"^layers\.(\d+)\.cross_attn\.in_proj\.(weight|bias)$",
     r"decoder.layers.\1.cross_attn.in_proj_\2"),
    (r"^layers\.", "decoder.layers."),
    (r"^layernorm\.", "decoder.layernorm."),
    (r"^mask_embedder\.(\d+)\.", r"decoder.mask_predictor.mask_embedder.\1.0."),
)


def _renamer(rules):
  def rename(key: str) -> str:
    for pat, rep in rules:
      key = re.sub(pat, rep, key)
    return key
  return rename


def _prefixed(path_prefix: tuple, state: nnx.State) -> list:
  return [(path_prefix + tuple(p), v) for p, v in nnx.to_flat_state(state)]


def from_hf(state_dict: Mapping[str, np.ndarray], model: Mask2Former, *,
            strict: bool = True) -> nnx.State:
  """HF ``Mask2FormerModel`` / ``Mask2FormerForUniversalSegmentation``
  (``model.`` prefix) state_dict -> an ``nnx.State`` of the whole model.

  The backbone may be stored as published (``encoder.embeddings.*``,
  ``attention.self.query``) or as transformers 5 writes it
  (``encoder.swin.*``, ``q_proj``). ``class_predictor`` is read when the
  model has a class head (``num_labels > 0``) and ignored otherwise; the
  loss buffer ``criterion.empty_weight`` and the backbone's unused final
  ``layernorm`` are ignored.
  """
  from mtdense_jax.convert import torch_utils  # pylint: disable=g-import-not-at-top
  pre = ("model." if any(k.startswith("model.pixel_level_module.")
                         for k in state_dict) else "")
  parts = {"backbone": pre + "pixel_level_module.encoder.",
           "pixel_decoder": pre + "pixel_level_module.decoder.",
           "transformer": pre + "transformer_module."}
  subs = {name: {} for name in parts}
  rest = {}
  for k, v in state_dict.items():
    for name, p in parts.items():
      if k.startswith(p):
        subs[name][k[len(p):]] = np.asarray(v)
        break
    else:
      rest[k] = np.asarray(v)
  backbone = {}
  for k, v in subs["backbone"].items():
    k = re.sub(r"^swin\.", "", k)
    m = re.match(r"hidden_states_norms\.stage(\d+)\.(weight|bias)$", k)
    if m:
      backbone[f"out_norms.{int(m[1]) - 1}.{m[2]}"] = v
    elif not k.startswith("layernorm."):   # SwinBackbone never applies it.
      backbone[k] = v
  if not backbone and strict:
    raise torch_utils.ConversionError(
        f"no backbone weights under {parts['backbone']!r}: not a HF "
        "Mask2Former state_dict")
  flat = _prefixed(("backbone",),
                   swin.from_hf(backbone, model.backbone, strict=strict))
  for name, rules in (("pixel_decoder", _PIXEL_DECODER),
                      ("transformer", _TRANSFORMER)):
    state, _ = torch_utils.convert(subs[name], getattr(model, name),
                                   rename=_renamer(rules), strict=strict)
    flat += _prefixed((name,), state)
  ignore = [r"^criterion\."]
  if model.class_predictor is not None:
    state, _ = torch_utils.convert(
        {k: v for k, v in rest.items() if k.startswith("class_predictor.")},
        model.class_predictor, rename=lambda k: "class_predictor." + k,
        strict=strict)
    flat += _prefixed(("class_predictor",), state)
  else:
    ignore.append(r"^class_predictor\.")
  unexpected = sorted(k for k in rest
                      if not any(re.search(p, k) for p in ignore)
                      and not k.startswith("class_predictor."))
  if unexpected and strict:
    raise torch_utils.ConversionError(
        f"{len(unexpected)} unexpected key(s) outside the Mask2Former "
        f"model: {', '.join(unexpected[:10])}")
  return nnx.from_flat_state(flat)


# python -m mtdense_jax.convert --from hf: the encoder is initialised; the
# decoder and heads keep their own init.
CONVERTERS = {"hf": converters.encoder_init(from_hf)}
