"""Toy decoder plugin that reads task tokens, for tests: the baseline
decoder with each task's fused map gated by its task token, plus a named
extra loss. It declares ``extras=("task_tokens",)``, so composing it with
a plain ViT fails at build time with a clear message."""

from __future__ import annotations

from typing import Any, Mapping

from flax import nnx
import jax
import jax.numpy as jnp

from mtdense_jax.models import features
from mtdense_jax.models.decoders import baseline


class PromptDecoder(nnx.Module):

  def __init__(self, produced: features.FeatureSpec,
               task_outputs: Mapping[str, int], img_size: tuple[int, int], *,
               dim: int, rngs: nnx.Rngs, dtype: Any):
    self.img_size = tuple(img_size)
    self.fuse = nnx.Conv(sum(produced.channels), dim, (1, 1), dtype=dtype,
                         rngs=rngs)
    self.gate = nnx.Linear(produced.channels[0], dim, dtype=dtype, rngs=rngs)
    self.heads = nnx.Dict({t: baseline.TaskHead(dim, n, rngs=rngs,
                                                dtype=dtype)
                           for t, n in task_outputs.items()})

  def __call__(self, feats: features.Features, *, rngs: Any = None) -> dict:
    del rngs
    x = jax.nn.relu(self.fuse(jnp.concatenate(feats["maps"], axis=-1)))
    gates = {t: jax.nn.sigmoid(self.gate(feats["task_tokens"][t]))
             for t in self.heads}
    final = {t: head(x * gates[t][:, None, None], self.img_size)
             for t, head in self.heads.items()}
    spread = jnp.mean(jnp.stack([g for g in gates.values()]).var(0))
    return {"final": final, "aux": {}, "losses": {"gate_spread": spread}}


def consumes(**decoder_kw) -> features.Consumes:
  del decoder_kw
  return features.Consumes(same_stride=True, extras=("task_tokens",))


def build(*, encoder: nnx.Module, task_outputs: Mapping[str, int],
          img_size: tuple[int, int], rngs: nnx.Rngs, dtype: Any = jnp.float32,
          dim: int = 16) -> PromptDecoder:
  return PromptDecoder(features.spec_of(encoder), task_outputs, img_size,
                       dim=dim, rngs=rngs, dtype=dtype)
