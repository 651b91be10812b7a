"""MT-CP decoder (Fontana et al., WACV 2025; Klodivio355/MT-CP@08c068e).

Facts: ``../shared/notes/methods.md`` a.1, and the reference forward
(``models/models_nyud_CL.py`` / ``models_pascal_CL.py``):

1. Shared representation R = P * sum_q M_q from a Mask2Former encoder
   (``pixel_decoder_last_hidden_state`` P, ``masks_queries_logits`` M,
   both at stride 4).
2. Per task: a small Swin on R with no patch embedding (reference
   ``swim_transformer2.forward2``: pad then shift, windows always
   partitioned, patch merging between stages, a LayerNorm on every stage
   output) -> stages at strides 4, 8, 16 (embed, 2x, 4x channels).
3. Per task: an FPN (lateral 1x1, nearest top-down + add, 3x3 per level;
   only the finest output is used) -> task embedding X_t (``dim`` ch).
4. Per task: the CFM (:class:`..layers.mtcp_blocks.CFM`) of X_t and the
   other tasks' embeddings. **Which task meets ``gate1``**: the reference
   forward builds ``auxiliary_embeds`` as ``cat((depth, normal))`` for
   semseg, ``cat((sem, normal))`` for depth and ``cat((sem, depth))`` for
   normals (PASCAL likewise with human_parts and sal): the other tasks in
   the task order (semseg, depth|human_parts, normals|sal) with the task
   itself left out. Channels 0-255 (gate1) are the first of them. Here the
   order is ``config.tasks`` without t, which is the reference's when the
   config lists tasks in that order (configs/nyud_mtcp.py, pascal_mtcp.py).
5. Per task: the trace-back chain of SPFs from the CFM output through the
   stages, coarsest first; the last pred feeds the final head, the first
   two feed the auxiliary ("initial") heads.
6. Heads (per task ``heads[t]`` = "conv" or "depth", ``head_upsample[t]``):
   "conv" = 1x1 conv (no bias) + BN + ReLU + 1x1 conv, then bilinear
   x``head_upsample`` with align_corners=True (semseg x2 on NYUD, semseg
   and human_parts x4 on PASCAL, 1 = none for normals and sal); "depth" =
   1x1 conv to dim/2, the align_corners=True upsampling, 1x1 to 32, ReLU,
   1x1 to n (NYUD depth). Auxiliary heads: 1x1, 1x1 (no biases), BN,
   ReLU, 1x1. Every output is then resized bilinearly (align_corners=False)
   to the input size.

Output ``{"final": {t}, "aux": {"initial_0": {t} (stride 16),
"initial_1": {t} (stride 8)}}``: the reference's ``*_div_4``/``*_div_2``
outputs, aux head names for ``config.loss.aux_weights``.

With one task (``single_task`` or a one-task config) it is the reference's
``SingleTaskModel*``: the Swin's stage-0 output goes straight to the final
head (no FPN, CFM, trace-back or aux heads), so only stage 0 is built.

Sizes come from ``decoder_kw`` (reference: embed_dim = dim = 256, depths
(1, 2, 1), heads (2, 2, 2), window 7); the SPFs' pred width is ``dim``
(the reference's fixed 256).
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from mtdense_jax.models import features as feats_lib
from mtdense_jax.models.encoders import swin
from mtdense_jax.models.layers import common
from mtdense_jax.models.layers import mtcp_blocks as blocks

HEAD_KINDS = ("conv", "depth")
PIXELS = "pixel_decoder_last_hidden_state"
MASKS = "masks_queries_logits"


def shared_representation(feats: feats_lib.Features) -> jax.Array:
  """R = P * sum_q M_q (the reference einsum "bnhw,bdhw->bdhw")."""
  masks = feats[MASKS]
  return feats[PIXELS] * jnp.sum(masks, axis=-1, keepdims=True)


def resize_align_corners(x: jax.Array, factor: int) -> jax.Array:
  """``F.interpolate(scale_factor=factor, mode='bilinear',
  align_corners=True)``, NHWC: output i samples input i (n-1)/(m-1)."""
  if factor == 1:
    return x

  def axis(y, ax):
    n = y.shape[ax]
    m = n * factor
    pos = np.arange(m) * ((n - 1) / (m - 1)) if m > 1 else np.zeros(1)
    lo = np.clip(np.floor(pos).astype(np.int32), 0, n - 1)
    hi = np.minimum(lo + 1, n - 1)
    frac = jnp.asarray(pos - lo, y.dtype).reshape(
        (-1,) + (1,) * (y.ndim - ax - 1))
    a, b = jnp.take(y, lo, axis=ax), jnp.take(y, hi, axis=ax)
    return a + (b - a) * frac

  return axis(axis(x, 1), 2)


class TaskSwin(nnx.Module):
  """(B, h, w, C) -> stage outputs fine to coarse, each LayerNorm'd."""

  def __init__(self, in_dim: int, embed_dim: int, depths: Sequence[int],
               num_heads: Sequence[int], window: int, mlp_ratio: float, *,
               rngs: nnx.Rngs, dtype: Any, remat_policy: str | None):
    if in_dim != embed_dim:
      raise ValueError(f"MT-CP's decoder Swin has no patch embedding: its "
                       f"embed_dim ({embed_dim}) must equal the encoder's "
                       f"pixel embedding width ({in_dim})")
    if len(depths) != len(num_heads):
      raise ValueError(f"MT-CP decoder depths {tuple(depths)} and num_heads "
                       f"{tuple(num_heads)} differ in length")
    self.remat_policy = remat_policy
    win, shift = (window, window), (window // 2, window // 2)
    stages, merges, norms = [], [], []
    for i, (depth, heads) in enumerate(zip(depths, num_heads)):
      dim = embed_dim * 2 ** i
      if i:
        merges.append(swin.PatchMerging(dim // 2, rngs=rngs, dtype=dtype))
      stages.append(nnx.List([
          swin.SwinBlock(dim, heads, win, shift if j % 2 else (0, 0),
                         mlp_ratio, 0.0, rngs=rngs, dtype=dtype,
                         pad_first=True) for j in range(depth)]))
      norms.append(nnx.LayerNorm(dim, epsilon=1e-5, dtype=dtype, rngs=rngs))
    self.stages, self.merges = nnx.List(stages), nnx.List(merges)
    self.norms = nnx.List(norms)
    self.dims = tuple(embed_dim * 2 ** i for i in range(len(depths)))

  def __call__(self, x: jax.Array) -> list[jax.Array]:
    outs = []
    for i, (stage, norm) in enumerate(zip(self.stages, self.norms)):
      if i:
        x = self.merges[i - 1](x)
      for blk in stage:
        x = common.call_block(blk, self.remat_policy, x)
      outs.append(norm(x))
    return outs


class FPN(nnx.Module):
  """Reference ``DynamicFPNFusionModule``: the finest fused level only."""

  def __init__(self, in_dims: Sequence[int], dim: int, *, rngs: nnx.Rngs,
               dtype: Any):
    kw = dict(rngs=rngs, dtype=dtype)
    self.lateral = nnx.List([common.conv(c, dim, 1, **kw) for c in in_dims])
    # Only the finest 3x3 conv reaches the output (the reference builds
    # one per level and discards the others' results).
    self.out = common.conv(dim, dim, 3, padding=1, **kw)

  def __call__(self, stages: Sequence[jax.Array]) -> jax.Array:
    lat = [conv(x) for conv, x in zip(self.lateral, stages)]
    fused = lat[-1]
    for y in lat[-2::-1]:
      fused = _nearest(fused, y.shape[1:3]) + y
    return self.out(fused)


def _nearest(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """``F.interpolate(mode='nearest')``: source index floor(i * n / m)."""
  for ax, m in ((1, size[0]), (2, size[1])):
    n = x.shape[ax]
    x = jnp.take(x, (np.arange(m) * n) // m, axis=ax)
  return x


class Head(nnx.Module):
  """Final head ("conv" or "depth", see the module docstring)."""

  def __init__(self, kind: str, dim: int, n_out: int, upsample: int, *,
               rngs: nnx.Rngs, dtype: Any, depth_hidden: int = 32):
    if kind not in HEAD_KINDS:
      raise ValueError(f"MT-CP head kind {kind!r}; one of {HEAD_KINDS} "
                       "(config.model.decoder_kw.heads)")
    kw = dict(rngs=rngs, dtype=dtype)
    self.kind, self.upsample = kind, int(upsample)
    if kind == "conv":
      self.conv_a = common.conv(dim, dim, 1, bias=False, **kw)
      self.bn = common.batch_norm(dim, **kw)
      self.conv_b = common.conv(dim, n_out, 1, **kw)
    else:
      self.conv_a = common.conv(dim, dim // 2, 1, **kw)
      self.conv_b = common.conv(dim // 2, depth_hidden, 1, **kw)
      self.conv_c = common.conv(depth_hidden, n_out, 1, **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.kind == "conv":
      y = self.conv_b(jax.nn.relu(self.bn(self.conv_a(x))))
      return resize_align_corners(y, self.upsample)
    y = resize_align_corners(self.conv_a(x), self.upsample)
    return self.conv_c(jax.nn.relu(self.conv_b(y)))


class AuxHead(nnx.Module):
  """Reference ``SemSegPred``/``DepthPred``/...: 1x1, 1x1, BN, ReLU, 1x1."""

  def __init__(self, dim: int, n_out: int, *, rngs: nnx.Rngs, dtype: Any):
    kw = dict(rngs=rngs, dtype=dtype)
    self.conv_a = common.conv(dim, dim, 1, bias=False, **kw)
    self.conv_b = common.conv(dim, dim, 1, bias=False, **kw)
    self.bn = common.batch_norm(dim, **kw)
    self.conv_c = common.conv(dim, n_out, 1, **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.conv_c(jax.nn.relu(self.bn(self.conv_b(self.conv_a(x)))))


class TaskBranch(nnx.Module):
  """One task's Swin, FPN, CFM, trace-back and heads."""

  def __init__(self, n_out: int, num_others: int, *, in_dim: int,
               embed_dim: int, dim: int, depths, num_heads, window: int,
               mlp_ratio: float, head: str, upsample: int, attention: str,
               chunk: int, rngs: nnx.Rngs, dtype: Any,
               remat_policy: str | None):
    kw = dict(rngs=rngs, dtype=dtype)
    single = num_others == 0
    if single:
      depths, num_heads = tuple(depths)[:1], tuple(num_heads)[:1]
    self.swin = TaskSwin(in_dim, embed_dim, depths, num_heads, window,
                         mlp_ratio, remat_policy=remat_policy, **kw)
    head_dim = embed_dim if single else dim
    self.head = Head(head, head_dim, n_out, upsample, **kw)
    if single:
      self.fpn = self.cfm = self.trace_back = self.aux = None
      return
    dims = self.swin.dims
    self.fpn = FPN(dims, dim, **kw)
    self.cfm = blocks.CFM(dim, num_others, attention=attention, chunk=chunk,
                          **kw)
    self.trace_back = blocks.TraceBack(dim, dims, dim, **kw)
    self.aux = nnx.List([AuxHead(dim, n_out, **kw)
                         for _ in range(len(dims) - 1)])


class MTCPDecoder(nnx.Module):
  """Features of a Mask2Former encoder -> MT-CP predictions."""

  def __init__(self, in_dim: int, task_outputs: Mapping[str, int],
               img_size: tuple[int, int], *, stride: int, embed_dim: int,
               dim: int,
               depths: Sequence[int], num_heads: Sequence[int],
               window_size: int, mlp_ratio: float,
               heads: Mapping[str, str], head_upsample: Mapping[str, int],
               cfm_attention: str, cfm_chunk: int, single_task: bool,
               rngs: nnx.Rngs, dtype: Any, remat_policy: str | None):
    self.tasks = tuple(task_outputs)
    self.img_size = tuple(img_size)
    self.stride = int(stride)
    self.dtype = dtype
    unknown = (set(heads) | set(head_upsample)) - set(self.tasks)
    if unknown:
      raise ValueError(f"config.model.decoder_kw.heads/head_upsample name "
                       f"tasks {sorted(unknown)} not in config.tasks "
                       f"{self.tasks}")
    single = single_task or len(self.tasks) == 1
    self.single = single
    self.branches = nnx.Dict({
        t: TaskBranch(n, 0 if single else len(self.tasks) - 1,
                      in_dim=in_dim, embed_dim=embed_dim, dim=dim,
                      depths=depths, num_heads=num_heads, window=window_size,
                      mlp_ratio=mlp_ratio, head=heads.get(t, "conv"),
                      upsample=head_upsample.get(t, 1),
                      attention=cfm_attention, chunk=cfm_chunk, rngs=rngs,
                      dtype=dtype, remat_policy=remat_policy)
        for t, n in task_outputs.items()})

  def _full(self, y: jax.Array, size: tuple[int, int]) -> jax.Array:
    return common.resize_bilinear(y, size).astype(jnp.float32)

  def __call__(self, feats: feats_lib.Features, *,
               rngs: Any = None) -> dict[str, Any]:
    del rngs  # Deterministic (drop-path 0, no dropout).
    r = shared_representation(feats_lib.as_features(feats)).astype(
        self.dtype)
    # The input size (the encoder's stride-4 map times 4), so any size the
    # encoder takes works, not only the one the model was built for.
    size = (self.stride * r.shape[1], self.stride * r.shape[2])
    stages = {t: self.branches[t].swin(r) for t in self.tasks}
    if self.single:
      return {"final": {
          t: self._full(self.branches[t].head(stages[t][0]), size)
          for t in self.tasks}, "aux": {}}
    embeds = {t: self.branches[t].fpn(stages[t]) for t in self.tasks}
    final, aux = {}, {}
    for t in self.tasks:
      br = self.branches[t]
      fused = br.cfm(embeds[t], [embeds[o] for o in self.tasks if o != t])
      preds = br.trace_back(stages[t], fused)
      final[t] = self._full(br.head(preds[-1]), size)
      for i, (head, p) in enumerate(zip(br.aux, preds[:-1])):
        aux.setdefault(f"initial_{i}", {})[t] = self._full(head(p), size)
    return {"final": final, "aux": aux}


def consumes(**decoder_kw) -> feats_lib.Consumes:
  """The Mask2Former pixel embeddings and mask logits, by name."""
  del decoder_kw
  return feats_lib.Consumes(extras=(PIXELS, MASKS))


def build(*, encoder: nnx.Module, task_outputs: Mapping[str, int],
          img_size: tuple[int, int], rngs: nnx.Rngs, dtype: Any = jnp.float32,
          embed_dim: int = 256, dim: int = 256,
          depths: Sequence[int] = (1, 2, 1),
          num_heads: Sequence[int] = (2, 2, 2), window_size: int = 7,
          mlp_ratio: float = 4.0, heads: Mapping[str, str] | None = None,
          head_upsample: Mapping[str, int] | None = None,
          cfm_attention: str = "chunked", cfm_chunk: int = 1024,
          single_task: bool = False, remat: str = "none",
          remat_policy: str = "nothing_saveable") -> MTCPDecoder:
  """Builds the MT-CP decoder (defaults: the reference sizes).

  Args:
    encoder: produces ``pixel_decoder_last_hidden_state`` (its width must
      equal ``embed_dim``) and ``masks_queries_logits`` at stride 4.
    task_outputs: head channels per task, in config order (the CFM's
      order of the other tasks, see the module docstring).
    img_size: (H, W); the stride-4 map must survive ``len(depths) - 1``
      patch mergings.
    embed_dim, depths, num_heads, window_size, mlp_ratio: the per-task Swin.
    dim: FPN, CFM, SPF pred and head width.
    heads, head_upsample: per task head kind ("conv" | "depth") and
      align_corners=True upsampling factor (default "conv", 1).
    cfm_attention: "chunked" (memory-efficient) or "direct" (materialised
      hw x hw affinity); cfm_chunk: query rows per chunk.
    single_task: the reference's single-task model (also for one task).
    remat: "block" checkpoints every decoder Swin block.
  """
  produced = feats_lib.spec_of(encoder)
  feats_lib.check(produced, consumes(), encoder=type(encoder).__name__,
                  decoder="mtcp")
  i = produced.index(PIXELS)
  if produced.strides[i] * 2 ** (len(depths) - 1) > min(img_size):
    raise ValueError(f"img_size {tuple(img_size)} is too small for "
                     f"{len(depths)} MT-CP decoder stages")
  return MTCPDecoder(
      produced.channels[i], dict(task_outputs), tuple(img_size),
      stride=produced.strides[i], embed_dim=embed_dim, dim=dim,
      depths=tuple(depths),
      num_heads=tuple(num_heads), window_size=int(window_size),
      mlp_ratio=float(mlp_ratio), heads=dict(heads or {}),
      head_upsample={k: int(v) for k, v in (head_upsample or {}).items()},
      cfm_attention=cfm_attention, cfm_chunk=int(cfm_chunk),
      single_task=bool(single_task), rngs=rngs, dtype=dtype,
      remat_policy=common.remat_policy(remat, remat_policy))


# ---------------------------------------------------------------- converters

# Our block paths -> the reference models/utils.py state-dict names.
_BLOCK_RULES = (
    (r"(^|\.)channel_gate\.mlp_(\d)\.", r"\1ChannelGate.mlp.\2."),
    (r"(^|\.)spatial_gate\.conv\.", r"\1SpatialGate.spatial.conv."),
    (r"(^|\.)spatial_gate\.bn\.", r"\1SpatialGate.spatial.bn."),
    (r"(^|\.)sem\.cbam\.", r"\1cbam_sem."),
    (r"(^|\.)sem\.norm\.", r"\1cbam_sem_norm."),
    (r"(^|\.)dep\.cbam\.", r"\1cbam_dep."),
    (r"(^|\.)dep\.norm\.", r"\1cbam_dep_norm."),
    (r"(^|\.)dep2\.cbam\.", r"\1cbam_dep2."),
    (r"(^|\.)dep2\.norm\.", r"\1cbam_dep2_norm."),
    (r"(^|\.)out\.cbam\.", r"\1shared_dep2."),
    (r"(^|\.)out\.norm\.", r"\1shared_dep2_norm."),
    (r"(^|\.)gates\.(\d+)\.", lambda m: f"{m[1]}gate{int(m[2]) + 1}."),
    (r"(^|\.)spfs\.(\d+)\.", r"\1spf_modules.\2."),
)
# Reference CFM parameters its forward never uses.
BLOCK_UNUSED = (r"(^|\.)conv[23]\.(weight|bias)$",)


def block_torch_name(key: str) -> str:
  """Default torch key of one of our CFM/SPF/TraceBack variables -> the
  reference's (``gates.0.weight`` -> ``gate1.weight``, ...)."""
  for pattern, repl in _BLOCK_RULES:
    key = re.sub(pattern, repl, key)
  return key


def blocks_from_torch(state_dict: Mapping[str, np.ndarray],
                      module: nnx.Module, *, strict: bool = True):
  """A reference ``GAAF_module2``/``SPF``/``TraceBack`` state_dict -> the
  state of our :mod:`..layers.mtcp_blocks` module (``nnx.update`` it)."""
  from mtdense_jax.convert import torch_utils  # pylint: disable=g-import-not-at-top
  state, _ = torch_utils.convert(state_dict, module, rename=block_torch_name,
                                 ignore=BLOCK_UNUSED, strict=strict)
  return state
