"""Toy decoder plugin (registry name "tests.toy_decoder") with what the
open framework must carry: a non-trainable variable collection (`Teacher`,
a frozen copy of the first head's weights), an auxiliary head, and a model
returned loss ("distill": activation difference to the frozen teacher
forward, returned in preds["losses"])."""

from __future__ import annotations

from typing import Any, Mapping

from flax import nnx
import jax
import jax.numpy as jnp


class Teacher(nnx.Variable):
  """Not an nnx.Param: carried in the state, never trained."""


def _up(x, size):
  b, _, _, c = x.shape
  return jax.image.resize(x, (b, *size, c), method="linear")


class ToyDecoder(nnx.Module):

  def __init__(self, dim: int, task_outputs: Mapping[str, int],
               img_size: tuple[int, int], *, rngs: nnx.Rngs, dtype: Any):
    self.img_size = tuple(img_size)
    self.heads = nnx.Dict({t: nnx.Conv(dim, n, (1, 1), dtype=dtype,
                                       rngs=rngs)
                           for t, n in task_outputs.items()})
    self.aux_heads = nnx.Dict({t: nnx.Conv(dim, n, (1, 1), dtype=dtype,
                                           rngs=rngs)
                               for t, n in task_outputs.items()})
    first = next(iter(task_outputs))
    self.first = first
    self.teacher = Teacher(jnp.array(self.heads[first].kernel[...]))

  def __call__(self, feats, *, rngs: nnx.Rngs | None = None):
    del rngs
    x = feats["maps"][-1]
    final = {t: _up(h(x), self.img_size).astype(jnp.float32)
             for t, h in self.heads.items()}
    aux = {t: _up(h(x), self.img_size).astype(jnp.float32)
           for t, h in self.aux_heads.items()}
    student = x @ self.heads[self.first].kernel[0, 0]
    teacher = x @ self.teacher[...][0, 0]
    distill = jnp.mean((student - teacher) ** 2)
    return {"final": final, "aux": {"toy_aux": aux},
            "losses": {"distill": distill}}


def build(*, encoder, task_outputs: Mapping[str, int],
          img_size: tuple[int, int], rngs: nnx.Rngs,
          dtype: Any = jnp.float32, dim: int = 8) -> ToyDecoder:
  del encoder
  return ToyDecoder(dim, task_outputs, img_size, rngs=rngs, dtype=dtype)
