"""Toy task-aware encoder plugin: one learned prompt per task, carried
through the ViT blocks with the patch tokens (shared weights), for tests.

Shows the hooks a TaskPrompter-style encoder needs: ``build`` receives the
task list, the features carry ``"task_tokens"`` (each task's prompt after
the last block) and ``"attn"`` (per tap), and a named extra loss (a small
prompt-norm penalty) travels in ``"losses"``.
"""

from __future__ import annotations

from typing import Any, Sequence

from flax import nnx
import jax
import jax.numpy as jnp

from mtdense_jax.models import features
from mtdense_jax.models.encoders import vit


class PromptViT(nnx.Module):
  """ViT + T task prompts (no position embedding, prompts first)."""

  def __init__(self, vit_model: vit.ViT, tasks: Sequence[str], *,
               rngs: nnx.Rngs):
    self.vit = vit_model
    self.tasks = tuple(tasks)
    width = vit_model.produces.channels[0]
    self.prompts = nnx.Param(
        jax.random.normal(rngs.params(), (len(self.tasks), width)) * 0.02)
    base = vit_model.produces
    self.produces = features.FeatureSpec(
        base.maps, tuple(base.extras) + ("task_tokens", "attn", "losses"))

  def __call__(self, x: jax.Array, *, rngs: Any = None) -> features.Features:
    b = x.shape[0]
    prompts = jnp.broadcast_to(self.prompts[...][None],
                               (b, *self.prompts.shape))
    out = self.vit(x, rngs=rngs, extra_tokens=prompts, return_attn=True)
    last = out.pop("extra_tokens")[-1]
    out["task_tokens"] = {t: last[:, i] for i, t in enumerate(self.tasks)}
    out["losses"] = {"prompt_l2": 1e-3 * jnp.mean(self.prompts[...] ** 2)}
    return out


def build(variant: str, *, img_size: tuple[int, int], rngs: nnx.Rngs,
          tasks: Sequence[str], dtype: Any = jnp.float32,
          **vit_kw) -> PromptViT:
  return PromptViT(vit.build(variant, img_size=img_size, rngs=rngs,
                             dtype=dtype, **vit_kw), tasks, rngs=rngs)
