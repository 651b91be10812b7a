"""Input pipeline: batch format, determinism, resume, eval padding, sharding."""

from __future__ import annotations

import grain
import ml_collections
import numpy as np
import pytest

from mtdense_jax.data import pipeline
from mtdense_jax.data import sources
from mtdense_jax.tasks import base

TASKS = base.build_all(("semseg", "depth", "normals"),
                       num_classes={"semseg": 7})
NAMES = tuple(t.name for t in TASKS)
N = 7


def _example(i: int, h: int = 12, w: int = 16) -> dict[str, np.ndarray]:
  """Record i: semseg is i everywhere, so a batch tells which records it has."""
  rng = np.random.default_rng(i)
  normals = rng.normal(size=(h, w, 3)).astype(np.float32)
  normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
  normals[0, 0] = 0.0  # invalid -> 255
  depth = rng.uniform(0.5, 5.0, (h, w, 1)).astype(np.float32)
  depth[-1, -1] = 0.0  # invalid -> 255
  return {
      "image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
      "id": f"img{i}".encode(),
      "orig_size": np.array([h, w], np.int32),
      "semseg": np.full((h, w, 1), i, np.uint8),
      "depth": depth,
      "normals": normals,
  }


SOURCE = [_example(i) for i in range(N)]


def _cfg(**kw) -> ml_collections.ConfigDict:
  cfg = dict(image_size=(12, 16), scale_range=(0.5, 2.0), flip=True,
             photometric=True, cat_max_ratio=0.75, worker_count=0, prefetch=2)
  cfg.update(kw)
  return ml_collections.ConfigDict(cfg)


# Identity augmentation: batches show exactly which records were read.
PLAIN = dict(scale_range=(1.0, 1.0), flip=False, photometric=False)


def _train(cfg=None, seed=0, bs=4, **kw):
  return pipeline.train_dataset(SOURCE, TASKS, cfg or _cfg(),
                                global_batch_size=bs, seed=seed, **kw)


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_train_batch_format():
  batch = next(iter(_train()))
  assert set(batch) == {"image", "valid", *NAMES}
  assert batch["image"].shape == (4, 12, 16, 3)
  assert batch["image"].dtype == np.float32
  assert batch["semseg"].shape == (4, 12, 16, 1)
  assert batch["semseg"].dtype == np.uint8
  assert batch["depth"].shape == (4, 12, 16, 1)
  assert batch["depth"].dtype == np.float32
  assert batch["normals"].shape == (4, 12, 16, 3)
  assert batch["normals"].dtype == np.float32
  assert batch["valid"].dtype == np.bool_ and batch["valid"].all()
  # Labels are a record id or the ignore value; invalid normals are 255.
  assert np.isin(batch["semseg"], list(range(N)) + [255]).all()
  n = batch["normals"]
  ignored = np.all(n == 255, -1)
  np.testing.assert_allclose(np.linalg.norm(n[~ignored], axis=-1), 1,
                             atol=1e-5)


def test_train_is_deterministic_by_seed():
  a = _take(iter(_train(seed=3)), 3)
  b = _take(iter(_train(seed=3)), 3)
  c = _take(iter(_train(seed=4)), 3)
  _assert_batches_equal(a, b)
  assert not all(np.array_equal(x["image"], y["image"])
                 for x, y in zip(a, c))


def test_train_visits_every_record_once_per_epoch():
  it = iter(_train(_cfg(**PLAIN), bs=1))
  ids = [int(b["semseg"][0, 0, 0, 0]) for b in _take(it, 2 * N)]
  assert sorted(ids[:N]) == list(range(N))
  assert sorted(ids[N:]) == list(range(N))
  assert ids[:N] != ids[N:]  # reshuffled each epoch


def test_train_iterator_state_resumes_identically():
  it = iter(_train())
  _take(it, 2)
  state = it.get_state()
  expected = _take(it, 3)
  fresh = iter(_train())
  fresh.set_state(state)
  _assert_batches_equal(_take(fresh, 3), expected)


def test_train_iterator_orbax_checkpoint(tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  it = iter(_train())
  _take(it, 2)
  with ocp.CheckpointManager(tmp_path) as mngr:
    mngr.save(2, args=ocp.args.Composite(
        data=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
    expected = _take(it, 2)
    fresh = iter(_train())
    mngr.restore(2, args=ocp.args.Composite(
        data=grain.checkpoint.CheckpointRestore(fresh)))
  _assert_batches_equal(_take(fresh, 2), expected)


def test_train_process_shards_are_disjoint():
  cfg = _cfg(**PLAIN)
  seen = []
  for p in range(2):
    it = iter(_train(cfg, bs=2, process_index=p, process_count=2))
    ids = {int(b["semseg"][0, 0, 0, 0]) for b in _take(it, N)}
    seen.append(ids)
  assert not seen[0] & seen[1]
  assert seen[0] | seen[1] == set(range(N))


def test_eval_pads_last_batch_with_invalid_examples():
  data = pipeline.eval_dataset(SOURCE, TASKS, _cfg(image_size=(16, 20)),
                               global_batch_size=4)
  batches = list(data)
  assert len(batches) == len(data) == 2 and data.num_examples == N
  valid = np.concatenate([b["valid"] for b in batches])
  np.testing.assert_array_equal(valid, np.arange(8) < N)
  seg = np.concatenate([b["semseg"] for b in batches])
  image = np.concatenate([b["image"] for b in batches])
  assert seg.shape == (8, 16, 20, 1) and image.shape == (8, 16, 20, 3)
  # In order; each real record centred on a 255 / 0 border.
  for i in range(N):
    np.testing.assert_array_equal(seg[i, 2:14, 2:18], i)
    assert np.all(seg[i, :2] == 255) and np.all(seg[i, :, :2] == 255)
    assert np.all(image[i, :2] == 0)
  assert np.all(seg[N:] == 255) and np.all(image[N:] == 0)
  for t in ("depth", "normals"):
    assert np.all(np.concatenate([b[t] for b in batches])[N:] == 255)
  # Eval does no augmentation: the image is just normalised.
  src = SOURCE[3]["image"] / 255.0
  want = (src - np.array([0.485, 0.456, 0.406])) / [0.229, 0.224, 0.225]
  np.testing.assert_allclose(image[3, 2:14, 2:18], want, atol=1e-5)


def test_eval_keeps_named_features_for_evaluators():
  """A boundary gt stored beside the labels (e.g. PASCAL's LabelMap) rides
  through eval, padded like the image, and a missing one is named."""
  src = [dict(s, labelmap=np.full((12, 16), 300 + i, np.uint16))
         for i, s in enumerate(SOURCE)]
  data = pipeline.eval_dataset(src, TASKS, _cfg(image_size=(16, 20)),
                               global_batch_size=4, keep=("labelmap",))
  lm = np.concatenate([b["labelmap"] for b in data])
  assert lm.shape == (8, 16, 20, 1) and lm.dtype == np.uint16
  for i in range(N):
    assert np.all(lm[i, 2:14, 2:18] == 300 + i) and np.all(lm[i, :2] == 0)
  missing = pipeline.eval_dataset(SOURCE, TASKS, _cfg(image_size=(16, 20)),
                                  global_batch_size=4, keep=("labelmap",))
  with pytest.raises(KeyError, match="labelmap"):
    next(iter(missing))


def test_eval_shards_are_disjoint_and_equally_long():
  per_process = []
  for p in range(2):
    data = pipeline.eval_dataset(SOURCE, TASKS, _cfg(), global_batch_size=4,
                                 process_index=p, process_count=2)
    batches = list(data)
    assert all(b["image"].shape[0] == 2 for b in batches)
    per_process.append(batches)
  assert len(per_process[0]) == len(per_process[1]) == 2
  ids = [
      [int(b["semseg"][j, 0, 0, 0]) for b in batches
       for j in range(2) if b["valid"][j]]
      for batches in per_process]
  assert not set(ids[0]) & set(ids[1])
  assert sorted(ids[0] + ids[1]) == list(range(N))


def test_eval_rejects_images_larger_than_image_size():
  data = pipeline.eval_dataset(SOURCE, TASKS, _cfg(image_size=(8, 16)),
                               global_batch_size=2)
  with pytest.raises(ValueError, match="raise data.image_size"):
    next(iter(data))


def test_batch_size_must_divide_over_processes():
  with pytest.raises(ValueError, match="divisible"):
    _train(bs=3, process_index=0, process_count=2)


def test_missing_task_names_task_and_dataset_tasks():
  meta = {"tasks": ["semseg", "depth"], "num_classes": {"semseg": 40}}
  sources.check_tasks(meta, ["depth"], "nyud_v2")
  with pytest.raises(ValueError, match=r"sal.*nyud_v2.*semseg.*depth"):
    sources.check_tasks(meta, ["semseg", "sal"], "nyud_v2")


@pytest.mark.slow
def test_train_with_worker_processes_resumes():
  cfg = _cfg()
  it = iter(_train(cfg, worker_count=1))
  _take(it, 1)
  state = it.get_state()
  expected = _take(it, 2)
  fresh = iter(_train(cfg, worker_count=1))
  fresh.set_state(state)
  _assert_batches_equal(_take(fresh, 2), expected)


def test_synthetic_builder_end_to_end(tmp_path):
  """make_train_iter / make_eval_iter on a tiny synthetic TFDS dataset."""
  pytest.importorskip("data_builders.synthetic_scenes")
  cfg = ml_collections.ConfigDict(dict(
      name="synthetic_scenes", config="pascal_like", data_dir=str(tmp_path),
      manual_dir=None,
      builder_kwargs=dict(height=32, width=48, num_train=4, num_validation=3,
                          seed=0),
      train_split="train", eval_split="validation", image_size=(32, 48),
      scale_range=(0.5, 2.0), flip=True, photometric=True, cat_max_ratio=0.75,
      worker_count=0, prefetch=2))
  builder = sources.get_builder(cfg)
  sources.prepare(builder)
  meta = sources.dataset_meta(builder)
  tasks = list(meta["tasks"])
  assert "semseg" in tasks and meta["num_classes"]["semseg"] > 1
  assert pipeline.num_examples(cfg, "validation") == 3
  batch = next(pipeline.make_train_iter(cfg, tasks, global_batch_size=2,
                                        seed=0))
  assert batch["image"].shape == (2, 32, 48, 3)
  assert batch["valid"].all()
  for t in tasks:
    assert batch[t].shape[:3] == (2, 32, 48)
  data = pipeline.make_eval_iter(cfg, tasks, global_batch_size=2)
  batches = list(data)
  assert len(batches) == 2
  np.testing.assert_array_equal(
      np.concatenate([b["valid"] for b in batches]), [1, 1, 1, 0])
  with pytest.raises(ValueError, match="not_a_task"):
    pipeline.make_train_iter(cfg, tasks + ["not_a_task"],
                             global_batch_size=2, seed=0)


def test_task_options_reach_the_pipeline():
  """TaskPrompter depth (invalid_value=-1): padding, stored 0 and padded
  examples become -1; the other tasks keep 255."""
  from mtdense_jax.tasks import depth  # pylint: disable=g-import-not-at-top
  tasks = (TASKS[0], depth.Task(invalid_value=-1))
  data = pipeline.eval_dataset(SOURCE, tasks, _cfg(image_size=(16, 20)),
                               global_batch_size=4)
  d = np.concatenate([b["depth"] for b in data])[..., 0]
  seg = np.concatenate([b["semseg"] for b in data])[..., 0]
  assert not (d == 255).any()
  np.testing.assert_array_equal(d[:, :2], -1)  # padding
  np.testing.assert_array_equal(d[N:], -1)  # padded examples
  assert d[0, 13, 17] == -1  # stored 0 (last pixel of the 12x16 record)
  np.testing.assert_array_equal(d[0, 2:14, 2:18][:-1],
                                SOURCE[0]["depth"][:-1, :, 0])
  assert np.all(seg[:, :2] == 255)
