"""Baseline multi-task decoder: shared encoder, one small head per task.

The standard "shared encoder + task-specific heads" baseline of the MTL
literature (Vandenhende et al., TPAMI 2021): the encoder's taps are fused by
a 1x1 conv, then each task has its own conv head that upsamples x4 in two
steps and is resized to the input size. No cross-task interaction, so it is
also the single-task baseline when configured with one task.
"""

from __future__ import annotations

from typing import Any, Mapping

from flax import nnx
import jax
import jax.numpy as jnp


def resize(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Bilinear, align_corners=False, no antialias (PyTorch F.interpolate)."""
  b, _, _, c = x.shape
  return jax.image.resize(x, (b, *size, c), method="linear", antialias=False)


def same_size(feats: list[jax.Array] | Mapping[int, jax.Array],
              img_size: tuple[int, int]) -> list[jax.Array]:
  """Taps as a list at one size: a multi-scale {stride: map} encoder's maps
  (ascending stride) are resized to the one nearest stride 16, the head's
  input stride."""
  if isinstance(feats, Mapping):
    feats = [feats[s] for s in sorted(feats)]
  sizes = {f.shape[1:3] for f in feats}
  if len(sizes) == 1:
    return list(feats)
  target = min(sizes, key=lambda hw: abs(img_size[0] / hw[0] - 16))
  return [resize(f, target) if f.shape[1:3] != target else f for f in feats]


class ConvBNReLU(nnx.Module):
  """3x3 conv (no bias) -> BatchNorm -> ReLU."""

  def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs, dtype: Any):
    self.conv = nnx.Conv(cin, cout, (3, 3), padding=1, use_bias=False,
                         dtype=dtype, rngs=rngs)
    self.bn = nnx.BatchNorm(cout, momentum=0.9, epsilon=1e-5, dtype=dtype,
                            rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return jax.nn.relu(self.bn(self.conv(x)))


class TaskHead(nnx.Module):
  """Fused features (stride 16) -> (B, H, W, n) for one task."""

  def __init__(self, dim: int, n_out: int, *, rngs: nnx.Rngs, dtype: Any):
    self.block1 = ConvBNReLU(dim, dim, rngs=rngs, dtype=dtype)
    self.block2 = ConvBNReLU(dim, dim // 2, rngs=rngs, dtype=dtype)
    self.pred = nnx.Conv(dim // 2, n_out, (1, 1), dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, img_size: tuple[int, int]) -> jax.Array:
    h, w = x.shape[1:3]
    x = self.block1(resize(x, (2 * h, 2 * w)))
    x = self.block2(resize(x, (4 * h, 4 * w)))
    return resize(self.pred(x), img_size).astype(jnp.float32)


class BaselineDecoder(nnx.Module):
  """Taps -> concat -> 1x1 fuse -> per-task heads."""

  def __init__(self, in_channels: tuple[int, ...],
               task_outputs: Mapping[str, int], img_size: tuple[int, int], *,
               dim: int, rngs: nnx.Rngs, dtype: Any):
    self.img_size = tuple(img_size)
    self.fuse = nnx.Conv(sum(in_channels), dim, (1, 1), dtype=dtype,
                         rngs=rngs)
    self.heads = nnx.Dict({t: TaskHead(dim, n, rngs=rngs, dtype=dtype)
                           for t, n in task_outputs.items()})

  def __call__(self, feats: list[jax.Array] | Mapping[int, jax.Array], *,
               rngs: nnx.Rngs | None = None) -> dict:
    del rngs  # Deterministic decoder.
    x = jax.nn.relu(self.fuse(jnp.concatenate(same_size(feats, self.img_size),
                                              axis=-1)))
    final = {t: head(x, self.img_size) for t, head in self.heads.items()}
    return {"final": final, "aux": {}}


def build(*, encoder: nnx.Module, task_outputs: Mapping[str, int],
          img_size: tuple[int, int], rngs: nnx.Rngs, dtype: Any = jnp.float32,
          dim: int = 128) -> BaselineDecoder:
  return BaselineDecoder(tuple(encoder.out_channels), task_outputs, img_size,
                         dim=dim, rngs=rngs, dtype=dtype)
