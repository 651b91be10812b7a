"""Generic composition: one shared encoder, one multi-task decoder.

Nothing here names a task or a model: the encoder and decoder are plugins
looked up by name (``config.model.encoder`` / ``config.model.decoder``), and
the heads are sized from the tasks (``task_outputs``), so tasks and models stay
orthogonal.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping

from flax import nnx
import jax
import jax.numpy as jnp

from mtdense_jax import registry
from mtdense_jax.models.layers import common

Predictions = dict[str, Any]   # {"final": {task: x}, "aux": {name: {task: x}}}


class MultiTaskModel(nnx.Module):
  """image (B, H, W, 3) -> {"final": {task: ...}, "aux": {...}}."""

  def __init__(self, encoder: nnx.Module, decoder: nnx.Module):
    self.encoder = encoder
    self.decoder = decoder

  def __call__(self, image: jax.Array, *,
               rngs: nnx.Rngs | None = None) -> Predictions:
    return self.decoder(self.encoder(image, rngs=rngs), rngs=rngs)


_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str) -> Any:
  if name not in _DTYPES:
    raise ValueError(f"config.model.dtype={name!r}; expected one of "
                     f"{sorted(_DTYPES)}")
  return _DTYPES[name]


def _remat_kw(build, model_cfg: Mapping[str, Any]) -> dict[str, str]:
  """``config.model.remat*`` for plugins whose build takes them (plugins
  without blocks worth checkpointing, e.g. the conv heads, need not)."""
  remat = model_cfg.get("remat", "none")
  common.remat_policy(remat, model_cfg.get("remat_policy", "nothing_saveable"))
  if remat == "none" or "remat" not in inspect.signature(build).parameters:
    return {}
  return {"remat": remat,
          "remat_policy": model_cfg.get("remat_policy", "nothing_saveable")}


def build_model(model_cfg: Mapping[str, Any], *,
                task_outputs: Mapping[str, int], img_size: tuple[int, int],
                rngs: nnx.Rngs) -> MultiTaskModel:
  """Builds encoder + decoder from ``config.model``.

  Args:
    model_cfg: has ``encoder`` (plugin name), ``variant``, ``decoder``
      (plugin name), optional ``encoder_kw``/``decoder_kw`` dicts and
      ``dtype`` ("float32" or "bfloat16": the compute dtype; parameters stay
      float32).
    task_outputs: head channels per task, in task order.
    img_size: (H, W) the model is built for.
    rngs: initialisation RNGs.
  """
  dtype = compute_dtype(model_cfg.get("dtype", "float32"))
  enc_mod = registry.lookup("encoder", model_cfg["encoder"])
  dec_mod = registry.lookup("decoder", model_cfg["decoder"])
  encoder = enc_mod.build(model_cfg["variant"], img_size=tuple(img_size),
                          rngs=rngs, dtype=dtype,
                          **_remat_kw(enc_mod.build, model_cfg),
                          **dict(model_cfg.get("encoder_kw", {}) or {}))
  decoder = dec_mod.build(encoder=encoder, task_outputs=dict(task_outputs),
                          img_size=tuple(img_size), rngs=rngs, dtype=dtype,
                          **_remat_kw(dec_mod.build, model_cfg),
                          **dict(model_cfg.get("decoder_kw", {}) or {}))
  return MultiTaskModel(encoder, decoder)
