"""What the MTAN-preprocessed datasets (mtan_nyuv2, mtan_cityscapes) share.

lorenmt/mtan (commit c36c30b, README and im2im_pred/create_dataset.py)
released NYUv2 and Cityscapes as one ``.npy`` file per sample and target,
read by index by CTAL's CNN loader (Dimitri-Sinodinos/CTAL@b2d3bb9
code_cnn/data/create_dataset.py)::

  <root>/{train,val}/image/<i>.npy   float (H, W, 3) in [0, 1]
  <root>/{train,val}/<label>/<i>.npy float (H, W), class ids, -1 = ignore
  <root>/{train,val}/depth/<i>.npy   float (H, W, 1), 0 = invalid
  <root>/{train,val}/normal/<i>.npy  float (H, W, 3), 0-vector = invalid

with i = 0 .. n-1 (the loader counts image/*.npy and reads indices). Our
targets: semseg -1 -> 255 (this project's ignore) as uint8; depth and
normals as stored (the tasks' ignore_regions turn 0 into their invalid
value in the pipeline). Images are stored as uint8 round(255 x): the
reference feeds the float image itself, so this quantises by at most
0.5/255 (the builder logs the error it measured on the first image).
Nothing is resized: every member must have the image's size.
"""

from __future__ import annotations

import logging
from typing import ClassVar, Mapping

import numpy as np

from data_builders import common

log = logging.getLogger(__name__)

SPLIT_FOLDERS = {"train": "train", "validation": "val"}
# Accepted slack on the [0, 1] image range (float rounding in the release).
_IMAGE_SLACK = 1e-3


def image_uint8(arr: np.ndarray) -> tuple[np.ndarray, float]:
  """Float [0, 1] (H, W, 3) -> uint8 round(255 x) and the max error (in
  units of 1/255); a uint8 image is kept as is."""
  arr = np.asarray(arr)
  if arr.ndim != 3 or arr.shape[-1] != 3:
    raise common.CorruptMemberError(
        f"expected an (H, W, 3) image, got shape {arr.shape}")
  if arr.dtype == np.uint8:
    return arr, 0.0
  if not np.issubdtype(arr.dtype, np.floating):
    raise common.CorruptMemberError(
        f"expected a float image in [0, 1] (or uint8), got {arr.dtype}")
  x = arr.astype(np.float64)
  if not np.isfinite(x).all() or x.min() < -_IMAGE_SLACK or (
      x.max() > 1 + _IMAGE_SLACK):
    raise common.CorruptMemberError(
        f"image values outside [0, 1]: min {np.nanmin(x):.4g}, max "
        f"{np.nanmax(x):.4g} (MTAN stores images scaled to [0, 1])")
  scaled = np.clip(x, 0.0, 1.0) * 255.0
  out = np.rint(scaled)
  return out.astype(np.uint8), float(np.abs(out - scaled).max())


def semseg_label(arr: np.ndarray) -> np.ndarray:
  """Class ids with -1 = ignore -> uint8 with 255 = ignore, channel last.

  Values must be integers >= -1; the class range is the task's check.
  """
  x = np.asarray(arr)
  if np.issubdtype(x.dtype, np.floating):
    bad = ~np.isfinite(x) | (x != np.round(x))
    if bad.any():
      raise common.CorruptMemberError(
          f"semseg label holds {int(bad.sum())} non-integer value(s), e.g. "
          f"{np.unique(x[bad])[:5].tolist()}")
  x = x.astype(np.int64)
  if (x < -1).any() or (x > 255).any():
    bad = (x < -1) | (x > 255)
    raise common.CorruptMemberError(
        f"semseg label has {int(bad.sum())} value(s) outside -1 (ignore) "
        f"and the class ids, e.g. {np.unique(x[bad])[:5].tolist()}")
  return np.where(x == -1, 255, x).astype(np.uint8)[..., None]


def float_label(arr: np.ndarray, channels: int, what: str) -> np.ndarray:
  """(H, W) or (H, W, channels) float -> float32 (H, W, channels)."""
  x = np.asarray(arr)
  if x.ndim == 2 and channels == 1:
    x = x[..., None]
  if x.ndim != 3 or x.shape[-1] != channels:
    raise common.CorruptMemberError(
        f"expected an (H, W, {channels}) {what} map, got shape {x.shape}")
  if not np.issubdtype(x.dtype, np.floating):
    raise common.CorruptMemberError(f"expected a float {what} map, got "
                                    f"{x.dtype}")
  return x.astype(np.float32)


def decode_target(task: str, data: bytes) -> np.ndarray:
  """Bytes of one label member -> its target (before the task's checks)."""
  raw = common.load_npy(data)
  if task == "semseg":
    if raw.ndim == 3 and raw.shape[-1] == 1:
      raw = raw[..., 0]
    if raw.ndim != 2:
      raise common.CorruptMemberError(
          f"expected an (H, W) label map, got shape {raw.shape}")
    return semseg_label(raw)
  if task == "depth":
    return float_label(raw, 1, "depth")
  return float_label(raw, 3, "normals")


class MtanBuilder(common.ArchiveBuilder, skip_registration=True):
  """A dataset in MTAN's .npy layout; a subclass names its folders.

  Subclasses set `TASK_FOLDERS` (task -> folder under each split),
  `KNOWN_SIZES` ((H, W) -> description, for the log) and `SPLIT_SIZES`
  (the release's image counts, checked with a warning).
  """

  TASK_FOLDERS: ClassVar[Mapping[str, str]]
  KNOWN_SIZES: ClassVar[Mapping[tuple[int, int], str]]
  SPLIT_SIZES: ClassVar[Mapping[str, int]]
  SPLIT_FILES: ClassVar[Mapping[str, str]] = {}
  EDGE_MAX_DIST = None
  _log_quantisation = False

  def _rel(self, image_id: str, folder: str) -> str:
    split, index = image_id.split("/")
    return f"{split}/{folder}/{index}.npy"

  def _wanted(self, image_id: str):
    for folder in ("image", *(self.TASK_FOLDERS[t] for t in self.tasks)):
      rel = self._rel(image_id, folder)
      yield rel, rel if self._source.has(rel) else None

  def _split_ids(self) -> dict[str, list[str]]:
    """Ids "<folder>/<i>" for i = 0, 1, ... while image/<i>.npy exists (the
    loader reads indices 0 .. n-1), then every member they need."""
    ids = {}
    for split, folder in SPLIT_FOLDERS.items():
      n = 0
      while self._source.has(f"{folder}/image/{n}.npy"):
        n += 1
      later = [k for k in range(n + 1, n + 9)
               if self._source.has(f"{folder}/image/{k}.npy")]
      if later:
        raise FileNotFoundError(
            f"{folder}/image/{n}.npy is missing in {self._source.description}"
            f" but {folder}/image/{later[0]}.npy exists: MTAN's loader reads "
            "indices 0..n-1 without gaps. Nothing was written.")
      if n == 0:
        raise FileNotFoundError(
            f"{folder}/image/0.npy missing in {self._source.description}: "
            f"no {split} split (expected MTAN's {folder}/image/<i>.npy).")
      want = self.SPLIT_SIZES.get(split)
      if want is not None and n != want:
        log.warning("%s: %d %s images, the MTAN release has %d.",
                    self._source.description, n, split, want)
      ids[split] = [f"{folder}/{i}" for i in range(n)]
    common.check_members(self._source, ids, self._wanted)
    return ids

  def _split_generators(self, dl_manager):
    ids = self._split_ids()
    first = ids["train"][0]
    rel = self._rel(first, "image")
    img = common.decode_or_raise(rel, first, common.load_npy,
                                 common.read_member(self._source, rel, first))
    hw = tuple(int(s) for s in np.shape(img)[:2])
    log.info("%s from %s: %s images (%s); %d train / %d validation.",
             self.name, self._source.description, f"{hw[0]}x{hw[1]}",
             self.KNOWN_SIZES.get(hw, "not a size MTAN released"),
             len(ids["train"]), len(ids["validation"]))
    self._log_quantisation = True
    return {s: self._generate_examples(v) for s, v in ids.items()}

  def _example(self, image_id: str) -> dict:
    src = self._source
    rel = self._rel(image_id, "image")
    raw = common.decode_or_raise(rel, image_id, common.load_npy,
                                 common.read_member(src, rel, image_id))
    img, err = common.decode_or_raise(rel, image_id, image_uint8, raw)
    if self._log_quantisation:  # once per preparation
      log.info("Images stored as uint8: max quantisation error %.3f/255 on "
               "%s.", err, rel)
      self._log_quantisation = False
    hw = img.shape[:2]
    ex = {"image": common.encode_png(img), "id": image_id,
          "orig_size": np.asarray(hw, np.int32)}
    for t in self.tasks:
      rel = self._rel(image_id, self.TASK_FOLDERS[t])
      y = common.decode_or_raise(rel, image_id, decode_target, t,
                                 common.read_member(src, rel, image_id))
      if y.shape[:2] != hw:
        raise common.CorruptMemberError(
            f"{rel} (image id {image_id}) in {src.description}: size "
            f"{y.shape[0]}x{y.shape[1]} differs from the image's "
            f"{hw[0]}x{hw[1]}; MTAN's members all share one size.")
      ex[t] = self._store(t, y, rel, image_id, lambda y: y)
    return ex
