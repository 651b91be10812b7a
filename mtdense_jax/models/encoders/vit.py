"""Plain ViT encoder (Dosovitskiy et al., ICLR 2021) with 4 feature taps.

Port of the timm 0.5.4 ``VisionTransformer`` as modified by InvPT
(prismformore/Multi-Task-Transformer, ``InvPT/models/transformers/vit.py``,
commit 870c6be100b95d44ffa0a9591775dd3faa2d5664): cls token, learned absolute
position embedding for ONE grid (the configured image size), pre-norm blocks,
LayerNorm eps 1e-6, exact GELU, fused qkv, no head. Taps are taken after the
blocks in ``taps`` (1-based, no final norm) plus the final-norm output.

Module names mirror timm (``patch_embed.proj``, ``blocks[i].attn.qkv``, ...),
so :func:`from_torch` is a key map plus layout transposes.

Hooks for task-aware encoders built on these blocks: ``extra_tokens``
(e.g. task prompts) ride along through every block, sharing all of its
weights, and ``return_attn`` hands back each tap's attention (raw scores
and softmax weights). Without them the computation is the plain ViT's.
Converters (``CONVERTERS``) import the conversion helpers (and torch /
safetensors) lazily, so running a model never loads them.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from mtdense_jax.models import features as feats_lib
from mtdense_jax.models.layers import common

VARIANTS = {
    "Ti/16": dict(width=192, depth=12, num_heads=3),
    "S/16": dict(width=384, depth=12, num_heads=6),
    "B/16": dict(width=768, depth=12, num_heads=12),
    "L/16": dict(width=1024, depth=24, num_heads=16),
}
_DEFAULTS = dict(mlp_ratio=4.0, patch_size=16, drop_path_rate=0.0, taps=None,
                 return_attn=False, class_token=True)


class Attention(nnx.Module):
  """Multi-head self-attention with a fused (q|k|v) x heads x dim Linear."""

  def __init__(self, dim: int, num_heads: int, *, rngs: nnx.Rngs,
               dtype: Any):
    self.num_heads = num_heads
    self.qkv = nnx.Linear(dim, 3 * dim, dtype=dtype, rngs=rngs)
    self.proj = nnx.Linear(dim, dim, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, *, return_attn: bool = False
               ) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
    """``return_attn`` also returns ``{"scores": q.k (unscaled, pre-softmax),
    "weights": softmax}``, both (B, heads, N, N)."""
    b, n, c = x.shape
    hd = c // self.num_heads
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, hd)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    raw = jnp.einsum("bqhd,bkhd->bhqk", q, k)
    a = jax.nn.softmax((raw * (hd ** -0.5)).astype(jnp.float32),
                       axis=-1).astype(v.dtype)
    o = self.proj(jnp.einsum("bhqk,bkhd->bqhd", a, v).reshape(b, n, c))
    if return_attn:
      return o, {"scores": raw, "weights": a}
    return o


class Block(nnx.Module):
  """Pre-norm transformer block with stochastic depth."""

  def __init__(self, dim: int, num_heads: int, mlp_ratio: float,
               drop_path: float, *, rngs: nnx.Rngs, dtype: Any):
    self.norm1 = nnx.LayerNorm(dim, epsilon=1e-6, dtype=dtype, rngs=rngs)
    self.attn = Attention(dim, num_heads, rngs=rngs, dtype=dtype)
    self.drop_path = common.DropPath(drop_path)
    self.norm2 = nnx.LayerNorm(dim, epsilon=1e-6, dtype=dtype, rngs=rngs)
    self.mlp = common.Mlp(dim, int(dim * mlp_ratio), rngs=rngs, dtype=dtype)

  def __call__(self, x: jax.Array, *, rngs: Any = None) -> jax.Array:
    x = x + self.drop_path(self.attn(self.norm1(x)), rngs=rngs)
    return x + self.drop_path(self.mlp(self.norm2(x)), rngs=rngs)

  def with_extra(self, x: jax.Array, extra: jax.Array | None, *,
                 rngs: Any = None, return_attn: bool = False):
    """Block over tokens ``x`` plus ``extra`` tokens (B, P, C), or None.

    Both share every weight; they attend jointly over ``[extra, x]`` (extra
    first) and each keeps its own residual stream and drop-path masks.
    Returns ``(x, extra, attn)``; ``attn`` (None unless asked) indexes the
    joint sequence, extra tokens first.
    """
    p = 0 if extra is None else extra.shape[1]
    z = x if extra is None else jnp.concatenate([extra, x], axis=1)
    y = self.attn(self.norm1(z), return_attn=return_attn)
    y, attn = y if return_attn else (y, None)
    x = x + self.drop_path(y[:, p:], rngs=rngs)
    x = x + self.drop_path(self.mlp(self.norm2(x)), rngs=rngs)
    if extra is not None:
      extra = extra + self.drop_path(y[:, :p], rngs=rngs)
      extra = extra + self.drop_path(self.mlp(self.norm2(extra)), rngs=rngs)
    return x, extra, attn


class PatchEmbed(nnx.Module):
  """Non-overlapping patches -> tokens (conv k = s = patch)."""

  def __init__(self, patch: int, dim: int, *, rngs: nnx.Rngs, dtype: Any):
    self.proj = nnx.Conv(3, dim, (patch, patch), strides=(patch, patch),
                         padding="VALID", dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.proj(x)


class ViT(nnx.Module):
  """Image (B, H, W, 3) -> features with 4 taps (B, H/p, W/p, C); the last
  one normed (see :mod:`mtdense_jax.models.features`)."""

  def __init__(self, *, img_size: tuple[int, int], width: int, depth: int,
               num_heads: int, mlp_ratio: float, patch_size: int,
               drop_path_rate: float, taps: Sequence[int], rngs: nnx.Rngs,
               dtype: Any = jnp.float32, remat_policy: str | None = None,
               return_attn: bool = False, class_token: bool = True):
    h, w = img_size
    if h % patch_size or w % patch_size:
      raise ValueError(f"img_size {img_size} not divisible by {patch_size}")
    self.grid = (h // patch_size, w // patch_size)
    self.patch_size = patch_size
    self.taps = tuple(int(t) for t in taps)
    self.return_attn = bool(return_attn)
    n_maps = len(self.taps) + 1
    self.produces = feats_lib.spec(
        (patch_size,) * n_maps, (width,) * n_maps,
        extras=("attn",) if self.return_attn else ())
    self.out_channels = self.produces.channels
    self.out_strides = self.produces.strides
    self.dtype = dtype
    self.remat_policy = remat_policy   # None: no activation checkpointing.
    self.patch_embed = PatchEmbed(patch_size, width, rngs=rngs, dtype=dtype)
    n = self.grid[0] * self.grid[1]
    # Without a class token the position table keeps its cls slot (so
    # pretrained tables load as they are) and slot 0 goes unused.
    self.num_prefix = 1 if class_token else 0
    if class_token:
      self.cls_token = nnx.Param(
          jax.random.normal(rngs.params(), (1, 1, width)) * 1e-6)
    self.pos_embed = nnx.Param(
        jax.random.truncated_normal(rngs.params(), -2., 2., (1, n + 1, width))
        * 0.02)
    rates = np.linspace(0.0, drop_path_rate, depth)
    self.blocks = nnx.List([
        Block(width, num_heads, mlp_ratio, float(r), rngs=rngs, dtype=dtype)
        for r in rates])
    self.norm = nnx.LayerNorm(width, epsilon=1e-6, dtype=dtype, rngs=rngs)

  def embed(self, x: jax.Array) -> jax.Array:
    """Image -> [cls, patches] + position embedding, (B, 1 + N, C); just the
    patches (B, N, C) when built without a class token."""
    b, h, w, _ = x.shape
    gh, gw = h // self.patch_size, w // self.patch_size
    if (gh, gw) != self.grid:
      raise ValueError(f"input {h}x{w} gives a {gh}x{gw} grid but the "
                       f"position embedding is for {self.grid}")
    x = self.patch_embed(x.astype(self.dtype))
    x = x.reshape(b, gh * gw, -1)
    if not self.num_prefix:
      return x + self.pos_embed[:, 1:].astype(x.dtype)
    cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype),
                           (b, 1, x.shape[-1]))
    return jnp.concatenate([cls, x], axis=1) + self.pos_embed[...].astype(
        x.dtype)

  def __call__(self, x: jax.Array, *, rngs: Any = None,
               extra_tokens: jax.Array | None = None,
               return_attn: bool | None = None) -> feats_lib.Features:
    """Image -> ``{"maps": taps}``.

    Args:
      x: (B, H, W, 3) at the built size.
      rngs: drop-path RNGs (training).
      extra_tokens: (B, P, C) tokens carried through every block with the
        patch tokens (no position embedding); adds ``"extra_tokens"``: their
        value after each tap's block (never final-normed).
      return_attn: adds ``"attn"``: per tap, that block's ``{"scores",
        "weights"}`` over ``[extra, cls, patches]`` (no cls when built
        without it; the normed last tap
        reuses the last block's). Default: as built.
    """
    b, h, w, _ = x.shape
    grid = (b, h // self.patch_size, w // self.patch_size, -1)
    return_attn = self.return_attn if return_attn is None else return_attn
    x = self.embed(x)
    plain = extra_tokens is None and not return_attn
    extra, attn = extra_tokens, None
    maps, extras, attns = [], [], []
    for i, blk in enumerate(self.blocks):
      if plain:
        x = common.call_block(blk, self.remat_policy, x, rngs=rngs)
      else:
        x, extra, attn = _block_with_extra(blk, self.remat_policy, x, extra,
                                           rngs, return_attn)
      if i + 1 in self.taps:
        maps.append(x[:, self.num_prefix:].reshape(grid))
        extras.append(extra)
        attns.append(attn)
    x = self.norm(x)
    maps.append(x[:, self.num_prefix:].reshape(grid))
    out = {"maps": maps}
    if extra_tokens is not None:
      out["extra_tokens"] = extras + [extra]
    if return_attn:
      out["attn"] = attns + [attn]
    return out


def _block_with_extra(blk: Block, policy: str | None, x, extra, rngs,
                      return_attn: bool):
  """``blk.with_extra``, rematerialised like :func:`common.call_block`."""
  def fn(mod, x, extra, rngs):
    return mod.with_extra(x, extra, rngs=rngs, return_attn=return_attn)
  if policy is not None:
    fn = nnx.remat(fn, policy=getattr(jax.checkpoint_policies, policy))
  return fn(blk, x, extra, rngs)


def default_taps(depth: int) -> tuple[int, int, int]:
  """[D/4, D/2, 3D/4] rounded half up (ViT-L: 6, 12, 18; depth 4: 1, 2, 3)."""
  return tuple(max(1, int(math.floor(depth * f / 4 + 0.5))) for f in (1, 2, 3))


def build(variant: str, *, img_size: tuple[int, int], rngs: nnx.Rngs,
          dtype: Any = jnp.float32, remat: str = "none",
          remat_policy: str = "nothing_saveable", **overrides) -> ViT:
  """Builds a ViT variant ("Ti/16", "S/16", "B/16", "L/16") with overrides.

  Overrides: width, depth, num_heads, mlp_ratio, patch_size, drop_path_rate,
  taps (3 ascending 1-based block indices; default [D/4, D/2, 3D/4]),
  return_attn (add every tap's attention to the features), class_token
  (False: no cls token, as prompt-based encoders use).
  ``remat="block"`` checkpoints each block with ``remat_policy``.
  """
  if variant not in VARIANTS:
    raise KeyError(f"Unknown ViT variant {variant!r}; one of {list(VARIANTS)}")
  unknown = set(overrides) - set(VARIANTS[variant]) - set(_DEFAULTS)
  if unknown:
    raise TypeError(f"Unknown ViT overrides {sorted(unknown)}")
  cfg = {**VARIANTS[variant], **_DEFAULTS, **overrides}
  if cfg["taps"] is None:
    cfg["taps"] = default_taps(cfg["depth"])
  taps = tuple(int(t) for t in cfg["taps"])
  if len(taps) != 3 or sorted(set(taps)) != list(taps) or not (
      1 <= taps[0] and taps[-1] <= cfg["depth"]):
    raise ValueError(f"taps must be 3 ascending block indices in "
                     f"[1, {cfg['depth']}], got {taps}")
  cfg["taps"] = taps
  return ViT(img_size=tuple(img_size), rngs=rngs, dtype=dtype,
             remat_policy=common.remat_policy(remat, remat_policy), **cfg)


# Parameters in timm checkpoints that this encoder has no use for.
_TIMM_UNUSED = (r"^head\.", r"^pre_logits\.", r"^fc_norm\.", r"^head_dist\.",
                r"^dist_token$")


def from_torch(state_dict: Mapping[str, np.ndarray], model: ViT, *,
               prefix: str = "", resize_pos_embed: bool = False,
               strict: bool = True) -> nnx.State:
  """timm/InvPT ViT state_dict -> an ``nnx.State`` for ``model``.

  Args:
    state_dict: torch names (``blocks.0.attn.qkv.weight``...) to arrays.
    model: the target encoder (defines names, shapes and layouts).
    prefix: prefix of the encoder keys in ``state_dict`` (``"backbone."``).
    resize_pos_embed: resize a pos-embed of another grid with PyTorch
      bicubic (A=-0.75, align_corners=False), the cls position kept; for
      pretrained init only (a fine-tuned checkpoint must match exactly).
    strict: raise on missing keys or unexpected non-head keys.
  """
  from mtdense_jax.convert import torch_utils  # pylint: disable=g-import-not-at-top
  sd = {k[len(prefix):]: v for k, v in state_dict.items()
        if k.startswith(prefix)}
  if resize_pos_embed and "pos_embed" in sd:
    sd["pos_embed"] = torch_utils.resize_pos_embed(
        np.asarray(sd["pos_embed"]), model.grid, num_prefix_tokens=1)
  unused = _TIMM_UNUSED + (() if model.num_prefix else (r"^cls_token$",))
  state, _ = torch_utils.convert(sd, model, ignore=unused, strict=strict)
  return state


def npz_to_torch(npz: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Original ViT / big_vision ``.npz`` names -> timm names and layouts.

  The layout the timm ``_load_weights`` of InvPT's ``vit.py`` reads: Flax
  ``HWIO`` / ``[in, out]`` kernels, per-head ``query/key/value`` kernels
  ``[C, heads, hd]`` fused into ``qkv`` in (q|k|v) x heads x hd order, and
  ``out`` ``[heads, hd, C]``. Head and pre-logits weights are dropped.
  """
  def linear(w):
    return np.asarray(w).reshape(-1, np.shape(w)[-1]).T  # [out, in]

  sd = {"cls_token": npz["cls"],
        "pos_embed": npz["Transformer/posembed_input/pos_embedding"],
        "patch_embed.proj.weight": np.transpose(npz["embedding/kernel"],
                                                (3, 2, 0, 1)),
        "patch_embed.proj.bias": npz["embedding/bias"],
        "norm.weight": npz["Transformer/encoder_norm/scale"],
        "norm.bias": npz["Transformer/encoder_norm/bias"]}
  blocks = sorted({int(m[1]) for k in npz
                   if (m := re.match(r"Transformer/encoderblock_(\d+)/", k))})
  for i in blocks:
    src, dst = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
    mha = src + "MultiHeadDotProductAttention_1/"
    mlp = next(k for k in npz if k.startswith(src + "MlpBlock_")).split(
        "/")[2]
    c = npz[mha + "query/kernel"].shape[0]
    sd[dst + "attn.qkv.weight"] = np.concatenate(
        [npz[f"{mha}{n}/kernel"].reshape(c, c).T for n in ("query", "key",
                                                           "value")])
    sd[dst + "attn.qkv.bias"] = np.concatenate(
        [npz[f"{mha}{n}/bias"].reshape(c) for n in ("query", "key", "value")])
    sd[dst + "attn.proj.weight"] = npz[mha + "out/kernel"].reshape(c, c).T
    sd[dst + "attn.proj.bias"] = npz[mha + "out/bias"]
    for ours, theirs in (("norm1", "LayerNorm_0"), ("norm2", "LayerNorm_2")):
      sd[f"{dst}{ours}.weight"] = npz[f"{src}{theirs}/scale"]
      sd[f"{dst}{ours}.bias"] = npz[f"{src}{theirs}/bias"]
    for j in (0, 1):
      sd[f"{dst}mlp.fc{j + 1}.weight"] = linear(
          npz[f"{src}{mlp}/Dense_{j}/kernel"])
      sd[f"{dst}mlp.fc{j + 1}.bias"] = npz[f"{src}{mlp}/Dense_{j}/bias"]
  return {k: np.asarray(v) for k, v in sd.items()}


def is_vit_npz(state: Mapping[str, np.ndarray]) -> bool:
  return "Transformer/encoder_norm/scale" in state


def _encoder_init(npz_only: bool):
  """A converter that initialises the encoder from a pretrained ViT (its
  position embedding resized to the configured grid); the rest of the model
  keeps its fresh initialisation."""
  def convert(state_dict, *, tasks, build):
    del tasks  # Head sizes come from the dataset or --task-outputs.
    if is_vit_npz(state_dict):
      state_dict = npz_to_torch(state_dict)
    elif npz_only:
      raise ValueError("--from npz needs an original ViT .npz (with "
                       "Transformer/encoder_norm/scale); use --from timm for "
                       "timm .pth/.safetensors files")
    model = build(None)
    nnx.update(model.encoder, from_torch(state_dict, model.encoder,
                                         resize_pos_embed=True))
    return model
  return convert


# Checkpoint sources this encoder imports (python -m mtdense_jax.convert
# --from NAME); "timm-vit" is the older name of "timm".
CONVERTERS = {"timm": _encoder_init(False), "timm-vit": _encoder_init(False),
              "npz": _encoder_init(True)}
