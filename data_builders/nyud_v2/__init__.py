"""TFDS builder for NYUD-v2 (40 classes) from NYUDv2.tar.gz, no download.

Input: `NYUDv2.tar.gz` (or `NYUD_MT.tgz`), a plain `.tar`, or the extracted
folder (`NYUDv2/` holding `gt_sets/train.txt`), found in the `manual_dir`
given to `make_builder` or else in the TFDS manual directory
(`<data_dir>/downloads/manual`). Targets follow the reference loaders (see
`targets.py`): semseg 0 -> 255 and the rest minus 1, depth in metres with
0 = invalid, normals, edges. Images keep their original encoded bytes.
Splits: train = gt_sets/train.txt, validation = gt_sets/val.txt.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np
import tensorflow_datasets as tfds

from data_builders import common
from data_builders.nyud_v2 import targets

log = logging.getLogger(__name__)

# The 40-class NYUD-v2 label set (Gupta et al. 2013), in label order 1..40.
CLASS_NAMES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door",
    "window", "bookshelf", "picture", "counter", "blinds", "desk", "shelves",
    "curtain", "dresser", "pillow", "mirror", "floor mat", "clothes",
    "ceiling", "books", "refrigerator", "television", "paper", "towel",
    "shower curtain", "box", "whiteboard", "person", "night stand", "toilet",
    "sink", "lamp", "bathtub", "bag", "otherstructure", "otherfurniture",
    "otherprop")


@dataclasses.dataclass(kw_only=True)
class NyudConfig(tfds.core.BuilderConfig):
  tasks: tuple[str, ...] = ("semseg", "depth", "normals", "edge")


class Builder(common.ArchiveBuilder, skip_registration=True):
  """NYUD-v2 multi-task builder (semseg 40, depth, normals, edge)."""

  name = "nyud_v2"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "From the ATRC/InvPT or MTL-PyTorch archive."}
  BUILDER_CONFIGS = [
      NyudConfig(name="all", description="semseg, depth, normals, edge"),
      NyudConfig(name="mtcp", description="semseg, depth, normals (MT-CP)",
                 tasks=("semseg", "depth", "normals")),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "all"
  ARCHIVES = ("NYUDv2.tar.gz", "NYUD_MT.tgz", "NYUDv2.tar", "NYUD_MT.tar")
  FOLDERS = ("NYUDv2", "NYUD_MT")
  MARKER = "gt_sets/train.txt"
  SPLIT_FILES = {"train": "gt_sets/train.txt",
                 "validation": "gt_sets/val.txt"}
  TASK_CLASS_NAMES = {"semseg": CLASS_NAMES}
  EDGE_MAX_DIST = 0.011
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Place NYUDv2.tar.gz (InvPT/ATRC release) or NYUD_MT.tgz, or the "
      "extracted NYUDv2/ folder, in the manual directory, or pass "
      "manual_dir=<file or folder> to make_builder.")

  def _image_rel(self, image_id: str) -> str | None:
    return common.first_present(self._source, f"images/{image_id}",
                                targets.IMAGE_EXTS)

  def _task_rel(self, task: str, image_id: str) -> str | None:
    folder, exts = targets.MEMBERS[task]
    return common.first_present(self._source, f"{folder}/{image_id}", exts)

  def _wanted(self, image_id: str):
    yield f"images/{image_id}.jpg|.png", self._image_rel(image_id)
    for t in self.tasks:
      folder, exts = targets.MEMBERS[t]
      yield f"{folder}/{image_id}{'|'.join(exts)}", self._task_rel(t, image_id)

  def _split_generators(self, dl_manager):
    src = self._source
    ids = self._split_ids()
    first = ids["train"][0] if ids["train"] else ids["validation"][0]
    rel = self._image_rel(first)
    hw = common.decode_or_raise(rel, first, targets.image_size_of,
                                common.read_member(src, rel, first))
    fmts = {t: os.path.splitext(self._task_rel(t, first))[1]
            for t in self.tasks}
    log.info("NYUD-v2 from %s: images are %s, %s; member formats %s; "
             "%d train / %d validation ids.", src.description,
             targets.describe_size(hw), os.path.splitext(rel)[1], fmts,
             len(ids["train"]), len(ids["validation"]))
    return {s: self._generate_examples(v) for s, v in ids.items()}

  def _example(self, image_id: str) -> dict:
    src = self._source
    rel = self._image_rel(image_id)
    image, hw = common.decode_or_raise(
        rel, image_id, common.rgb_image_bytes,
        common.read_member(src, rel, image_id))
    ex = {"image": image, "id": image_id,
          "orig_size": np.asarray(hw, np.int32)}
    for t in self.tasks:
      rel = self._task_rel(t, image_id)
      if rel is None:
        raise FileNotFoundError(
            f"{targets.MEMBERS[t][0]}/{image_id} (image id {image_id}) is "
            f"missing in {src.description}")
      data = common.read_member(src, rel, image_id)
      y = common.decode_or_raise(rel, image_id, targets.decode_member, t,
                                 rel, data)
      ex[t] = self._store(t, y, rel, image_id,
                          lambda y, t=t: targets.resize_target(t, y, hw))
    return ex


def make_builder(config: str = "all", *, data_dir: str | None = None,
                 manual_dir: str | None = None, **overrides) -> Builder:
  """An unprepared NYUD-v2 builder; overrides: tmp_dir, file_format, version."""
  return common.make_archive_builder(Builder, config, data_dir=data_dir,
                                     manual_dir=manual_dir, **overrides)
