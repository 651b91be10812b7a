"""Generic composition: one shared encoder, one multi-task decoder.

Nothing here names a task or a model: the encoder and decoder are plugins
looked up by name (``config.model.encoder`` / ``config.model.decoder``), and
the heads are sized from the tasks (``task_outputs``), so tasks and models stay
orthogonal. The encoder -> decoder contract (features dict, ``produces`` /
``consumes``) is :mod:`mtdense_jax.models.features`; an encoder whose
``build`` takes ``tasks`` receives the task names in order (task prompts,
task-specific tokens).
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping

from flax import nnx
import jax
import jax.numpy as jnp

from mtdense_jax import registry
from mtdense_jax.models import features as feats_lib
from mtdense_jax.models.layers import common

# {"final": {task: x}, "aux": {head: {task: x}}, "losses": {name: scalar}}
Predictions = dict[str, Any]


class MultiTaskModel(nnx.Module):
  """image (B, H, W, 3) -> {"final": ..., "aux": ..., "losses": ...}.

  "losses" are named extra loss terms (regularisers) that the encoder (in
  its features) or the decoder (in its output) return; they are passed
  through as they are, for the train step to add.
  """

  def __init__(self, encoder: nnx.Module, decoder: nnx.Module):
    self.encoder = encoder
    self.decoder = decoder

  def __call__(self, image: jax.Array, *,
               rngs: nnx.Rngs | None = None) -> Predictions:
    feats = feats_lib.as_features(self.encoder(image, rngs=rngs))
    out = self.decoder(feats, rngs=rngs)
    losses = dict(feats.get("losses", {}))
    both = set(losses) & set(out.get("losses", {}))
    if both:
      raise ValueError(f"encoder and decoder both return losses {sorted(both)}")
    losses.update(out.get("losses", {}))
    return {"final": out["final"], "aux": dict(out.get("aux", {})),
            "losses": losses}


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
  enc_name, dec_name = model_cfg["encoder"], model_cfg["decoder"]
  enc_mod = registry.lookup("encoder", enc_name)
  dec_mod = registry.lookup("decoder", dec_name)
  enc_kw = dict(model_cfg.get("encoder_kw", {}) or {})
  dec_kw = dict(model_cfg.get("decoder_kw", {}) or {})
  if "tasks" in inspect.signature(enc_mod.build).parameters:
    enc_kw["tasks"] = tuple(task_outputs)
  encoder = enc_mod.build(model_cfg["variant"], img_size=tuple(img_size),
                          rngs=rngs, dtype=dtype,
                          **_remat_kw(enc_mod.build, model_cfg), **enc_kw)
  if hasattr(dec_mod, "consumes"):
    feats_lib.check(feats_lib.spec_of(encoder), dec_mod.consumes(**dec_kw),
                    encoder=enc_name, decoder=dec_name)
  decoder = dec_mod.build(encoder=encoder, task_outputs=dict(task_outputs),
                          img_size=tuple(img_size), rngs=rngs, dtype=dtype,
                          **_remat_kw(dec_mod.build, model_cfg), **dec_kw)
  return MultiTaskModel(encoder, decoder)
