"""Swin Transformer V2 (Liu et al., CVPR 2022) encoder, torchvision layout.

Port of torchvision's ``swin_v2_t/s/b`` (``torchvision/models/
swin_transformer.py``, ``use_v2=True``): scaled cosine attention with a
learnable per-head logit scale (clamped at log 100), a continuous position
bias from a 2-512-heads MLP over log-spaced relative coordinates
(``16 * sigmoid``), residual post-norm blocks, and ``PatchMergingV2``
(reduction THEN norm, offsets (0,0), (1,0), (0,1), (1,1)). torchvision's
conventions, which differ from timm's: windows are never clipped, the map is
padded to a multiple of the window BEFORE the cyclic shift, the shift is
dropped along a side the window covers, and the key bias of the fused qkv is
held at zero.

Output norms as in :mod:`swin` (``out_norms="all"`` for dense prediction,
``"last"`` for torchvision's single final ``norm``).
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from mtdense_jax.models import converters
from mtdense_jax.models.encoders import swin
from mtdense_jax.models.layers import common

VARIANTS = {
    "T": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    "S": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    "B": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
}
_DEFAULTS = dict(window_size=8, patch_size=4, mlp_ratio=4.0,
                 drop_path_rate=0.0, out_norms="all")
STRIDES = swin.STRIDES


def features(variant: str, **overrides) -> dict[int, int]:
  """{stride: channels} the variant produces (static, no model built)."""
  dim = {**VARIANTS[variant], **overrides}["embed_dim"]
  return {s: dim * 2 ** i for i, s in enumerate(STRIDES)}


def relative_coords_table(wh: int, ww: int) -> np.ndarray:
  """``[2wh-1, 2ww-1, 2]`` log-spaced offsets the position MLP reads."""
  t = np.stack(np.meshgrid(np.arange(-(wh - 1), wh, dtype=np.float32),
                           np.arange(-(ww - 1), ww, dtype=np.float32),
                           indexing="ij"), axis=-1)
  t = t / np.array([wh - 1, ww - 1], np.float32) * 8.0
  return (np.sign(t) * np.log2(np.abs(t) + 1.0) / 3.0).astype(np.float32)


class CpbMlp(nnx.Module):
  def __init__(self, heads: int, *, rngs: nnx.Rngs, dtype: Any):
    self.fc1 = nnx.Linear(2, 512, dtype=dtype, rngs=rngs)
    self.fc2 = nnx.Linear(512, heads, use_bias=False, dtype=dtype,
                          rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(jax.nn.relu(self.fc1(x)))


class WindowAttentionV2(nnx.Module):
  """Cosine attention in windows with a continuous position bias."""

  def __init__(self, dim: int, num_heads: int, window: tuple[int, int], *,
               rngs: nnx.Rngs, dtype: Any):
    self.num_heads, self.window, self.dtype = num_heads, window, dtype
    self.qkv = nnx.Linear(dim, 3 * dim, dtype=dtype, rngs=rngs)
    self.proj = nnx.Linear(dim, dim, dtype=dtype, rngs=rngs)
    self.logit_scale = nnx.Param(jnp.full((num_heads, 1, 1), np.log(10.0)))
    self.cpb_mlp = CpbMlp(num_heads, rngs=rngs, dtype=dtype)

  def position_bias(self) -> jax.Array:
    n = self.window[0] * self.window[1]
    table = self.cpb_mlp(jnp.asarray(relative_coords_table(*self.window)))
    idx = swin.relative_position_index(*self.window).reshape(-1)
    bias = table.reshape(-1, self.num_heads)[idx].reshape(n, n, -1)
    return 16.0 * jax.nn.sigmoid(bias.transpose(2, 0, 1).astype(jnp.float32))

  def __call__(self, x: jax.Array, mask: np.ndarray | None) -> jax.Array:
    bw, n, c = x.shape
    hd = c // self.num_heads
    # The key bias is held at zero (torchvision zeroes it every call).
    keep = jnp.concatenate([jnp.ones(c), jnp.zeros(c), jnp.ones(c)])
    bias = self.qkv.bias[...] * keep
    qkv = x @ self.qkv.kernel[...].astype(x.dtype) + bias.astype(x.dtype)
    qkv = qkv.reshape(bw, n, 3, self.num_heads, hd).astype(jnp.float32)

    def unit(t):  # F.normalize(eps=1e-12)
      # max(sqrt(s), eps) == sqrt(max(s, eps^2)), but without sqrt's
      # infinite slope at 0: zero (padding) tokens get a zero gradient,
      # not NaN.
      sq = jnp.sum(t * t, axis=-1, keepdims=True)
      return t / jnp.sqrt(jnp.maximum(sq, 1e-24))

    q, k, v = unit(qkv[:, :, 0]), unit(qkv[:, :, 1]), qkv[:, :, 2]
    scale = jnp.exp(jnp.minimum(self.logit_scale[...], np.log(100.0)))
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k) * scale + self.position_bias()
    if mask is not None:
      nw = mask.shape[0]
      s = (s.reshape(bw // nw, nw, self.num_heads, n, n)
           + mask[None, :, None]).reshape(bw, self.num_heads, n, n)
    a = jax.nn.softmax(s, axis=-1).astype(x.dtype)
    o = jnp.einsum("bhqk,bkhd->bqhd", a, v.astype(x.dtype))
    return self.proj(o.reshape(bw, n, c))


class SwinV2Block(nnx.Module):
  """Residual post-norm: x + norm1(attn(x)), x + norm2(mlp(x))."""

  def __init__(self, dim: int, num_heads: int, window: tuple[int, int],
               shift: tuple[int, int], mlp_ratio: float, drop_path: float, *,
               rngs: nnx.Rngs, dtype: Any):
    self.window, self.shift = window, shift
    self.norm1 = nnx.LayerNorm(dim, epsilon=1e-5, dtype=dtype, rngs=rngs)
    self.attn = WindowAttentionV2(dim, num_heads, window, rngs=rngs,
                                  dtype=dtype)
    self.drop_path = common.DropPath(drop_path)
    self.norm2 = nnx.LayerNorm(dim, epsilon=1e-5, dtype=dtype, rngs=rngs)
    self.mlp = common.Mlp(dim, int(dim * mlp_ratio), rngs=rngs, dtype=dtype)

  def _attn(self, x: jax.Array) -> jax.Array:
    b, h, w, _ = x.shape
    wh, ww = self.window
    ph, pw = (-h) % wh, (-w) % ww
    x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)))
    hp, wp = h + ph, w + pw
    shift = (0 if wh >= hp else self.shift[0], 0 if ww >= wp else self.shift[1])
    if any(shift):
      x = jnp.roll(x, (-shift[0], -shift[1]), axis=(1, 2))
    mask = swin.shift_mask(hp, wp, self.window, shift) if any(shift) else None
    x = swin.unpartition(self.attn(swin.partition(x, self.window), mask),
                         self.window, b, hp, wp)
    if any(shift):
      x = jnp.roll(x, shift, axis=(1, 2))
    return x[:, :h, :w]

  def __call__(self, x: jax.Array, *, rngs: Any = None) -> jax.Array:
    x = x + self.drop_path(self.norm1(self._attn(x)), rngs=rngs)
    return x + self.drop_path(self.norm2(self.mlp(x)), rngs=rngs)


class PatchMergingV2(nnx.Module):
  """2x2 neighbours -> channels (zero-padding odd sizes), reduce, norm."""

  def __init__(self, dim: int, *, rngs: nnx.Rngs, dtype: Any):
    self.reduction = nnx.Linear(4 * dim, 2 * dim, use_bias=False,
                                dtype=dtype, rngs=rngs)
    self.norm = nnx.LayerNorm(2 * dim, epsilon=1e-5, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    h, w = x.shape[1:3]
    x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 4, 2, 5)
    return self.norm(self.reduction(x.reshape(b, h // 2, w // 2, 4 * c)))


class SwinV2(nnx.Module):
  """Image (B, H, W, 3) -> {stride: (B, H/s, W/s, C_s)} for s in 4..32."""

  def __init__(self, *, embed_dim: int, depths: Sequence[int],
               num_heads: Sequence[int], window_size: int | tuple[int, int],
               patch_size: int, mlp_ratio: float, drop_path_rate: float,
               out_norms: str, rngs: nnx.Rngs, dtype: Any = jnp.float32,
               remat_policy: str | None = None):
    window = ((window_size,) * 2 if isinstance(window_size, int)
              else tuple(window_size))
    shift = (window[0] // 2, window[1] // 2)
    self.dtype, self.remat_policy = dtype, remat_policy
    self.out_strides = tuple(patch_size * 2 ** i for i in range(len(depths)))
    self.out_channels = tuple(embed_dim * 2 ** i for i in range(len(depths)))
    self.patch_embed = swin.PatchEmbed(patch_size, embed_dim, rngs=rngs,
                                       dtype=dtype)
    rates = iter(np.linspace(0.0, drop_path_rate, sum(depths)))
    stages = []
    for i, (depth, heads) in enumerate(zip(depths, num_heads)):
      dim = self.out_channels[i]
      down = PatchMergingV2(dim // 2, rngs=rngs, dtype=dtype) if i else None
      blocks = [SwinV2Block(dim, heads, window, shift if j % 2 else (0, 0),
                            mlp_ratio, float(next(rates)), rngs=rngs,
                            dtype=dtype) for j in range(depth)]
      stages.append(swin.SwinStage(blocks, down))
    self.layers = nnx.List(stages)
    if out_norms not in ("all", "last"):
      raise ValueError(f"SwinV2 out_norms={out_norms!r}; 'all' or 'last'")
    normed = (range(len(depths)) if out_norms == "all"
              else [len(depths) - 1])
    self.out_norms = nnx.Dict({
        str(i): nnx.LayerNorm(self.out_channels[i], epsilon=1e-5,
                              dtype=dtype, rngs=rngs) for i in normed})

  __call__ = swin.Swin.__call__


def build(variant: str, *, img_size: tuple[int, int], rngs: nnx.Rngs,
          dtype: Any = jnp.float32, remat: str = "none",
          remat_policy: str = "nothing_saveable", **overrides) -> SwinV2:
  """Builds Swin-V2 "T", "S" or "B" (torchvision's 256-px, window 8).

  Overrides: embed_dim, depths, num_heads, window_size, patch_size,
  mlp_ratio, drop_path_rate, out_norms. Any image size divisible by the
  patch size works (maps are padded to whole windows).
  """
  if variant not in VARIANTS:
    raise KeyError(f"Unknown Swin-V2 variant {variant!r}; one of "
                   f"{list(VARIANTS)}")
  unknown = set(overrides) - set(VARIANTS[variant]) - set(_DEFAULTS)
  if unknown:
    raise TypeError(f"Unknown Swin-V2 overrides {sorted(unknown)}")
  cfg = {**VARIANTS[variant], **_DEFAULTS, **overrides}
  if img_size[0] % cfg["patch_size"] or img_size[1] % cfg["patch_size"]:
    raise ValueError(f"img_size {tuple(img_size)} is not divisible by the "
                     f"patch size {cfg['patch_size']}")
  return SwinV2(rngs=rngs, dtype=dtype,
                remat_policy=common.remat_policy(remat, remat_policy), **cfg)


# ---------------------------------------------------------------- converters

_TV_UNUSED = (r"^head\.", r"relative_position_index$",
              r"relative_coords_table$")


def _torchvision_key(key: str) -> str:
  """Our default torch key -> torchvision's ``features.N...`` key."""
  key = re.sub(r"^patch_embed\.proj\.", "features.0.0.", key)
  key = re.sub(r"^patch_embed\.norm\.", "features.0.2.", key)
  key = re.sub(r"^layers\.(\d+)\.downsample\.",
               lambda m: f"features.{2 * int(m[1])}.", key)
  key = re.sub(r"^layers\.(\d+)\.blocks\.",
               lambda m: f"features.{2 * int(m[1]) + 1}.", key)
  key = re.sub(r"\.attn\.cpb_mlp\.fc1\.", ".attn.cpb_mlp.0.", key)
  key = re.sub(r"\.attn\.cpb_mlp\.fc2\.", ".attn.cpb_mlp.2.", key)
  key = re.sub(r"\.mlp\.fc1\.", ".mlp.0.", key)
  return re.sub(r"\.mlp\.fc2\.", ".mlp.3.", key)


def from_torchvision(state_dict: Mapping[str, np.ndarray], model: SwinV2, *,
                     prefix: str = "", strict: bool = True) -> nnx.State:
  """torchvision ``swin_v2_*`` state_dict -> an ``nnx.State`` for ``model``.

  The final ``norm`` becomes the last stage's output norm; other output
  norms missing from the checkpoint start as new layers (weight 1, bias 0).
  Early torchvision builds named the logit scale ``v2_logit_scale``.
  """
  from mtdense_jax.convert import torch_utils  # pylint: disable=g-import-not-at-top
  sd = {re.sub(r"v2_logit_scale$", "logit_scale", k[len(prefix):]):
        np.asarray(v) for k, v in state_dict.items() if k.startswith(prefix)}
  last = len(model.out_channels) - 1
  if "norm.weight" in sd:
    sd[f"out_norms.{last}.weight"] = sd.pop("norm.weight")
    sd[f"out_norms.{last}.bias"] = sd.pop("norm.bias")
  for i, c in enumerate(model.out_channels):
    if str(i) in model.out_norms:
      sd.setdefault(f"out_norms.{i}.weight", np.ones(c, np.float32))
      sd.setdefault(f"out_norms.{i}.bias", np.zeros(c, np.float32))
  state, _ = torch_utils.convert(sd, model, rename=_torchvision_key,
                                 ignore=_TV_UNUSED, strict=strict)
  return state


# Sources for python -m mtdense_jax.convert --from NAME (encoder init).
CONVERTERS = {"torchvision": converters.encoder_init(from_torchvision)}
