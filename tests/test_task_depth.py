"""Depth task: InvPT L1 loss and the invpt / mtl / MT-CP metric goldens."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtdense_jax.tasks import base
from mtdense_jax.tasks import common
from mtdense_jax.tasks import depth
from tests import task_testing as tt

# Sidecar notes of metrics_depth.json.
RTOL, ATOL = 1e-5, 1e-7


def test_registry_and_interface():
  task = tt.plugin_task("depth")
  assert task.num_outputs == 1 and task.label_dtype == "float32"
  assert task.primary_metric == "rmse"
  assert task.metric_directions["log_rmse"] is False
  with pytest.raises(ValueError):
    depth.Task(protocol="nope")


def test_loss_golden(golden):
  npz, meta = golden("losses_depth")
  pred, label, want = tt.loss_case(npz, meta["cases"]["depth"])
  got = jax.jit(depth.Task().loss)(pred, label)
  # float32 reduction vs PyTorch float32: rtol 1e-5.
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_loss_all_ignored_is_zero():
  label = jnp.full((1, 4, 4, 1), 255.0)
  assert float(depth.Task().loss(jnp.ones((1, 4, 4, 1)), label)) == 0.0


# (golden id, Task kwargs): which Task configuration reproduces each id.
CASES = [
    ("invpt/DepthMeter", dict(protocol="invpt")),
    ("mtl/DepthMeter", dict(protocol="mtl")),
    ("mtl/eval_depth", dict(protocol="mtl")),
    ("mtcp/DepthMeter", dict(protocol="mtl", max_depth=6.5535)),
    ("mtcp/eval_depth", dict(protocol="mtl", max_depth=6.5535)),
]


@pytest.mark.parametrize("ref_id,kwargs", CASES, ids=[c[0] for c in CASES])
def test_metrics_golden(golden, ref_id, kwargs):
  npz, meta = golden("metrics_depth")
  ref = {r["id"]: r for r in meta["references"]}[ref_id]
  # Every id consumed the raw network output; gt invalid = 255 is what our
  # pipeline delivers (the offline ids used 0 = invalid, the same pixels).
  pred = tt.jnhwc(npz["depth/pred_raw"])
  gt = jnp.asarray(npz["depth/gt_ignore"])[..., None]
  task = depth.Task(**kwargs)
  got = tt.run_metric(task, pred, gt, ref["batch_size"])
  # A truncated range (MT-CP) is named in every key: rmse_lt6.5535m.
  suffix = "_lt6.5535m" if "max_depth" in kwargs else ""
  assert task.metric_suffix == suffix
  assert list(got) == list(task.metric_directions)
  for key, want in ref["outputs"].items():
    np.testing.assert_allclose(got[key + suffix], want, rtol=RTOL, atol=ATOL,
                               err_msg=f"{ref_id}/{key}")


def test_padded_examples_and_batching_do_not_matter(golden):
  npz, _ = golden("metrics_depth")
  task = depth.Task()
  pred = tt.jnhwc(npz["depth/pred_raw"])
  gt = jnp.asarray(npz["depth/gt_ignore"])[..., None]
  whole = tt.run_metric(task, pred, gt, batch=6)
  # Batch of 4 with 2 padded garbage examples, then merged with the rest.
  junk_pred = jnp.concatenate([pred[:2], 7 * jnp.ones_like(pred[:2])])
  junk_gt = jnp.concatenate([gt[:2], jnp.ones_like(gt[:2])])
  a = task.metric_update(task.metric_init(), junk_pred, junk_gt,
                         jnp.array([True, True, False, False]))
  b = task.metric_update(task.metric_init(), pred[2:], gt[2:],
                         jnp.ones((4,), bool))
  merged = task.metric_compute(base.merge_stats(a, b))
  for key in whole:
    np.testing.assert_allclose(merged[key], whole[key], rtol=1e-6)


def test_running_sum_is_compensated():
  # 2**24 + many ones: a plain float32 accumulator would stay at 2**24.
  total = jnp.array([2.0**24, 0.0], jnp.float32)
  add = jax.jit(common.acc_add)
  for _ in range(64):
    total = add(total, jnp.float32(1.0))
  assert common.acc_value(total) == 2.0**24 + 64


def test_postprocess_and_colorize():
  task = depth.Task()
  out = task.postprocess(jnp.array([[[[-1.0], [2.0]]]]))
  np.testing.assert_array_equal(out, [[[[0.0], [2.0]]]])
  img = task.colorize(np.array([[[0.0], [5.0], [255.0], [10.0]]], np.float32))
  assert img.shape == (1, 4, 3) and img.dtype == np.uint8
  # Invalid (0 and 255): the grey invalid pattern, not a depth colour.
  assert (img[0, 0] == img[0, 2]).all() and len(set(img[0, 0])) == 1
  assert not (img[0, 0] == img[0, 1]).all()
  assert not (img[0, 1] == img[0, 3]).all()  # different depths differ


@pytest.mark.parametrize("case", ["depth", "depth_255_is_valid"])
def test_taskprompter_invalid_minus_one_loss_golden(golden, case):
  npz, meta = golden("taskprompter_losses")
  spec = meta["cases"][case]
  pred = tt.jnhwc(npz[spec["inputs"]["pred"]])
  label = tt.jnhwc(npz[spec["inputs"]["label"]])
  want = npz[spec["outputs"]["loss"]["key"]]
  got = jax.jit(depth.Task(invalid_value=-1).loss)(pred, label)
  np.testing.assert_allclose(got, want, **tt.LOSS_TOL)
  if case == "depth_255_is_valid":  # InvPT's 255 rule gives another value
    assert abs(float(depth.Task().loss(pred, label)) - float(want)) > 1e-2


def test_loss_max_depth_drops_deep_pixels_as_mtcp():
  rng = np.random.default_rng(0)
  label = rng.uniform(0.5, 9.0, (2, 6, 7, 1)).astype(np.float32)
  label[0, :2] = 255.0
  pred = rng.uniform(0.0, 9.0, label.shape).astype(np.float32)
  # MT-CP DepthLoss: nn.L1Loss (mean) over label != 255 and label < 6.5535.
  mask = (label != 255) & (label < 65535 * 1e-4)
  want = np.abs(pred - label)[mask].mean()
  task = depth.Task(loss_max_depth=6.5535)
  np.testing.assert_allclose(task.loss(pred, label), want, rtol=1e-6)
  assert abs(float(depth.Task().loss(pred, label)) - want) > 1e-2


def test_label_hooks_follow_the_invalid_value():
  stored = np.array([[0.0, 2.0], [255.0, 4.0]], np.float32)[..., None]
  invpt, tp = depth.Task(), depth.Task(invalid_value=-1)
  assert invpt.fill == 255 and tp.fill == -1
  np.testing.assert_array_equal(invpt.ignore_regions(stored)[..., 0],
                                [[255, 2], [255, 4]])
  # TaskPrompter: 0 -> -1, and 255 is a valid depth.
  np.testing.assert_array_equal(tp.ignore_regions(stored)[..., 0],
                                [[-1, 2], [255, 4]])
  marked = tp.ignore_regions(stored)
  np.testing.assert_allclose(tp.rescale_label(marked, 2.0)[..., 0],
                             [[-1, 1], [127.5, 2]])
  assert tp.label_spec.fill == -1 and tp.label_spec.encoding == "zlib"
  assert "NaN" in invpt.label_problem(np.array([1.0, np.nan], np.float32))
  assert invpt.label_problem(np.array([0.0, 9.5], np.float32)) is None
