"""Toy multi-scale CNN encoder plugin (strides 4, 8, 16, 32), for tests.

Stands in for a ResNet/HRNet/Swin-style backbone: four stages of strided
3x3 convs, one map per stage. Proves that multi-scale encoders fit the
features contract (``config.model.encoder = "tests.toy_cnn_encoder"``).
"""

from __future__ import annotations

from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp

from mtdense_jax.models import features

STRIDES = (4, 8, 16, 32)


class ToyCNN(nnx.Module):
  """Stem (stride 4) then three stride-2 stages; channels double."""

  def __init__(self, width: int, *, rngs: nnx.Rngs, dtype: Any):
    chans = tuple(width * 2 ** i for i in range(len(STRIDES)))
    self.produces = features.spec(STRIDES, chans,
                                  names=[f"stage{i}" for i in range(4)])
    self.dtype = dtype
    self.stem = nnx.Conv(3, chans[0], (4, 4), strides=(4, 4), dtype=dtype,
                         rngs=rngs)
    self.stages = nnx.List([
        nnx.Conv(a, b, (3, 3), strides=(2, 2), dtype=dtype, rngs=rngs)
        for a, b in zip(chans, chans[1:])])

  def __call__(self, x: jax.Array, *, rngs: Any = None) -> features.Features:
    del rngs
    x = jax.nn.gelu(self.stem(x.astype(self.dtype)))
    maps = [x]
    for stage in self.stages:
      x = jax.nn.gelu(stage(x))
      maps.append(x)
    return {"maps": maps}


def build(variant: str, *, img_size: tuple[int, int], rngs: nnx.Rngs,
          dtype: Any = jnp.float32, width: int = 8) -> ToyCNN:
  del variant
  if img_size[0] % 32 or img_size[1] % 32:
    raise ValueError(f"toy CNN needs multiples of 32, got {img_size}")
  return ToyCNN(width, rngs=rngs, dtype=dtype)
