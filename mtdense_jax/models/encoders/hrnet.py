"""HRNet (Wang et al., TPAMI 2020) encoder, official classification layout.

Port of the backbone of HRNet-Image-Classification (``cls_hrnet.py``), which
timm's ``HighResolutionNet`` keeps key for key: a stride-4 conv stem, a
Bottleneck ``layer1``, then stages of HighResolutionModules (parallel
branches of BasicBlocks at strides 4/8/16/32 and a multi-resolution fusion:
1x1 conv + BN + nearest upsampling from coarser branches, chains of strided
3x3 conv + BN (+ ReLU between) from finer ones, summed, ReLU), with
``transition`` layers opening each new branch from the coarsest one. The
classification head (``incre_modules``, ``downsamp_modules``,
``final_layer``, ``classifier``) is not built.

Outputs the four branches ``{4: 18 ch, 8: 36, 16: 72, 32: 144}`` for W18,
or with ``fuse=True`` CTAL's fused map: all branches bilinearly upsampled
(align_corners=False) to stride 4 and concatenated, ``{4: 270 ch}``.
BatchNorm follows ``model.train()`` / ``model.eval()``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from mtdense_jax.models import converters
from mtdense_jax.models.layers import common


def _stages(width: int, stem_blocks: int, modules: Sequence[int],
            blocks: int) -> dict:
  return dict(stem_blocks=stem_blocks, stem_planes=64,
              modules=tuple(modules), blocks=blocks,
              channels=tuple(width * 2 ** i for i in range(4)))


VARIANTS = {
    "W18-small-v2": _stages(18, 2, (1, 3, 2), 2),
    "W18": _stages(18, 4, (1, 4, 3), 4),
    "W32": _stages(32, 4, (1, 4, 3), 4),
    "W48": _stages(48, 4, (1, 4, 3), 4),
}
STRIDES = (4, 8, 16, 32)


def features(variant: str, *, fuse: bool = False, **overrides) -> dict:
  """{stride: channels} the variant produces (static, no model built)."""
  ch = {**VARIANTS[variant], **overrides}["channels"]
  return {4: sum(ch)} if fuse else dict(zip(STRIDES, ch))


def _bn(c: int, rngs: nnx.Rngs, dtype: Any) -> nnx.BatchNorm:
  return common.batch_norm(c, rngs=rngs, dtype=dtype)


def _conv(cin, cout, k, rngs, dtype, stride=1) -> nnx.Conv:
  return common.conv(cin, cout, k, stride=stride, padding=k // 2,
                     bias=False, rngs=rngs, dtype=dtype)


class ConvBN(nnx.Module):
  """``nn.Sequential(conv, bn[, relu])`` with torch keys ``0``, ``1``."""

  def __init__(self, cin, cout, k, *, stride=1, relu=False, rngs, dtype):
    self.layers = nnx.Dict({"0": _conv(cin, cout, k, rngs, dtype, stride),
                            "1": _bn(cout, rngs, dtype)})
    self.relu = relu

  def __call__(self, x):
    x = self.layers["1"](self.layers["0"](x))
    return jax.nn.relu(x) if self.relu else x


class BasicBlock(nnx.Module):
  expansion = 1

  def __init__(self, cin, planes, *, rngs, dtype):
    self.conv1 = _conv(cin, planes, 3, rngs, dtype)
    self.bn1 = _bn(planes, rngs, dtype)
    self.conv2 = _conv(planes, planes, 3, rngs, dtype)
    self.bn2 = _bn(planes, rngs, dtype)
    self.downsample = (ConvBN(cin, planes, 1, rngs=rngs, dtype=dtype)
                       if cin != planes else None)

  def __call__(self, x):
    y = jax.nn.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return jax.nn.relu(y + (x if self.downsample is None
                            else self.downsample(x)))


class Bottleneck(nnx.Module):
  expansion = 4

  def __init__(self, cin, planes, *, rngs, dtype):
    self.conv1 = _conv(cin, planes, 1, rngs, dtype)
    self.bn1 = _bn(planes, rngs, dtype)
    self.conv2 = _conv(planes, planes, 3, rngs, dtype)
    self.bn2 = _bn(planes, rngs, dtype)
    self.conv3 = _conv(planes, 4 * planes, 1, rngs, dtype)
    self.bn3 = _bn(4 * planes, rngs, dtype)
    self.downsample = (ConvBN(cin, 4 * planes, 1, rngs=rngs, dtype=dtype)
                       if cin != 4 * planes else None)

  def __call__(self, x):
    y = jax.nn.relu(self.bn1(self.conv1(x)))
    y = jax.nn.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return jax.nn.relu(y + (x if self.downsample is None
                            else self.downsample(x)))


def upsample_nearest(x: jax.Array, factor: int) -> jax.Array:
  return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


class Downsampler(nnx.Module):
  """Finer branch j -> coarser i: (i - j) strided 3x3 conv + BN, ReLU
  between them (torch keys ``k.0``, ``k.1``)."""

  def __init__(self, cin, cout, steps, *, rngs, dtype):
    self.layers = nnx.Dict({
        str(k): ConvBN(cin, cout if k == steps - 1 else cin, 3, stride=2,
                       relu=k < steps - 1, rngs=rngs, dtype=dtype)
        for k in range(steps)})

  def __call__(self, x):
    for k in range(len(self.layers)):
      x = self.layers[str(k)](x)
    return x


class HRModule(nnx.Module):
  """Parallel BasicBlock branches, then every output sums all branches."""

  def __init__(self, channels: Sequence[int], blocks: int, *, rngs, dtype):
    n = len(channels)
    self.branches = nnx.List([
        nnx.List([BasicBlock(c, c, rngs=rngs, dtype=dtype)
                  for _ in range(blocks)]) for c in channels])
    fuse = {}
    for i in range(n if n > 1 else 0):
      row = {}
      for j in range(n):
        if j > i:
          row[str(j)] = ConvBN(channels[j], channels[i], 1, rngs=rngs,
                               dtype=dtype)
        elif j < i:
          row[str(j)] = Downsampler(channels[j], channels[i], i - j,
                                    rngs=rngs, dtype=dtype)
      fuse[str(i)] = nnx.Dict(row)
    self.fuse_layers = nnx.Dict(fuse)

  def __call__(self, xs: list[jax.Array]) -> list[jax.Array]:
    xs = [_seq(branch, x) for branch, x in zip(self.branches, xs)]
    if len(xs) == 1:
      return xs
    out = []
    for i in range(len(xs)):
      y = xs[i]
      for j, x in enumerate(xs):
        if j > i:
          y = y + upsample_nearest(self.fuse_layers[str(i)][str(j)](x),
                                   2 ** (j - i))
        elif j < i:
          y = y + self.fuse_layers[str(i)][str(j)](x)
      out.append(jax.nn.relu(y))
    return out


def _seq(layers, x):
  for layer in layers:
    x = layer(x)
  return x


class HRNet(nnx.Module):
  """Image (B, H, W, 3) -> {stride: branch} (or {4: fused branches})."""

  def __init__(self, *, stem_blocks: int, stem_planes: int,
               modules: Sequence[int], blocks: int, channels: Sequence[int],
               fuse: bool, rngs: nnx.Rngs, dtype: Any = jnp.float32,
               remat_policy: str | None = None):
    self.dtype, self.fuse, self.remat_policy = dtype, fuse, remat_policy
    self.out_strides = (4,) if fuse else STRIDES
    self.out_channels = ((sum(channels),) if fuse else tuple(channels))
    self.conv1 = _conv(3, 64, 3, rngs, dtype, stride=2)
    self.bn1 = _bn(64, rngs, dtype)
    self.conv2 = _conv(64, 64, 3, rngs, dtype, stride=2)
    self.bn2 = _bn(64, rngs, dtype)
    cin = 64
    layer1 = []
    for _ in range(stem_blocks):
      layer1.append(Bottleneck(cin, stem_planes, rngs=rngs, dtype=dtype))
      cin = 4 * stem_planes
    self.layer1 = nnx.List(layer1)
    prev = [cin]
    for s, n_mod in enumerate(modules):
      cur = list(channels[:s + 2])
      trans = {}
      for i, c in enumerate(cur):
        if i < len(prev) and prev[i] != c:
          trans[str(i)] = ConvBN(prev[i], c, 3, relu=True, rngs=rngs,
                                 dtype=dtype)
        elif i >= len(prev):
          trans[str(i)] = nnx.Dict({"0": ConvBN(prev[-1], c, 3, stride=2,
                                                relu=True, rngs=rngs,
                                                dtype=dtype)})
      setattr(self, f"transition{s + 1}", nnx.Dict(trans))
      setattr(self, f"stage{s + 2}", nnx.List([
          HRModule(cur, blocks, rngs=rngs, dtype=dtype)
          for _ in range(n_mod)]))
      prev = cur
    self.num_stages = len(modules)

  def __call__(self, x: jax.Array, *,
               rngs: Any = None) -> dict[int, jax.Array]:
    del rngs  # No stochastic layers.
    x = jax.nn.relu(self.bn1(self.conv1(x.astype(self.dtype))))
    x = jax.nn.relu(self.bn2(self.conv2(x)))
    for blk in self.layer1:
      x = common.call_block(blk, self.remat_policy, x)
    ys = [x]
    for s in range(self.num_stages):
      trans = getattr(self, f"transition{s + 1}")
      n = s + 2
      xs = []
      for i in range(n):
        t = trans[str(i)] if str(i) in trans else None
        if i >= len(ys):
          xs.append(t["0"](ys[-1]))
        else:
          xs.append(ys[i] if t is None else t(ys[i]))
      for mod in getattr(self, f"stage{s + 2}"):
        xs = common.call_block(mod, self.remat_policy, xs)
      ys = xs
    if not self.fuse:
      return dict(zip(STRIDES, ys))
    size = ys[0].shape[1:3]
    return {4: jnp.concatenate(
        [ys[0]] + [common.resize_bilinear(y, size) for y in ys[1:]], -1)}


def build(variant: str, *, img_size: tuple[int, int], rngs: nnx.Rngs,
          dtype: Any = jnp.float32, remat: str = "none",
          remat_policy: str = "nothing_saveable", fuse: bool = False,
          **overrides) -> HRNet:
  """Builds "W18-small-v2" (CTAL's), "W18", "W32" or "W48".

  Overrides: stem_blocks, stem_planes, modules (HRModules in stages 2-4),
  blocks (BasicBlocks per branch), channels (4 branch widths). ``fuse``
  returns CTAL's 1/4-resolution concat of all branches.
  """
  if variant not in VARIANTS:
    raise KeyError(f"Unknown HRNet variant {variant!r}; one of "
                   f"{list(VARIANTS)}")
  unknown = set(overrides) - set(VARIANTS[variant])
  if unknown:
    raise TypeError(f"Unknown HRNet overrides {sorted(unknown)}")
  if img_size[0] % 32 or img_size[1] % 32:
    raise ValueError(f"HRNet img_size {tuple(img_size)} must be divisible "
                     "by 32 (the branches are fused by exact x2^k upsampling)")
  cfg = {**VARIANTS[variant], **overrides}
  return HRNet(fuse=fuse, rngs=rngs, dtype=dtype,
               remat_policy=common.remat_policy(remat, remat_policy), **cfg)


# ---------------------------------------------------------------- converters

_HEAD = (r"^incre_modules\.", r"^downsamp_modules\.", r"^final_layer\.",
         r"^classifier\.", r"^head\.", r"^fc\.")


def _rename(key: str) -> str:
  """Our ``ConvBN.layers.0`` containers are plain ``Sequential`` indices."""
  return key.replace(".layers.", ".")


def from_torch(state_dict: Mapping[str, np.ndarray], model: HRNet, *,
               prefix: str = "", strict: bool = True) -> nnx.State:
  """Official ``hrnet_w18_small_model_v2.pth`` or timm ``hrnet_*`` state
  dict (the same keys) -> an ``nnx.State``; head keys are ignored."""
  from mtdense_jax.convert import torch_utils  # pylint: disable=g-import-not-at-top
  sd = {k[len(prefix):]: np.asarray(v) for k, v in state_dict.items()
        if k.startswith(prefix)}
  state, _ = torch_utils.convert(sd, model, rename=_rename, ignore=_HEAD,
                                 strict=strict)
  return state


# Sources for python -m mtdense_jax.convert --from NAME (encoder init).
CONVERTERS = {"official": converters.encoder_init(from_torch),
              "timm": converters.encoder_init(from_torch)}
