"""Shared helpers of the ECS golden tests: build the tiny reference models
from the golden sidecars and load golden (PyTorch-layout) arrays."""

from __future__ import annotations

import pathlib
from typing import Mapping

from flax import nnx
import jax.numpy as jnp
import numpy as np

from mtdense_jax.models import multitask
from mtdense_jax.models.decoders import ecs_adapter
from mtdense_jax.models.encoders import ecs_vit

SITE_TORCH = {"norm1": "norm1", "qkv": "attn.qkv", "proj": "attn.proj",
              "fc1": "mlp.fc1", "act": "mlp.act", "fc2": "mlp.fc2"}
BASE, SUB = "semseg", "human_parts"
REPO = pathlib.Path(__file__).resolve().parents[1]


def model_config(cfg: Mapping, mode: str = "gates", **enc_kw) -> dict:
  """config.model for a golden's MultiViT config (dim/depth/heads/heads)."""
  return {"encoder": "ecs_vit", "variant": "B/16", "decoder": "ecs_adapter",
          "encoder_kw": {"width": cfg["dim"], "depth": cfg["depth"],
                         "num_heads": cfg["heads"], "base_task": BASE,
                         "mode": mode, **enc_kw},
          "decoder_kw": {"embed_dim": {
              BASE: cfg["base_head"]["head_embed_dim"],
              SUB: cfg["sub_head"]["head_embed_dim"]}, "base_task": BASE}}


def build(cfg: Mapping, mode: str = "gates", **enc_kw
          ) -> multitask.MultiTaskModel:
  outputs = {BASE: cfg["base_head"]["num_classes"],
             SUB: cfg["sub_head"]["num_classes"]}
  return multitask.build_model(model_config(cfg, mode, **enc_kw),
                               task_outputs=outputs,
                               img_size=tuple(cfg["image_hw"]),
                               rngs=nnx.Rngs(0))


def enc_tensor(g: Mapping, prefix: str, name: str) -> np.ndarray:
  """Golden ``prefix + torch name`` in this port's layout."""
  return ecs_vit.from_torch_layout(name,
                                   g[prefix + ecs_vit.torch_name(name)])


def head_tensor(g: Mapping, prefix: str, task: str, name: str) -> np.ndarray:
  return ecs_adapter.from_torch_layout(
      name, g[prefix + ecs_adapter.torch_name(task, name)])


def set_vars(tree, values: Mapping[str, np.ndarray]) -> None:
  for n, v in values.items():
    assert tree[n].value.shape == v.shape, (n, tree[n].value.shape, v.shape)
    tree[n].value = jnp.asarray(v)


def load(model, g: Mapping, *, base: str, base_head: str | None,
         p0: str, p1: str, log_alpha: str, log_alpha_tensor: str) -> None:
  """Fills base backbone, base head, sub-task delta/gates and head."""
  enc, dec = model.encoder, model.decoder
  set_vars(enc.base, {n: enc_tensor(g, base, n) for n in enc.shapes})
  if base_head is not None:
    h = dec.heads[BASE]
    set_vars(h.p, {n: head_tensor(g, base_head, BASE, n) for n in h.p})
  set_vars(enc.delta[SUB], {n: enc_tensor(g, p1, n) for n in enc.shapes})
  set_vars(enc.log_alpha[SUB], {n: enc_tensor(g, log_alpha, n)
                                for n in enc.shapes})
  set_vars(enc.log_alpha_tensor[SUB], {n: g[log_alpha_tensor +
                                           ecs_vit.torch_name(n)]
                                       for n in enc.shapes})
  h = dec.heads[SUB]
  set_vars(h.init, {n: head_tensor(g, p0, SUB, n) for n in h.p})
  set_vars(h.p, {n: head_tensor(g, p1, SUB, n) for n in h.p})


def replay_noise(monkeypatch, g: Mapping, u: str, u_tensor: str) -> None:
  """Makes ecs_vit draw the golden's recorded gate noise."""
  def draw(key, shapes, task):
    del key, task
    return {n: (jnp.asarray(enc_noise(g, u, n)),
                jnp.asarray(g[u_tensor + ecs_vit.torch_name(n)]))
            for n in shapes}
  monkeypatch.setattr(ecs_vit, "draw_noise", draw)


def enc_noise(g, prefix, name):
  return ecs_vit.from_torch_layout(name, g[prefix + ecs_vit.torch_name(name)])


def nchw(x) -> np.ndarray:
  return np.transpose(np.asarray(x), (0, 3, 1, 2))
