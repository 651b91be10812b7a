"""Shared by the TaskPrompter golden tests: the golden case's model (built
through ``multitask.build_model`` from a config-like dict) and its reference
state_dict."""

from __future__ import annotations

from typing import Any

from flax import nnx
import numpy as np

from mtdense_jax.models import multitask
from mtdense_jax.models.decoders import taskprompter


def model_config(meta: dict) -> dict[str, Any]:
  """``config.model`` of a golden case, from its sidecar."""
  cfg = meta["config"]
  v, pr, d = cfg["vit"], cfg["prompting"], cfg["decoder"]
  return dict(
      encoder="taskprompter", variant="B/16", decoder="taskprompter",
      encoder_kw=dict(width=v["embed_dim"],
                      depth=v["depth"], num_heads=v["num_heads"],
                      mlp_ratio=v["mlp_ratio"], patch_size=v["patch_size"],
                      taps=tuple(v["select_list"]),
                      drop_path_rate=v["drop_path_rate"],
                      prompt_len=pr["prompt_len"],
                      chan_nheads=pr["chan_nheads"]),
      decoder_kw=dict(embed_dim=d["embed_dim"],
                      final_embed_dim=d["final_embed_dim"],
                      use_ctr=pr["use_ctr"]))


def task_outputs(meta: dict) -> dict[str, int]:
  cfg = meta["config"]
  return {t: cfg["num_output"][t] for t in cfg["tasks"]}


def build_from_sidecar(meta: dict, rngs: nnx.Rngs) -> multitask.MultiTaskModel:
  return multitask.build_model(
      model_config(meta), task_outputs=task_outputs(meta),
      img_size=tuple(meta["config"]["image_size_hw"]), rngs=rngs)


def state_dict(npz: dict) -> dict[str, np.ndarray]:
  """The reference state_dict stored in a golden case (``param/*``)."""
  return {k[len("param/"):]: v for k, v in npz.items()
          if k.startswith("param/")}


def converted_model(npz: dict, meta: dict) -> multitask.MultiTaskModel:
  """Abstract init, filled by the strict converter, in eval mode."""
  model = nnx.eval_shape(lambda: build_from_sidecar(meta, nnx.Rngs(0)))
  nnx.update(model, taskprompter.from_torch(state_dict(npz), model))
  model.eval()
  return model
