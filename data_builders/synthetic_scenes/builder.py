"""TFDS builder of procedurally generated indoor scenes (no downloads).

The framework's default dataset: every example is ray-cast on the fly by
render.py from a seed derived from (config seed, split, index), so a config
is reproducible byte for byte and independent of generation order. Two
configs imitate the real benchmarks' task sets (../shared/notes/datasets.md):
``nyud_like`` (semseg, depth, normals, edge) and ``pascal_like`` (semseg,
human_parts, sal, normals, edge). Works without TensorFlow: images are given
to TFDS as PNG bytes encoded with PIL, float maps as zlib Tensors.

Labels: semseg classes are scene.CLASS_NAMES (floor, wall, ceiling, then
objects; no ignore pixels); human_parts are the parts of a mannequin
("person") with PASCAL's 6 part ids, 0 elsewhere, so an image without a
visible mannequin is all 0, as in the real data (the input pipeline makes
such maps ignore). Depth, normal-axis and edge conventions: render.py.

Any task can be added with the ``tasks`` override (``builder_kwargs=
{"tasks": ("semseg", "my_pkg.height")}``): the renderer labels the built-in
ones; a task it does not know derives its label from the rendered geometric
buffers (render.BUFFERS) with its ``Task.scene_label``. Each task's own
`label_feature` / `encode_label` store the label and its `label_problem`
checks it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from typing import Any, Iterator

from etils import epath
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from data_builders.synthetic_scenes import render
from data_builders.synthetic_scenes import scene as scene_lib
from mtdense_jax.tasks import base as task_base

SPLITS = ("train", "validation")
# Boundary matching tolerance (fraction of the image diagonal), as NYUD.
EDGE_MAX_DIST = 0.011
OVERRIDABLE = ("height", "width", "num_train", "num_validation", "seed",
               "person_prob", "tasks")
NUM_CLASSES = {"semseg": len(scene_lib.CLASS_NAMES),
               "human_parts": len(scene_lib.PART_NAMES)}


@dataclasses.dataclass(eq=False, kw_only=True)
class SceneConfig(tfds.core.BuilderConfig):
  """A task set plus the size and seed of the generated dataset."""
  tasks: tuple[str, ...] = ()
  height: int = 96
  width: int = 128
  num_train: int = 2000
  num_validation: int = 200
  seed: int = 0
  # Probability that a scene contains a mannequin (the "person" class).
  person_prob: float = 0.5


BUILDER_CONFIGS = (
    SceneConfig(name="nyud_like", tasks=("semseg", "depth", "normals", "edge"),
                person_prob=0.3,
                description="NYUD-v2-like tasks on synthetic rooms."),
    SceneConfig(name="pascal_like",
                tasks=("semseg", "human_parts", "sal", "normals", "edge"),
                person_prob=0.6,
                description="PASCAL-Context-like tasks on synthetic rooms."),
)


def _png(array: np.ndarray) -> io.BytesIO:
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="PNG", compress_level=1)
  buf.seek(0)
  return buf


def label_tasks(config: SceneConfig) -> tuple[task_base.Task, ...]:
  """The Task objects of a config's task entries (names or dotted)."""
  return task_base.build_all(config.tasks, num_classes=NUM_CLASSES)


def task_label(task: task_base.Task, out: dict[str, np.ndarray]
               ) -> np.ndarray:
  """The renderer's own target of `task`, else the task's scene_label."""
  if task.name in out and task.name in render.BUFFERS:
    return out[task.name]
  return task.scene_label(out)


def example_seed(seed: int, split: str, index: int) -> np.random.SeedSequence:
  """The seed of one example: a function of (seed, split, index) only."""
  return np.random.SeedSequence([seed, SPLITS.index(split), index])


def render_example(config: SceneConfig, split: str,
                   index: int) -> dict[str, np.ndarray]:
  """Renders one example of `config` (every target, plus intrinsics)."""
  scene_seq, noise_seq = example_seed(config.seed, split, index).spawn(2)
  scene = scene_lib.sample_scene(np.random.default_rng(scene_seq),
                                 config.person_prob)
  return render.render(scene, config.height, config.width, noise_seq)


class Builder(tfds.core.GeneratorBasedBuilder):
  """Synthetic indoor scenes with dense multi-task labels."""

  name = "synthetic_scenes"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = list(BUILDER_CONFIGS)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS's own lookup of a packaged builder imports the optional
    # `importlib_resources` module, which is not installed here.
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    tasks = label_tasks(cfg)
    feats: dict[str, Any] = {
        "image": tfds.features.Image(shape=(None, None, 3)),
        "id": tfds.features.Text(),
        "orig_size": tfds.features.Tensor(shape=(2,), dtype=np.int32),
    }
    for task in tasks:
      feats[task.name] = task.label_feature()
    names = [t.name for t in tasks]
    num_classes = {"semseg": len(scene_lib.CLASS_NAMES)}
    class_names = {"semseg": list(scene_lib.CLASS_NAMES)}
    if "human_parts" in names:
      num_classes["human_parts"] = len(scene_lib.PART_NAMES)
      class_names["human_parts"] = list(scene_lib.PART_NAMES)
    metadata = tfds.core.MetadataDict(
        tasks=names, num_classes=num_classes,
        class_names=class_names, edge_max_dist=EDGE_MAX_DIST)
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(feats), metadata=metadata,
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    cfg = self.builder_config
    counts = {"train": cfg.num_train, "validation": cfg.num_validation}
    return {s: self._generate_examples(s, counts[s]) for s in SPLITS}

  def _generate_examples(self, split: str,
                         count: int) -> Iterator[tuple[str, dict[str, Any]]]:
    cfg = self.builder_config
    tasks = label_tasks(cfg)
    for index in range(count):
      out = render_example(cfg, split, index)
      key = f"{split}_{index:06d}"
      ex = {"image": _png(out["image"]), "id": key,
            "orig_size": np.array([cfg.height, cfg.width], np.int32)}
      for task in tasks:
        y = task_label(task, out)
        problem = task.label_problem(y)
        if problem:
          raise ValueError(f"synthetic_scenes {cfg.name} example {key}: "
                           f"{problem}.")
        ex[task.name] = task.encode_label(y)
      yield key, ex


def derive_config(name: str, **overrides) -> SceneConfig:
  """The named config with `overrides`; a changed config gets a new name.

  The name carries a short hash of the overrides, so datasets of different
  sizes or seeds are cached in different folders.
  """
  base = Builder.builder_configs.get(name)
  if base is None:
    raise ValueError(f"Unknown config {name!r}; one of "
                     f"{sorted(Builder.builder_configs)}.")
  unknown = set(overrides) - set(OVERRIDABLE)
  if unknown:
    raise ValueError(f"Unknown overrides {sorted(unknown)}; allowed: "
                     f"{OVERRIDABLE}.")
  if isinstance(overrides.get("tasks"), str):  # "semseg,depth"
    overrides["tasks"] = [t.strip() for t in overrides["tasks"].split(",")]
  # Keep the declared types (e.g. for strings from a command line).
  typed = {k: type(getattr(base, k))(v) for k, v in overrides.items()}
  if "tasks" in typed:
    label_tasks(dataclasses.replace(base, tasks=typed["tasks"]))  # checks
  changed = {k: v for k, v in typed.items() if getattr(base, k) != v}
  if not changed:
    return base
  digest = hashlib.sha1(json.dumps(changed, sort_keys=True).encode())
  return dataclasses.replace(base, name=f"{name}_{digest.hexdigest()[:10]}",
                             **changed)


def make_builder(config: str = "nyud_like", *, data_dir: str | None = None,
                 manual_dir: str | None = None,
                 **overrides) -> tfds.core.DatasetBuilder:
  """A (not yet prepared) builder for `config` with size/seed overrides.

  `manual_dir` is accepted for interface parity with the real datasets and
  ignored: nothing is downloaded or read.
  """
  del manual_dir
  return Builder(config=derive_config(config, **overrides),
                 data_dir=data_dir)
