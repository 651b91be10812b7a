"""Aspect-preserving fit of any image into the model's input, and back.

Each image is resized (bilinear, aspect ratio kept) to fit
``config.data.image_size``, normalised and centre-padded with 0 exactly as
evaluation pads (mtdense_jax/data/transforms.py Normalize, Pad). A
prediction is cropped back to the resized region, as InvPT does before
saving (prismformore/Multi-Task-Transformer @ 870c6be1, InvPT/utils/utils.py
save_model_pred_for_one_task), then resized to the original size: nearest
for integer label maps, bilinear for continuous maps.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from mtdense_jax.data import transforms as T


@dataclasses.dataclass(frozen=True)
class Placement:
  """Where an image of size (h, w) sits in the padded model input."""
  h: int
  w: int
  top: int
  left: int
  rh: int  # resized height inside the model input
  rw: int


def place(hw: tuple[int, int], size: tuple[int, int],
          upscale: bool = True) -> Placement:
  """Largest aspect-preserving fit of `hw` into `size`, centred like Pad."""
  h, w = int(hw[0]), int(hw[1])
  scale = min(size[0] / h, size[1] / w)
  if not upscale:
    scale = min(scale, 1.0)
  rh = min(size[0], max(1, round(h * scale)))
  rw = min(size[1], max(1, round(w * scale)))
  return Placement(h, w, (size[0] - rh) // 2, (size[1] - rw) // 2, rh, rw)


def as_rgb(image: np.ndarray) -> np.ndarray:
  """uint8 (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) -> (H, W, 3)."""
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  if image.ndim != 3 or image.shape[-1] not in (3, 4):
    raise ValueError(f"Expected an RGB image (H, W, 3); got {image.shape}.")
  return image[..., :3]


def preprocess(image: np.ndarray, size: tuple[int, int],
               upscale: bool = True, normalize: T.Normalize | None = None
               ) -> tuple[np.ndarray, Placement]:
  """uint8 image -> (normalised padded float32 (H, W, 3), its placement).

  `normalize`: the training config's (`T.Normalize.for_config`); ImageNet
  statistics when None.
  """
  image = as_rgb(image).astype(np.float32)
  pl = place(image.shape[:2], size, upscale)
  if (pl.rh, pl.rw) != image.shape[:2]:
    image = cv2.resize(image, (pl.rw, pl.rh), interpolation=cv2.INTER_LINEAR)
  ex = (normalize or T.Normalize()).map({"image": image})
  ex = T.Pad(tuple(size)).map(ex)
  return ex["image"], pl


def _resize_nearest(x: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  """Nearest with pixel-centre sampling (exact for any dtype)."""
  rows = np.minimum(((np.arange(hw[0]) + 0.5) * x.shape[0] / hw[0]).astype(
      np.int64), x.shape[0] - 1)
  cols = np.minimum(((np.arange(hw[1]) + 0.5) * x.shape[1] / hw[1]).astype(
      np.int64), x.shape[1] - 1)
  return x[rows][:, cols]


def _is_unit_field(x: np.ndarray) -> bool:
  """Every pixel a unit vector (e.g. surface normals)?"""
  if x.ndim != 3 or x.shape[-1] < 2 or not np.issubdtype(x.dtype,
                                                         np.floating):
    return False
  return bool(np.all(np.abs(np.linalg.norm(x, axis=-1) - 1.0) < 1e-3))


def restore(pred: np.ndarray, pl: Placement,
            unit_vectors: bool | None = None) -> np.ndarray:
  """(H, W, C) model-size prediction -> (h, w, C) at the original size.

  A unit-vector field (`unit_vectors`; default: detected) is renormalised
  after the bilinear resize, which shortens vectors between neighbours.
  """
  x = pred[pl.top:pl.top + pl.rh, pl.left:pl.left + pl.rw]
  if unit_vectors is None:
    unit_vectors = _is_unit_field(x)
  if (pl.rh, pl.rw) == (pl.h, pl.w):
    return np.ascontiguousarray(x)
  if not np.issubdtype(x.dtype, np.floating):
    return _resize_nearest(x, (pl.h, pl.w))
  out = cv2.resize(x.astype(np.float32), (pl.w, pl.h),
                   interpolation=cv2.INTER_LINEAR)
  out = out.reshape(pl.h, pl.w, x.shape[-1])
  if unit_vectors:
    norm = np.linalg.norm(out, axis=-1, keepdims=True)
    out = np.where(norm > 1e-6, out / np.maximum(norm, 1e-6), out)
  return out.astype(x.dtype)
