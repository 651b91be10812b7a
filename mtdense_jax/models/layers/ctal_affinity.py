"""CTAL's cross-task affinity (Sinodinos & Armanfard, WACV 2025).

Port of Dimitri-Sinodinos/CTAL @ b2d3bb9, ``code_{cnn,transformer}/models/
ctal.py`` (``SpatialAttentionModule``, ``AffinityLearningModule``); spec in
``shared/notes/methods.md`` b.1. Layout NHWC; pixels are flattened row-major
(``view(B, C, H*W)``), so pixel i is (i // W, i % W).

Per task t, A_t = F^_t F^_t^T is the cosine affinity of every pixel pair
(F^ = features L2-normalised over channels). A grouped 3x3 conv fuses the T
affinities: M[i, j] = b_i + sum_{t,k} w[i, t, k] A_t[i, j + shift_k]
(j and its 3x3 neighbours in key-pixel space, zero outside), one weight set
per query pixel i. Every task is then refined with the same M:
out_t = gamma M V_t + (1 - gamma) F_t, V_t = conv3x3_t(F_t). No softmax.

**Resolution limit.** The fusion weights are (n, T, 3, 3) with n = H*W of
the feature map, so a built module only accepts that one H x W (train and
test at the same ``config.data.image_size``).

Two equal forms (float32 rounding apart):
  * ``direct``: the reference's order: all T affinities stacked
    (B, n*T, H, W), task-minor, then a grouped conv: T n^2 + n^2 floats per
    image live at once.
  * ``fused``: query rows in chunks of ``chunk``; per chunk and task the
    rows of A_t are made, shifted 9 ways and accumulated into the chunk of
    M, which is used at once (out_t rows = M rows V_t) and dropped. Live
    memory ~ chunk * n per image; the chunk body is rematerialised, so the
    backward pass keeps no affinity either.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from flax import nnx
import jax
import jax.numpy as jnp

from mtdense_jax.models.layers import common

MODES = ("fused", "direct")


def l2_normalize(x: jax.Array) -> jax.Array:
  """``F.normalize(x, dim=channels)``: x / max(||x||, 1e-12), last axis."""
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
  return x / jnp.maximum(norm, 1e-12)


def stacked_affinity(normed: Sequence[jax.Array]) -> jax.Array:
  """(B, n, C) per task -> (B, n, T, n): [b, i, t, j] = A_t[b, i, j]."""
  return jnp.stack([jnp.einsum("bic,bjc->bij", f, f) for f in normed], 2)


def fuse_direct(stacked: jax.Array, kernel: jax.Array, bias: jax.Array,
                hw: tuple[int, int]) -> jax.Array:
  """The reference's grouped conv: (B, n, T, n) -> M (B, n, n)."""
  b, n, t, _ = stacked.shape
  x = stacked.reshape(b, n * t, *hw)            # channel i*T + t
  y = jax.lax.conv_general_dilated(
      x, kernel.astype(x.dtype), (1, 1), ((1, 1), (1, 1)),
      dimension_numbers=("NCHW", "OIHW", "NCHW"), feature_group_count=n)
  return (y + bias.astype(x.dtype)[None, :, None, None]).reshape(b, n, n)


def _fused_rows(rows: Sequence[jax.Array], normed: Sequence[jax.Array],
                kernel: jax.Array, bias: jax.Array,
                hw: tuple[int, int]) -> jax.Array:
  """Rows I of M, (B, r, n), from the query rows (B, r, C) of each task.

  One task's (B, r, H, W) affinity block exists at a time; the 3x3 conv over
  key pixels is 9 shifted, per-row-weighted adds of it.
  """
  h, w = hw
  b, r = rows[0].shape[:2]
  acc = jnp.zeros((b, r, h, w), rows[0].dtype) + bias.astype(
      rows[0].dtype)[None, :, None, None]
  for t, (q, f) in enumerate(zip(rows, normed)):
    a = jnp.einsum("bic,bjc->bij", q, f).reshape(b, r, h, w)
    a = jnp.pad(a, ((0, 0), (0, 0), (1, 1), (1, 1)))
    for dy in range(3):
      for dx in range(3):
        wk = kernel[:, t, dy, dx].astype(a.dtype)[None, :, None, None]
        acc = acc + wk * a[:, :, dy:dy + h, dx:dx + w]
  return acc.reshape(b, r, h * w)


def chunk_size(n: int, target: int) -> int:
  """The largest divisor of n that is <= target (at least 1)."""
  target = max(1, min(int(target), n))
  return max(d for d in range(1, target + 1) if n % d == 0)


def _chunks(x: jax.Array, r: int, axis: int) -> jax.Array:
  """Splits ``axis`` (length n) into (n // r, ..., r, ...) with chunks first."""
  n = x.shape[axis]
  x = x.reshape(x.shape[:axis] + (n // r, r) + x.shape[axis + 1:])
  return jnp.moveaxis(x, axis, 0)


def _unchunk(y: jax.Array, axis: int) -> jax.Array:
  y = jnp.moveaxis(y, 0, axis)
  return y.reshape(y.shape[:axis] + (-1,) + y.shape[axis + 2:])


def fused_affinity(normed: Sequence[jax.Array], kernel: jax.Array,
                   bias: jax.Array, hw: tuple[int, int],
                   chunk: int) -> jax.Array:
  """M (B, n, n) built chunk by chunk (for checks; the module never needs
  all of M, see :func:`attend_fused`)."""
  r = chunk_size(normed[0].shape[1], chunk)
  xs = ([_chunks(f, r, 1) for f in normed], _chunks(kernel, r, 0),
        _chunks(bias, r, 0))
  ys = jax.lax.map(lambda x: _fused_rows(x[0], normed, x[1], x[2], hw), xs)
  return _unchunk(ys, 1)


def attend_fused(normed: Sequence[jax.Array], values: Sequence[jax.Array],
                 kernel: jax.Array, bias: jax.Array, hw: tuple[int, int],
                 chunk: int) -> list[jax.Array]:
  """[M V_t for each t], (B, n, C) each, without materialising M or any A_t
  beyond one (B, chunk, n) block; rematerialised in the backward pass."""
  r = chunk_size(normed[0].shape[1], chunk)

  @jax.checkpoint
  def body(x):
    rows, k, b = x
    m = _fused_rows(rows, normed, k, b, hw)
    return [jnp.einsum("bij,bjc->bic", m, v) for v in values]

  xs = ([_chunks(f, r, 1) for f in normed], _chunks(kernel, r, 0),
        _chunks(bias, r, 0))
  return [_unchunk(y, 1) for y in jax.lax.map(body, xs)]


class GroupedFusion(nnx.Module):
  """The reference's ``fusion`` conv weights, kept in torch layout:
  ``kernel`` (n, T, 3, 3) (= its ``weight``), ``bias`` (n,). Initialised
  like ``nn.Conv2d`` (uniform +-1/sqrt(T*9))."""

  def __init__(self, n: int, num_tasks: int, *, rngs: nnx.Rngs):
    bound = 1.0 / math.sqrt(num_tasks * 9)
    key_w, key_b = jax.random.split(rngs.params())
    self.kernel = nnx.Param(jax.random.uniform(
        key_w, (n, num_tasks, 3, 3), jnp.float32, -bound, bound))
    self.bias = nnx.Param(jax.random.uniform(
        key_b, (n,), jnp.float32, -bound, bound))


class CrossTaskAffinity(nnx.Module):
  """Reference ``SpatialAttentionModule``: {t: (B, H, W, C)} -> same.

  Built for one feature size ``hw`` (see the module docstring); ``size_key``
  names the config key that fixes it, for the mismatch error.
  """

  def __init__(self, tasks: Sequence[str], channels: int,
               hw: tuple[int, int], gamma: float, *, rngs: nnx.Rngs,
               dtype: Any = jnp.float32, mode: str = "fused",
               chunk: int = 1024, size_key: str = "config.data.image_size"):
    if mode not in MODES:
      raise ValueError(f"config.model.decoder_kw.affinity_mode={mode!r}; "
                       f"one of {MODES}")
    self.tasks = tuple(tasks)
    self.hw = (int(hw[0]), int(hw[1]))
    self.gamma = float(gamma)
    self.mode, self.chunk, self.size_key = mode, int(chunk), size_key
    self.projection = nnx.Dict({
        t: common.conv(channels, channels, 3, padding=1, dtype=dtype,
                       rngs=rngs) for t in self.tasks})
    self.fusion = GroupedFusion(self.hw[0] * self.hw[1], len(self.tasks),
                                rngs=rngs)

  def check_size(self, hw: tuple[int, int]) -> None:
    if tuple(hw) != self.hw:
      raise ValueError(
          f"CTAL affinity module was built for {self.hw[0]}x{self.hw[1]} "
          f"features (its fusion conv has one weight set per pixel) but got "
          f"{hw[0]}x{hw[1]}; train and evaluate at the {self.size_key} it "
          f"was built with.")

  def __call__(self, feats: Mapping[str, jax.Array],
               capture: dict | None = None) -> dict[str, jax.Array]:
    """``capture`` (direct mode only) receives ``stacked_affinity``
    (B, n*T, H, W) and ``fused_affinity`` (B, n, H, W), reference layout."""
    x0 = feats[self.tasks[0]]
    b, h, w, c = x0.shape
    self.check_size((h, w))
    n = h * w
    flat = {t: feats[t].reshape(b, n, c) for t in self.tasks}
    normed = [l2_normalize(flat[t]) for t in self.tasks]
    values = [self.projection[t](feats[t]).reshape(b, n, c)
              for t in self.tasks]
    kernel, bias = self.fusion.kernel[...], self.fusion.bias[...]
    if self.mode == "direct":
      stacked = stacked_affinity(normed)
      m = fuse_direct(stacked, kernel, bias, self.hw)
      if capture is not None:
        capture["stacked_affinity"] = stacked.reshape(b, n * len(normed), h, w)
        capture["fused_affinity"] = m.reshape(b, n, h, w)
      attended = [jnp.einsum("bij,bjc->bic", m, v) for v in values]
    else:
      attended = attend_fused(normed, values, kernel, bias, self.hw,
                              self.chunk)
    return {t: (self.gamma * a + (1.0 - self.gamma) * flat[t]).reshape(
        b, h, w, c) for t, a in zip(self.tasks, attended)}


class AffinityLearningModule(nnx.Module):
  """Reference ``AffinityLearningModule``: per task conv_in -> shared
  cross-task affinity -> per task conv_out (x2 transposed conv, BN, ReLU,
  3x3 conv). ``variant`` "cnn": conv_in is a 1x1 conv; "transformer": a
  1x1 conv + BN + ReLU. Output (B, 2H, 2W, out_channels) per task."""

  def __init__(self, tasks: Sequence[str], in_channels: int,
               out_channels: int, hw: tuple[int, int], gamma: float, *,
               variant: str, rngs: nnx.Rngs, dtype: Any = jnp.float32,
               mode: str = "fused", chunk: int = 1024,
               size_key: str = "config.data.image_size"):
    if variant not in ("cnn", "transformer"):
      raise ValueError(f"config.model.decoder_kw.variant={variant!r}; one "
                       "of ('cnn', 'transformer')")
    self.tasks = tuple(tasks)
    kw = dict(rngs=rngs, dtype=dtype)
    c = out_channels

    def conv_in():
      conv = common.conv(in_channels, c, 1, **kw)
      if variant == "cnn":
        return conv
      return nnx.Dict({"0": conv, "1": common.batch_norm(c, **kw)})

    self.conv_in = nnx.Dict({t: conv_in() for t in self.tasks})
    self.spatial_att = CrossTaskAffinity(self.tasks, c, hw, gamma, mode=mode,
                                         chunk=chunk, size_key=size_key,
                                         **kw)
    self.conv_out = nnx.Dict({t: nnx.Dict({
        "0": common.ConvTranspose(c, c, (2, 2), strides=(2, 2),
                                  padding=((1, 1), (1, 1)), **kw),
        "1": common.batch_norm(c, **kw),
        "3": common.conv(c, c, 3, padding=1, **kw)}) for t in self.tasks})

  def _in(self, t: str, x: jax.Array) -> jax.Array:
    layer = self.conv_in[t]
    if isinstance(layer, nnx.Dict):
      return jax.nn.relu(layer["1"](layer["0"](x)))
    return layer(x)

  def __call__(self, feats: Mapping[str, jax.Array],
               capture: dict | None = None) -> dict[str, jax.Array]:
    x = self.spatial_att({t: self._in(t, feats[t]) for t in self.tasks},
                         capture=capture)
    out = {}
    for t in self.tasks:
      seq = self.conv_out[t]
      out[t] = seq["3"](jax.nn.relu(seq["1"](seq["0"](x[t]))))
    return out
