"""TaskPrompter decoder: prompt-to-feature layers, fusion, CTR and heads.

Port of prismformore/Multi-Task-Transformer @ 870c6be,
``TaskPrompter/models/transformers/taskprompter.py: cal_task_feature`` and
``ConvHead`` of ``TaskPrompter/utils/common_config.py``; facts and traps in
``shared/notes/taskprompter_architecture.md`` sections 3, 4, 8 and 9. It reads
the output dict of ``encoders/taskprompter.py`` (4 taps with their block's
raw spatial and channel scores). The reference keeps these layers inside its
backbone; :func:`torch_name` maps our names to its ``backbone.*`` keys.

Per tap l and task t: the tap is scaled by the task prompt's raw spatial
scores (one map per head's channel group) and by its raw windowed channel
scores (both with a residual), each branch goes through a 1x1 conv, and the
two are fused (1x1, 3x3, BN, GELU, 1x1). With ``use_ctr`` the fused task maps
are mixed linearly with weights predicted from the prompt-to-prompt scores.
The 4 layers are summed, upsampled x4, and each task's ConvHead (3x3, BN,
GELU, 1x1) runs before the final bilinear resize. No deep supervision.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from mtdense_jax.models import features as feats_lib
from mtdense_jax.models.layers import common

Capture = dict[str, jax.Array] | None


class Fuse(nnx.Module):
  """``fea_fuse[l][t]``: 1x1 (2E -> F), 3x3, BN, GELU, 1x1."""

  def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs, dtype: Any,
               bn_axis_name: str | None):
    kw = dict(rngs=rngs, dtype=dtype)
    self.conv0 = common.conv(cin, cout, 1, **kw)
    self.conv1 = common.conv(cout, cout, 3, padding=1, **kw)
    self.bn = common.batch_norm(cout, axis_name=bn_axis_name, **kw)
    self.conv4 = common.conv(cout, cout, 1, **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.conv4(common.gelu(self.bn(self.conv1(self.conv0(x)))))


class CTRConv(nnx.Module):
  """``ctr_attn_conv[l][t]``: 1x1 (heads -> heads), GELU, 1x1 (-> 1)."""

  def __init__(self, heads: int, *, rngs: nnx.Rngs, dtype: Any):
    self.conv0 = common.conv(heads, heads, 1, rngs=rngs, dtype=dtype)
    self.conv2 = common.conv(heads, 1, 1, rngs=rngs, dtype=dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.conv2(common.gelu(self.conv0(x)))


class ConvHead(nnx.Module):
  """Reference ``ConvHead``: 3x3 conv, BN, GELU (``mt_proj``), 1x1 conv."""

  def __init__(self, dim: int, n_out: int, *, rngs: nnx.Rngs, dtype: Any,
               bn_axis_name: str | None):
    self.conv = common.conv(dim, dim, 3, padding=1, rngs=rngs, dtype=dtype)
    self.bn = common.batch_norm(dim, axis_name=bn_axis_name, rngs=rngs,
                                dtype=dtype)
    self.linear_pred = common.conv(dim, n_out, 1, rngs=rngs, dtype=dtype)

  def __call__(self, x: jax.Array, task: str, capture: Capture = None):
    y = common.gelu(self.bn(self.conv(x)))
    _put(capture, f"head/mt_proj/{task}", y)
    return self.linear_pred(y)


def _put(capture: Capture, name: str, x: jax.Array) -> None:
  if capture is not None:
    capture[name] = x


class TaskPrompterDecoder(nnx.Module):
  """Encoder dict -> ``{"final": {task: (B, H, W, n_t)}}``."""

  def __init__(self, task_outputs: Mapping[str, int], *, width: int,
               num_heads: int, prompt_len: int, patch_size: int,
               embed_dim: int, final_embed_dim: int, use_ctr: bool,
               rngs: nnx.Rngs, dtype: Any, bn_axis_name: str | None):
    kw = dict(rngs=rngs, dtype=dtype)
    self.tasks = tuple(task_outputs)
    self.prompt_len = prompt_len
    self.num_heads = num_heads
    self.patch_size = patch_size
    self.use_ctr = use_ctr
    self.dtype = dtype

    def per_task(make):
      return nnx.List([nnx.Dict({t: make() for t in self.tasks})
                       for _ in range(4)])

    self.fea_decode_spa = per_task(
        lambda: common.conv(width, embed_dim, 1, **kw))
    self.fea_decode_chan = per_task(
        lambda: common.conv(width, embed_dim, 1, **kw))
    self.fea_fuse = per_task(lambda: Fuse(2 * embed_dim, final_embed_dim,
                                          bn_axis_name=bn_axis_name, **kw))
    if use_ctr:
      self.ctr_attn_conv = per_task(lambda: CTRConv(num_heads, **kw))
    self.heads = nnx.Dict({
        t: ConvHead(final_embed_dim, n, bn_axis_name=bn_axis_name, **kw)
        for t, n in task_outputs.items()})

  def _layer(self, l: int, x: jax.Array, s: jax.Array, sc: jax.Array,
             capture: Capture) -> list[jax.Array]:
    """One task-feature layer (reference ``cal_task_feature``)."""
    b, h, w, c = x.shape
    n_t, pl, nh = len(self.tasks), self.prompt_len, self.num_heads
    p = n_t * pl
    nwin = sc.shape[-1]
    fused = []
    for i, t in enumerate(self.tasks):
      # Spatial: group g = head * L + prompt scales channels [g C/G, ...).
      sp = s[:, :, i * pl:(i + 1) * pl, p:].reshape(b, nh * pl, h, w)
      sp = jnp.repeat(jnp.moveaxis(sp, 1, -1), c // (nh * pl), axis=-1)
      spa_in = x * sp + x
      # Channel: one scalar per channel per contiguous window.
      cw = jnp.moveaxis(sc[:, i], 1, -1)               # (B, nh, nw, C)
      cw = jnp.broadcast_to(
          cw[:, :, None, :, None],
          (b, nwin, h // nwin, nwin, w // nwin, c)).reshape(b, h, w, c)
      chan_in = x * cw + x
      spa = self.fea_decode_spa[l][t](spa_in)
      chan = self.fea_decode_chan[l][t](chan_in)
      fused.append(self.fea_fuse[l][t](jnp.concatenate([spa, chan], -1)))
      pre = f"layer{l}/"
      _put(capture, pre + f"spa_modulated/{t}", spa_in)
      _put(capture, pre + f"spa_feat/{t}", spa)
      _put(capture, pre + f"chan_modulated/{t}", chan_in)
      _put(capture, pre + f"chan_feat/{t}", chan)
      _put(capture, pre + f"fused/{t}", fused[-1])
    if not self.use_ctr:
      feats = fused
    else:
      stacked = jnp.stack(fused, axis=1)               # (B, T, h, w, F)
      feats = []
      for i, t in enumerate(self.tasks):
        a = jnp.moveaxis(s[:, :, i, :p], 1, -1)[:, None]   # (B, 1, T, nH)
        wt = self.ctr_attn_conv[l][t](a)                   # (B, 1, T, 1)
        _put(capture, f"layer{l}/ctr_weight/{t}", wt)
        feats.append(jnp.einsum("bj,bjhwc->bhwc", wt[:, 0, :, 0], stacked))
    for t, f in zip(self.tasks, feats):
      _put(capture, f"layer{l}/task_feat/{t}", f)
    return feats

  def __call__(self, enc: Mapping[str, list[jax.Array]], *, rngs: Any = None,
               capture: Capture = None) -> dict[str, Any]:
    del rngs  # Deterministic (no dropout or drop path here).
    taps = [t.astype(self.dtype) for t in enc["maps"]]
    attn = enc["prompt_attn"]
    b, h, w, _ = taps[0].shape
    total = None
    for l, (x, s, sc) in enumerate(zip(taps, attn["spatial"],
                                       attn["channel"])):
      feats = self._layer(l, x, s.astype(self.dtype), sc.astype(self.dtype),
                          capture)
      total = feats if total is None else [a + f for a, f in zip(total,
                                                                 feats)]
    img_hw = (self.patch_size * h, self.patch_size * w)
    final = {}
    for t, f in zip(self.tasks, total):
      f = common.resize_bilinear(f, (4 * h, 4 * w))
      _put(capture, f"backbone/task_feature_x4/{t}", f)
      y = self.heads[t](f, t, capture)
      _put(capture, f"head/logits_lowres/{t}", y)
      final[t] = common.resize_bilinear(y, img_hw).astype(jnp.float32)
    return {"final": final}


def consumes(**decoder_kw) -> feats_lib.Consumes:
  """Four same-stride taps and the prompt attention they were made with."""
  del decoder_kw
  return feats_lib.Consumes(num_maps=4, same_stride=True,
                            extras=("prompt_attn",))


def build(*, encoder: nnx.Module, task_outputs: Mapping[str, int],
          img_size: tuple[int, int], rngs: nnx.Rngs, dtype: Any = jnp.float32,
          embed_dim: int = 768, final_embed_dim: int = 768,
          use_ctr: bool = False,
          bn_axis_name: str | None = None) -> TaskPrompterDecoder:
  """Builds the decoder for a ``encoders/taskprompter.py`` encoder.

  Args:
    encoder: provides tasks (prompt order), width, num_heads, prompt_len.
    task_outputs: head channels per task, in the encoder's task order.
    img_size: (H, W) (checked by the encoder).
    rngs: initialisation RNGs.
    dtype: compute dtype.
    embed_dim: E, width of the spatial/channel branch 1x1 convs.
    final_embed_dim: F, width of the fused task features and the heads.
    use_ctr: cross-task reweighting (PASCAL); needs prompt_len 1.
    bn_axis_name: mapped axis for cross-replica BatchNorm (SyncBatchNorm).
  """
  del img_size
  tasks = tuple(task_outputs)
  if tuple(getattr(encoder, "tasks", ())) != tasks:
    raise ValueError(f"TaskPrompter decoder tasks {tasks} differ from the "
                     f"encoder's prompts {getattr(encoder, 'tasks', None)}; "
                     "build both through multitask.build_model")
  if use_ctr and encoder.prompt_len != 1:
    raise ValueError("use_ctr needs prompt_len 1 (as the reference asserts)")
  return TaskPrompterDecoder(
      dict(task_outputs), width=encoder.width, num_heads=encoder.num_heads,
      prompt_len=encoder.prompt_len, patch_size=encoder.patch_size,
      embed_dim=embed_dim, final_embed_dim=final_embed_dim, use_ctr=use_ctr,
      rngs=rngs, dtype=dtype, bn_axis_name=bn_axis_name)


_FUSE = {"conv0": "0", "conv1": "1", "bn": "2", "conv4": "4"}
_RENAMES = (
    (r"^encoder\.", "backbone."),
    (r"^decoder\.heads\.([^.]+)\.conv\.", r"heads.\1.mt_proj.0."),
    (r"^decoder\.heads\.([^.]+)\.bn\.", r"heads.\1.mt_proj.1."),
    (r"^decoder\.heads\.", "heads."),
    (r"^decoder\.(fea_decode_spa|fea_decode_chan)\.(\d+)\.([^.]+)\.",
     r"backbone.\1.\2.\3.0."),
    (r"^decoder\.fea_fuse\.(\d+)\.([^.]+)\.(conv0|conv1|bn|conv4)\.",
     lambda m: f"backbone.fea_fuse.{m[1]}.{m[2]}.{_FUSE[m[3]]}."),
    (r"^decoder\.ctr_attn_conv\.(\d+)\.([^.]+)\.conv(\d)\.",
     r"backbone.ctr_attn_conv.\1.\2.\3."),
)
# The reference's task order; prompt rows and CTR indices follow it.
TASK_ORDER = ("semseg", "depth", "human_parts", "sal", "normals", "edge")


def torch_name(key: str) -> str:
  """Default key of a ``MultiTaskModel`` path -> reference state_dict key."""
  for pattern, repl in _RENAMES:
    key = re.sub(pattern, repl, key)
  return key


def from_torch(state_dict: Mapping[str, np.ndarray], model: nnx.Module, *,
               strict: bool = True) -> nnx.State:
  """Reference ``TaskPrompterWrapper`` state_dict -> state of ``model``.

  ``model`` is a ``MultiTaskModel`` built with the checkpoint's sizes and the
  reference task order. A ``module.`` prefix (DDP) is stripped. Every
  reference parameter is used (the last block's zero-gradient
  ``token_trans1`` included).
  """
  from mtdense_jax.convert import torch_utils  # pylint: disable=g-import-not-at-top
  tasks = tuple(model.decoder.tasks)
  if sorted(tasks, key=lambda t: (TASK_ORDER.index(t) if t in TASK_ORDER
                                  else len(TASK_ORDER))) != list(tasks):
    raise ValueError(f"tasks {tasks} are not in the reference order "
                     f"{TASK_ORDER}; prompt rows would be mixed up")
  sd = torch_utils.strip_prefix(state_dict, "module.")
  state, _ = torch_utils.convert(sd, model, rename=torch_name, strict=strict)
  return state


# ViT init parameters that TaskPrompter has no use for (timm names).
_VIT_UNUSED = (r"^cls_token$", r"^head\.", r"^pre_logits\.", r"^fc_norm\.")
# Our encoder parameters a plain ViT checkpoint does not have.
_PROMPT_ONLY = (r"^task_prompts$", r"\.attn\.token_trans1?\.")


def from_vit_init(vit_state_dict: Mapping[str, np.ndarray],
                  model: nnx.Module) -> nnx.State:
  """ImageNet ViT weights (timm names) -> the ENCODER state of ``model``.

  As the reference ``_load_weights``: patch embed, pos_embed (24x24 grid
  resized to the model's grid with PyTorch bicubic, slot 0 kept), fused qkv,
  proj, MLP and norms are loaded; ``task_prompts`` and ``token_trans``/
  ``token_trans1`` keep the model's own init. Use ``vit.npz_to_torch`` first
  for an original ``.npz``. Returns a state for ``model.encoder``.
  """
  from mtdense_jax.convert import torch_utils  # pylint: disable=g-import-not-at-top
  enc = model.encoder
  sd = dict(torch_utils.strip_prefix(vit_state_dict, "module."))
  if "pos_embed" in sd and sd["pos_embed"].shape[1] - 1 != (
      enc.grid[0] * enc.grid[1]):
    sd["pos_embed"] = torch_utils.resize_pos_embed(
        np.asarray(sd["pos_embed"]), enc.grid, num_prefix_tokens=1)
  # The prompt-only parameters keep the model's values (in torch layout);
  # everything else must come from the checkpoint, shape-checked.
  for path, var in nnx.to_flat_state(nnx.state(enc)):
    key = torch_utils.torch_key(path)
    if any(re.search(p, key) for p in _PROMPT_ONLY):
      value = np.asarray(var[...])
      sd[key] = value.T if path[-1] == "kernel" else value
  state, _ = torch_utils.convert(sd, enc, ignore=_VIT_UNUSED)
  return state


def _released(state_dict: Mapping[str, np.ndarray], *, tasks, build):
  """CLI converter for a released TaskPrompter checkpoint: head sizes are
  read from its ``heads.<task>.linear_pred`` weights."""
  heads = {}
  for key, value in state_dict.items():
    m = re.match(r"^(?:module\.)?heads\.([^.]+)\.linear_pred\.weight$", key)
    if m:
      heads[m[1]] = int(np.shape(value)[0])
  if set(heads) != set(tasks):
    raise ValueError(f"the checkpoint has heads for {sorted(heads)} but "
                     f"config.tasks is {list(tasks)}")
  model = build({t: heads[t] for t in tasks})
  nnx.update(model, from_torch(state_dict, model))
  return model


def _vit_init(state_dict: Mapping[str, np.ndarray], *, tasks, build):
  """CLI converter for the ImageNet ViT init (timm .pth/.safetensors or the
  original .npz); prompts, token_trans and the decoder keep their init."""
  del tasks
  from mtdense_jax.models.encoders import vit  # pylint: disable=g-import-not-at-top
  if vit.is_vit_npz(state_dict):
    state_dict = vit.npz_to_torch(state_dict)
  model = build(None)
  nnx.update(model.encoder, from_vit_init(state_dict, model))
  return model


# Sources for python -m mtdense_jax.convert --from NAME.
CONVERTERS = {"taskprompter": _released, "timm": _vit_init, "npz": _vit_init}
