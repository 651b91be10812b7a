"""Shared by the InvPT golden tests (float32 parity, bf16 parity, configs):
the golden case's model and its reference state_dict."""

from __future__ import annotations

from typing import Any

from flax import nnx
import jax.numpy as jnp
import numpy as np

from mtdense_jax.models.decoders import invpt
from mtdense_jax.models.encoders import vit
from mtdense_jax.models.multitask import MultiTaskModel


def build_from_sidecar(meta: dict, rngs: nnx.Rngs,
                       dtype: Any = jnp.float32) -> MultiTaskModel:
  """The reference configuration of a golden case, as a JAX model."""
  cfg = meta["config"]
  v, d = cfg["vit"], cfg["decoder"]
  img = tuple(cfg["image_size_hw"])
  encoder = vit.build("B/16", img_size=img, rngs=rngs, width=v["embed_dim"],
                      depth=v["depth"], num_heads=v["num_heads"],
                      mlp_ratio=v["mlp_ratio"], patch_size=v["patch_size"],
                      taps=v["select_list"], dtype=dtype)
  tasks = {t: cfg["num_output"][t] for t in cfg["tasks"]}
  decoder = invpt.build(
      encoder=encoder, task_outputs=tasks, img_size=img, rngs=rngs,
      embed_dim=d["embed_dim"], pred_out_constant=d["PRED_OUT_NUM_CONSTANT"],
      num_heads=d["spec"]["NUM_HEADS"][0], mlp_ratio=d["spec"]["MLP_RATIO"][0],
      dtype=dtype)
  return MultiTaskModel(encoder, decoder)


def state_dict(npz: dict) -> dict[str, np.ndarray]:
  """The reference state_dict stored in a golden case (``param/*``)."""
  return {k[len("param/"):]: v for k, v in npz.items()
          if k.startswith("param/")}


def converted_model(npz: dict, meta: dict,
                    dtype: Any = jnp.float32) -> MultiTaskModel:
  """Abstract init (no random-init compute), filled by the strict converter,
  in eval mode."""
  model = nnx.eval_shape(lambda: build_from_sidecar(meta, nnx.Rngs(0), dtype))
  nnx.update(model, invpt.from_torch(state_dict(npz), model))
  model.eval()
  return model
