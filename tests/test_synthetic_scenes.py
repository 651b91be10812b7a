"""Tests of the synthetic indoor-scene TFDS builder (data_builders/
synthetic_scenes): determinism, features, label ranges, geometric
consistency of depth and normals, and caching of overridden configs."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from data_builders import synthetic_scenes
from data_builders.synthetic_scenes import builder as builder_lib
from data_builders.synthetic_scenes import scene as scene_lib

SMALL = dict(height=32, width=40, num_train=6, num_validation=3)
NUM_CLASSES = len(scene_lib.CLASS_NAMES)
PERSON = scene_lib.CLASS_NAMES.index("person")
ROOM_PLANES = 6  # instance ids 0..5: floor, ceiling and four walls


def _prepare(config: str, data_dir, **overrides):
  b = synthetic_scenes.make_builder(config, data_dir=str(data_dir),
                                    **{**SMALL, **overrides})
  b.download_and_prepare(file_format="array_record")
  return b


def _examples(b, split: str) -> list[dict[str, np.ndarray]]:
  src = b.as_data_source(split)
  return [src[i] for i in range(len(src))]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """Both configs, prepared once at a tiny size."""
  root = tmp_path_factory.mktemp("scenes")
  return {c: _prepare(c, root) for c in ("nyud_like", "pascal_like")}


def _changes(label: np.ndarray) -> np.ndarray:
  """1 where a pixel differs from its right or lower neighbour."""
  out = np.zeros(label.shape[:2], bool)
  out[:, :-1] |= np.any(label[:, :-1] != label[:, 1:], axis=-1)
  out[:-1, :] |= np.any(label[:-1, :] != label[1:, :], axis=-1)
  return out


def test_deterministic_across_data_dirs(built, tmp_path):
  again = _prepare("nyud_like", tmp_path)
  first = built["nyud_like"]
  for split in ("train", "validation"):
    for a, b in zip(_examples(first, split), _examples(again, split),
                    strict=True):
      assert a.keys() == b.keys()
      for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  for f in pathlib.Path(first.data_dir).glob("*.array_record*"):
    assert f.read_bytes() == (pathlib.Path(again.data_dir) / f.name
                              ).read_bytes(), f.name


def test_examples_match_renderer_regardless_of_order(built):
  """Example i is a function of (seed, split, i) alone."""
  b = built["pascal_like"]
  cfg = b.builder_config
  ex = _examples(b, "validation")
  for i in (2, 0):  # out of generation order
    ref = builder_lib.render_example(cfg, "validation", i)
    np.testing.assert_array_equal(ex[i]["image"], ref["image"])
    np.testing.assert_array_equal(ex[i]["normals"], ref["normals"])
    np.testing.assert_array_equal(ex[i]["human_parts"][..., 0],
                                  ref["human_parts"])
  other = builder_lib.render_example(cfg, "train", 2)
  assert not np.array_equal(other["image"], ex[2]["image"])


@pytest.mark.parametrize("config,tasks", [
    ("nyud_like", ("semseg", "depth", "normals", "edge")),
    ("pascal_like", ("semseg", "human_parts", "sal", "normals", "edge")),
])
def test_features_and_metadata(built, config, tasks):
  b = built[config]
  h, w = SMALL["height"], SMALL["width"]
  meta = b.info.metadata
  assert tuple(meta["tasks"]) == tasks
  assert meta["num_classes"]["semseg"] == NUM_CLASSES
  assert len(meta["class_names"]["semseg"]) == NUM_CLASSES
  assert meta["edge_max_dist"] == pytest.approx(0.011)
  if "human_parts" in tasks:
    assert meta["num_classes"]["human_parts"] == 7
    assert len(meta["class_names"]["human_parts"]) == 7
  else:
    assert "human_parts" not in meta["num_classes"]
  assert len(b.as_data_source("train")) == SMALL["num_train"]
  assert len(b.as_data_source("validation")) == SMALL["num_validation"]
  ex = b.as_data_source("train")[1]
  assert set(ex) == {"image", "id", "orig_size", *tasks}
  assert ex["id"] == b"train_000001"
  assert ex["image"].shape == (h, w, 3) and ex["image"].dtype == np.uint8
  np.testing.assert_array_equal(ex["orig_size"], [h, w])
  assert ex["orig_size"].dtype == np.int32
  for task in set(tasks) & {"semseg", "human_parts", "sal", "edge"}:
    assert ex[task].shape == (h, w, 1) and ex[task].dtype == np.uint8, task
  if "depth" in tasks:
    assert ex["depth"].shape == (h, w, 1)
    assert ex["depth"].dtype == np.float32
  assert ex["normals"].shape == (h, w, 3)
  assert ex["normals"].dtype == np.float32


def test_label_ranges(built):
  nyud = _examples(built["nyud_like"], "train")
  pascal = _examples(built["pascal_like"], "train")
  for ex in nyud + pascal:
    assert ex["semseg"].max() < NUM_CLASSES  # every pixel sees a surface
    assert set(np.unique(ex["edge"])) <= {0, 1}
    assert 0 < ex["edge"].mean() < 0.3  # thin boundaries, not regions
    norm = np.linalg.norm(ex["normals"], axis=-1)
    valid = norm > 0
    assert valid.mean() > 0.9
    np.testing.assert_allclose(norm[valid], 1.0, atol=1e-5)
  for ex in nyud:
    depth = ex["depth"][..., 0]
    valid = depth > 0
    assert valid.mean() > 0.9
    # Room sides are at most 7 m, height 3.2 m: z-depth < the diagonal.
    assert depth.max() < np.sqrt(7.0**2 * 2 + 3.2**2)
    np.testing.assert_array_equal(valid, np.any(ex["normals"] != 0, -1))
  for ex in pascal:
    assert set(np.unique(ex["sal"])) <= {0, 1}
    assert ex["human_parts"].max() <= 6


def test_saliency_and_parts_follow_objects(built):
  exs = (_examples(built["pascal_like"], "train")
         + _examples(built["pascal_like"], "validation"))
  for ex in exs:
    objects = ex["semseg"] >= scene_lib.NUM_ROOM_CLASSES
    np.testing.assert_array_equal(ex["sal"].astype(bool), objects)
    np.testing.assert_array_equal(ex["human_parts"] > 0,
                                  ex["semseg"] == PERSON)
  assert any(ex["sal"].any() for ex in exs)
  assert any(ex["human_parts"].any() for ex in exs)


def test_edges_are_label_changes(built):
  for ex in _examples(built["nyud_like"], "train"):
    edge = ex["edge"][..., 0].astype(bool)
    # Every semantic change is a boundary ...
    assert not np.any(_changes(ex["semseg"]) & ~edge)
    # ... and boundaries separate instances, which differ in class, surface
    # orientation or depth: almost every edge pixel shows such a change.
    depth = ex["depth"][..., 0]
    rel = np.zeros_like(edge)
    rel[:, :-1] |= np.abs(depth[:, :-1] - depth[:, 1:]) > 0.02 * depth[:, 1:]
    rel[:-1, :] |= np.abs(depth[:-1] - depth[1:]) > 0.02 * depth[1:]
    seen = (_changes(ex["semseg"]) | _changes(np.round(ex["normals"], 3))
            | rel)
    assert (seen & edge).sum() >= 0.95 * edge.sum()


def test_renderer_edges_match_instances():
  cfg = builder_lib.derive_config("pascal_like", height=24, width=30)
  out = builder_lib.render_example(cfg, "train", 0)
  np.testing.assert_array_equal(out["edge"].astype(bool),
                                _changes(out["instance"][..., None]))


def _normals_from_depth(depth: np.ndarray, focal: float, cx: float,
                        cy: float) -> np.ndarray:
  """Normals (x right, y up, z to camera) from back-projected depth."""
  h, w = depth.shape
  v, u = np.mgrid[0:h, 0:w] + 0.5
  # Back-project in the OpenCV frame, then flip y and z to the convention.
  pts = np.stack([(u - cx) / focal * depth, -(v - cy) / focal * depth,
                  -depth], axis=-1).astype(np.float64)
  right = pts[:-1, 1:] - pts[:-1, :-1]
  down = pts[1:, :-1] - pts[:-1, :-1]
  n = np.cross(down, right)
  return n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)


@pytest.mark.parametrize("index", range(4))
def test_normals_agree_with_depth_on_planes(index):
  cfg = builder_lib.derive_config("nyud_like", height=48, width=64)
  out = builder_lib.render_example(cfg, "train", index)
  depth, inst = out["depth"].astype(np.float64), out["instance"]
  n_fd = _normals_from_depth(depth, *out["intrinsics"])
  # Pixels whose right and lower neighbours lie on the same room plane.
  same = ((inst[:-1, :-1] == inst[:-1, 1:]) & (inst[:-1, :-1] == inst[1:, :-1])
          & (inst[:-1, :-1] < ROOM_PLANES) & (depth[:-1, :-1] > 0)
          & (depth[:-1, 1:] > 0) & (depth[1:, :-1] > 0))
  assert same.sum() > 100
  cos = np.sum(n_fd * out["normals"][:-1, :-1], axis=-1)[same]
  angles = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
  # Exact planes: only float32 depth rounding separates the two.
  assert angles.mean() < 1.0, angles.mean()
  assert np.percentile(angles, 99) < 5.0


def test_normals_face_the_camera():
  cfg = builder_lib.derive_config("pascal_like", height=40, width=48)
  out = builder_lib.render_example(cfg, "validation", 1)
  focal, cx, cy = out["intrinsics"]
  v, u = np.mgrid[0:40, 0:48] + 0.5
  # Viewing rays in the (x right, y up, z to camera) frame.
  rays = np.stack([(u - cx) / focal, -(v - cy) / focal, -np.ones_like(u)], -1)
  dots = np.sum(rays * out["normals"], axis=-1)
  valid = out["depth"] > 0
  assert np.all(dots[valid] < 0)


def test_registered_as_dataset_plugin():
  from mtdense_jax import registry  # pylint: disable=g-import-not-at-top
  module = registry.lookup("dataset", "synthetic_scenes")
  assert module.Builder is synthetic_scenes.Builder
  b = module.make_builder("pascal_like", data_dir="/nonexistent", height=8)
  assert b.builder_config.height == 8 and b.name == "synthetic_scenes"


def test_config_names_from_overrides():
  base = builder_lib.derive_config("nyud_like")
  assert base.name == "nyud_like"
  assert builder_lib.derive_config("nyud_like", height=96).name == "nyud_like"
  # Strings (from a command line) are converted to the declared types.
  assert builder_lib.derive_config("nyud_like", height="96").name == (
      "nyud_like")
  assert builder_lib.derive_config("nyud_like", height="32").height == 32
  a = builder_lib.derive_config("nyud_like", height=32, seed=1)
  b = builder_lib.derive_config("nyud_like", seed=1, height=32)
  c = builder_lib.derive_config("nyud_like", height=32, seed=2)
  assert a.name == b.name != c.name
  assert a.name.startswith("nyud_like_") and (a.height, a.seed) == (32, 1)
  with pytest.raises(ValueError, match="Unknown overrides"):
    builder_lib.derive_config("nyud_like", colour="red")
  with pytest.raises(ValueError, match="Unknown config"):
    builder_lib.derive_config("cityscapes_like")


def test_second_builder_reuses_cache(built, monkeypatch):
  first = built["nyud_like"]
  stamps = {f: f.stat().st_mtime_ns
            for f in pathlib.Path(first.data_dir).iterdir()}

  def fail(*args, **kwargs):
    raise AssertionError("the cached dataset was regenerated")

  monkeypatch.setattr(builder_lib, "render_example", fail)
  again = synthetic_scenes.make_builder(
      "nyud_like", data_dir=str(pathlib.Path(first.data_dir).parents[2]),
      **SMALL)
  assert again.data_dir == first.data_dir
  again.download_and_prepare(file_format="array_record")
  assert {f: f.stat().st_mtime_ns for f in stamps} == stamps
  np.testing.assert_array_equal(again.as_data_source("train")[0]["depth"],
                                first.as_data_source("train")[0]["depth"])
