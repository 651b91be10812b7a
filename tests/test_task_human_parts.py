"""human_parts task: interface, CE loss, no-person rule and mIoU goldens.

Goldens: ../shared/golden/losses_human_parts (InvPT CrossEntropyLoss) and
metrics_human_parts (InvPT / MTL-PyTorch meters, MTL-PyTorch
eval_human_parts).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtdense_jax import registry
from mtdense_jax.tasks import base
from mtdense_jax.tasks import common
from mtdense_jax.tasks import human_parts

# Metric tolerance from the metrics_* sidecar notes; the loss sidecar gives
# none (float32 sums agree with torch to ~1e-7 relative).
METRIC_TOL = dict(rtol=1e-5, atol=1e-7)
LOSS_TOL = dict(rtol=1e-5, atol=1e-6)


def _nhwc(x: np.ndarray) -> np.ndarray:
  return np.transpose(x, (0, 2, 3, 1))


def run_metric(task, logits, gt, batch=2, seed=0):
  """Jitted updates over batches of `batch` real examples + 1 invalid one."""
  rng = np.random.default_rng(seed)
  update = jax.jit(task.metric_update)
  stats = task.metric_init()
  for i in range(0, len(gt), batch):
    lg, lb = logits[i:i + batch], gt[i:i + batch, ..., None]
    junk_lg = rng.normal(size=(1,) + lg.shape[1:]).astype(np.float32)
    junk_lb = rng.integers(0, task.num_outputs, (1,) + lb.shape[1:])
    lg = np.concatenate([lg, junk_lg])
    lb = np.concatenate([lb, junk_lb]).astype(np.uint8)
    valid = np.arange(len(lb)) < batch
    stats = update(stats, jnp.asarray(lg), jnp.asarray(lb), jnp.asarray(valid))
  return stats


def test_plugin_interface():
  mod = registry.lookup("task", "human_parts")
  task = mod.Task(num_classes=7)
  assert isinstance(task, base.Task)
  assert task.name == mod.__name__.rsplit(".", 1)[-1] == "human_parts"
  assert task.num_outputs == 7
  assert task.metric_directions == {"mIoU": True}
  assert task.primary_metric == "mIoU"
  with pytest.raises(ValueError, match="num_classes"):
    mod.Task()


def test_loss_jit_finite_postprocess_colorize():
  task = human_parts.Task(num_classes=7)
  rng = np.random.default_rng(1)
  pred = jnp.asarray(rng.normal(size=(2, 4, 6, 7)), jnp.float32)
  label = jnp.asarray(rng.integers(0, 7, (2, 4, 6, 1)), jnp.uint8)
  loss = jax.jit(task.loss)(pred, label)
  assert np.isfinite(float(loss)) and float(loss) > 0
  out = np.asarray(jax.jit(task.postprocess)(pred))
  assert out.shape == (2, 4, 6, 1)
  rgb = task.colorize(out[0])
  assert rgb.shape == (4, 6, 3) and rgb.dtype == np.uint8
  np.testing.assert_array_equal(rgb, common.voc_palette()[out[0, ..., 0]])


def test_loss_golden(golden):
  npz, meta = golden("losses_human_parts")
  assert meta["cases"]["parts7"]["loss"]["ignore_index"] == 255
  pred = _nhwc(npz["parts7/pred"])
  label = _nhwc(npz["parts7/label"]).astype(np.uint8)
  task = human_parts.Task(num_classes=7)
  np.testing.assert_allclose(jax.jit(task.loss)(pred, label),
                             npz["parts7/loss"], **LOSS_TOL)


@pytest.mark.parametrize("rule", ["invpt", "mtl"])
def test_ignore_images_without_person(golden, rule):
  npz, _ = golden("metrics_human_parts")
  raw, want = npz["human_parts/gt_raw"], npz[f"human_parts/gt_ignore_{rule}"]
  for img, img_want in zip(raw.astype(np.uint8), want):
    got = human_parts.ignore_images_without_person(img[..., None], rule=rule)
    assert got.shape == img[..., None].shape and got.dtype == np.uint8
    np.testing.assert_array_equal(got[..., 0], img_want)
  # The goldens separate the rules: image 1 ({0, 255}) differs.
  assert not np.array_equal(npz["human_parts/gt_ignore_invpt"][1],
                            npz["human_parts/gt_ignore_mtl"][1])
  with pytest.raises(ValueError):
    human_parts.ignore_images_without_person(raw[0], rule="other")


@pytest.mark.parametrize("protocol,gt_key,ref_ids", [
    ("invpt", "gt_ignore_invpt", ["invpt/HumanPartsMeter"]),
    ("mtl", "gt_ignore_mtl", ["mtl/HumanPartsMeter", "mtl/eval_human_parts"]),
])
def test_metric_golden(golden, protocol, gt_key, ref_ids):
  """Every id took argmax(logits); the gt differs by the no-person rule
  (eval_human_parts skipping single-0 images == the MTL rule's all-255)."""
  npz, meta = golden("metrics_human_parts")
  refs = {r["id"]: r for r in meta["references"]}
  task = human_parts.Task(num_classes=7, protocol=protocol)
  stats = run_metric(task, _nhwc(npz["human_parts/logits"]),
                     npz[f"human_parts/{gt_key}"])
  got = task.metric_compute(stats)
  assert list(got) == list(task.metric_directions)
  for ref_id in ref_ids:
    assert "argmax(logits)" in refs[ref_id]["protocol"]
    np.testing.assert_allclose(got["mIoU"], npz[f"out/{ref_id}/mIoU"],
                               **METRIC_TOL, err_msg=ref_id)
    key = f"out/{ref_id}/jaccards_all_categs"
    if key in npz:
      np.testing.assert_allclose(common.class_iou(stats["confusion"]),
                                 npz[key], **METRIC_TOL, err_msg=ref_id)
  if protocol == "invpt":  # CTAL-transformer: the same meter, in percent.
    np.testing.assert_allclose(100 * got["mIoU"],
                               npz["out/ctal_tr/HumanPartsMeter/mIoU"],
                               **METRIC_TOL)
