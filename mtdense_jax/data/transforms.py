"""Per-example grain transforms: the InvPT/ATRC augmentation recipe.

Reproduces prismformore/Multi-Task-Transformer `InvPT/data/transforms.py`
(commit 1f2b615, "same transform as ATRC"): train = RandomScaling (0.5-2.0) ->
RandomCrop (cat_max_ratio 0.75) -> RandomHorizontalFlip -> PhotoMetricDistortion
-> Normalize -> PadImage (centred) -> AddIgnoreRegions; eval = Normalize ->
PadImage -> AddIgnoreRegions (pad only, never crop or resize).

An example is a dict of numpy arrays: ``image`` (H, W, 3) plus one label per
configured task (H, W, C), optionally ``valid`` (a bool scalar). Every
transform gets the configured Task objects and loops over them: what a label
is (channels, dtype, fill value, how it resizes, flips and scales, which
ignore regions it gets) is the Task's (tasks/base.py label hooks), so all
tasks move together and nothing here names one. Deviations from the
reference, both output-equivalent: labels are padded with their fill value
directly (the reference pads some with 0 and then turns 0 into the ignore
value), and the transforms keep an existing fill (ignore) intact, so their
order may change. Random transforms are `grain.transforms.RandomMap`s drawing
only from the per-record rng grain passes in, so a pipeline is deterministic
given its seed. All classes are module-level and hold picklable Tasks, so
they pickle into grain worker processes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import cv2
import grain
import numpy as np

from mtdense_jax.tasks import base

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_INTERP = {"nearest": cv2.INTER_NEAREST, "bilinear": cv2.INTER_LINEAR}
Tasks = Sequence[base.Task]

Example = dict[str, Any]


def _resize(arr: np.ndarray, hw: tuple[int, int], interp: int) -> np.ndarray:
  """cv2.resize keeping the trailing channel axis (cv2 drops a single one)."""
  out = cv2.resize(arr, (hw[1], hw[0]), interpolation=interp)
  return out.reshape(hw + (arr.shape[-1],))


@dataclasses.dataclass(frozen=True)
class SelectTasks(grain.transforms.Map):
  """Keeps image + the configured task labels (drops id, orig_size, ...).

  Gives every label its channel axis and pipeline dtype, and the image float32
  (the reference loads images as float32 before any augmentation). `keep`
  names extra features an evaluator scores against (e.g. a LabelMap): kept
  as stored, with a channel axis.
  """

  tasks: tuple[base.Task, ...]
  keep: tuple[str, ...] = ()

  def map(self, element: Example) -> Example:
    missing = [t.name for t in self.tasks if t.name not in element]
    if missing:
      raise KeyError(
          f"Example has no label for task(s) {missing}; it has keys "
          f"{sorted(element)}. Configure only tasks the dataset provides.")
    image = np.asarray(element["image"])
    if image.ndim == 2:
      image = np.repeat(image[..., None], 3, axis=-1)
    out = {"image": image.astype(np.float32)}
    for t in self.tasks:
      label = np.asarray(element[t.name])
      if label.ndim == 2:
        label = label[..., None]
      spec = t.label_spec
      if label.shape[-1] != spec.channels:
        raise ValueError(f"Label {t.name!r} has shape {label.shape}; "
                         f"expected {spec.channels} channel(s).")
      out[t.name] = label.astype(spec.dtype)
    for k in self.keep:
      if k not in element:
        raise KeyError(f"Example has no feature {k!r} that evaluation needs; "
                       f"it has keys {sorted(element)}. Rebuild the dataset "
                       "with a builder version that stores it.")
      arr = np.asarray(element[k])
      out[k] = arr[..., None] if arr.ndim == 2 else arr
    if "valid" in element:
      out["valid"] = element["valid"]
    return out


@dataclasses.dataclass(frozen=True)
class RandomScale(grain.transforms.RandomMap):
  """Rescales by f ~ U(lo, hi): image bilinear, each label as its spec says,
  then the task adjusts its values (`Task.rescale_label`)."""

  tasks: tuple[base.Task, ...]
  scale_range: tuple[float, float] = (0.5, 2.0)

  def random_map(self, element: Example, rng: np.random.Generator) -> Example:
    factor = float(rng.uniform(*self.scale_range))
    if factor == 1.0:
      return element
    h, w = element["image"].shape[:2]
    hw = (int(h * factor), int(w * factor))
    out = dict(element)
    out["image"] = _resize(element["image"], hw, cv2.INTER_LINEAR)
    for t in self.tasks:
      k = t.name
      resized = _resize(element[k], hw, _INTERP[t.label_spec.resize])
      out[k] = t.rescale_label(resized, factor)
    return out


def _crop_ok(seg: np.ndarray, cat_max_ratio: float, ignore: int) -> bool:
  """The InvPT test: >1 class and none above cat_max_ratio of labelled px."""
  counts = np.bincount(seg.ravel(), minlength=ignore + 1)
  counts = counts[np.arange(counts.size) != ignore]
  counts = counts[counts > 0]
  return len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio


@dataclasses.dataclass(frozen=True)
class RandomCrop(grain.transforms.RandomMap):
  """Random crop to `size` (a smaller side is kept whole; Pad fills it later).

  With cat_max_ratio < 1 and a task that `balances_crop` (a class map),
  re-draws up to 10 times until that label's crop has more than one class
  and no class above that fraction (InvPT).
  """

  tasks: tuple[base.Task, ...]
  size: tuple[int, int]
  cat_max_ratio: float = 1.0

  def _draw(self, hw, rng) -> tuple[int, int]:
    top = int(rng.integers(0, max(hw[0] - self.size[0], 0) + 1))
    left = int(rng.integers(0, max(hw[1] - self.size[1], 0) + 1))
    return top, left

  def _crop(self, arr, loc):
    return arr[loc[0]:loc[0] + self.size[0], loc[1]:loc[1] + self.size[1]]

  def random_map(self, element: Example, rng: np.random.Generator) -> Example:
    hw = element["image"].shape[:2]
    if tuple(hw) == tuple(self.size):
      return element
    loc = self._draw(hw, rng)
    balance = next((t for t in self.tasks if t.balances_crop), None)
    if self.cat_max_ratio < 1.0 and balance is not None:
      seg, ignore = element[balance.name], int(balance.fill)
      for _ in range(10):
        if _crop_ok(self._crop(seg, loc), self.cat_max_ratio, ignore):
          break
        loc = self._draw(hw, rng)
    out = dict(element)
    for k in ["image"] + [t.name for t in self.tasks]:
      out[k] = self._crop(element[k], loc)
    return out


def _mirror(arr: np.ndarray) -> np.ndarray:
  return cv2.flip(arr, 1).reshape(arr.shape)  # cv2: a fast copy


def hflip(element: Example, tasks: Tasks) -> Example:
  """Mirrors image and labels; each task fixes its values (`flip_label`)."""
  out = dict(element)
  out["image"] = _mirror(element["image"])
  for t in tasks:
    out[t.name] = t.flip_label(_mirror(element[t.name]))
  return out


@dataclasses.dataclass(frozen=True)
class RandomHorizontalFlip(grain.transforms.RandomMap):
  tasks: tuple[base.Task, ...]
  p: float = 0.5

  def random_map(self, element: Example, rng: np.random.Generator) -> Example:
    return hflip(element, self.tasks) if rng.random() < self.p else element


def _convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0):
  return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(
      np.uint8)


@dataclasses.dataclass(frozen=True)
class PhotometricDistortion(grain.transforms.RandomMap):
  """mmseg-style colour jitter on the uint8 image, each step with p=0.5.

  Brightness +-delta, contrast (first or last, at random), saturation and hue
  in OpenCV's uint8 HSV (hue in [0, 180)). No channel swap (as the reference).
  """

  brightness_delta: float = 32.0
  contrast_range: tuple[float, float] = (0.5, 1.5)
  saturation_range: tuple[float, float] = (0.5, 1.5)
  hue_delta: int = 18

  def _contrast(self, img, rng):
    if rng.random() < 0.5:
      img = _convert(img, alpha=rng.uniform(*self.contrast_range))
    return img

  def random_map(self, element: Example, rng: np.random.Generator) -> Example:
    img = element["image"].astype(np.uint8)  # truncates, as the reference
    if rng.random() < 0.5:
      img = _convert(img, beta=rng.uniform(-self.brightness_delta,
                                           self.brightness_delta))
    contrast_first = rng.random() < 0.5
    if contrast_first:
      img = self._contrast(img, rng)
    if rng.random() < 0.5:
      hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
      hsv[..., 1] = _convert(hsv[..., 1],
                             alpha=rng.uniform(*self.saturation_range))
      img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if rng.random() < 0.5:
      hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
      shift = int(rng.integers(-self.hue_delta, self.hue_delta))
      hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + shift) % 180).astype(
          np.uint8)
      img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if not contrast_first:
      img = self._contrast(img, rng)
    return {**element, "image": img.astype(np.float32)}


@dataclasses.dataclass(frozen=True)
class Normalize(grain.transforms.Map):
  """[0, 255] -> [0, 1] -> mean/std standardisation (float32); ImageNet's
  by default, `for_config` reads data.image_mean / data.image_std."""

  mean: tuple[float, float, float] = IMAGENET_MEAN
  std: tuple[float, float, float] = IMAGENET_STD

  def map(self, element: Example) -> Example:
    std = np.asarray(self.std, np.float32)
    scale = 1.0 / (255.0 * std)
    offset = -np.asarray(self.mean, np.float32) / std
    img = element["image"].astype(np.float32) * scale + offset
    return {**element, "image": img.astype(np.float32)}

  @classmethod
  def for_config(cls, data_cfg: Any) -> "Normalize":
    """The data config's statistics; mean 0 / std 1 feeds [0, 1] images
    (MTAN-style CNN recipes such as CTAL's feed them unstandardised)."""
    return cls(tuple(data_cfg.get("image_mean", None) or IMAGENET_MEAN),
               tuple(data_cfg.get("image_std", None) or IMAGENET_STD))


@dataclasses.dataclass(frozen=True)
class Pad(grain.transforms.Map):
  """Centred pad to `size`: image 0 (normalised space), labels their fill.

  Used after the train crop and as the eval "pad, never resize" step, so a
  larger input is an error (the model is tied to one input size).
  """

  size: tuple[int, int]
  tasks: tuple[base.Task, ...] = ()  # () pads the image alone
  keep: tuple[str, ...] = ()  # extra per-pixel features, padded with 0

  def map(self, element: Example) -> Example:
    h, w = element["image"].shape[:2]
    th, tw = self.size
    if h > th or w > tw:
      raise ValueError(
          f"Image of size {h}x{w} is larger than data.image_size=({th}, {tw})."
          " Evaluation pads and never crops or resizes; raise data.image_size"
          " to at least the largest image of the split (multiples of the"
          " model's patch grid).")
    if (h, w) == (th, tw):
      return element
    top, left = (th - h) // 2, (tw - w) // 2
    out = dict(element)
    fills = ([("image", 0)] + [(t.name, t.fill) for t in self.tasks]
             + [(k, 0) for k in self.keep])
    for k, fill in fills:
      arr = element[k]
      padded = np.full((th, tw, arr.shape[-1]), fill, arr.dtype)
      padded[top:top + h, left:left + w] = arr
      out[k] = padded
    return out


@dataclasses.dataclass(frozen=True)
class AddIgnoreRegions(grain.transforms.Map):
  """Each task marks its own "no label" values (`Task.ignore_regions`)."""

  tasks: tuple[base.Task, ...]

  def map(self, element: Example) -> Example:
    out = dict(element)
    for t in self.tasks:
      out[t.name] = t.ignore_regions(element[t.name])
    return out


@dataclasses.dataclass(frozen=True)
class MarkValid(grain.transforms.MapWithIndex):
  """valid = (index < num_valid): eval examples past the split are padding."""

  num_valid: int

  def map_with_index(self, index: int, element: Example) -> Example:
    return {**element, "valid": np.bool_(index < self.num_valid)}


@dataclasses.dataclass(frozen=True)
class BlankInvalid(grain.transforms.Map):
  """A padding example (valid False): image 0, labels all their fill."""

  tasks: tuple[base.Task, ...]

  def map(self, element: Example) -> Example:
    valid = np.bool_(element.get("valid", True))
    out = {**element, "valid": valid}
    if not valid:
      out["image"] = np.zeros_like(element["image"])
      for t in self.tasks:
        out[t.name] = np.full_like(element[t.name], t.fill)
    return out
