"""Toy encoder plugin for the framework tests (registry name
"tests.toy_encoder"): a stride-4 patch conv and one block of two convs, so
that path rules have an 'embed' and a 'block' to tell apart."""

from __future__ import annotations

from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp


class ToyEncoder(nnx.Module):

  def __init__(self, dim: int, *, rngs: nnx.Rngs, dtype: Any):
    self.embed = nnx.Conv(3, dim, (4, 4), strides=4, dtype=dtype, rngs=rngs)
    self.block = nnx.Conv(dim, dim, (3, 3), padding=1, dtype=dtype,
                          rngs=rngs)
    self.out_channels = (dim,)
    self.out_strides = (4,)

  def __call__(self, image: jax.Array, *, rngs: nnx.Rngs | None = None):
    del rngs
    x = jax.nn.relu(self.embed(image))
    return {"maps": [x + jax.nn.relu(self.block(x))]}


def build(variant: str, *, img_size: tuple[int, int], rngs: nnx.Rngs,
          dtype: Any = jnp.float32, dim: int = 8) -> ToyEncoder:
  del variant, img_size
  return ToyEncoder(dim, rngs=rngs, dtype=dtype)
