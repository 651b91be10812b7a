"""Per-example transforms: task alignment, flips, depth scale, ignore rules."""

from __future__ import annotations

import numpy as np
import pytest

from mtdense_jax.data import transforms as T
from mtdense_jax.tasks import base

H, W, BLOCK = 32, 48, 8
NAMES = ("semseg", "depth", "normals", "human_parts", "edge", "sal")
TASKS = base.build_all(NAMES, num_classes={"semseg": 24, "human_parts": 7})


def _tasks(*names):
  return tuple(t for t in TASKS if t.name in names)


def _colour(bid):
  """A distinct RGB colour per block id (independent of the label codes)."""
  bid = np.asarray(bid, np.int64)
  return np.stack([bid * 5, 255 - bid * 5, (bid * 37) % 256], -1)


def _theta(bid):
  return 0.3 + 0.05 * np.asarray(bid, np.float64)


def _block_example() -> dict[str, np.ndarray]:
  """Image and every label encode the same 4x4 block id (unique per block)."""
  yy, xx = np.mgrid[:H, :W]
  bid = (yy // BLOCK) * (W // BLOCK) + xx // BLOCK
  th = _theta(bid)
  normals = np.stack([np.cos(th), np.sin(th), np.zeros_like(th)], -1)
  return {
      "image": _colour(bid).astype(np.uint8),
      "id": b"block",
      "orig_size": np.array([H, W], np.int32),
      "semseg": bid[..., None].astype(np.uint8),
      "depth": (bid[..., None] + 1).astype(np.float32),
      "normals": normals.astype(np.float32),
      "human_parts": (bid % 6 + 1)[..., None].astype(np.uint8),
      "edge": (bid % 2)[..., None].astype(np.uint8),
      "sal": ((bid // 2) % 2)[..., None].astype(np.uint8),
  }


def _uniform_3x3(a):
  """True where all 8 neighbours equal the pixel (False on the border)."""
  out = np.zeros(a.shape, bool)
  c = a[1:-1, 1:-1]
  out[1:-1, 1:-1] = np.all(
      [a[1 + i:a.shape[0] - 1 + i, 1 + j:a.shape[1] - 1 + j] == c
       for i in (-1, 0, 1) for j in (-1, 0, 1)], axis=0)
  return out


def _geometric(ex, seed, scale_range, size, flip_p):
  rng = np.random.default_rng(seed)
  ex = T.SelectTasks(TASKS).map(ex)
  ex = T.RandomScale(TASKS, scale_range).random_map(ex, rng)
  ex = T.RandomCrop(TASKS, size).random_map(ex, rng)
  ex = T.RandomHorizontalFlip(TASKS, flip_p).random_map(ex, rng)
  return T.Pad(size, TASKS).map(ex)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("flip_p", [0.0, 1.0])
def test_scale_crop_flip_keep_every_task_aligned(seed, flip_p):
  size = (20, 28)
  out = _geometric(_block_example(), seed, (0.5, 2.0), size, flip_p)
  factor = np.random.default_rng(seed).uniform(0.5, 2.0)  # first draw
  assert out["image"].shape == size + (3,)
  for t in NAMES:
    assert out[t].shape[:2] == size
  pad = out["semseg"][..., 0] == 255
  bid = out["semseg"][..., 0].astype(np.int64)
  # Padding is the same region in every label.
  for t in ("depth", "human_parts", "edge", "sal"):
    np.testing.assert_array_equal(out[t][..., 0] == 255, pad)
  np.testing.assert_array_equal(np.all(out["normals"] == 255, -1), pad)
  np.testing.assert_array_equal(out["image"][pad], 0)
  v = ~pad
  assert v.sum() > 0
  # Every label still encodes the block that semseg says is there.
  np.testing.assert_allclose(out["depth"][v, 0] * factor, bid[v] + 1,
                             rtol=1e-5)
  np.testing.assert_array_equal(out["human_parts"][v, 0], bid[v] % 6 + 1)
  np.testing.assert_array_equal(out["edge"][v, 0], bid[v] % 2)
  np.testing.assert_array_equal(out["sal"][v, 0], (bid[v] // 2) % 2)
  sign = -1.0 if flip_p else 1.0
  th = _theta(bid[v])
  np.testing.assert_allclose(out["normals"][v, 0], sign * np.cos(th),
                             atol=1e-6)
  np.testing.assert_allclose(out["normals"][v, 1], np.sin(th), atol=1e-6)
  # The image is bilinear (labels nearest), so they may disagree next to block
  # borders; away from them the image shows the colour of semseg's block.
  interior = v & _uniform_3x3(bid)
  assert interior.sum() > 0.2 * v.sum()
  close = np.all(np.abs(out["image"][interior] - _colour(bid[interior])) <= 1,
                 -1)
  assert close.mean() > 0.95, close.mean()


def _find_window(big, small):
  """Offsets where `small` occurs in `big` (2-D), or []."""
  hits = []
  for i in range(big.shape[0] - small.shape[0] + 1):
    for j in range(big.shape[1] - small.shape[1] + 1):
      if np.array_equal(big[i:i + small.shape[0], j:j + small.shape[1]],
                        small):
        hits.append((i, j))
  return hits


@pytest.mark.parametrize("flip_p", [0.0, 1.0])
def test_crop_and_flip_without_scaling_are_exact(flip_p):
  ex = _block_example()
  out = _geometric(ex, 7, (1.0, 1.0), (16, 16), flip_p)
  seg = out["semseg"][..., 0]
  window = seg[:, ::-1] if flip_p else seg
  hits = _find_window(ex["semseg"][..., 0], window)
  assert len(hits) == 1
  i, j = hits[0]
  img = ex["image"][i:i + 16, j:j + 16].astype(np.float32)
  np.testing.assert_array_equal(out["image"], img[:, ::-1] if flip_p else img)


def test_flip_twice_is_identity_and_negates_normal_x():
  ex = T.SelectTasks(TASKS).map(_block_example())
  ex["normals"][:3, :5] = 255  # ignored pixels
  once = T.hflip(ex, TASKS)
  twice = T.hflip(once, TASKS)
  for k in ("image",) + NAMES:
    np.testing.assert_array_equal(twice[k], ex[k])
  n, n1 = ex["normals"], once["normals"]
  np.testing.assert_array_equal(n1[..., 0], np.where(
      n[:, ::-1, 0] == 255, 255, -n[:, ::-1, 0]))
  np.testing.assert_array_equal(n1[..., 1:], n[:, ::-1, 1:])
  assert np.all(n1[:3, W - 5:] == 255)


@pytest.mark.parametrize("seed", [0, 5])
def test_depth_divided_by_scale_factor_ignore_kept(seed):
  depth = np.full((H, W, 1), 2.0, np.float32)
  depth[:4] = 0.0
  depth[-4:] = 255.0
  ex = {"image": np.zeros((H, W, 3), np.float32), "depth": depth}
  out = T.RandomScale(_tasks("depth"), (0.5, 2.0)).random_map(
      ex, np.random.default_rng(seed))
  factor = np.random.default_rng(seed).uniform(0.5, 2.0)
  assert out["depth"].shape == (int(H * factor), int(W * factor), 1)
  vals = np.unique(out["depth"])
  assert len(vals) == 3
  np.testing.assert_allclose(vals, [0.0, 2.0 / factor, 255.0], rtol=1e-6)


def test_add_ignore_regions_rules():
  depth = np.array([[0.0, 1.5], [3.0, 0.0]], np.float32)[..., None]
  normals = np.zeros((2, 2, 3), np.float32)
  normals[0, 1] = (0.0, 0.0, 1.0)
  normals[1, 0] = (0.6, -0.8, 0.0)
  parts_none = np.array([[0, 255], [0, 0]], np.uint8)[..., None]
  ex = {"image": np.zeros((2, 2, 3), np.float32), "depth": depth,
        "normals": normals, "human_parts": parts_none}
  ignore = T.AddIgnoreRegions(_tasks("depth", "normals", "human_parts"))
  out = ignore.map(ex)
  np.testing.assert_array_equal(out["depth"][..., 0], [[255, 1.5], [3, 255]])
  np.testing.assert_array_equal(out["normals"][0, 0], [255] * 3)
  np.testing.assert_array_equal(out["normals"][1, 1], [255] * 3)
  np.testing.assert_array_equal(out["normals"][0, 1], [0, 0, 1])
  np.testing.assert_array_equal(out["normals"][1, 0], normals[1, 0])
  assert np.all(out["human_parts"] == 255)
  assert out["human_parts"].dtype == np.uint8
  parts = parts_none.copy()
  parts[1, 1] = 3
  kept = ignore.map({**ex, "human_parts": parts})
  np.testing.assert_array_equal(kept["human_parts"], parts)


def test_pad_is_centred_and_rejects_larger_images():
  ex = {"image": np.ones((3, 4, 3), np.float32),
        "semseg": np.zeros((3, 4, 1), np.uint8)}
  out = T.Pad((6, 8), _tasks("semseg")).map(ex)
  assert out["image"].shape == (6, 8, 3)
  img = np.zeros((6, 8, 3), np.float32)
  img[1:4, 2:6] = 1
  np.testing.assert_array_equal(out["image"], img)
  np.testing.assert_array_equal(out["semseg"][..., 0] == 255, img[..., 0] == 0)
  with pytest.raises(ValueError, match="data.image_size"):
    T.Pad((2, 8), _tasks("semseg")).map(ex)


def _crop_ok(seg):
  labels, counts = np.unique(seg, return_counts=True)
  counts = counts[labels != 255]
  return len(counts) > 1 and counts.max() / counts.sum() < 0.75


def test_cat_max_ratio_redraws_crops():
  # Class 0 on the left 24 columns, 1 on the right: few 16x16 crops qualify.
  seg = np.zeros((16, 48, 1), np.uint8)
  seg[:, 24:] = 1
  ex = {"image": np.zeros((16, 48, 3), np.float32), "semseg": seg}
  rates = {}
  for ratio in (0.75, 1.0):
    crop = T.RandomCrop(_tasks("semseg"), (16, 16), ratio)
    ok = [_crop_ok(crop.random_map(ex, np.random.default_rng(s))["semseg"])
          for s in range(40)]
    rates[ratio] = np.mean(ok)
  # One draw qualifies with p = 7/33; 11 draws with p ~ 0.93.
  assert rates[0.75] > 0.75 and rates[1.0] < 0.45, rates


def test_photometric_changes_only_the_image_deterministically():
  ex = T.SelectTasks(TASKS).map(_block_example())
  pd = T.PhotometricDistortion()
  outs = [pd.random_map(ex, np.random.default_rng(s)) for s in range(6)]
  again = pd.random_map(ex, np.random.default_rng(0))
  np.testing.assert_array_equal(again["image"], outs[0]["image"])
  assert any(not np.array_equal(o["image"], ex["image"]) for o in outs)
  for o in outs:
    assert o["image"].dtype == np.float32
    assert o["image"].min() >= 0 and o["image"].max() <= 255
    for t in NAMES:
      np.testing.assert_array_equal(o[t], ex[t])


def test_normalize_matches_imagenet_statistics():
  img = np.random.default_rng(0).integers(0, 256, (4, 5, 3)).astype(np.uint8)
  out = T.Normalize().map({"image": img})["image"]
  want = (img / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array(
      [0.229, 0.224, 0.225])
  np.testing.assert_allclose(out, want, atol=1e-5)
  assert out.dtype == np.float32


def test_select_tasks_drops_extras_and_reports_missing():
  out = T.SelectTasks(_tasks("semseg", "depth")).map(_block_example())
  assert set(out) == {"image", "semseg", "depth"}
  with pytest.raises(KeyError, match="human_parts"):
    T.SelectTasks(_tasks("human_parts")).map({"image": np.zeros((2, 2, 3))})
