"""sal task: interface, balanced CE loss and both metric protocols' goldens.

Goldens: ../shared/golden/losses_sal (InvPT CrossEntropyLoss(balanced=True))
and metrics_sal (InvPT SaliencyMeter; MTL-PyTorch SaliencyMeter and
eval_sal). The InvPT head is 2-channel: the golden's 1-channel logit becomes
concat([0, logit]) (the sidecar's own construction).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtdense_jax.tasks import base
from mtdense_jax.tasks import sal
from tests import task_testing as tt
from tests.task_testing import LOSS_TOL, METRIC_TOL

CURVES = ("mIoUs", "mPrec", "mRec", "F")


def _two_channel(logit_nchw: np.ndarray) -> np.ndarray:
  logit = tt.nhwc(logit_nchw)
  return np.concatenate([np.zeros_like(logit), logit], axis=-1)


def _junk_pred(rng: np.random.Generator, p: np.ndarray) -> np.ndarray:
  """Garbage in the prediction's own dtype and range."""
  if np.issubdtype(p.dtype, np.integer):
    return rng.integers(0, 256, p.shape).astype(p.dtype)
  return rng.uniform(-10, 255, p.shape).astype(p.dtype)


def run_batches(update, stats, pred, gt, batch=2, seed=0):
  """Batches plus one invalid example (garbage prediction, salient label)
  that must not count."""
  return tt.run_padded_batches(
      update, stats, pred, gt, junk_pred=_junk_pred,
      junk_label=lambda rng, lb: np.ones_like(lb), batch=batch, seed=seed)


def test_plugin_interface_and_directions():
  invpt, mtl = tt.plugin_task("sal"), tt.plugin_task("sal", protocol="mtl")
  assert invpt.num_outputs == mtl.num_outputs == 2
  assert list(invpt.metric_directions) == ["maxF"]
  assert invpt.primary_metric == "maxF"
  assert list(mtl.metric_directions) == ["mIoU", "maxF"]
  assert mtl.primary_metric == "mIoU"
  assert all(mtl.metric_directions.values())
  for task in (invpt, mtl):
    stats = task.metric_init()
    assert list(task.metric_compute(stats)) == list(task.metric_directions)


def test_loss_jit_finite_postprocess_colorize():
  task = sal.Task()
  pred, out = tt.check_loss_and_postprocess(task, seed=2)
  # 255 * softmax[..., 1] of 2 logits == 255 * sigmoid(l1 - l0).
  want = 255 / (1 + np.exp(-(np.asarray(pred)[..., 1] - pred[..., 0])))
  np.testing.assert_allclose(out[..., 0], want, rtol=1e-5, atol=1e-4)
  rgb = task.colorize(out[0])
  assert rgb.shape == (4, 6, 3) and rgb.dtype == np.uint8
  np.testing.assert_array_equal(rgb[..., 2], out[0, ..., 0].astype(np.uint8))
  lab_rgb = task.colorize(np.array([[0, 1, 255]], np.uint8))
  np.testing.assert_array_equal(lab_rgb[0, :, 0], [0, 255, 128])


def test_loss_golden(golden):
  npz, meta = golden("losses_sal")
  assert meta["cases"]["sal2"]["loss"]["balanced"] is True
  pred = tt.nhwc(npz["sal2/pred"])
  label = tt.nhwc(npz["sal2/label"]).astype(np.uint8)
  task = sal.Task()
  np.testing.assert_allclose(sal.positive_weight(label), npz["sal2/w_pos"],
                             **LOSS_TOL)
  np.testing.assert_allclose(jax.jit(task.loss)(pred, label),
                             npz["sal2/loss"], **LOSS_TOL)


def test_loss_all_ignored_is_zero_without_nan():
  """Our choice where the reference asserts: 0 loss, 0 gradient."""
  task = sal.Task()
  pred = jnp.asarray(np.random.default_rng(3).normal(size=(2, 4, 6, 2)),
                     jnp.float32)
  label = jnp.full((2, 4, 6, 1), 255, jnp.uint8)
  loss, grad = jax.jit(jax.value_and_grad(task.loss))(pred, label)
  assert float(loss) == 0.0
  assert np.all(np.asarray(grad) == 0)


@pytest.mark.parametrize("case,gt_key", [("no_ignore", "sal/gt"),
                                         ("padded_255", "sal/gt_padded")])
def test_invpt_metric_golden(golden, case, gt_key):
  npz, meta = golden("metrics_sal")
  refs = {r["id"]: r for r in meta["references"]}
  ref = refs["invpt/SaliencyMeter/no_ignore"]
  assert "[0,logit]" in ref["protocol"].replace(" ", "")  # padded: "same"
  task = sal.Task(protocol="invpt")
  stats = run_batches(task.metric_update, task.metric_init(),
                      _two_channel(npz["sal/logit"]), npz[gt_key])
  got = task.metric_compute(stats)
  np.testing.assert_allclose(
      got["maxF"], npz[f"out/invpt/SaliencyMeter/{case}/maxF"], **METRIC_TOL)
  np.testing.assert_allclose(  # CTAL-transformer: the same meter, x100.
      100 * got["maxF"], npz[f"out/ctal_tr/SaliencyMeter/{case}/maxF"],
      **METRIC_TOL)


def _accumulate(stats_fn):
  """A pure per-batch statistics function -> a running-total update."""
  return lambda stats, *args: base.merge_stats(stats, stats_fn(*args))


def _check_mtl(npz, ref_id, stats, got=None):
  curves = sal.mtl_curves(stats)
  for key in CURVES:
    np.testing.assert_allclose(curves[key], npz[f"out/{ref_id}/{key}"],
                               **METRIC_TOL, err_msg=f"{ref_id} {key}")
  if got is not None:
    for key in ("mIoU", "maxF"):
      np.testing.assert_allclose(got[key], npz[f"out/{ref_id}/{key}"],
                                 **METRIC_TOL, err_msg=f"{ref_id} {key}")


def test_mtl_metric_golden_from_logits(golden):
  """Task path: logits -> 255 softmax -> uint8 PNG -> eval_sal statistics."""
  npz, _ = golden("metrics_sal")
  task = sal.Task(protocol="mtl")
  pred = _two_channel(npz["sal/logit"])
  # Precondition: the Task's quantisation reproduces the stored PNG content.
  u8 = jax.jit(lambda p: sal.png_quantize(sal.saliency_255(p)))(pred)
  np.testing.assert_array_equal(u8[..., 0], npz["sal/pred_u8"])
  stats = run_batches(task.metric_update, task.metric_init(), pred,
                      npz["sal/gt"])
  _check_mtl(npz, "mtl/eval_sal", stats, task.metric_compute(stats))


# (golden id, stored prediction it read, the statistics it computed):
# mtl/eval_sal read the stored uint8 PNGs (incl. the float32 /255 quirk);
# mtl/SaliencyMeter (online) consumed the unquantised 255*sigmoid map.
STORED_CASES = [
    ("mtl/eval_sal", "pred_u8", sal.mtl_stats_u8),
    ("mtl/SaliencyMeter", "pred_255", sal.mtl_stats_float),
]


@pytest.mark.parametrize("ref_id,pred_key,stats_fn", STORED_CASES,
                         ids=[c[0] for c in STORED_CASES])
def test_mtl_metric_from_stored_pred(golden, ref_id, pred_key, stats_fn):
  """Each MTL-PyTorch id from the prediction it stored."""
  npz, meta = golden("metrics_sal")
  assert pred_key in {r["id"]: r for r in meta["references"]}[
      ref_id]["protocol"]
  task = sal.Task(protocol="mtl")
  stats = run_batches(_accumulate(stats_fn), task.metric_init(),
                      npz[f"sal/{pred_key}"][..., None], npz["sal/gt"])
  _check_mtl(npz, ref_id, stats, task.metric_compute(stats))


def test_mtl_png_threshold_quirk():
  """u8 k counts at t iff float32(k)/255 > t in float64 (methods.md d.5)."""
  k = np.arange(256, dtype=np.float32) / np.float32(255)
  for t, kmin in zip(sal.MTL_THRESHOLDS, sal.MTL_U8_MIN):
    pos = np.nonzero(k.astype(np.float64) > t)[0]
    assert pos[0] == kmin
  # The four thresholds where the quirk bites: k = 255 t counts.
  assert [int(x) for x in sal.MTL_U8_MIN[[0, 4, 8, 12]]] == [51, 102, 153, 204]


def test_hed_bce_option_is_mtcp_balanced_bce_without_ignore():
  rng = np.random.default_rng(0)
  x = rng.normal(0, 3, (2, 5, 6, 1)).astype(np.float32)
  y = (rng.random((2, 5, 6, 1)) < 0.3).astype(np.uint8)
  y[0, 0, :3] = 255  # no ignore in MT-CP: 255 >= 0.5 is a positive
  task = sal.Task(loss_type="hed_bce")
  assert task.num_outputs == 1
  # MT-CP BalancedCrossEntropyLoss (HED weighting, size_average).
  lab = (y >= 0.5).astype(np.float64)
  w = np.sum(1 - lab) / lab.size
  logsig = lambda v: -np.logaddexp(0, -v)
  xd = x.astype(np.float64)
  pos = -np.sum(lab * logsig(xd))
  neg = -np.sum((1 - lab) * logsig(-xd))
  want = (w * pos + (1 - w) * neg) / lab.size
  np.testing.assert_allclose(jax.jit(task.loss)(x, y), want, rtol=1e-5)
  # A 1-channel head: prediction 255 * sigmoid, and the metrics run on it.
  np.testing.assert_allclose(task.postprocess(x), 255 / (1 + np.exp(-xd)),
                             rtol=1e-5)
  stats = task.metric_update(task.metric_init(), x, y, jnp.ones(2, bool))
  assert 0 <= task.metric_compute(stats)["maxF"] <= 1
  with pytest.raises(ValueError, match="loss_type"):
    sal.Task(loss_type="bce")
