"""Efficient Computation Sharing ViT: a frozen base backbone plus, per
sub-task, a sparse gated delta (Shoouri et al., ICCV 2023).

Facts from sarashoouri/EfficientMTL@6946429 (shared/notes/
efficient_sharing.md sections 2, 4, 5, 6, 8): the backbone is MultiMAE's
``MultiViT`` (patch conv, fixed 2-D sin-cos ``pos_emb`` with the reference's
w-major quirk, ONE global token appended AFTER the patch tokens, pre-norm
blocks with LN eps 1e-6, exact GELU, no final norm). Each sub-task's
backbone is ``theta_base + gate * delta``; the base task reads the base
backbone itself. Every tensor (patch conv, global token, pos_emb, every
block tensor) carries a per-entry and a per-tensor hard-concrete gate.

``mode`` selects a training step (one model, one mode per stage):

  ``dense``  only the base backbone runs; every task reads its tokens
             (base-task fine-tuning, and single-model baselines)
  ``delta``  sub-task weights theta_base + delta, no gates: the dense
             reference a sparse sub-task is compared with (the reference's
             Step0 single-task fine-tune, here started from the base)
  ``gates``  Step 1: sub-task weights theta_base + (z2 z) delta with gates
             sampled at every training forward (the sample is kept in
             ``sampled`` for the ``reference`` eval gate and Step 2's mask);
             the expected-L0 sum is returned as loss ``l0/<task>``
  ``mask``   Steps 2/3: theta_base + M * delta, M = (theta_saved -
             theta_base) != 0 in float32 with theta_saved = theta_base +
             sampled (exactly the reference's saved tensor); with
             ``act_penalty`` the L1 distance of the sub-task activations to
             the base's at the reference's 6 sites per block is returned as
             loss ``act_l1/<task>``

Losses are raw sums; their coefficients (sparsity_pen, the Step 3 mu) are
``config.loss.extra_weights``. Known difference: the reference derives Step
3's mask from Step 2's saved tensor; here ``sampled`` is only written in
Step 1, so Steps 2 and 3 share Step 1's mask (they differ only where a kept
delta is exactly 0 or underflows against the base weight).

Computation sharing at inference (notes section 6) is :meth:`shared_tokens`.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from mtdense_jax.models import features as feats_lib
from mtdense_jax.models.layers import common
from mtdense_jax.models.layers import hard_concrete as hc

VARIANTS = {
    "Ti/16": dict(width=192, depth=12, num_heads=3),
    "S/16": dict(width=384, depth=12, num_heads=6),
    "B/16": dict(width=768, depth=12, num_heads=12),
}
MODES = ("dense", "delta", "gates", "mask")
# Forward-hook sites of Pascal Step3.py, in block order (notes 5.4).
STEP3_SITES = ("norm1", "qkv", "proj", "fc1", "act", "fc2")
# Linear outputs the sparse block replaces by the base value (notes 6).
SHARE_SITES = ("qkv", "proj", "fc1", "fc2")
LN_EPS = 1e-6
_BLOCK_TENSORS = ("norm1_w", "norm1_b", "qkv_w", "qkv_b", "proj_w", "proj_b",
                  "norm2_w", "norm2_b", "fc1_w", "fc1_b", "fc2_w", "fc2_b")


class FixedPosEmb(nnx.Variable):
  """The sin-cos (or checkpoint-interpolated) table: never trained."""


class Delta(nnx.Param):
  """A sub-task's delta on a base tensor."""


class GateLogit(nnx.Param):
  """Hard-concrete gate logits (log alpha)."""


class SampledDelta(nnx.Variable):
  """(z2 z) delta of the last training forward (reference eval gate and the
  source of Step 2's mask); never given to the optimizer."""


def tensor_shapes(width: int, depth: int, mlp_hidden: int, patch: int,
                  grid: tuple[int, int]) -> dict[str, tuple[int, ...]]:
  """Name -> shape of every backbone tensor (this port's layouts)."""
  shapes = {"patch_w": (patch, patch, 3, width), "patch_b": (width,),
            "global_tokens": (1, 1, width),
            "pos_emb": (grid[0] * grid[1], width)}
  per = {"norm1_w": (width,), "norm1_b": (width,),
         "qkv_w": (width, 3 * width), "qkv_b": (3 * width,),
         "proj_w": (width, width), "proj_b": (width,),
         "norm2_w": (width,), "norm2_b": (width,),
         "fc1_w": (width, mlp_hidden), "fc1_b": (mlp_hidden,),
         "fc2_w": (mlp_hidden, width), "fc2_b": (width,)}
  for i in range(depth):
    shapes.update({f"b{i}_{k}": s for k, s in per.items()})
  return shapes


def layer_of(name: str) -> int:
  """The reference's L0 bucket: stem -> 0, block i -> i + 1."""
  return int(name[1:name.index("_")]) + 1 if name.startswith("b") and \
      name[1].isdigit() else 0


def sincos_pos_emb(grid: tuple[int, int], dim: int) -> np.ndarray:
  """MultiMAE ``build_2d_sincos_posemb(h, w, dim)`` as (h*w, dim).

  The reference meshes (w, h) 'ij' and flattens w-major, then reads the
  result as row-major (h, w): token m gets a = m // h, b = m % h (not
  column/row; for non-square grids positions are scrambled, notes 2).
  """
  h, w = grid
  if dim % 4:
    raise ValueError(f"ecs_vit width {dim} must be divisible by 4 (sin-cos)")
  m = np.arange(h * w)
  a, b = (m // h).astype(np.float64), (m % h).astype(np.float64)
  quarter = dim // 4
  omega = 1.0 / 10000.0 ** (np.arange(quarter, dtype=np.float64) / quarter)
  ao, bo = a[:, None] * omega, b[:, None] * omega
  return np.concatenate([np.sin(ao), np.cos(ao), np.sin(bo), np.cos(bo)],
                        axis=1).astype(np.float32)


# --- The block, as a pure function of a flat tensor dict -------------------

def layer_norm(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + LN_EPS) * w + b


def _share(o, site, share, stats):
  """Thresholded sharing: entries within th of the base output take it."""
  if share is None:
    return o
  base, th = share[0][site], share[1]
  diff = jnp.abs(o - base)
  stats[site] = jnp.mean((diff > th).astype(jnp.float32))
  return jnp.where(diff < th, base, o)


def block(p: Mapping[str, jax.Array], x: jax.Array, num_heads: int, *,
          sites: dict | None = None, share=None, stats: dict | None = None,
          drop=None) -> jax.Array:
  """One pre-norm block on (B, N, C). ``p`` has the block's tensors without
  the ``b{i}_`` prefix. ``sites`` (a dict) receives the hook outputs;
  ``share`` = (base sites, threshold) applies thresholded sharing after the
  four linear layers (fraction kept, ``|o - base| > th``, goes to
  ``stats``); ``drop`` is a drop-path function or None."""
  rec = sites if sites is not None else {}
  st = stats if stats is not None else {}
  bsz, n, c = x.shape
  hd = c // num_heads
  h = rec["norm1"] = layer_norm(x, p["norm1_w"], p["norm1_b"])
  qkv = rec["qkv"] = _share(h @ p["qkv_w"] + p["qkv_b"], "qkv", share, st)
  qkv = qkv.reshape(bsz, n, 3, num_heads, hd).transpose(2, 0, 3, 1, 4)
  q, k, v = qkv[0], qkv[1], qkv[2]
  attn = jax.nn.softmax((q @ jnp.swapaxes(k, -1, -2)) * hd ** -0.5, axis=-1)
  a = (attn @ v).transpose(0, 2, 1, 3).reshape(bsz, n, c)
  rec["attn_out"] = a       # inputs of proj and fc1 (not Step 3 sites)
  o = rec["proj"] = _share(a @ p["proj_w"] + p["proj_b"], "proj", share, st)
  x = x + (drop(o) if drop else o)
  h = rec["norm2"] = layer_norm(x, p["norm2_w"], p["norm2_b"])
  f = rec["fc1"] = _share(h @ p["fc1_w"] + p["fc1_b"], "fc1", share, st)
  f = rec["act"] = common.gelu(f)
  f = rec["fc2"] = _share(f @ p["fc2_w"] + p["fc2_b"], "fc2", share, st)
  return x + (drop(f) if drop else f)


def _block_params(p: Mapping[str, jax.Array], i: int) -> dict[str, jax.Array]:
  pre = f"b{i}_"
  return {k[len(pre):]: v for k, v in p.items() if k.startswith(pre)}


def embed(p: Mapping[str, jax.Array], image: jax.Array, patch: int
          ) -> jax.Array:
  """(B, H, W, 3) -> (B, N + 1, C): patch tokens + pos_emb, global last."""
  x = jax.lax.conv_general_dilated(
      image, p["patch_w"], (patch, patch), "VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["patch_b"]
  b, gh, gw, c = x.shape
  x = x.reshape(b, gh * gw, c) + p["pos_emb"]
  g = jnp.broadcast_to(p["global_tokens"], (b, 1, c))
  return jnp.concatenate([x, g], axis=1)


def _values(tree: nnx.Dict) -> dict[str, jax.Array]:
  return {k: v[...] for k, v in tree.items()}


def draw_noise(key: jax.Array, shapes: Mapping[str, tuple[int, ...]],
               task: str) -> dict[str, tuple[jax.Array, jax.Array]]:
  """Fresh clamped uniform noise per tensor: (per-entry u, per-tensor u2).
  Two random draws for all tensors, then split (one draw per tensor made
  XLA's CPU compile of the Step 1 train step take minutes). A module-level
  function so tests can replay recorded noise."""
  del task
  k1, k2 = jax.random.split(key)
  sizes = [math.prod(s) for s in shapes.values()]
  # The barrier materialises the draws once: fused into each slice's
  # consumer, the random-bit computation would be compiled once per tensor.
  flat, per_tensor = jax.lax.optimization_barrier(
      (hc.uniform_noise(k1, (sum(sizes),)),
       hc.uniform_noise(k2, (len(sizes),))))
  out, start = {}, 0
  for i, ((name, shape), size) in enumerate(zip(shapes.items(), sizes)):
    out[name] = (flat[start:start + size].reshape(shape),
                 per_tensor[i:i + 1])
    start += size
  return out


class EcsViT(nnx.Module):
  """image (B, H, W, 3) -> {"maps": [base tokens (B, h, w, C)],
  "task_maps": {task: (B, h, w, C)}, "losses": {...}}."""

  def __init__(self, *, img_size: tuple[int, int], tasks: Sequence[str],
               base_task: str, width: int, depth: int, num_heads: int,
               mlp_ratio: float, patch_size: int, mode: str,
               eval_gate: str, act_penalty: bool, l0_pos_emb: bool,
               drop_path_rate: float, lower: float, upper: float,
               alpha_init: float, rngs: nnx.Rngs):
    if mode not in MODES:
      raise ValueError(f"config.model.encoder_kw.mode={mode!r}; one of "
                       f"{MODES}")
    if eval_gate not in hc.EVAL_MODES:
      raise ValueError(f"config.model.encoder_kw.eval_gate={eval_gate!r}; "
                       f"one of {hc.EVAL_MODES}")
    if base_task not in tasks:
      raise ValueError(f"config.model.encoder_kw.base_task={base_task!r} is "
                       f"not a configured task {list(tasks)}")
    if img_size[0] % patch_size or img_size[1] % patch_size:
      raise ValueError(f"image size {img_size} is not a multiple of the "
                       f"patch size {patch_size}")
    self.grid = (img_size[0] // patch_size, img_size[1] // patch_size)
    self.patch, self.num_heads, self.depth = patch_size, num_heads, depth
    self.width = width
    self.mode, self.eval_gate = mode, eval_gate
    self.act_penalty, self.l0_pos_emb = act_penalty, l0_pos_emb
    self.drop_path_rate = float(drop_path_rate)
    self.limits = (float(lower), float(upper))
    self.base_task = base_task
    self.sub_tasks = tuple(t for t in tasks if t != base_task)
    self.tasks = tuple(tasks)
    self.deterministic = False
    self.shapes = tensor_shapes(width, depth, int(width * mlp_ratio),
                                patch_size, self.grid)
    self.base = nnx.Dict(_init_base(self.shapes, self.grid, rngs))
    zeros = lambda cls, s: cls(jnp.zeros(s, jnp.float32))
    self.delta = nnx.Dict({t: nnx.Dict({n: zeros(Delta, s) for n, s in
                                        self.shapes.items()})
                           for t in self.sub_tasks})
    self.sampled = nnx.Dict({t: nnx.Dict({n: zeros(SampledDelta, s) for n, s
                                          in self.shapes.items()})
                             for t in self.sub_tasks})
    full = lambda s: GateLogit(jnp.full(s, alpha_init, jnp.float32))
    self.log_alpha = nnx.Dict({t: nnx.Dict({n: full(s) for n, s in
                                            self.shapes.items()})
                               for t in self.sub_tasks})
    self.log_alpha_tensor = nnx.Dict({t: nnx.Dict({n: full((1,)) for n in
                                                   self.shapes})
                                      for t in self.sub_tasks})
    self.produces = feats_lib.spec([patch_size], [width],
                                   extras=("task_maps", "losses"))

  # --- weights ----------------------------------------------------------
  def base_weights(self) -> dict[str, jax.Array]:
    return _values(self.base)

  def mask(self, task: str) -> dict[str, jax.Array]:
    """M = (theta_saved - theta_base) != 0 per tensor, in float32."""
    base, saved = self.base_weights(), _values(self.sampled[task])
    return {n: ((base[n] + saved[n]) - base[n]) != 0 for n in base}

  def sub_weights(self, task: str, rngs: Any = None) -> dict[str, jax.Array]:
    """The sub-task's effective backbone for the current mode."""
    base = self.base_weights()
    if self.mode == "dense":
      return base
    delta = _values(self.delta[task])
    if self.mode == "delta":   # pos_emb is never trained (notes 4)
      delta["pos_emb"] = jax.lax.stop_gradient(delta["pos_emb"])
      return {n: base[n] + delta[n] for n in base}
    if self.mode == "mask":
      m = self.mask(task)
      return {n: base[n] + m[n].astype(jnp.float32) * delta[n] for n in base}
    if not self.deterministic and rngs is not None:
      la, la2 = _values(self.log_alpha[task]), _values(
          self.log_alpha_tensor[task])
      noise = draw_noise(common.next_key(rngs), self.shapes, task)
      eff = {n: hc.gated_delta(delta[n], la[n], la2[n], noise[n][0],
                               noise[n][1], *self.limits) for n in base}
      # pos_emb is not a trainable tensor in the reference: no task gradient.
      eff["pos_emb"] = jax.lax.stop_gradient(eff["pos_emb"])
      for n, v in eff.items():
        self.sampled[task][n].value = jax.lax.stop_gradient(v)
    elif self.eval_gate == "reference":
      eff = _values(self.sampled[task])
    else:
      la, la2 = _values(self.log_alpha[task]), _values(
          self.log_alpha_tensor[task])
      eff = {n: (hc.louizos_gate(la2[n], *self.limits)
                 * hc.louizos_gate(la[n], *self.limits)) * delta[n]
             for n in base}
    return {n: base[n] + eff[n] for n in base}

  def l0_per_layer(self, task: str) -> jax.Array:
    """The reference's l0_pen list (bucket per layer, before sparsity_pen)."""
    la, la2 = _values(self.log_alpha[task]), _values(
        self.log_alpha_tensor[task])
    out = [jnp.zeros((), jnp.float32) for _ in range(self.depth + 1)]
    for n in la:
      if n == "pos_emb" and not self.l0_pos_emb:
        continue
      out[layer_of(n)] = out[layer_of(n)] + hc.expected_l0(la[n], la2[n],
                                                           *self.limits)
    return jnp.stack(out)

  # --- forward ------------------------------------------------------------
  def backbone(self, p: Mapping[str, jax.Array], image: jax.Array, *,
               sites: list | None = None, share=None, stats: list | None = None,
               rngs: Any = None) -> jax.Array:
    """Tokens (B, N + 1, C) after the last block; ``sites`` (a list) gets
    one hook dict per block; ``share`` = (base sites per block,
    thresholds per block)."""
    x = embed(p, image, self.patch)
    drops = self._drops(rngs)
    for i in range(self.depth):
      rec = {} if sites is not None else None
      st = {} if stats is not None else None
      sh = None if share is None else (share[0][i], share[1][i])
      x = block(_block_params(p, i), x, self.num_heads, sites=rec, share=sh,
                stats=st, drop=drops[i])
      if sites is not None:
        sites.append(rec)
      if stats is not None:
        stats.append(st)
    return x

  def _drops(self, rngs):
    rates = np.linspace(0.0, self.drop_path_rate, self.depth)
    if self.deterministic or rngs is None or self.drop_path_rate == 0:
      return [None] * self.depth

    def make(rate):
      def drop(x):
        keep = 1.0 - rate
        mask = jax.random.bernoulli(common.next_key(rngs), keep,
                                    (x.shape[0],) + (1,) * (x.ndim - 1))
        return x * mask.astype(x.dtype) / keep
      return drop if rate > 0 else None
    return [make(float(r)) for r in rates]

  def tokens_to_map(self, x: jax.Array) -> jax.Array:
    """(B, N + 1, C) -> patch tokens (B, h, w, C); the global token (last)
    is dropped as the reference heads drop it."""
    b, _, c = x.shape
    return x[:, :-1].reshape(b, *self.grid, c)

  def __call__(self, image: jax.Array, *, rngs: nnx.Rngs | None = None
               ) -> feats_lib.Features:
    # The penalties are training losses only: evaluation skips them, so
    # Steps 2 and 3 evaluate with the same program (one compile, cached).
    train = not self.deterministic
    need_sites = (self.mode in ("mask", "delta") and self.act_penalty
                  and train)
    base_sites = [] if need_sites else None
    base = self.tokens_to_map(self.backbone(
        self.base_weights(), image, sites=base_sites,
        rngs=rngs if self.mode == "dense" else None))
    maps, losses = {self.base_task: base}, {}
    for t in self.sub_tasks:
      if self.mode == "dense":
        maps[t] = base
        continue
      sites = [] if need_sites else None
      maps[t] = self.tokens_to_map(self.backbone(
          self.sub_weights(t, rngs), image, sites=sites, rngs=rngs))
      if self.mode == "gates" and train:
        losses[f"l0/{t}"] = jnp.sum(self.l0_per_layer(t))
      if need_sites:
        losses[f"act_l1/{t}"] = activation_l1(base_sites, sites)
    return {"maps": [base], "task_maps": maps, "losses": losses}

  def shared_tokens(self, image: jax.Array,
                    thresholds: Mapping[str, Sequence[float]]
                    ) -> tuple[dict[str, jax.Array], dict[str, list]]:
    """Inference with computation sharing (notes section 6): the base runs
    once; every sub-task replaces its linear outputs by the base's where
    they differ by less than its per-block threshold. Returns the token
    maps per task and, per sub-task, per block {site: fraction kept}."""
    base_sites = []
    maps = {self.base_task: self.tokens_to_map(self.backbone(
        self.base_weights(), image, sites=base_sites))}
    kept = {}
    for t in self.sub_tasks:
      th = [jnp.asarray(v, jnp.float32) for v in thresholds[t]]
      if len(th) != self.depth:
        raise ValueError(f"sharing thresholds for {t!r}: {len(th)} values "
                         f"for {self.depth} blocks")
      stats = []
      maps[t] = self.tokens_to_map(self.backbone(
          self.sub_weights(t), image, share=(base_sites, th), stats=stats))
      kept[t] = stats
    return maps, kept


def activation_l1(base_sites: list[dict], sub_sites: list[dict],
                  site_names: Sequence[str] = STEP3_SITES) -> jax.Array:
  """sum over blocks and sites of sum |a_base - a_sub| (base not
  differentiated: the reference runs it under no_grad)."""
  total = jnp.zeros((), jnp.float32)
  for b, s in zip(base_sites, sub_sites):
    for site in site_names:
      total = total + jnp.sum(jnp.abs(jax.lax.stop_gradient(b[site])
                                      - s[site]))
  return total


def stages_report(config, workdir) -> str:
  """After the last stage (train/stages.py): the sparsity/accuracy
  trade-off of the run (ecs_report.stages_summary)."""
  from mtdense_jax.models.encoders import ecs_report  # pylint: disable=g-import-not-at-top
  return ecs_report.stages_summary(config, workdir)


def _init_base(shapes: Mapping[str, tuple[int, ...]], grid: tuple[int, int],
               rngs: nnx.Rngs) -> dict[str, nnx.Variable]:
  """MultiMAE-style init: xavier-uniform matrices, zero biases, LN 1/0,
  global token N(0, 0.02), sin-cos pos_emb (pretrained weights replace it)."""
  out = {}
  for n, s in shapes.items():
    if n == "pos_emb":
      out[n] = FixedPosEmb(jnp.asarray(sincos_pos_emb(grid, s[-1])))
    elif n == "global_tokens":
      out[n] = nnx.Param(0.02 * jax.random.normal(rngs.params(), s))
    elif n.endswith("norm1_w") or n.endswith("norm2_w"):
      out[n] = nnx.Param(jnp.ones(s, jnp.float32))
    elif len(s) == 1:
      out[n] = nnx.Param(jnp.zeros(s, jnp.float32))
    else:
      fan_in, fan_out = math.prod(s[:-1]), s[-1]
      lim = math.sqrt(6.0 / (fan_in + fan_out))
      out[n] = nnx.Param(jax.random.uniform(rngs.params(), s, jnp.float32,
                                            -lim, lim))
  return out


# --- PyTorch (MultiMAE) names and layouts ----------------------------------

_TORCH_BLOCK = {"norm1_w": "norm1.weight", "norm1_b": "norm1.bias",
                "qkv_w": "attn.qkv.weight", "qkv_b": "attn.qkv.bias",
                "proj_w": "attn.proj.weight", "proj_b": "attn.proj.bias",
                "norm2_w": "norm2.weight", "norm2_b": "norm2.bias",
                "fc1_w": "mlp.fc1.weight", "fc1_b": "mlp.fc1.bias",
                "fc2_w": "mlp.fc2.weight", "fc2_b": "mlp.fc2.bias"}
_TORCH_STEM = {"patch_w": "input_adapters.rgb.proj.weight",
               "patch_b": "input_adapters.rgb.proj.bias",
               "global_tokens": "global_tokens",
               "pos_emb": "input_adapters.rgb.pos_emb"}


def torch_name(name: str) -> str:
  """This port's tensor name -> the MultiMAE state_dict key."""
  if name in _TORCH_STEM:
    return _TORCH_STEM[name]
  i, rest = name[1:].split("_", 1)
  return f"encoder.{i}.{_TORCH_BLOCK[rest]}"


def from_torch_layout(name: str, arr: np.ndarray) -> np.ndarray:
  """A MultiMAE tensor (or a same-shaped delta / logit / noise / gate) in
  this port's layout. Per-tensor (1,) arrays pass through."""
  arr = np.asarray(arr, np.float32)
  if arr.shape == (1,) and name != "patch_b":
    return arr
  if name == "patch_w":
    return np.transpose(arr, (2, 3, 1, 0))
  if name == "pos_emb":   # (1, C, h, w) -> (h*w, C)
    return arr.reshape(arr.shape[1], -1).T.copy()
  if name.endswith("_w") and arr.ndim == 2:
    return arr.T.copy()
  return arr


def from_torch(state_dict: Mapping[str, np.ndarray], encoder: EcsViT, *,
               prefix: str = "", resize_pos_emb: bool = True
               ) -> dict[str, np.ndarray]:
  """MultiMAE backbone state_dict -> {name: array} for ``encoder.base``.

  ``resize_pos_emb`` resizes a checkpoint pos_emb of another grid with
  torch bicubic (a = -0.75, align_corners=False), as
  ``interpolate_pos_embed_multimae`` does (the MultiMAE release is 14x14).
  """
  from mtdense_jax.convert import torch_utils  # pylint: disable=g-import-not-at-top
  out = {}
  for n, shape in encoder.shapes.items():
    key = prefix + torch_name(n)
    if key not in state_dict:
      raise KeyError(f"ecs_vit: checkpoint has no {key!r} (for {n})")
    arr = np.asarray(state_dict[key], np.float32)
    if n == "pos_emb" and tuple(arr.shape[2:]) != encoder.grid:
      if not resize_pos_emb:
        raise ValueError(f"pos_emb grid {arr.shape[2:]} != model grid "
                         f"{encoder.grid}")
      arr = np.transpose(torch_utils.resize_bicubic(
          np.transpose(arr[0], (1, 2, 0)), encoder.grid), (2, 0, 1))[None]
    arr = from_torch_layout(n, arr)
    if arr.shape != tuple(shape):
      raise ValueError(f"ecs_vit: {key} has shape {arr.shape} after layout "
                       f"change; the model needs {shape}")
    out[n] = arr
  return out


def load_base(encoder: EcsViT, weights: Mapping[str, np.ndarray]) -> None:
  for n, v in weights.items():
    encoder.base[n].value = jnp.asarray(v)


def _multimae_init(state_dict, *, tasks, build):
  """CLI converter: MultiMAE release -> the base backbone (heads fresh)."""
  del tasks
  from mtdense_jax.convert import torch_utils  # pylint: disable=g-import-not-at-top
  model = build(None)
  sd = torch_utils.strip_prefix(dict(state_dict), "module.")
  load_base(model.encoder, from_torch(sd, model.encoder))
  return model


CONVERTERS = {"multimae": _multimae_init}


def build(variant: str, *, img_size: tuple[int, int], rngs: nnx.Rngs,
          tasks: Sequence[str], dtype: Any = jnp.float32,
          base_task: str = "semseg", mode: str = "dense",
          eval_gate: str = "reference", act_penalty: bool = False,
          l0_pos_emb: bool = True, drop_path_rate: float = 0.0,
          lower: float = hc.LOWER, upper: float = hc.UPPER,
          alpha_init: float = hc.ALPHA_INIT, **overrides) -> EcsViT:
  """An ECS backbone. ``variant`` "B/16" (MultiMAE ViT-B) etc.; overrides:
  width, depth, num_heads, mlp_ratio, patch_size. Float32 only (the
  reference's sub-task steps disable autocast)."""
  if variant not in VARIANTS:
    raise KeyError(f"Unknown ecs_vit variant {variant!r}; one of "
                   f"{list(VARIANTS)}")
  if dtype != jnp.float32:
    raise ValueError("ecs_vit runs in float32 (config.model.dtype)")
  cfg = {**VARIANTS[variant], "mlp_ratio": 4.0, "patch_size": 16}
  unknown = set(overrides) - set(cfg)
  if unknown:
    raise TypeError(f"Unknown ecs_vit overrides {sorted(unknown)}; allowed "
                    f"{sorted(cfg)}")
  cfg.update(overrides)
  return EcsViT(img_size=tuple(img_size), tasks=tuple(tasks),
                base_task=base_task, mode=mode, eval_gate=eval_gate,
                act_penalty=act_penalty, l0_pos_emb=l0_pos_emb,
                drop_path_rate=drop_path_rate, lower=lower, upper=upper,
                alpha_init=alpha_init, rngs=rngs, **cfg)
