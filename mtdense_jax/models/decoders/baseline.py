"""Baseline multi-task decoder: shared encoder, one small head per task.

The standard "shared encoder + task-specific heads" baseline of the MTL
literature (Vandenhende et al., TPAMI 2021): the encoder's taps are fused by
a 1x1 conv, then each task has its own conv head that upsamples x4 in two
steps and is resized to the input size. No cross-task interaction, so it is
also the single-task baseline when configured with one task.

It reads any number of maps at any strides: a multi-scale (CNN, Swin)
encoder's maps are resized to the one whose stride is nearest 16, the heads'
input stride, before the fuse.
"""

from __future__ import annotations

from typing import Any, Mapping

from flax import nnx
import jax
import jax.numpy as jnp

from mtdense_jax.models import features as feats_lib


def resize(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Bilinear, align_corners=False, no antialias (PyTorch F.interpolate)."""
  b, _, _, c = x.shape
  return jax.image.resize(x, (b, *size, c), method="linear", antialias=False)


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
  """Maps -> (resize to one stride) -> concat -> 1x1 fuse -> per-task heads."""

  def __init__(self, produced: feats_lib.FeatureSpec,
               task_outputs: Mapping[str, int], img_size: tuple[int, int], *,
               dim: int, rngs: nnx.Rngs, dtype: Any):
    self.img_size = tuple(img_size)
    # The map whose stride is nearest 16 sets the fuse resolution.
    self.target = min(range(len(produced.maps)),
                      key=lambda i: abs(produced.strides[i] - 16))
    self.fuse = nnx.Conv(sum(produced.channels), dim, (1, 1), dtype=dtype,
                         rngs=rngs)
    self.heads = nnx.Dict({t: TaskHead(dim, n, rngs=rngs, dtype=dtype)
                           for t, n in task_outputs.items()})

  def __call__(self, feats: feats_lib.Features | list[jax.Array], *,
               rngs: nnx.Rngs | None = None) -> dict:
    del rngs  # Deterministic decoder.
    maps = feats_lib.as_features(feats)["maps"]
    hw = maps[self.target].shape[1:3]
    maps = [m if m.shape[1:3] == hw else resize(m, hw) for m in maps]
    x = jax.nn.relu(self.fuse(jnp.concatenate(maps, axis=-1)))
    final = {t: head(x, self.img_size) for t, head in self.heads.items()}
    return {"final": final, "aux": {}}


def consumes(**decoder_kw) -> feats_lib.Consumes:
  """Any maps: no constraint."""
  del decoder_kw
  return feats_lib.Consumes()


def build(*, encoder: nnx.Module, task_outputs: Mapping[str, int],
          img_size: tuple[int, int], rngs: nnx.Rngs, dtype: Any = jnp.float32,
          dim: int = 128) -> BaselineDecoder:
  return BaselineDecoder(feats_lib.spec_of(encoder), task_outputs, img_size,
                         dim=dim, rngs=rngs, dtype=dtype)
