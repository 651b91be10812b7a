"""NYUD-v2 targets from archive members, as the reference loaders build them.

Reproduces prismformore/Multi-Task-Transformer InvPT/data/nyud.py (commit
870c6be100b9, the ATRC copy "NYUDv2": images, edges and normals as PNG) and
SimonVandenhende/Multi-Task-Learning-PyTorch data/nyud.py (commit
56815d59b6b3, "NYUD_MT": JPEG images, edges and normals as .npy). Both
copies share the folder names; each member's format is found per image.
"""

from __future__ import annotations

import io
import logging

import numpy as np

from data_builders import common

log = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".png", ".jpeg")
# Member stem and accepted extensions per task.
MEMBERS = {
    "semseg": ("segmentation", (".png",)),
    "depth": ("depth", (".npy",)),
    "normals": ("normals", (".png", ".npy")),
    "edge": ("edge", (".png", ".npy")),
}
KNOWN_SIZES = {(448, 576): "448x576 (the ATRC copy)",
               (480, 640): "480x640 (full NYUv2 resolution copy)"}


def semseg(arr: np.ndarray) -> np.ndarray:
  """Raw 0..40 -> 0 becomes 255 (ignore), the others minus 1."""
  if arr.ndim != 2:
    raise common.CorruptMemberError(
        f"expected a 1-channel PNG, got {arr.shape}")
  lab = arr.astype(np.int64)
  if lab.min() < 0 or lab.max() > 255:
    raise common.CorruptMemberError(f"labels outside 0..255: {lab.max()}")
  return np.where(lab == 0, 255, lab - 1).astype(np.uint8)[..., None]


def depth(arr: np.ndarray) -> np.ndarray:
  """Metres, 0 = invalid; (H, W) or (H, W, 1) -> float32 (H, W, 1)."""
  arr = np.asarray(arr, np.float32)
  if arr.ndim == 3 and arr.shape[-1] == 1:
    arr = arr[..., 0]
  if arr.ndim != 2:
    raise common.CorruptMemberError(f"expected (H, W) depth, got {arr.shape}")
  return arr[..., None]


def normals(arr: np.ndarray, from_png: bool) -> np.ndarray:
  """PNG: 2x/255 - 1 (InvPT); .npy: as stored (MTL-PyTorch)."""
  arr = np.asarray(arr)
  if arr.ndim != 3 or arr.shape[-1] != 3:
    raise common.CorruptMemberError(f"expected (H, W, 3) normals, got "
                                    f"{arr.shape}")
  if from_png:
    return (2.0 * arr.astype(np.float32) / 255.0 - 1.0).astype(np.float32)
  return arr.astype(np.float32)


def edge(arr: np.ndarray, from_png: bool) -> np.ndarray:
  """PNG: x/255 (InvPT); .npy: as stored. Must be a {0, 1} map."""
  arr = np.asarray(arr, np.float32)
  if from_png:
    arr = arr / 255.0
  return common.binary_uint8(arr, "edge")


def decode_member(task: str, rel: str, data: bytes) -> np.ndarray:
  """Bytes of one label member -> its final target (before any resize)."""
  is_png = rel.endswith(".png")
  raw = common.decode_image_array(data) if is_png else common.load_npy(data)
  if task == "semseg":
    return semseg(raw)
  if task == "depth":
    return depth(raw)
  if task == "normals":
    return normals(raw, is_png)
  return edge(raw, is_png)


def resize_target(task: str, x: np.ndarray, hw: tuple[int, int]
                  ) -> np.ndarray:
  """Loader rule: nearest for labels/depth/edge, cubic for normals."""
  if tuple(x.shape[:2]) != tuple(hw):
    log.warning("NYUD %s of size %s resized to the image size %s", task,
                x.shape[:2], hw)
  return common.resize_to(x, hw, cubic=task == "normals")


def describe_size(hw: tuple[int, int]) -> str:
  return KNOWN_SIZES.get(tuple(hw), f"{hw[0]}x{hw[1]} (unknown copy)")


def image_size_of(data: bytes) -> tuple[int, int]:
  """(H, W) from the image header only."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(io.BytesIO(data)) as im:
    return im.height, im.width
