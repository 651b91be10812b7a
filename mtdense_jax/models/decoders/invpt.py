"""InvPT decoder (Ye & Xu, "Inverted Pyramid Multi-task Transformer", ECCV'22).

Port of prismformore/Multi-Task-Transformer, ``InvPT/models/transformers/
{transformer_decoder,invpt}.py`` and the ``MLPHead`` heads of
``InvPT/models/transformer_net.py`` (commit
870c6be100b95d44ffa0a9591775dd3faa2d5664); architecture and parity traps in
``shared/notes/invpt_architecture.md``. Module names mirror the reference's
``multi_task_decoder`` so :func:`from_torch` is a short rename table.

Layout is NHWC; the T task maps of one stage are stacked as (B, T, h, w, C),
which flattens to the reference's task-major, row-major token order. The
reference's dead parameters (``scale_embed.2``, ``norm_mt``, ``redu_chan.0``,
stage-0 ``fuse_attn``) are not built; :func:`from_torch` skips them.
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
from mtdense_jax.models.layers import invpt_blocks

Capture = dict[str, jax.Array] | None


class ConvBlock(nnx.Module):
  """Reference ``ConvBlock``: conv3x3 (no bias) -> BN (``bn1``) -> ReLU."""

  def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs, dtype: Any,
               bn_axis_name: str | None):
    self.conv = common.conv(cin, cout, 3, padding=1, bias=False, dtype=dtype,
                            rngs=rngs)
    self.bn1 = common.batch_norm(cout, dtype=dtype, axis_name=bn_axis_name,
                                 rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return jax.nn.relu(self.bn1(self.conv(x)))


class InvPT(nnx.Module):
  """Reference ``InvPT``: mix_proj, 3 UP-Transformer stages, aggregation."""

  def __init__(self, tasks: Mapping[str, int], embed_dim: int, dim: int, *,
               num_heads: int, mlp_ratio: float, rngs: nnx.Rngs, dtype: Any,
               bn_axis_name: str | None, remat_policy: str | None = None):
    widths = (dim, dim // 2, dim // 4)
    self.remat_policy = remat_policy
    kw = dict(rngs=rngs, dtype=dtype)
    self.tasks = tuple(tasks)
    self.mix_proj = nnx.Dict({
        t: common.conv(embed_dim + n, dim, 1, **kw) for t, n in tasks.items()})
    self.invpt_stages = nnx.List([
        invpt_blocks.InvPTStage(
            s, len(tasks), widths[s], widths[s - 1] if s else None,
            num_heads=num_heads, mlp_ratio=mlp_ratio, kv_stride=2 ** (s + 1),
            bn_axis_name=bn_axis_name, **kw) for s in range(3)])
    self.norm_mts = nnx.List([
        nnx.LayerNorm(len(tasks) * c, epsilon=1e-5, **kw) for c in widths])
    # Reference redu_chan[s] for s = 1, 2 (its redu_chan[0] is dead).
    self.redu_chan = nnx.List([
        nnx.List([common.conv(c, dim, 1, **kw) for _ in tasks])
        for c in widths[1:]])
    self.mt_proj = nnx.Dict({
        t: common.ConvBNReLU(dim, dim, bias=True, bn_axis_name=bn_axis_name,
                             **kw) for t in tasks})

  def __call__(self, feats: Mapping[str, jax.Array],
               preds: Mapping[str, jax.Array], skips: tuple[jax.Array, ...],
               capture: Capture = None) -> dict[str, jax.Array]:
    x = jnp.stack([
        self.mix_proj[t](jnp.concatenate([feats[t], preds[t]], axis=-1))
        for t in self.tasks], axis=1)  # (B, T, h0, w0, D)
    b, n_t, h0, w0, _ = x.shape
    out_hw = (8 * h0, 8 * w0)
    _put(capture, "invpt/mix_proj", x, self.tasks)
    summed = [0.0] * n_t
    score = None
    for s, stage in enumerate(self.invpt_stages):
      skip = skips[s - 1] if s else None
      if capture is None:   # Captured intermediates cannot leave a remat.
        x, score = common.call_block(stage, self.remat_policy, x, score,
                                     skip)
      else:
        x, score = stage(x, score, skip, capture=capture)
      if capture is not None and s:
        _put(capture, f"invpt/stage{s}/up_embed",
             capture.pop(f"invpt/stage{s}/up_embed"), self.tasks)
      _put(capture, f"invpt/stage{s}/out", x, self.tasks)
      h, w, c = x.shape[2:]
      cat = jnp.moveaxis(x, 1, 3).reshape(b, h, w, n_t * c)
      normed = self.norm_mts[s](cat)
      if capture is not None:
        capture[f"invpt/norm_mts{s}"] = normed.reshape(b, h * w, n_t * c)
      for i in range(n_t):
        y = normed[..., i * c:(i + 1) * c]
        if s:
          y = self.redu_chan[s - 1][i](y)
        summed[i] = summed[i] + common.resize_bilinear(y, out_hw)
    out = {}
    for i, t in enumerate(self.tasks):
      _put(capture, f"invpt/multi_scale_sum/{t}", summed[i])
      out[t] = self.mt_proj[t](summed[i])
      _put(capture, f"invpt/task_feature/{t}", out[t])
    return out


def _put(capture: Capture, name: str, x: jax.Array,
         tasks: tuple[str, ...] | None = None) -> None:
  """Records a debug intermediate (per task when ``x`` is stacked)."""
  if capture is None:
    return
  if tasks is None:
    capture[name] = x
  else:
    for i, t in enumerate(tasks):
      capture[f"{name}/{t}"] = x[:, i]


class InvPTDecoder(nnx.Module):
  """Reference ``TransformerDecoder`` + per-task ``MLPHead`` heads.

  ``__call__(feats)`` takes the 4 encoder taps (B, H/16, W/16, C_i) and
  returns ``{"final": {t: (B, H, W, n_t)}, "aux": {"inter_preds": {...}}}``.
  """

  def __init__(self, in_channels: tuple[int, ...],
               task_outputs: Mapping[str, int], *, stride: int, embed_dim: int,
               pred_out_constant: int, num_heads: int, mlp_ratio: float,
               rngs: nnx.Rngs, dtype: Any, bn_axis_name: str | None,
               remat_policy: str | None = None):
    dim = embed_dim + pred_out_constant
    kw = dict(rngs=rngs, dtype=dtype)
    self.tasks = tuple(task_outputs)
    self.dtype = dtype
    self.stride = stride
    c0, c1, _, c3 = in_channels
    self.scale_embed = nnx.List([
        common.ConvTranspose(c0, dim // 4, (3, 3), strides=(2, 2),
                             padding=((1, 2), (1, 2)), **kw),
        common.conv(c1, dim // 2, 3, padding=1, **kw)])
    blk = dict(bn_axis_name=bn_axis_name, **kw)
    self.preliminary_decoder = nnx.Dict({
        t: nnx.List([ConvBlock(c3, c3, **blk), ConvBlock(c3, embed_dim, **blk)])
        for t in self.tasks})
    self.intermediate_head = nnx.Dict({
        t: common.conv(embed_dim, n, 1, **kw) for t, n in task_outputs.items()})
    self.invpt = InvPT(task_outputs, embed_dim, dim, num_heads=num_heads,
                       mlp_ratio=mlp_ratio, bn_axis_name=bn_axis_name,
                       remat_policy=remat_policy, **kw)
    self.heads = nnx.Dict({
        t: common.conv(dim, n, 1, **kw) for t, n in task_outputs.items()})

  def __call__(self, feats: feats_lib.Features | list[jax.Array], *,
               rngs: Any = None, capture: Capture = None) -> dict[str, Any]:
    """``capture``: optional dict that receives named intermediates."""
    del rngs  # The decoder is deterministic (its drop-path rate is 0).
    taps = [f.astype(self.dtype) for f in feats_lib.as_features(feats)["maps"]]
    b, h16, w16, _ = taps[3].shape
    if h16 % 4 or w16 % 4:
      raise ValueError(f"InvPT needs H and W multiples of 64 (the token "
                       f"grid {h16}x{w16} must be multiples of 4)")
    img_hw = (self.stride * h16, self.stride * w16)
    skips = (self.scale_embed[1](taps[1]), self.scale_embed[0](taps[0]))
    x = common.resize_bilinear(taps[3], (h16 // 2, w16 // 2))
    if capture is not None:
      capture.update({"decoder/back_fea_0": skips[1],
                      "decoder/back_fea_1": skips[0], "decoder/x_mtt": x})
    feat, pred = {}, {}
    for t in self.tasks:
      y = x
      for block in self.preliminary_decoder[t]:
        y = block(y)
      feat[t], pred[t] = y, self.intermediate_head[t](y)
      _put(capture, f"decoder/preliminary_feat/{t}", feat[t])
      _put(capture, f"decoder/inter_pred_lowres/{t}", pred[t])
    task_feats = self.invpt(feat, pred, skips, capture=capture)

    def full(y):
      return common.resize_bilinear(y, img_hw).astype(jnp.float32)

    final = {t: full(self.heads[t](task_feats[t])) for t in self.tasks}
    inter = {t: full(pred[t]) for t in self.tasks}
    return {"final": final, "aux": {"inter_preds": inter}}


def consumes(**decoder_kw) -> feats_lib.Consumes:
  """4 taps at one stride (a plain ViT's), whatever the decoder options."""
  del decoder_kw
  return feats_lib.Consumes(num_maps=4, same_stride=True)


def build(*, encoder: nnx.Module, task_outputs: Mapping[str, int],
          img_size: tuple[int, int], rngs: nnx.Rngs, dtype: Any = jnp.float32,
          embed_dim: int = 512, pred_out_constant: int = 64,
          num_heads: int = 2, mlp_ratio: float = 4.0,
          bn_axis_name: str | None = None, remat: str = "none",
          remat_policy: str = "nothing_saveable") -> InvPTDecoder:
  """Builds the InvPT decoder for a stride-16 encoder with 4 taps.

  Args:
    encoder: provides ``out_channels`` (4 taps, stride 16).
    task_outputs: head channels per task, in the reference task order
      (semseg, depth, human_parts, sal, normals, edge).
    img_size: (H, W), multiples of 64 (the reference's shape rule).
    rngs: initialisation RNGs.
    dtype: compute dtype.
    embed_dim: E; the decoder width is D = E + ``pred_out_constant``.
    pred_out_constant: the reference's ``PRED_OUT_NUM_CONSTANT``.
    num_heads: heads of every UP-Transformer stage.
    mlp_ratio: MLP expansion of every stage.
    bn_axis_name: mapped axis for cross-replica BatchNorm (SyncBatchNorm).
    remat: "block" checkpoints each UP-Transformer stage (``remat_policy``).
    remat_policy: a ``jax.checkpoint_policies`` member name.
  """
  produced = feats_lib.spec_of(encoder)
  feats_lib.check(produced, consumes(), encoder=type(encoder).__name__,
                  decoder="invpt")
  strides = produced.strides
  if img_size[0] % (4 * strides[0]) or img_size[1] % (4 * strides[0]):
    raise ValueError(f"InvPT needs H and W multiples of {4 * strides[0]} "
                     f"(multiples of 64 for stride 16), got {img_size}")
  return InvPTDecoder(produced.channels, dict(task_outputs),
                      stride=strides[0],
                      embed_dim=embed_dim, pred_out_constant=pred_out_constant,
                      num_heads=num_heads, mlp_ratio=mlp_ratio, rngs=rngs,
                      dtype=dtype, bn_axis_name=bn_axis_name,
                      remat_policy=common.remat_policy(remat, remat_policy))


# The reference's TASKS.NAMES order; its per-task ModuleLists follow it.
TASK_ORDER = ("semseg", "depth", "human_parts", "sal", "normals", "edge")
# Reference parameters that its forward pass never uses (notes section 8).
UNUSED = (r"^multi_task_decoder\.scale_embed\.2\.",
          r"^multi_task_decoder\.invpt\.norm_mt\.",
          r"^multi_task_decoder\.invpt\.redu_chan\.0\.",
          r"^multi_task_decoder\.invpt\.invpt_stages\.0\.blocks\.0\.attn\."
          r"fuse_attn\.")
_UP_EMBED = {"conv1": "1", "bn1": "2", "conv2": "4", "bn2": "5"}
_RENAMES = (
    (r"^encoder\.", "backbone."),
    (r"^decoder\.heads\.([^.]+)\.", r"heads.\1.linear_pred."),
    (r"^decoder\.", "multi_task_decoder."),
    (r"(\.invpt\.mix_proj\.[^.]+)\.", r"\1.0."),
    (r"(\.invpt\.mt_proj\.[^.]+)\.conv\.", r"\1.0."),
    (r"(\.invpt\.mt_proj\.[^.]+)\.bn\.", r"\1.1."),
    (r"(\.patch_embed\.\d+)\.(conv1|bn1|conv2|bn2)\.",
     lambda m: f"{m[1]}.proj.{_UP_EMBED[m[2]]}."),
    (r"(\.invpt\.redu_chan)\.(\d+)\.",
     lambda m: f"{m[1]}.{int(m[2]) + 1}."),
)


def torch_name(key: str) -> str:
  """Default key of a ``MultiTaskModel`` path -> reference state_dict key."""
  for pattern, repl in _RENAMES:
    key = re.sub(pattern, repl, key)
  return key


def from_torch(state_dict: Mapping[str, np.ndarray], model: nnx.Module, *,
               strict: bool = True) -> nnx.State:
  """Reference ``TransformerNet`` state_dict -> state of ``model``.

  ``model`` is a ``MultiTaskModel`` (``encoder`` = ViT, ``decoder`` = this
  decoder) built with the reference's sizes and task order. A ``module.``
  prefix (DDP checkpoints) is stripped; the reference's unused parameters
  are tolerated and logged.
  """
  tasks = tuple(model.decoder.tasks)
  if sorted(tasks, key=TASK_ORDER.index) != list(tasks):
    raise ValueError(f"tasks {tasks} are not in the reference order "
                     f"{TASK_ORDER}; index-based weights would be mixed up")
  from mtdense_jax.convert import torch_utils  # pylint: disable=g-import-not-at-top
  sd = torch_utils.strip_prefix(state_dict, "module.")
  state, _ = torch_utils.convert(sd, model, rename=torch_name, ignore=UNUSED,
                                 strict=strict)
  return state


def checkpoint_task_outputs(state_dict: Mapping[str, np.ndarray],
                            tasks: tuple[str, ...]) -> dict[str, int]:
  """Head sizes of ``tasks`` read from a reference checkpoint's heads."""
  out = {}
  for t in tasks:
    key = f"heads.{t}.linear_pred.weight"
    w = state_dict.get(key, state_dict.get(f"module.{key}"))
    if w is None:
      raise ValueError(f"config task {t!r} has no head in the checkpoint "
                       f"({key})")
    out[t] = int(np.shape(w)[0])
  return out


def _from_reference(state_dict, *, tasks, build):
  """A trained reference ``TransformerNet`` (encoder, decoder and heads)."""
  model = build(checkpoint_task_outputs(state_dict, tuple(tasks)))
  nnx.update(model, from_torch(state_dict, model))
  return model


# Checkpoint sources this decoder imports (python -m mtdense_jax.convert
# --from NAME): the reference's .pth/.safetensors, ViT encoder included.
CONVERTERS = {"invpt": _from_reference}
