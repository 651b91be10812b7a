"""human_parts task: interface, CE loss, no-person rule and mIoU goldens.

Goldens: ../shared/golden/losses_human_parts (InvPT CrossEntropyLoss) and
metrics_human_parts (InvPT / MTL-PyTorch meters, MTL-PyTorch
eval_human_parts).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from mtdense_jax.tasks import common
from mtdense_jax.tasks import human_parts
from tests import task_testing as tt
from tests.task_testing import LOSS_TOL, METRIC_TOL


def test_plugin_interface():
  task = tt.plugin_task("human_parts", num_classes=7)
  assert task.num_outputs == 7
  assert task.metric_directions == {"mIoU": True}
  assert task.primary_metric == "mIoU"
  with pytest.raises(ValueError, match="num_classes"):
    human_parts.Task()


def test_loss_jit_finite_postprocess_colorize():
  task = human_parts.Task(num_classes=7)
  _, out = tt.check_loss_and_postprocess(task, seed=1)
  rgb = task.colorize(out[0])
  assert rgb.shape == (4, 6, 3) and rgb.dtype == np.uint8
  np.testing.assert_array_equal(rgb, common.voc_palette()[out[0, ..., 0]])


def test_loss_golden(golden):
  npz, meta = golden("losses_human_parts")
  assert meta["cases"]["parts7"]["loss"]["ignore_index"] == 255
  pred = tt.nhwc(npz["parts7/pred"])
  label = tt.nhwc(npz["parts7/label"]).astype(np.uint8)
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
  stats = tt.run_classification(task, tt.nhwc(npz["human_parts/logits"]),
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
