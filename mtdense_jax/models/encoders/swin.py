"""Swin Transformer v1 (Liu et al., ICCV 2021) encoder, timm layout.

Port of timm 1.0's ``SwinTransformer`` (``timm/models/swin_transformer.py``):
conv patch embedding + LayerNorm, four stages of pre-norm blocks with
(shifted) window attention and a learned relative position bias table, 2x2
patch merging (norm then bias-free reduction) at the START of stages 1-3,
exact GELU MLP, LayerNorm eps 1e-5. timm's conventions are kept where they
differ from the original release: windows are clipped to the feature size
(no shift then) unless ``always_partition``, the cyclic shift is applied
BEFORE padding to a multiple of the window, and masked pairs get -100.

Dense prediction reads every stage, so by default each stage output has its
own LayerNorm (``out_norms="all"``, as in the segmentation releases; new
layers start at weight 1, bias 0 when a classification checkpoint is
loaded). ``out_norms="last"`` keeps timm's single final ``norm``.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from mtdense_jax.models import converters
from mtdense_jax.models.layers import common

VARIANTS = {
    "T": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    "S": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    "B": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
    "L": dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48)),
}
_DEFAULTS = dict(window_size=7, patch_size=4, mlp_ratio=4.0,
                 drop_path_rate=0.0, always_partition=False, out_norms="all",
                 window_rule="timm")
STRIDES = (4, 8, 16, 32)


def features(variant: str, **overrides) -> dict[int, int]:
  """{stride: channels} the variant produces (static, no model built)."""
  dim = {**VARIANTS[variant], **overrides}["embed_dim"]
  return {s: dim * 2 ** i for i, s in enumerate(STRIDES)}


def relative_position_index(wh: int, ww: int) -> np.ndarray:
  """``[wh*ww, wh*ww]`` indices into the ``(2wh-1)(2ww-1)`` bias table."""
  coords = np.stack(np.meshgrid(np.arange(wh), np.arange(ww),
                                indexing="ij")).reshape(2, -1)
  rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0)
  return (rel[..., 0] + wh - 1) * (2 * ww - 1) + rel[..., 1] + ww - 1


def shift_mask(hp: int, wp: int, window: tuple[int, int],
               shift: tuple[int, int]) -> np.ndarray:
  """``[nW, N, N]`` additive mask (0 / -100) for the shifted windows."""
  img = np.zeros((hp, wp), np.float32)
  cnt = 0
  # The same slices as timm (a zero shift makes the last one everything).
  for hs in (slice(0, -window[0]), slice(-window[0], -shift[0]),
             slice(-shift[0], None)):
    for ws in (slice(0, -window[1]), slice(-window[1], -shift[1]),
               slice(-shift[1], None)):
      img[hs, ws] = cnt
      cnt += 1
  win = partition(img[None, :, :, None], window)[..., 0]
  diff = win[:, None, :] - win[:, :, None]
  return np.where(diff != 0, -100.0, 0.0).astype(np.float32)


def partition(x, window: tuple[int, int]):
  """``(B, H, W, C)`` -> ``(B*nW, wh*ww, C)`` (works on np and jax)."""
  b, h, w, c = x.shape
  wh, ww = window
  x = x.reshape(b, h // wh, wh, w // ww, ww, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, wh * ww, c)


def unpartition(x: jax.Array, window: tuple[int, int], b: int, h: int,
                w: int) -> jax.Array:
  wh, ww = window
  x = x.reshape(b, h // wh, w // ww, wh, ww, -1).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h, w, -1)


class WindowAttention(nnx.Module):
  """Multi-head attention inside windows with a relative position bias."""

  def __init__(self, dim: int, num_heads: int, window: tuple[int, int], *,
               rngs: nnx.Rngs, dtype: Any):
    self.num_heads = num_heads
    self.window = window
    self.qkv = nnx.Linear(dim, 3 * dim, dtype=dtype, rngs=rngs)
    self.proj = nnx.Linear(dim, dim, dtype=dtype, rngs=rngs)
    n_rel = (2 * window[0] - 1) * (2 * window[1] - 1)
    self.relative_position_bias_table = nnx.Param(
        jax.random.truncated_normal(rngs.params(), -2., 2.,
                                    (n_rel, num_heads)) * 0.02)

  def __call__(self, x: jax.Array, mask: np.ndarray | None) -> jax.Array:
    bw, n, c = x.shape
    hd = c // self.num_heads
    qkv = self.qkv(x).reshape(bw, n, 3, self.num_heads, hd)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    s = jnp.einsum("bqhd,bkhd->bhqk", q * hd ** -0.5, k).astype(jnp.float32)
    idx = relative_position_index(*self.window).reshape(-1)
    bias = self.relative_position_bias_table[...][idx].reshape(n, n, -1)
    s = s + bias.transpose(2, 0, 1).astype(jnp.float32)
    if mask is not None:
      nw = mask.shape[0]
      s = (s.reshape(bw // nw, nw, self.num_heads, n, n)
           + mask[None, :, None]).reshape(bw, self.num_heads, n, n)
    a = jax.nn.softmax(s, axis=-1).astype(v.dtype)
    return self.proj(jnp.einsum("bhqk,bkhd->bqhd", a, v).reshape(bw, n, c))


class SwinBlock(nnx.Module):
  """Pre-norm (shifted) window attention + MLP, each with stochastic depth."""

  def __init__(self, dim: int, num_heads: int, window: tuple[int, int],
               shift: tuple[int, int], mlp_ratio: float, drop_path: float, *,
               rngs: nnx.Rngs, dtype: Any, pad_first: bool = False):
    self.window, self.shift, self.pad_first = window, shift, pad_first
    self.norm1 = nnx.LayerNorm(dim, epsilon=1e-5, dtype=dtype, rngs=rngs)
    self.attn = WindowAttention(dim, num_heads, window, rngs=rngs,
                                dtype=dtype)
    self.drop_path = common.DropPath(drop_path)
    self.norm2 = nnx.LayerNorm(dim, epsilon=1e-5, dtype=dtype, rngs=rngs)
    self.mlp = common.Mlp(dim, int(dim * mlp_ratio), rngs=rngs, dtype=dtype)

  def _attn(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    (wh, ww), (sh, sw) = self.window, self.shift
    ph, pw = (-h) % wh, (-w) % ww
    pad = ((0, 0), (0, ph), (0, pw), (0, 0))
    if self.pad_first:   # HF / original release: pad, then shift.
      x = jnp.pad(x, pad)
    if sh or sw:
      x = jnp.roll(x, (-sh, -sw), axis=(1, 2))
    if not self.pad_first:   # timm: shift, then pad.
      x = jnp.pad(x, pad)
    mask = (shift_mask(h + ph, w + pw, self.window, self.shift)
            if sh or sw else None)
    x = self.attn(partition(x, self.window), mask)
    x = unpartition(x, self.window, b, h + ph, w + pw)
    if not self.pad_first:
      x = x[:, :h, :w]
    if sh or sw:
      x = jnp.roll(x, (sh, sw), axis=(1, 2))
    return x[:, :h, :w]

  def __call__(self, x: jax.Array, *, rngs: Any = None) -> jax.Array:
    x = x + self.drop_path(self._attn(self.norm1(x)), rngs=rngs)
    return x + self.drop_path(self.mlp(self.norm2(x)), rngs=rngs)


class PatchMerging(nnx.Module):
  """2x2 neighbours -> channels (zero-padding odd sizes), norm, reduce."""

  def __init__(self, dim: int, *, rngs: nnx.Rngs, dtype: Any):
    self.norm = nnx.LayerNorm(4 * dim, epsilon=1e-5, dtype=dtype, rngs=rngs)
    self.reduction = nnx.Linear(4 * dim, 2 * dim, use_bias=False,
                                dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    h, w = x.shape[1:3]
    # timm order: (0,0), (1,0), (0,1), (1,1) offsets, i.e. x0 x1 x2 x3.
    x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 4, 2, 5)
    return self.reduction(self.norm(x.reshape(b, h // 2, w // 2, 4 * c)))


class PatchEmbed(nnx.Module):
  def __init__(self, patch: int, dim: int, *, rngs: nnx.Rngs, dtype: Any):
    self.proj = nnx.Conv(3, dim, (patch, patch), strides=(patch, patch),
                         padding="VALID", dtype=dtype, rngs=rngs)
    self.norm = nnx.LayerNorm(dim, epsilon=1e-5, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.norm(self.proj(x))


class SwinStage(nnx.Module):
  def __init__(self, blocks: list[SwinBlock],
               downsample: PatchMerging | None):
    self.downsample = downsample
    self.blocks = nnx.List(blocks)


def stage_windows(res: tuple[int, int], window: tuple[int, int],
                  always_partition: bool, rule: str = "timm"):
  """(window, shift) for a stage resolution: timm's ``_calc_window_shift``
  (per side), or HF's ``set_shift_and_window_size`` (square, by min side)."""
  shift = (window[0] // 2, window[1] // 2)
  if always_partition:
    return window, shift
  if rule == "hf":
    if min(res) <= window[0]:
      return (min(res),) * 2, (0, 0)
    return window, shift
  win = tuple(min(r, w) for r, w in zip(res, window))
  return win, tuple(0 if r <= w else s for r, w, s in zip(res, win, shift))


class Swin(nnx.Module):
  """Image (B, H, W, 3) -> {stride: (B, H/s, W/s, C_s)} for s in 4..32."""

  def __init__(self, *, img_size: tuple[int, int], embed_dim: int,
               depths: Sequence[int], num_heads: Sequence[int],
               window_size: int | tuple[int, int], patch_size: int,
               mlp_ratio: float, drop_path_rate: float,
               always_partition: bool, out_norms: str, window_rule: str,
               rngs: nnx.Rngs,
               dtype: Any = jnp.float32, remat_policy: str | None = None):
    window = ((window_size,) * 2 if isinstance(window_size, int)
              else tuple(window_size))
    if window_rule not in ("timm", "hf"):
      raise ValueError(f"Swin window_rule={window_rule!r}; 'timm' or 'hf'")
    self.dtype, self.remat_policy = dtype, remat_policy
    self.patch_size = patch_size
    self.out_strides = tuple(patch_size * 2 ** i for i in range(len(depths)))
    self.out_channels = tuple(embed_dim * 2 ** i for i in range(len(depths)))
    self.patch_embed = PatchEmbed(patch_size, embed_dim, rngs=rngs,
                                  dtype=dtype)
    res = (img_size[0] // patch_size, img_size[1] // patch_size)
    rates = iter(np.linspace(0.0, drop_path_rate, sum(depths)))
    stages = []
    for i, (depth, heads) in enumerate(zip(depths, num_heads)):
      dim = self.out_channels[i]
      down = None
      if i:
        down = PatchMerging(dim // 2, rngs=rngs, dtype=dtype)
        res = ((res[0] + 1) // 2, (res[1] + 1) // 2)
      win, shift = stage_windows(res, window, always_partition, window_rule)
      blocks = [SwinBlock(dim, heads, win, shift if j % 2 else (0, 0),
                          mlp_ratio, float(next(rates)), rngs=rngs,
                          dtype=dtype, pad_first=window_rule == "hf")
                for j in range(depth)]
      stages.append(SwinStage(blocks, down))
    self.layers = nnx.List(stages)
    if out_norms not in ("all", "last"):
      raise ValueError(f"Swin out_norms={out_norms!r}; 'all' or 'last'")
    normed = (range(len(depths)) if out_norms == "all"
              else [len(depths) - 1])
    self.out_norms = nnx.Dict({
        str(i): nnx.LayerNorm(self.out_channels[i], epsilon=1e-5,
                              dtype=dtype, rngs=rngs) for i in normed})

  def __call__(self, x: jax.Array, *,
               rngs: Any = None) -> dict[int, jax.Array]:
    x = self.patch_embed(x.astype(self.dtype))
    outs = {}
    for i, (stride, stage) in enumerate(zip(self.out_strides, self.layers)):
      if stage.downsample is not None:
        x = stage.downsample(x)
      for blk in stage.blocks:
        x = common.call_block(blk, self.remat_policy, x, rngs=rngs)
      outs[stride] = (self.out_norms[str(i)](x) if str(i) in self.out_norms
                      else x)
    return outs


def build(variant: str, *, img_size: tuple[int, int], rngs: nnx.Rngs,
          dtype: Any = jnp.float32, remat: str = "none",
          remat_policy: str = "nothing_saveable", **overrides) -> Swin:
  """Builds Swin "T", "S", "B" or "L" (224-px, window 7 configs).

  Overrides: embed_dim, depths, num_heads, window_size, patch_size,
  mlp_ratio, drop_path_rate, always_partition, out_norms ("all": a
  LayerNorm on every stage output, "last": timm's), window_rule ("timm";
  "hf" for HF/original-release checkpoints: square windows clipped by the
  shorter side, padding before the shift). ``remat="block"``
  checkpoints each block with ``remat_policy``.
  """
  if variant not in VARIANTS:
    raise KeyError(f"Unknown Swin variant {variant!r}; one of "
                   f"{list(VARIANTS)}")
  unknown = set(overrides) - set(VARIANTS[variant]) - set(_DEFAULTS)
  if unknown:
    raise TypeError(f"Unknown Swin overrides {sorted(unknown)}")
  cfg = {**VARIANTS[variant], **_DEFAULTS, **overrides}
  if len(cfg["depths"]) != len(cfg["num_heads"]):
    raise ValueError(f"Swin depths {cfg['depths']} and num_heads "
                     f"{cfg['num_heads']} differ in length")
  if img_size[0] % cfg["patch_size"] or img_size[1] % cfg["patch_size"]:
    raise ValueError(f"img_size {tuple(img_size)} is not divisible by the "
                     f"patch size {cfg['patch_size']}")
  return Swin(img_size=tuple(img_size), rngs=rngs, dtype=dtype,
              remat_policy=common.remat_policy(remat, remat_policy), **cfg)


# ---------------------------------------------------------------- converters

def _geometric_positions(src: int, dst: int) -> np.ndarray:
  """timm/BEiT: source table offsets spread geometrically to cover ``dst``."""
  lo, hi = 1.01, 1.5
  while hi - lo > 1e-6:
    q = (lo + hi) / 2.0
    if (1.0 - q ** (src // 2)) / (1.0 - q) > dst // 2:
      hi = q
    else:
      lo = q
  dis, cur = [], 1.0
  for i in range(src // 2):
    dis.append(cur)
    cur += q ** (i + 1)
  return np.array([-d for d in reversed(dis)] + [0.0] + dis)


def resize_rel_pos_table(table: np.ndarray,
                         window: tuple[int, int]) -> np.ndarray:
  """A square-window ``[(2w-1)^2, heads]`` table -> ``window``'s table.

  timm's ``resize_rel_pos_bias_table`` without scipy: the source offsets
  are placed on a geometric grid and the target's integer offsets are read
  off it by (separable) linear interpolation.
  """
  from mtdense_jax.convert import torch_utils  # pylint: disable=g-import-not-at-top
  n, heads = table.shape
  side = int(round(np.sqrt(n)))
  dst = (2 * window[0] - 1, 2 * window[1] - 1)
  if n == dst[0] * dst[1]:
    return table   # Already this window's table (timm assumes the same).
  if side * side != n:
    raise torch_utils.ConversionError(
        f"relative_position_bias_table with {n} rows is not a square window")
  ys, xs = _geometric_positions(side, dst[0]), _geometric_positions(side,
                                                                    dst[1])
  ty, tx = np.arange(-(dst[0] // 2), dst[0] // 2 + 0.1), np.arange(
      -(dst[1] // 2), dst[1] // 2 + 0.1)
  grid = table.astype(np.float64).reshape(side, side, heads)
  rows = np.stack([[np.interp(ty, ys, grid[:, j, h]) for j in range(side)]
                   for h in range(heads)])          # [heads, side_x, dy]
  out = np.stack([[np.interp(tx, xs, rows[h, :, i]) for i in range(dst[0])]
                  for h in range(heads)])           # [heads, dy, dx]
  return out.transpose(1, 2, 0).reshape(-1, heads).astype(table.dtype)


_TIMM_UNUSED = (r"^head\.", r"relative_position_index$", r"attn_mask$")


def from_timm(state_dict: Mapping[str, np.ndarray], model: Swin, *,
              prefix: str = "", strict: bool = True) -> nnx.State:
  """timm (or original Microsoft release) Swin state_dict -> nnx.State.

  Original checkpoints merge patches at the END of a stage
  (``layers.0.downsample``); they are renumbered to timm's start-of-stage
  layout. Bias tables of another window size are resized as timm does. The
  final ``norm`` becomes the last stage's output norm; other output norms
  missing from the checkpoint start as new layers (weight 1, bias 0).
  """
  from mtdense_jax.convert import torch_utils  # pylint: disable=g-import-not-at-top
  sd = {k[len(prefix):]: np.asarray(v) for k, v in state_dict.items()
        if k.startswith(prefix)}
  if "layers.0.downsample.reduction.weight" in sd:
    sd = {re.sub(r"^layers\.(\d+)\.downsample",
                 lambda m: f"layers.{int(m[1]) + 1}.downsample", k): v
          for k, v in sd.items()}
  last = len(model.out_channels) - 1
  if "norm.weight" in sd:
    sd[f"out_norms.{last}.weight"] = sd.pop("norm.weight")
    sd[f"out_norms.{last}.bias"] = sd.pop("norm.bias")
  for i, c in enumerate(model.out_channels):
    if str(i) not in model.out_norms:
      continue
    sd.setdefault(f"out_norms.{i}.weight", np.ones(c, np.float32))
    sd.setdefault(f"out_norms.{i}.bias", np.zeros(c, np.float32))
  for i, stage in enumerate(model.layers):
    for j, blk in enumerate(stage.blocks):
      key = f"layers.{i}.blocks.{j}.attn.relative_position_bias_table"
      if key in sd:
        sd[key] = resize_rel_pos_table(sd[key], blk.window)
  state, _ = torch_utils.convert(sd, model, ignore=_TIMM_UNUSED,
                                 strict=strict)
  return state


def from_hf(state_dict: Mapping[str, np.ndarray], model: Swin, *,
            prefix: str = "", strict: bool = True) -> nnx.State:
  """HF ``SwinModel`` state_dict (``embeddings.*``, ``encoder.layers.*``;
  ``swin.`` prefix for task models; the published names or transformers 5's
  ``q_proj``...) -> an ``nnx.State``. Build the model with
  ``window_rule="hf"`` to compute as HF does."""
  # transformers >= 5 names -> the names of the published checkpoints.
  new = ((".attention.q_proj.", ".attention.self.query."),
         (".attention.k_proj.", ".attention.self.key."),
         (".attention.v_proj.", ".attention.self.value."),
         (".attention.o_proj.", ".attention.output.dense."),
         (".attention.relative_position_bias.relative_position_bias_table",
          ".attention.self.relative_position_bias_table"))
  sd = {}
  for k, v in state_dict.items():
    if k.startswith(prefix):
      k = k[len(prefix):]
      for old, cur in new:
        k = k.replace(old, cur)
      sd[k] = np.asarray(v)
  subs = ((r"^embeddings\.patch_embeddings\.projection\.",
           "patch_embed.proj."),
          (r"^embeddings\.norm\.", "patch_embed.norm."),
          (r"^layernorm\.", "norm."),
          (r"^encoder\.layers\.(\d+)\.downsample\.",
           lambda m: f"layers.{int(m[1]) + 1}.downsample."),
          (r"^encoder\.layers\.", "layers."),
          (r"\.layernorm_before\.", ".norm1."),
          (r"\.layernorm_after\.", ".norm2."),
          (r"\.attention\.self\.relative_position_bias_table$",
           ".attn.relative_position_bias_table"),
          (r"\.attention\.output\.dense\.", ".attn.proj."),
          (r"\.intermediate\.dense\.", ".mlp.fc1."),
          (r"\.output\.dense\.", ".mlp.fc2."))
  out = {}
  for k, v in sd.items():
    if re.search(r"(relative_position_index|^pooler\.)", k):
      continue
    m = re.match(
        r"(.*)\.attention\.self\.(query|key|value)\.(weight|bias)$", k)
    if m:
      if m[2] == "query":
        out[f"{m[1]}.attn.qkv.{m[3]}"] = np.concatenate(
            [sd[f"{m[1]}.attention.self.{n}.{m[3]}"]
             for n in ("query", "key", "value")])
      continue
    for pat, rep in subs:
      k = re.sub(pat, rep, k)
    out[k] = v
  out = {re.sub(r"^encoder\.", "", k): v for k, v in out.items()}
  return from_timm(out, model, strict=strict)


# Sources for python -m mtdense_jax.convert --from NAME (the encoder is
# initialised; decoder and heads keep their own init).
CONVERTERS = {"timm": converters.encoder_init(from_timm),
              "official": converters.encoder_init(from_timm),
              "hf": converters.encoder_init(from_hf)}
