"""ViT with task prompts: the encoder of TaskPrompter (Ye & Xu, ICLR 2023).

Port of prismformore/Multi-Task-Transformer @ 870c6be,
``TaskPrompter/models/transformers/taskprompter.py`` (ViT variant); facts and
traps in ``shared/notes/taskprompter_architecture.md`` sections 2 and 9.
A plain ViT (no cls token; ``pos_embed`` slot 0 kept for checkpoint layout
but unused) whose sequence is extended with ``T * prompt_len`` learned task
prompts that share every block weight with the patch tokens. Each block also
returns its RAW (unscaled, pre-softmax) spatial scores and raw windowed
channel scores, which the TaskPrompter decoder uses as feature multipliers.

Output (a dict, consumed by ``decoders/taskprompter.py``):
  ``taps``: 4 maps (B, h, w, C): the outputs of the blocks in ``taps``
    (1-based, un-normalised) and the final-norm output;
  ``spa``: per tap, the raw scores q.k^T (B, heads, P+N, P+N), prompts first;
  ``chan``: per tap, the raw channel scores (B, P, C, nh, nw).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from mtdense_jax.models import features as feats_lib
from mtdense_jax.models.encoders import vit
from mtdense_jax.models.layers import common

Capture = dict[str, jax.Array] | None
_DEFAULTS = dict(mlp_ratio=4.0, patch_size=16, drop_path_rate=0.15, taps=None,
                 prompt_len=1, chan_nheads=1)


def channel_windows(chan_nheads: int, grid: tuple[int, int]) -> int:
  """Windows per side, ``int(sqrt(chan_nheads))`` as the reference."""
  n = int(math.isqrt(int(chan_nheads)))
  if n < 1 or grid[0] % n or grid[1] % n:
    raise ValueError(f"chan_nheads={chan_nheads} gives {n}x{n} channel "
                     f"windows, which must divide the token grid {grid}")
  return n


class PromptAttention(nnx.Module):
  """Joint prompt+patch attention returning the raw scores.

  ``qkv``/``proj`` are the ViT's (same names and layout as
  :class:`vit.Attention`); ``token_trans`` (C -> N) and ``token_trans1``
  (N -> C) are the channel branch and prompt update, sized by the grid.
  """

  def __init__(self, dim: int, num_heads: int, num_tokens: int,
               windows: int, grid: tuple[int, int], *, rngs: nnx.Rngs,
               dtype: Any):
    self.num_heads = num_heads
    self.windows = windows
    self.grid = grid
    self.qkv = nnx.Linear(dim, 3 * dim, dtype=dtype, rngs=rngs)
    self.proj = nnx.Linear(dim, dim, dtype=dtype, rngs=rngs)
    init = nnx.initializers.truncated_normal(0.02)
    self.token_trans = nnx.Linear(dim, num_tokens, kernel_init=init,
                                  dtype=dtype, rngs=rngs)
    self.token_trans1 = nnx.Linear(num_tokens, dim, kernel_init=init,
                                   dtype=dtype, rngs=rngs)

  def __call__(self, xn: jax.Array, pn: jax.Array):
    """Normalised tokens (B, N, C) and prompts (B, P, C) -> outputs+scores."""
    b, n, c = xn.shape
    p = pn.shape[1]
    hd = c // self.num_heads
    z = jnp.concatenate([pn, xn], axis=1)
    qkv = self.qkv(z).reshape(b, p + n, 3, self.num_heads, hd)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k)
    a = jax.nn.softmax(s.astype(jnp.float32) * (hd ** -0.5), axis=-1)
    o = jnp.einsum("bhqk,bkhd->bqhd", a.astype(v.dtype), v)
    o = self.proj(o.reshape(b, p + n, c))
    m = self.token_trans(pn)                            # (B, P, N)
    nw = self.windows
    gh, gw = self.grid
    mw = m.reshape(b, p, nw, gh // nw, nw, gw // nw)
    xw = xn.reshape(b, nw, gh // nw, nw, gw // nw, c)
    sc = jnp.einsum("bpiajc,biajcd->bpdij", mw, xw)     # (B, P, C, nh, nw)
    p_attn = o[:, :p] + self.token_trans1(m)
    return o[:, p:], p_attn, s, sc


class PromptBlock(nnx.Module):
  """Pre-norm block; prompts and patches share LN1, attention, LN2 and MLP."""

  def __init__(self, dim: int, num_heads: int, mlp_ratio: float,
               drop_path: float, num_tokens: int, windows: int,
               grid: tuple[int, int], *, rngs: nnx.Rngs, dtype: Any):
    self.norm1 = nnx.LayerNorm(dim, epsilon=1e-6, dtype=dtype, rngs=rngs)
    self.attn = PromptAttention(dim, num_heads, num_tokens, windows, grid,
                                rngs=rngs, dtype=dtype)
    self.drop_path = common.DropPath(drop_path)
    self.norm2 = nnx.LayerNorm(dim, epsilon=1e-6, dtype=dtype, rngs=rngs)
    self.mlp = common.Mlp(dim, int(dim * mlp_ratio), rngs=rngs, dtype=dtype)

  def __call__(self, x: jax.Array, p: jax.Array, *, rngs: Any = None):
    x_attn, p_attn, s, sc = self.attn(self.norm1(x), self.norm1(p))
    x = x + self.drop_path(x_attn, rngs=rngs)
    x = x + self.drop_path(self.mlp(self.norm2(x)), rngs=rngs)
    p = p + self.drop_path(p_attn, rngs=rngs)
    p = p + self.drop_path(self.mlp(self.norm2(p)), rngs=rngs)
    return x, p, s, sc


class PromptViT(nnx.Module):
  """Image (B, H, W, 3) -> taps and raw scores (see the module docstring)."""

  def __init__(self, *, img_size: tuple[int, int], tasks: Sequence[str],
               width: int, depth: int, num_heads: int, mlp_ratio: float,
               patch_size: int, drop_path_rate: float, taps: Sequence[int],
               prompt_len: int, chan_nheads: int, rngs: nnx.Rngs,
               dtype: Any = jnp.float32, remat_policy: str | None = None):
    h, w = img_size
    if h % patch_size or w % patch_size:
      raise ValueError(f"img_size {img_size} not divisible by {patch_size}")
    if width % (num_heads * prompt_len):
      raise ValueError(f"width {width} must be divisible by num_heads * "
                       f"prompt_len = {num_heads * prompt_len}")
    self.grid = (h // patch_size, w // patch_size)
    self.windows = channel_windows(chan_nheads, self.grid)
    self.tasks = tuple(tasks)
    self.prompt_len = int(prompt_len)
    self.num_heads = num_heads
    self.width = width
    self.patch_size = patch_size
    self.taps = tuple(int(t) for t in taps)
    # Four stride-p taps plus the raw prompt attention each tap was made
    # with, which the TaskPrompter decoder reads (features.py contract).
    self.produces = feats_lib.spec((patch_size,) * 4, (width,) * 4,
                                   extras=("prompt_attn",))
    self.dtype = dtype
    self.remat_policy = remat_policy
    n = self.grid[0] * self.grid[1]
    self.patch_embed = vit.PatchEmbed(patch_size, width, rngs=rngs,
                                      dtype=dtype)
    self.pos_embed = nnx.Param(
        jax.random.truncated_normal(rngs.params(), -2., 2., (1, n + 1, width))
        * 0.02)
    # timm trunc_normal_(mean=1, std=1) with ABSOLUTE bounds [-2, 2].
    p = len(self.tasks) * self.prompt_len
    self.task_prompts = nnx.Param(
        1. + jax.random.truncated_normal(rngs.params(), -3., 1., (p, width)))
    rates = np.linspace(0.0, drop_path_rate, depth)
    self.blocks = nnx.List([
        PromptBlock(width, num_heads, mlp_ratio, float(r), n, self.windows,
                    self.grid, rngs=rngs, dtype=dtype) for r in rates])
    self.norm = nnx.LayerNorm(width, epsilon=1e-6, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, *, rngs: Any = None,
               capture: Capture = None) -> dict[str, Any]:
    """-> {"maps": 4 taps (B, h, w, C), "prompt_attn": {"spatial": raw
    prompt-to-token scores per tap, "channel": raw window scores per tap}}."""
    b, h, w, _ = x.shape
    gh, gw = h // self.patch_size, w // self.patch_size
    if (gh, gw) != self.grid:
      raise ValueError(f"input {h}x{w} gives a {gh}x{gw} grid but the model "
                       f"(pos_embed, token_trans) is built for {self.grid}")
    x = self.patch_embed(x.astype(self.dtype)).reshape(b, gh * gw, -1)
    x = x + self.pos_embed[...][:, 1:].astype(x.dtype)
    p = jnp.broadcast_to(self.task_prompts[...].astype(x.dtype)[None],
                         (b, *self.task_prompts.shape))
    if capture is not None:
      capture["backbone/tokens_in"] = x
    out = dict(taps=[], spa=[], chan=[])
    depth = len(self.blocks)
    for i, blk in enumerate(self.blocks):
      x, p, s, sc = common.call_block(blk, self.remat_policy, x, p, rngs=rngs)
      if capture is not None:
        capture[f"backbone/block{i}/x"] = x
        capture[f"backbone/block{i}/prompts"] = p
      used = [i + 1 in self.taps, i + 1 == depth]
      if any(used) and capture is not None:
        capture[f"backbone/block{i}/raw_spa_attn"] = s
        capture[f"backbone/block{i}/raw_chan_attn"] = sc
      if used[0]:
        out["taps"].append(x.reshape(b, gh, gw, -1))
        out["spa"].append(s)
        out["chan"].append(sc)
    x = self.norm(x)
    if capture is not None:
      capture["backbone/final_norm"] = x
    out["taps"].append(x.reshape(b, gh, gw, -1))
    out["spa"].append(s)
    out["chan"].append(sc)
    return {"maps": out["taps"],
            "prompt_attn": {"spatial": out["spa"], "channel": out["chan"]}}


def build(variant: str, *, img_size: tuple[int, int], rngs: nnx.Rngs,
          tasks: Sequence[str], dtype: Any = jnp.float32, remat: str = "none",
          remat_policy: str = "nothing_saveable", **overrides) -> PromptViT:
  """Builds a ViT variant ("Ti/16" ... "L/16") with T * prompt_len prompts.

  Args:
    variant: a :data:`vit.VARIANTS` name (width, depth, heads).
    img_size: (H, W); fixed: pos_embed and token_trans are sized by it.
    rngs: initialisation RNGs.
    tasks: task names in the order of the prompt rows (and decoder tasks).
    dtype: compute dtype.
    remat: "block" checkpoints each block with ``remat_policy``.
    **overrides: width, depth, num_heads, mlp_ratio, patch_size,
      drop_path_rate (0.15), taps (3 ascending 1-based blocks; default
      [D/4, D/2, 3D/4]), prompt_len (1), chan_nheads (a perfect square;
      sqrt(chan_nheads) windows per side).
  """
  if variant not in vit.VARIANTS:
    raise KeyError(f"Unknown ViT variant {variant!r}; one of "
                   f"{list(vit.VARIANTS)}")
  unknown = set(overrides) - set(vit.VARIANTS[variant]) - set(_DEFAULTS)
  if unknown:
    raise TypeError(f"Unknown TaskPrompter encoder overrides {sorted(unknown)}")
  if not tasks:
    raise ValueError("TaskPrompter needs the task list (one prompt per "
                     "task); build it through multitask.build_model")
  cfg = {**vit.VARIANTS[variant], **_DEFAULTS, **overrides}
  taps = tuple(int(t) for t in (cfg["taps"] or vit.default_taps(cfg["depth"])))
  if len(taps) != 3 or sorted(set(taps)) != list(taps) or not (
      1 <= taps[0] and taps[-1] <= cfg["depth"]):
    raise ValueError(f"taps must be 3 ascending block indices in "
                     f"[1, {cfg['depth']}], got {taps}")
  cfg["taps"] = taps
  return PromptViT(img_size=tuple(img_size), tasks=tuple(tasks), rngs=rngs,
                   dtype=dtype, remat_policy=common.remat_policy(
                       remat, remat_policy), **cfg)
