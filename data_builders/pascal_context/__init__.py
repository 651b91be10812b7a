"""TFDS builder for PASCAL-Context (multi-task) from PASCALContext.tar.gz.

Input: `PASCALContext.tar.gz` (or `PASCAL_MT.tgz`), a plain `.tar`, or the
extracted folder (holding `ImageSets/Context/train.txt`), found in the
`manual_dir` given to `make_builder` or else in the TFDS manual directory
(`<data_dir>/downloads/manual`); nothing is downloaded. Targets follow the
reference loader (see `targets.py`). Splits: train = ImageSets/Context/
train.txt, validation = val.txt. JPEGs are stored as their original bytes.

Class lists for the distilled-normals mask (`nyu_classes.json`,
`context_classes.json`) are read at build time from, in order: the
`db_info_dir` override, the `MTDENSE_PASCAL_DB_INFO` environment variable,
`<repo>/../shared/data/pascal_context_db_info`, and finally `db_info/`,
`pascal_context_db_info/` or the root of the archive itself.

With the edge task, each example also holds `labelmap`: the 459-class
context LabelMap itself (uint16, at the image size). It is not a training
target but the ground truth of SEISM's PASCAL-Context boundary benchmark,
which runs seg2bmap on it (evaluators/boundary.py, gt_mode
"segmentation", config eval.boundary.gt_key="labelmap"); the `edge`
target (thinned Laplacian) cannot stand in for it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from data_builders import common
from data_builders.pascal_context import targets

log = logging.getLogger(__name__)

DB_INFO_FILES = ("nyu_classes.json", "context_classes.json")
LABELMAP = "labelmap"  # the eval-only feature (module doc)
DEFAULT_DB_INFO = (pathlib.Path(__file__).resolve().parents[2].parent
                   / "shared" / "data" / "pascal_context_db_info")
_ARCHIVE_DB_INFO = ("db_info", "pascal_context_db_info", "")


@dataclasses.dataclass(kw_only=True)
class PascalConfig(tfds.core.BuilderConfig):
  tasks: tuple[str, ...] = ("semseg", "human_parts", "normals", "sal", "edge")


class Builder(common.ArchiveBuilder, skip_registration=True):
  """PASCAL-Context: semseg 21, human parts 7, normals, saliency, edges."""

  name = "pascal_context"
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "From the ATRC/InvPT or MTL-PyTorch archive.",
                   "1.1.0": "labelmap (the boundary benchmark's gt) stored "
                            "with the edge task."}
  BUILDER_CONFIGS = [
      PascalConfig(name="all",
                   description="semseg, human_parts, normals, sal, edge"),
      PascalConfig(name="mtcp", description="semseg, human_parts, sal",
                   tasks=("semseg", "human_parts", "sal")),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "all"
  ARCHIVES = ("PASCALContext.tar.gz", "PASCAL_MT.tgz", "PASCALContext.tar",
              "PASCAL_MT.tar")
  FOLDERS = ("PASCALContext", "PASCAL_MT")
  MARKER = "ImageSets/Context/train.txt"
  SPLIT_FILES = {"train": "ImageSets/Context/train.txt",
                 "validation": "ImageSets/Context/val.txt"}
  TASK_CLASS_NAMES = {"semseg": targets.VOC_NAMES,
                      "human_parts": targets.HUMAN_PART_NAMES}
  EDGE_MAX_DIST = 0.0075
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Place PASCALContext.tar.gz (InvPT/ATRC release) or PASCAL_MT.tgz, or "
      "the extracted PASCALContext/ folder, in the manual directory, or pass "
      "manual_dir=<file or folder> to make_builder.")

  def __init__(self, *, db_info_dir: str | None = None, **kwargs) -> None:
    self._db_info_dir = db_info_dir
    self._valid_normals: np.ndarray | None = None
    super().__init__(**kwargs)
    self._original_state["db_info_dir"] = db_info_dir  # for pickling

  @property
  def _keeps_labelmap(self) -> bool:
    return "edge" in self.tasks

  def _info(self) -> tfds.core.DatasetInfo:
    info = super()._info()
    if not self._keeps_labelmap:
      return info
    spec = {k: info.features[k] for k in info.features.keys()}
    spec[LABELMAP] = tfds.features.Tensor(shape=(None, None),
                                          dtype=np.uint16, encoding="zlib")
    return tfds.core.DatasetInfo(
        builder=self, description=info.description,
        features=tfds.features.FeaturesDict(spec), metadata=info.metadata)

  def _db_info(self) -> dict[str, dict]:
    """The two class lists: configured folder first, then the archive."""
    folders = [self._db_info_dir, os.environ.get("MTDENSE_PASCAL_DB_INFO"),
               os.fspath(DEFAULT_DB_INFO)]
    for d in filter(None, folders):
      if all(os.path.isfile(os.path.join(d, f)) for f in DB_INFO_FILES):
        log.info("PASCAL class lists from %s", d)
        return {f: targets.load_json(pathlib.Path(d, f).read_bytes())
                for f in DB_INFO_FILES}
    for sub in _ARCHIVE_DB_INFO:
      rels = [f"{sub}/{f}" if sub else f for f in DB_INFO_FILES]
      if all(self._source.has(r) for r in rels):
        log.info("PASCAL class lists from %s/%s", self._source.description,
                 sub)
        return {f: targets.load_json(self._source.read(r))
                for f, r in zip(DB_INFO_FILES, rels)}
    raise FileNotFoundError(
        f"{' and '.join(DB_INFO_FILES)} not found (needed for the normals "
        f"mask): looked in {[d for d in folders if d]} and in "
        f"{self._source.description}/{{db_info,pascal_context_db_info,}}/; "
        "pass db_info_dir=<folder> to make_builder.")

  def _semseg_rel(self, image_id: str) -> str | None:
    """VOC12 first, then pascal-context, as the loader looks them up."""
    for sub in ("VOC12", "pascal-context"):
      if self._source.has(f"semseg/{sub}/{image_id}.png"):
        return f"semseg/{sub}/{image_id}.png"
    return None

  def _needed(self, image_id: str) -> dict[str, str]:
    """Members an example needs, keyed by what they feed."""
    t, i = self.tasks, image_id
    need = {"image": f"JPEGImages/{i}.jpg"}
    if "semseg" in t:
      need["semseg"] = f"semseg/{{VOC12,pascal-context}}/{i}.png"
    if "human_parts" in t:
      need["human_parts"] = f"human_parts/{i}.mat"
    if "edge" in t or "normals" in t:
      need["labelmap"] = f"pascal-context/trainval/{i}.mat"
    if "normals" in t:
      need["normals"] = f"normals_distill/{i}.png"
    if "sal" in t:
      need["sal"] = f"sal_distill/{i}.png"
    return need

  def _rels(self, image_id: str) -> dict[str, str | None]:
    """The members found for `_needed` (None where absent)."""
    out = {}
    for key, rel in self._needed(image_id).items():
      if key == "semseg":
        out[key] = self._semseg_rel(image_id)
      else:
        out[key] = rel if self._source.has(rel) else None
    return out

  def _wanted(self, image_id: str):
    found = self._rels(image_id)
    for key, rel in self._needed(image_id).items():
      yield rel, found[key]

  def _split_generators(self, dl_manager):
    src = self._source
    ids = self._split_ids()
    if "normals" in self.tasks:
      info = self._db_info()
      self._valid_normals = targets.normals_valid_classes(*info.values())
    log.info("PASCAL-Context from %s: %d train / %d validation ids.",
             src.description, len(ids["train"]), len(ids["validation"]))
    return {s: self._generate_examples(v) for s, v in ids.items()}

  def _decode(self, rels, key, image_id, fn, *args):
    data = common.read_member(self._source, rels[key], image_id)
    return common.decode_or_raise(rels[key], image_id, fn, data, *args)

  def _example(self, image_id: str) -> dict:
    rels = self._rels(image_id)
    image, hw = self._decode(rels, "image", image_id, common.rgb_image_bytes)
    ex = {"image": image, "id": image_id,
          "orig_size": np.asarray(hw, np.int32)}
    dec = lambda d: common.decode_image_array(d)
    mat = lambda d: common.load_mat(d)
    labels = None
    if "labelmap" in rels:
      labels = self._decode(rels, "labelmap", image_id,
                            lambda d: targets.label_map(mat(d)))
    for t in self.tasks:
      if t == "semseg":
        y = self._decode(rels, t, image_id, lambda d: targets.semseg(dec(d)))
      elif t == "sal":
        y = self._decode(rels, t, image_id, lambda d: targets.sal(dec(d)))
      elif t == "human_parts":
        y = self._decode(rels, t, image_id,
                         lambda d: targets.human_parts(mat(d)))
      elif t == "normals":
        y = self._decode(rels, t, image_id, lambda d: targets.normals(
            dec(d), labels, self._valid_normals))
      else:
        y = common.decode_or_raise(rels["labelmap"], image_id, targets.edge,
                                   labels)
      rel = rels["labelmap"] if t == "edge" else rels[t]
      ex[t] = self._store(t, y, rel, image_id,
                          lambda y, t=t: targets.resize_target(t, y, hw))
    if self._keeps_labelmap:
      ex[LABELMAP] = common.decode_or_raise(
          rels["labelmap"], image_id, targets.label_map_u16, labels, hw)
    return ex


def make_builder(config: str = "all", *, data_dir: str | None = None,
                 manual_dir: str | None = None, **overrides) -> Builder:
  """An unprepared PASCAL-Context builder; overrides: db_info_dir, tmp_dir,
  file_format."""
  return common.make_archive_builder(Builder, config, data_dir=data_dir,
                                     manual_dir=manual_dir, **overrides)
