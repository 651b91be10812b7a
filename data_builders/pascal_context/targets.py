"""PASCAL-Context multi-task targets, as the reference loader builds them.

Reproduces prismformore/Multi-Task-Transformer InvPT/data/pascal_context.py
(commit 870c6be100b9), itself SimonVandenhende/Multi-Task-Learning-PyTorch
data/pascal_context.py (commit d16e10be72d3) from facebookresearch/astmt.
"""

from __future__ import annotations

import json
import logging

import cv2
import numpy as np
from skimage import morphology

from data_builders import common

log = logging.getLogger(__name__)

PERSON_CLASS = 15
# The reference's HUMAN_PART[6]: PASCAL-Part person part -> 1..6.
_PART_GROUPS = {
    1: ("hair", "head", "lear", "rear", "lebrow", "rebrow", "leye", "reye",
        "mouth", "nose"),
    2: ("neck", "torso"),
    3: ("luarm", "ruarm"),
    4: ("llarm", "rlarm", "lhand", "rhand"),
    5: ("luleg", "ruleg"),
    6: ("llleg", "rlleg", "lfoot", "rfoot"),
}
HUMAN_PART = {name: k for k, names in _PART_GROUPS.items() for name in names}
HUMAN_PART_NAMES = ("background", "head", "torso", "upper_arms",
                    "lower_arms_hands", "upper_legs", "lower_legs_feet")
VOC_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus",
    "car", "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike",
    "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
# The reference's placeholder shape for images without a parted person;
# it is resized (nearest) to the image, so only its value 0 matters.
_NO_PERSON_SHAPE = (512, 512)


def normals_valid_classes(nyu: dict, context: dict) -> np.ndarray:
  """Context ids of NYU class names also in the context list, + tvmonitor.

  The loader's rule (names in nyu_classes.json present in
  context_classes.json, except 'unknown'), evaluated on the given files.
  """
  ids = [context[n] for n in nyu if n in context and n != "unknown"]
  ids.append(context["tvmonitor"])
  return np.asarray(sorted(set(int(i) for i in ids)), np.int64)


def load_json(data: bytes) -> dict:
  return json.loads(data.decode())


def label_map(mat: dict) -> np.ndarray:
  return np.asarray(mat["LabelMap"])


def label_map_u16(labels: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  """LabelMap as stored for the boundary benchmark: uint16 at image size."""
  labels = np.asarray(labels)
  if labels.ndim != 2 or labels.size == 0:
    raise ValueError(f"LabelMap must be a 2-D map, got shape {labels.shape}")
  if labels.min() < 0 or labels.max() > np.iinfo(np.uint16).max:
    raise ValueError(f"LabelMap values outside uint16: {labels.min()}.."
                     f"{labels.max()}")
  return resize_target("labelmap", labels.astype(np.uint16), hw)


def edge(labels: np.ndarray) -> np.ndarray:
  """thin(|Laplacian(LabelMap)| > 0): OpenCV 64F, default 3x3 aperture."""
  lap = cv2.Laplacian(labels.astype(np.float64), cv2.CV_64F)
  return morphology.thin(np.abs(lap) > 0).astype(np.uint8)[..., None]


def semseg(arr: np.ndarray) -> np.ndarray:
  if arr.ndim != 2:
    raise common.CorruptMemberError(f"expected a 1-channel PNG, {arr.shape}")
  return arr.astype(np.uint8)[..., None]


def sal(arr: np.ndarray) -> np.ndarray:
  """Distilled saliency: x / 255 > 0.5."""
  if arr.ndim != 2:
    raise common.CorruptMemberError(f"expected a 1-channel PNG, {arr.shape}")
  return (arr.astype(np.float32) / 255.0 > 0.5).astype(np.uint8)[..., None]


def normals(arr: np.ndarray, labels: np.ndarray,
            valid: np.ndarray) -> np.ndarray:
  """2x/255 - 1, kept where LabelMap is a NYU-compatible class, else 0."""
  if arr.ndim != 3 or arr.shape[-1] != 3:
    raise common.CorruptMemberError(f"expected an RGB PNG, got {arr.shape}")
  n = 2.0 * arr.astype(np.float32) / 255.0 - 1.0
  keep = np.isin(labels, valid)
  return np.where(keep[..., None], n, 0.0).astype(np.float32)


def human_parts(mat: dict) -> np.ndarray:
  """7-class part map from the PASCAL-Part `anno` struct (0 = none).

  Access path as in the loader: anno[0][0][1][0] are the objects; an
  object's [1] is its class, [2] its mask, [3] its parts (each part's [0][0]
  its name, [1] its mask). Only images holding a person of non-zero area
  (the loader's part_obj_dict, area_thres 0) are read; later parts
  overwrite earlier ones.
  """
  objects = mat["anno"][0][0][1][0]
  cls = lambda o: int(np.asarray(o[1]).reshape(-1)[0])
  has_person = any(cls(o) == PERSON_CLASS and np.sum(o[2]) > 0
                   for o in objects)
  target = None
  if has_person:
    for o in objects:
      if cls(o) != PERSON_CLASS or len(o[3]) == 0:
        continue
      if target is None:
        target = np.zeros(np.asarray(o[2]).shape, np.uint8)
      for part in o[3][0]:
        name = str(part[0][0])
        if name not in HUMAN_PART:
          raise common.CorruptMemberError(f"unknown person part {name!r}")
        target[np.asarray(part[1]).astype(bool)] = HUMAN_PART[name]
  if target is None:
    target = np.zeros(_NO_PERSON_SHAPE, np.uint8)
  return target[..., None]


def resize_target(task: str, x: np.ndarray, hw: tuple[int, int]
                  ) -> np.ndarray:
  """Loader rule: cubic for normals, nearest for everything else."""
  if tuple(x.shape[:2]) != tuple(hw) and not (
      task == "human_parts" and x.shape[:2] == _NO_PERSON_SHAPE):
    log.warning("PASCAL %s of size %s resized to the image size %s", task,
                x.shape[:2], hw)
  return common.resize_to(x, hw, cubic=task == "normals")
