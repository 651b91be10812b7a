"""Edge task: InvPT balanced BCE loss golden and the EdgeMeter metric."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from mtdense_jax.tasks import edge
from tests import task_testing as tt


def test_registry_and_interface():
  task = tt.plugin_task("edge")
  assert task.num_outputs == 1 and task.pos_weight == 0.95
  assert dict(task.metric_directions) == {"loss": False}
  assert dict(task.delta_m_metrics) == {"odsF": True}


@pytest.mark.parametrize("case", ["edge_w095", "edge_soft_labels",
                                  "auto_weight"])
def test_loss_golden(golden, case):
  npz, meta = golden("losses_edge")
  spec = meta["cases"][case]
  task = edge.Task(pos_weight=spec["loss"]["pos_weight"])
  pred, label, want = tt.loss_case(npz, spec)
  got = jax.jit(task.loss)(pred, label)
  # float32 reduction vs PyTorch float32: rtol 1e-5.
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_loss_all_ignored_is_zero_not_nan(golden):
  npz, meta = golden("losses_edge")
  pred, label, want = tt.loss_case(npz, meta["cases"]["all_ignored"])
  assert np.isnan(want)  # the reference
  got = edge.Task().loss(pred, label)
  assert float(got) == 0.0  # ours, documented in edge.py


def _torch_edge_meter(preds, labels, w):
  """InvPT EdgeMeter, written independently with torch: per batch,
  BCEWithLogits(255*sigmoid(x)/255, y, pos_weight=w/(1-w)) * (1-w) on the
  valid pixels, averaged with pixel-count weights."""
  loss, n = 0.0, 0
  for x, y in zip(preds, labels):
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    keep = y != 255
    p = (255 * torch.sigmoid(x))[keep] / 255.0
    f = 1.0 / (1.0 - w)
    batch = torch.nn.functional.binary_cross_entropy_with_logits(
        p, y[keep], pos_weight=torch.tensor(w * f)) / f
    loss += keep.sum().item() * batch.item()
    n += keep.sum().item()
  return loss / n


def test_metric_matches_edge_meter_and_ignores_padding():
  rng = np.random.default_rng(0)
  x = rng.normal(0, 3, (3, 2, 16, 20, 1)).astype(np.float32)
  y = (rng.random((3, 2, 16, 20, 1)) < 0.1).astype(np.float32)
  y[rng.random(y.shape) < 0.1] = 255
  want = _torch_edge_meter(x, y, 0.95)
  task = edge.Task()
  update = jax.jit(task.metric_update)
  stats = task.metric_init()
  for xb, yb in zip(x, y):
    stats = update(stats, jnp.asarray(xb), jnp.asarray(yb.astype(np.uint8)),
                   jnp.ones((2,), bool))
  # float32 on both sides: rtol 1e-5.
  np.testing.assert_allclose(task.metric_compute(stats)["loss"], want,
                             rtol=1e-5)
  # A padded (valid=False) example of garbage changes nothing.
  xb = jnp.concatenate([jnp.asarray(x[0]), 50 * jnp.ones_like(x[0][:1])])
  yb = jnp.concatenate([jnp.asarray(y[0]), jnp.ones_like(y[0][:1])])
  padded = task.metric_update(task.metric_init(), xb, yb.astype(jnp.uint8),
                              jnp.array([True, True, False]))
  plain = task.metric_update(task.metric_init(), jnp.asarray(x[0]),
                             jnp.asarray(y[0].astype(np.uint8)),
                             jnp.ones((2,), bool))
  np.testing.assert_allclose(task.metric_compute(padded)["loss"],
                             task.metric_compute(plain)["loss"], rtol=1e-6)


def test_postprocess_and_colorize():
  task = edge.Task()
  p = task.postprocess(jnp.array([[[[-100.0], [0.0], [100.0]]]]))
  np.testing.assert_allclose(p, [[[[0.0], [0.5], [1.0]]]], atol=1e-7)
  img = task.colorize(np.array([[[0.0], [1.0], [255.0]]], np.float32))
  assert img.shape == (1, 3, 3) and img.dtype == np.uint8
  np.testing.assert_array_equal(img[0, :, 0], [0, 255, 0])
