"""TFDS builder for MTAN's preprocessed Cityscapes (19 classes + depth).

lorenmt/mtan's release (README, "Update - Jun 2019") has 2-, 7- and
19-class labels (`label_2`, `label_7`, `label_19`) and inverse depth, at
128x256 (and a 256x512 version). CTAL's CNN loader reads `label_19`
(Dimitri-Sinodinos/CTAL code_cnn/data/create_dataset.py, notes/methods.md
b.4), so the default config is 19 classes; "7class" reads `label_7`, the set
MTAN's own paper used. Not the full-resolution Cityscapes benchmark.

Input: the folder `cityscapes/` holding `{train,val}/{image,label_19,depth}/
<i>.npy` (or packed as `cityscapes.zip`, `.tar.gz` or `.tar`), found in the
`manual_dir` given to `make_builder` or else in the TFDS manual directory
(`<data_dir>/downloads/manual`). Targets (see mtan_common.py): semseg with
MTAN's -1 stored as 255 (ignore); depth = the release's inverse depth as
stored, 0 = invalid. Splits: train = train/ (2975), validation = val/ (500).
"""

from __future__ import annotations

import dataclasses

import tensorflow_datasets as tfds

from data_builders import common
from data_builders import mtan_common

# Cityscapes train ids 0..18 (cityscapesScripts labels.py).
CLASS_NAMES_19 = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
    "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
    "truck", "bus", "train", "motorcycle", "bicycle")
# Cityscapes categories without "void", MTAN's 7-class set.
CLASS_NAMES_7 = ("flat", "construction", "object", "nature", "sky", "human",
                 "vehicle")


@dataclasses.dataclass(kw_only=True)
class MtanCityscapesConfig(tfds.core.BuilderConfig):
  tasks: tuple[str, ...] = ("semseg", "depth")
  label_folder: str = "label_19"
  class_names: tuple[str, ...] = CLASS_NAMES_19


class Builder(mtan_common.MtanBuilder, skip_registration=True):
  """MTAN Cityscapes: semseg (19 or 7 classes) and inverse depth."""

  name = "mtan_cityscapes"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "From lorenmt/mtan's preprocessed cityscapes/."}
  BUILDER_CONFIGS = [
      MtanCityscapesConfig(name="19class",
                           description="semseg (label_19), depth (CTAL)"),
      MtanCityscapesConfig(name="7class",
                           description="semseg (label_7), depth (MTAN)",
                           label_folder="label_7",
                           class_names=CLASS_NAMES_7),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "19class"
  ARCHIVES = ("cityscapes.zip", "cityscapes.tar.gz", "cityscapes.tgz",
              "cityscapes.tar")
  FOLDERS = ("cityscapes",)
  MARKER = "train/depth/0.npy"
  KNOWN_SIZES = {(128, 256): "128x256, the MTAN release CTAL used",
                 (256, 512): "256x512, MTAN's larger release"}
  SPLIT_SIZES = {"train": 2975, "validation": 500}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Place MTAN's preprocessed cityscapes/ folder (or cityscapes.zip) "
      "in the manual directory, or pass manual_dir=<file or folder> to "
      "make_builder.")

  @property
  def TASK_CLASS_NAMES(self):  # pylint: disable=invalid-name
    return {"semseg": self.builder_config.class_names}

  @property
  def TASK_FOLDERS(self):  # pylint: disable=invalid-name
    return {"semseg": self.builder_config.label_folder, "depth": "depth"}


def make_builder(config: str = "19class", *, data_dir: str | None = None,
                 manual_dir: str | None = None, **overrides) -> Builder:
  """An unprepared MTAN Cityscapes builder; overrides: tmp_dir, file_format."""
  return common.make_archive_builder(Builder, config, data_dir=data_dir,
                                     manual_dir=manual_dir, **overrides)
