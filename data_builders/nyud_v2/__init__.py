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

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from data_builders import common
from data_builders.nyud_v2 import targets

log = logging.getLogger(__name__)

ARCHIVES = ("NYUDv2.tar.gz", "NYUD_MT.tgz", "NYUDv2.tar", "NYUD_MT.tar")
FOLDERS = ("NYUDv2", "NYUD_MT")
MARKER = "gt_sets/train.txt"
SPLIT_FILES = {"train": "gt_sets/train.txt", "validation": "gt_sets/val.txt"}
EDGE_MAX_DIST = 0.011
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


def _features(tasks: tuple[str, ...]) -> tfds.features.FeaturesDict:
  label = lambda: tfds.features.Image(shape=(None, None, 1),
                                      encoding_format="png")
  spec = {
      "image": tfds.features.Image(shape=(None, None, 3)),
      "id": tfds.features.Text(),
      "orig_size": tfds.features.Tensor(shape=(2,), dtype=np.int32),
  }
  for t in tasks:
    if t in ("semseg", "edge"):
      spec[t] = label()
    else:
      spec[t] = tfds.features.Tensor(shape=(None, None, 1 if t == "depth"
                                            else 3), dtype=np.float32,
                                     encoding="zlib")
  return tfds.features.FeaturesDict(spec)


class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
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
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Place NYUDv2.tar.gz (InvPT/ATRC release) or NYUD_MT.tgz, or the "
      "extracted NYUDv2/ folder, in the manual directory, or pass "
      "manual_dir=<file or folder> to make_builder.")

  def __init__(self, *, manual_dir: str | None = None,
               tmp_dir: str | None = None, **kwargs) -> None:
    self._manual_path = manual_dir
    self._tmp_dir = tmp_dir
    self._source: common.Source | None = None
    super().__init__(**kwargs)
    # Kept for TFDS's pickling, which re-runs __init__ from this dict.
    self._original_state.update(dict(file_format=kwargs.get("file_format"),
                                     manual_dir=manual_dir, tmp_dir=tmp_dir))

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS's default lookup imports the optional `importlib_resources`.
    return epath.Path(__file__)

  @property
  def tasks(self) -> tuple[str, ...]:
    return tuple(self.builder_config.tasks)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=_features(self.tasks),
        metadata=tfds.core.MetadataDict(
            tasks=list(self.tasks),
            num_classes={"semseg": len(CLASS_NAMES)},
            class_names={"semseg": list(CLASS_NAMES)},
            edge_max_dist=EDGE_MAX_DIST),
    )

  def _download_and_prepare(self, dl_manager, download_config) -> None:
    self._source = common.source_for_builder(
        self._manual_path, download_config, self.data_dir_root,
        self._tmp_dir, archives=ARCHIVES, folders=FOLDERS, marker=MARKER)
    try:
      super()._download_and_prepare(dl_manager, download_config)
    finally:
      self._source.close()
      self._source = None

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
    ids = {s: common.read_split(src, f) for s, f in SPLIT_FILES.items()}
    common.check_members(src, ids, self._wanted)
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
      y = targets.resize_target(t, y, hw)
      ex[t] = common.encode_png(y) if t in ("semseg", "edge") else y
    return ex

  def _generate_examples(self, ids: list[str]):
    for image_id in ids:
      yield image_id, self._example(image_id)


def make_builder(config: str = "all", *, data_dir: str | None = None,
                 manual_dir: str | None = None, **overrides) -> Builder:
  """An unprepared builder; overrides: tmp_dir, file_format, version.

  `manual_dir` may name the archive itself, the extracted folder, or a
  folder holding either. Prepare with `builder.download_and_prepare()`.
  """
  overrides.setdefault("file_format", "array_record")
  return Builder(config=config, data_dir=data_dir, manual_dir=manual_dir,
                 **overrides)
