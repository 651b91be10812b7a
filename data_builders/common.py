"""Shared pieces of the real-data builders: archive reading, decoders, base.

The public multi-task archives (NYUDv2.tar.gz, PASCALContext.tar.gz; see
notes/datasets.md) are read member by member, never extracted by member
name (archives.py, whose names are re-exported here: `open_source`,
`TarSource`, `FolderSource`, `UnsafeArchiveError`). `ArchiveBuilder` is the
TFDS builder both real datasets subclass.

Builders must not import the training code; they do use the Task objects
(mtdense_jax/tasks), which own how each label is stored (`label_feature`,
`encode_label`) and which values are acceptable (`label_problem`), so this
file names no task.
"""

from __future__ import annotations

import collections
import io
import logging
import os
import sys
from typing import ClassVar, Iterable, Mapping, Sequence

import cv2
from etils import epath
import numpy as np
from PIL import Image
import scipy.io
import tensorflow_datasets as tfds

# Re-exported: builders and tests use them as common.<name>.
from data_builders.archives import FolderSource  # pylint: disable=unused-import
from data_builders.archives import open_source
from data_builders.archives import Source
from data_builders.archives import TarSource  # pylint: disable=unused-import
from data_builders.archives import UnsafeArchiveError  # noqa: F401
from mtdense_jax.tasks import base as task_base

log = logging.getLogger(__name__)


class CorruptMemberError(ValueError):
  """A member exists but cannot be decoded into its target (or its values
  are not acceptable for its task); the message is one line."""


def read_split(source: Source, rel: str) -> list[str]:
  """Image ids of a split file: stripped, blank lines skipped, unique."""
  if not source.has(rel):
    raise FileNotFoundError(f"split file {rel} missing in {source.description}")
  ids = [s.strip() for s in source.read(rel).decode().splitlines()]
  ids = [s for s in ids if s]
  dup = sorted(k for k, n in collections.Counter(ids).items() if n > 1)
  if dup:
    raise ValueError(f"{rel} lists image ids twice: {dup[:5]}")
  return ids


def first_present(source: Source, stem: str,
                  exts: tuple[str, ...]) -> str | None:
  """`stem + ext` for the first ext present in the source, else None."""
  for ext in exts:
    if source.has(stem + ext):
      return stem + ext
  return None


# ----------------------------------------------------------------- decoding


def decode_image_array(data: bytes) -> np.ndarray:
  """PIL decode as the reference loaders do (`np.array(Image.open(f))`)."""
  with Image.open(io.BytesIO(data)) as im:
    return np.array(im)


def rgb_image_bytes(data: bytes) -> tuple[bytes, tuple[int, int]]:
  """Validates an image by decoding it fully; keeps the bytes if RGB.

  Returns the bytes to store and (H, W). Non-RGB files (grey, palette,
  RGBA) are converted to RGB like the loaders' `.convert('RGB')` and
  re-encoded as PNG, the only case where the original bytes are not kept.
  """
  with Image.open(io.BytesIO(data)) as im:
    im.load()
    size = (im.height, im.width)
    if im.mode == "RGB" and im.format in ("JPEG", "PNG"):
      return data, size
    return encode_png(np.asarray(im.convert("RGB"))), size


def encode_png(arr: np.ndarray) -> bytes:
  """uint8 (H, W), (H, W, 1) or (H, W, 3) -> PNG bytes (PIL, no TF)."""
  arr = np.asarray(arr)
  if arr.dtype != np.uint8:
    raise TypeError(f"encode_png wants uint8, got {arr.dtype}")
  if arr.ndim == 3 and arr.shape[-1] == 1:
    arr = arr[..., 0]
  buf = io.BytesIO()
  Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
  return buf.getvalue()


def load_npy(data: bytes) -> np.ndarray:
  return np.load(io.BytesIO(data), allow_pickle=False)


def load_mat(data: bytes) -> dict:
  return scipy.io.loadmat(io.BytesIO(data))


def resize_to(arr: np.ndarray, hw: tuple[int, int], *,
              cubic: bool = False) -> np.ndarray:
  """cv2.resize to (H, W) as the loaders do when a label's size differs."""
  if tuple(arr.shape[:2]) == tuple(hw):
    return arr
  interp = cv2.INTER_CUBIC if cubic else cv2.INTER_NEAREST
  out = cv2.resize(arr, (hw[1], hw[0]), interpolation=interp)
  if arr.ndim == 3 and out.ndim == 2:
    out = out[..., None]
  return out


def binary_uint8(x: np.ndarray, what: str) -> np.ndarray:
  """A {0, 1} map as uint8 (H, W, 1); anything else is an error."""
  x = np.asarray(x)
  if x.ndim == 3 and x.shape[-1] == 1:
    x = x[..., 0]
  if x.ndim != 2 or not np.isin(x, (0, 1)).all():
    raise CorruptMemberError(f"{what}: expected a 2-D {{0, 1}} map, got "
                             f"shape {x.shape}, values {np.unique(x)[:6]}")
  return x.astype(np.uint8)[..., None]


def read_member(source: Source, rel: str, image_id: str) -> bytes:
  """Bytes of a member; a missing one names the file and the image id."""
  try:
    return source.read(rel)
  except (FileNotFoundError, KeyError) as e:
    raise FileNotFoundError(
        f"{rel} (image id {image_id}) is missing in {source.description}"
    ) from e


def _one_line(text: str, limit: int = 300) -> str:
  text = " ".join(str(text).split())
  return text if len(text) <= limit else text[:limit - 3] + "..."


def decode_or_raise(rel: str, image_id: str, fn, *args):
  """Runs a decoder; any failure names the member and the image id."""
  try:
    return fn(*args)
  except Exception as e:  # pylint: disable=broad-except
    raise CorruptMemberError(_one_line(
        f"{rel} (image id {image_id}) is corrupt or unreadable: "
        f"{type(e).__name__}: {e}")) from e


def check_label(task: task_base.Task, y: np.ndarray, rel: str,
                image_id: str, where: str = "") -> np.ndarray:
  """Refuses a decoded label whose values its task does not accept.

  The range belongs to the task (`Task.label_problem`): NaN, inf and
  out-of-range values stop the build with one line naming the member and
  the image id, as a corrupt member does.
  """
  problem = task.label_problem(y)
  if problem:
    src = f" in {where}" if where else ""
    raise CorruptMemberError(_one_line(
        f"{rel} (image id {image_id}){src}: {problem}. Nothing was written; "
        "fix or remove this member."))
  return y


def check_members(source: Source, split_ids: dict[str, list[str]],
                  wanted) -> None:
  """Fails before writing anything if a split names a missing member.

  `wanted(image_id)` yields (what, rel or None) pairs; None = not found.
  """
  missing = []
  for split, ids in split_ids.items():
    for image_id in ids:
      for what, rel in wanted(image_id):
        if rel is None:
          missing.append(f"{what} for image id {image_id} (split {split})")
  if missing:
    more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
    raise FileNotFoundError(
        f"{source.description}: {len(missing)} members named by the split "
        f"files are missing, e.g. {'; '.join(missing[:10])}{more}. "
        "Nothing was written.")


def source_for_builder(manual_path: str | None, download_config,
                       data_dir_root, tmp_dir: str | None, **kw) -> Source:
  """Opens the input named by make_builder's manual_dir or TFDS's manual dir.

  A compressed tarball is decompressed into `tmp_dir`, by default
  `<data_dir>/downloads/tmp` (beside the data, not in a small /tmp).
  """
  where = (manual_path or download_config.manual_dir
           or os.path.join(os.fspath(data_dir_root), "downloads", "manual"))
  if tmp_dir is None:
    tmp_dir = os.path.join(os.fspath(data_dir_root), "downloads", "tmp")
    os.makedirs(tmp_dir, exist_ok=True)
  return open_source(os.fspath(where), tmp_dir=tmp_dir, **kw)


# ------------------------------------------------------------------ builders

def label_tasks(names: Sequence[str],
                class_names: Mapping[str, Sequence[str]]
                ) -> dict[str, task_base.Task]:
  """The Task objects of a dataset's tasks, sized by its class lists."""
  num_classes = {t: len(n) for t, n in class_names.items()}
  tasks = task_base.build_all(list(names), num_classes=num_classes)
  return {t.name: t for t in tasks}


def task_features(tasks: Iterable[task_base.Task]
                  ) -> tfds.features.FeaturesDict:
  """The feature spec of the contract: each task says how it is stored."""
  spec = {
      "image": tfds.features.Image(shape=(None, None, 3)),
      "id": tfds.features.Text(),
      "orig_size": tfds.features.Tensor(shape=(2,), dtype=np.int32),
  }
  for t in tasks:
    spec[t.name] = t.label_feature()
  return tfds.features.FeaturesDict(spec)


def encode_feature(task: task_base.Task, y: np.ndarray) -> np.ndarray | bytes:
  """A decoded target as `task_features` stores it."""
  return task.encode_label(y)


class ArchiveBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """What the archive builders share: finding and closing the input.

  A subclass sets where its input is (`ARCHIVES`, `FOLDERS`, `MARKER`,
  `SPLIT_FILES`) and what it holds (`TASK_CLASS_NAMES`, `EDGE_MAX_DIST`), and
  implements `_split_generators` and `_example(image_id)`. Its config has
  `tasks`; its module docstring is the dataset description.
  """

  ARCHIVES: ClassVar[tuple[str, ...]]
  FOLDERS: ClassVar[tuple[str, ...]]
  MARKER: ClassVar[str]
  SPLIT_FILES: ClassVar[Mapping[str, str]]
  # Task -> its class names, in label order (the metadata's num_classes).
  TASK_CLASS_NAMES: ClassVar[Mapping[str, Sequence[str]]]
  EDGE_MAX_DIST: ClassVar[float]

  def __init__(self, *, manual_dir: str | None = None,
               tmp_dir: str | None = None, **kwargs) -> None:
    self._manual_path = manual_dir
    self._tmp_dir = tmp_dir
    self._source: Source | None = None
    super().__init__(**kwargs)
    # Kept for TFDS's pickling, which re-runs __init__ from this dict.
    self._original_state.update(dict(file_format=kwargs.get("file_format"),
                                     manual_dir=manual_dir, tmp_dir=tmp_dir))

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS's default lookup imports the optional `importlib_resources`.
    return epath.Path(sys.modules[cls.__module__].__file__)

  @property
  def tasks(self) -> tuple[str, ...]:
    return tuple(self.builder_config.tasks)

  @property
  def label_tasks(self) -> dict[str, task_base.Task]:
    """Task objects of `tasks`: storage and value checks of each label."""
    if getattr(self, "_label_tasks", None) is None:
      self._label_tasks = label_tasks(self.tasks, self.TASK_CLASS_NAMES)
    return self._label_tasks

  def _store(self, name: str, y: np.ndarray, rel: str, image_id: str,
             resize) -> np.ndarray | bytes:
    """Checks a decoded label, resizes it (`resize(y)`) and encodes it."""
    task = self.label_tasks[name]
    check_label(task, y, rel, image_id, self._source.description)
    return task.encode_label(resize(y))

  def _info(self) -> tfds.core.DatasetInfo:
    names = self.TASK_CLASS_NAMES
    return tfds.core.DatasetInfo(
        builder=self,
        description=sys.modules[type(self).__module__].__doc__,
        features=task_features(self.label_tasks.values()),
        metadata=tfds.core.MetadataDict(
            tasks=list(self.tasks),
            num_classes={t: len(n) for t, n in names.items()},
            class_names={t: list(n) for t, n in names.items()},
            edge_max_dist=self.EDGE_MAX_DIST),
    )

  def _download_and_prepare(self, dl_manager, download_config) -> None:
    self._source = source_for_builder(
        self._manual_path, download_config, self.data_dir_root,
        self._tmp_dir, archives=self.ARCHIVES, folders=self.FOLDERS,
        marker=self.MARKER)
    try:
      super()._download_and_prepare(dl_manager, download_config)
    finally:
      self._source.close()
      self._source = None

  def _wanted(self, image_id: str):
    """(what, rel or None) for every member an example needs."""
    raise NotImplementedError

  def _split_ids(self) -> dict[str, list[str]]:
    """Image ids per split, once every member they need is known present."""
    ids = {s: read_split(self._source, f) for s, f in self.SPLIT_FILES.items()}
    check_members(self._source, ids, self._wanted)
    return ids

  def _example(self, image_id: str) -> dict:
    raise NotImplementedError

  def _generate_examples(self, ids: list[str]):
    for image_id in ids:
      yield image_id, self._example(image_id)


def make_archive_builder(cls: type[ArchiveBuilder], config: str, *,
                         data_dir: str | None, manual_dir: str | None,
                         **overrides) -> ArchiveBuilder:
  """The body of each package's `make_builder`: array_record by default.

  `manual_dir` may name the archive itself, the extracted folder, or a
  folder holding either. Prepare with `builder.download_and_prepare()`.
  """
  overrides.setdefault("file_format", "array_record")
  return cls(config=config, data_dir=data_dir, manual_dir=manual_dir,
             **overrides)
