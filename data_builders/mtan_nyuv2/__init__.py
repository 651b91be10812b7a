"""TFDS builder for MTAN's preprocessed 13-class NYUv2 (288x384), no download.

NOT the 40-class NYUD-v2 benchmark of InvPT/ATRC (data_builders/nyud_v2):
other classes (13, the NYU "seg13" set), another resolution (288x384) and
other splits' preprocessing; their numbers are not comparable. Used by the
CNN recipes of CTAL (Dimitri-Sinodinos/CTAL code_cnn, notes/methods.md b.4).

Input: lorenmt/mtan's release (its README's Dropbox link): the folder
`nyuv2/` holding `{train,val}/{image,label,depth,normal}/<i>.npy`, or that
folder packed as `nyuv2.zip` (a Dropbox folder download), `nyuv2.tar.gz` or
`nyuv2.tar`, found in the `manual_dir`
given to `make_builder` or else in the TFDS manual directory
(`<data_dir>/downloads/manual`). Targets (see mtan_common.py): semseg 13
classes with MTAN's -1 stored as 255 (ignore), depth in metres with 0 =
invalid, unit normals with 0-vectors = invalid. Splits: train = train/
(795 images in the release), validation = val/ (654).
"""

from __future__ import annotations

import dataclasses

import tensorflow_datasets as tfds

from data_builders import common
from data_builders import mtan_common

# The 13 NYUv2 classes (Couprie et al. 2013; ankurhanda/SceneNetv1.0), in
# MTAN's label order 0..12 (raw 0 = unknown became -1).
CLASS_NAMES = ("bed", "books", "ceiling", "chair", "floor", "furniture",
               "objects", "picture", "sofa", "table", "tv", "wall", "window")


@dataclasses.dataclass(kw_only=True)
class MtanNyuConfig(tfds.core.BuilderConfig):
  tasks: tuple[str, ...] = ("semseg", "depth", "normals")


class Builder(mtan_common.MtanBuilder, skip_registration=True):
  """MTAN NYUv2: semseg (13 classes), depth, normals at 288x384."""

  name = "mtan_nyuv2"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "From lorenmt/mtan's preprocessed nyuv2/."}
  BUILDER_CONFIGS = [
      MtanNyuConfig(name="all", description="semseg (13), depth, normals"),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "all"
  ARCHIVES = ("nyuv2.zip", "nyuv2.tar.gz", "nyuv2.tgz", "nyuv2.tar")
  FOLDERS = ("nyuv2",)
  MARKER = "train/label/0.npy"
  TASK_CLASS_NAMES = {"semseg": CLASS_NAMES}
  TASK_FOLDERS = {"semseg": "label", "depth": "depth", "normals": "normal"}
  KNOWN_SIZES = {(288, 384): "288x384, the MTAN release"}
  SPLIT_SIZES = {"train": 795, "validation": 654}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Place MTAN's preprocessed nyuv2/ folder (or nyuv2.zip) in the "
      "manual directory, or pass manual_dir=<file or folder> to "
      "make_builder.")


def make_builder(config: str = "all", *, data_dir: str | None = None,
                 manual_dir: str | None = None, **overrides) -> Builder:
  """An unprepared MTAN NYUv2 builder; overrides: tmp_dir, file_format."""
  return common.make_archive_builder(Builder, config, data_dir=data_dir,
                                     manual_dir=manual_dir, **overrides)
