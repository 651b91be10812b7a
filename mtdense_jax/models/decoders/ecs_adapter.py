"""MultiMAE's ConvNeXt-style output adapter, one per task, reading each
task's own token map (``task_maps`` of the ecs_vit encoder).

Facts from sarashoouri/EfficientMTL@6946429 ``Codes/multimae/
output_adapters.py: ConvNeXtAdapter`` and ``output_adapter_utils.py:
ConvNeXtBlock`` (shared/notes/efficient_sharing.md section 2): patch tokens
-> Linear(C -> E) -> every token becomes a 4x4 sub-patch of E/16 channels
(einops ``b (nh nw) (ph pw c) -> b c (nh ph) (nw pw)``) -> ``depth`` ConvNeXt
blocks (depthwise 7x7, channels-last LN eps 1e-6, Linear c->4c, GELU,
Linear 4c->c, residual; no layer scale) -> 1x1 conv -> bilinear upsampling
(align_corners=False) to the input size. Raw outputs, no activation.

Sub-task heads are ``theta_head0 + delta_head`` (notes 4): theta_head0 is
the head's initialisation, kept frozen; weight decay pulls the delta to 0,
i.e. the head toward its initialisation, as in the reference. The base
task's head is a plain trainable head.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from mtdense_jax.models import features as feats_lib
from mtdense_jax.models.layers import common

LN_EPS = 1e-6
PATCH_SPLIT = 4   # preds_per_patch 16 = 4 x 4


class HeadInit(nnx.Variable):
  """A sub-task head's frozen initialisation theta_head0."""


def head_shapes(dim: int, embed_dim: int, n_out: int, depth: int
                ) -> dict[str, tuple[int, ...]]:
  c = embed_dim // (PATCH_SPLIT * PATCH_SPLIT)
  shapes = {"proj_w": (dim, embed_dim), "proj_b": (embed_dim,)}
  for j in range(depth):
    shapes.update({f"blk{j}_dw_w": (7, 7, 1, c), f"blk{j}_dw_b": (c,),
                   f"blk{j}_norm_w": (c,), f"blk{j}_norm_b": (c,),
                   f"blk{j}_pw1_w": (c, 4 * c), f"blk{j}_pw1_b": (4 * c,),
                   f"blk{j}_pw2_w": (4 * c, c), f"blk{j}_pw2_b": (c,)})
  shapes.update({"final_w": (c, n_out), "final_b": (n_out,)})
  return shapes


def _init(name: str, shape: tuple[int, ...], key: jax.Array) -> jax.Array:
  """MultiMAE re-init: Linear xavier-uniform / bias 0, LN 1/0; convs keep
  PyTorch's default U(+-1/sqrt(fan_in)) for weight and bias."""
  conv = name.startswith("final") or "_dw_" in name
  if "_norm_" in name:
    return jnp.ones(shape) if name.endswith("_w") else jnp.zeros(shape)
  if conv:
    fan_in = 49 if "_dw_" in name else shape[0] if len(shape) == 2 else \
        shape[0]
    if name == "final_w":
      fan_in = shape[0]
    lim = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, jnp.float32, -lim, lim)
  if name.endswith("_b"):
    return jnp.zeros(shape, jnp.float32)
  lim = math.sqrt(6.0 / (shape[0] + shape[1]))
  return jax.random.uniform(key, shape, jnp.float32, -lim, lim)


def layer_norm(x, w, b):
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + LN_EPS) * w + b


def adapter(p: Mapping[str, jax.Array], tokens: jax.Array, depth: int,
            img_size: tuple[int, int]) -> jax.Array:
  """Token map (B, h, w, C) -> (B, H, W, n_out) with head tensors ``p``."""
  b, gh, gw, _ = tokens.shape
  x = tokens @ p["proj_w"] + p["proj_b"]
  c = x.shape[-1] // (PATCH_SPLIT * PATCH_SPLIT)
  x = x.reshape(b, gh, gw, PATCH_SPLIT, PATCH_SPLIT, c)
  x = x.transpose(0, 1, 3, 2, 4, 5).reshape(b, gh * PATCH_SPLIT,
                                            gw * PATCH_SPLIT, c)
  for j in range(depth):
    pre = f"blk{j}_"
    y = jax.lax.conv_general_dilated(
        x, p[pre + "dw_w"], (1, 1), ((3, 3), (3, 3)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=c) + p[pre + "dw_b"]
    y = layer_norm(y, p[pre + "norm_w"], p[pre + "norm_b"])
    y = common.gelu(y @ p[pre + "pw1_w"] + p[pre + "pw1_b"])
    x = x + (y @ p[pre + "pw2_w"] + p[pre + "pw2_b"])
  x = x @ p["final_w"] + p["final_b"]
  return common.resize_bilinear(x, img_size).astype(jnp.float32)


class Head(nnx.Module):
  """One task's adapter; ``delta`` heads are init (frozen) + delta."""

  def __init__(self, shapes: Mapping[str, tuple[int, ...]], depth: int, *,
               delta: bool, rngs: nnx.Rngs):
    self.depth = depth
    init = {n: _init(n, s, rngs.params()) for n, s in shapes.items()}
    self.is_delta = delta
    if delta:
      self.init = nnx.Dict({n: HeadInit(v) for n, v in init.items()})
      self.p = nnx.Dict({n: nnx.Param(jnp.zeros_like(v))
                         for n, v in init.items()})
    else:
      self.p = nnx.Dict({n: nnx.Param(v) for n, v in init.items()})

  def weights(self) -> dict[str, jax.Array]:
    p = {n: v[...] for n, v in self.p.items()}
    if self.is_delta:
      p = {n: self.init[n][...] + p[n] for n in p}
    return p

  def __call__(self, tokens, img_size):
    return adapter(self.weights(), tokens, self.depth, img_size)


class EcsAdapterDecoder(nnx.Module):
  """{"task_maps": {task: (B, h, w, C)}} -> {"final": {task: (B, H, W, n)}}."""

  def __init__(self, dim: int, task_outputs: Mapping[str, int],
               img_size: tuple[int, int], *, embed_dim: Mapping[str, int],
               depth: int, base_task: str, rngs: nnx.Rngs):
    missing = [t for t in task_outputs if t not in embed_dim]
    if missing:
      raise ValueError(f"config.model.decoder_kw.embed_dim has no entry for "
                       f"tasks {missing}")
    for t, e in embed_dim.items():
      if e % (PATCH_SPLIT * PATCH_SPLIT):
        raise ValueError(f"config.model.decoder_kw.embed_dim[{t!r}]={e} is "
                         "not a multiple of 16 (4x4 sub-patches)")
    self.img_size = tuple(img_size)
    self.heads = nnx.Dict({
        t: Head(head_shapes(dim, int(embed_dim[t]), n, depth), depth,
                delta=t != base_task, rngs=rngs)
        for t, n in task_outputs.items()})

  def __call__(self, feats: feats_lib.Features, *,
               rngs: nnx.Rngs | None = None) -> dict:
    del rngs
    maps = feats["task_maps"]
    return {"final": {t: h(maps[t], self.img_size)
                      for t, h in self.heads.items()}, "aux": {}}


def consumes(**decoder_kw) -> feats_lib.Consumes:
  del decoder_kw
  return feats_lib.Consumes(num_maps=1, extras=("task_maps",))


def build(*, encoder: nnx.Module, task_outputs: Mapping[str, int],
          img_size: tuple[int, int], rngs: nnx.Rngs, dtype: Any = jnp.float32,
          embed_dim: Mapping[str, int] | int = 3072, depth: int = 2,
          base_task: str = "semseg") -> EcsAdapterDecoder:
  """``embed_dim``: E per task (the reference: 3072 for semseg/sal/edge,
  1536 for human_parts/normals) or one value for all."""
  del dtype
  if isinstance(embed_dim, (int, np.integer)):
    embed_dim = {t: int(embed_dim) for t in task_outputs}
  return EcsAdapterDecoder(feats_lib.spec_of(encoder).channels[0],
                           task_outputs, img_size,
                           embed_dim=dict(embed_dim), depth=depth,
                           base_task=base_task, rngs=rngs)


# --- PyTorch names and layouts ---------------------------------------------

def torch_name(task: str, name: str) -> str:
  pre = f"output_adapters.{task}."
  if name.startswith("blk"):
    j, rest = name[3:].split("_", 1)
    mod = {"dw": "dwconv", "norm": "norm", "pw1": "pwconv1",
           "pw2": "pwconv2"}[rest[:-2]]
    return f"{pre}blocks.{j}.{mod}.{'weight' if rest.endswith('w') else 'bias'}"
  mod = {"proj": "proj_dec", "final": "final_layer"}[name[:-2]]
  return f"{pre}{mod}.{'weight' if name.endswith('w') else 'bias'}"


def from_torch_layout(name: str, arr: np.ndarray) -> np.ndarray:
  arr = np.asarray(arr, np.float32)
  if name.endswith("dw_w"):
    return np.transpose(arr, (2, 3, 1, 0))
  if name == "final_w":
    return arr[:, :, 0, 0].T.copy()
  if name.endswith("_w") and arr.ndim == 2:
    return arr.T.copy()
  return arr
