"""The MTAN-style protocol and losses of CTAL's CNN recipes (methods b.3, b.5).

Metrics: the ``ctal_cnn/*`` ids of ../shared/golden/metrics_{semseg,depth,
normals} (Dimitri-Sinodinos/CTAL code_cnn/evaluation), reproduced with
``protocol="mtan"``. Losses: CTAL code_cnn/losses/loss_schemes.py
``model_fit`` written out in numpy here on MTAN-style raw labels (semseg -1 =
ignore, depth and normals 0 = invalid), against our tasks fed the labels the
pipeline delivers (the builders' -1 -> 255, the tasks' ignore_regions).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtdense_jax import config_check
from mtdense_jax.tasks import base
from mtdense_jax.tasks import common
from mtdense_jax.tasks import depth
from mtdense_jax.tasks import normals
from mtdense_jax.tasks import semseg
from tests import task_testing as tt
from tests.conftest import REPO
from tests.task_testing import METRIC_TOL


def _refs(meta) -> dict:
  return {r["id"]: r for r in meta["references"]}


# ------------------------------------------------------------------ metrics


@pytest.mark.parametrize("case,k", [("semseg_nyud", 40),
                                    ("semseg_pascal", 21)])
def test_semseg_golden(golden, case, k):
  npz, meta = golden("metrics_semseg")
  ref = _refs(meta)[f"ctal_cnn/SemsegMeter/{case}"]
  assert "argmax(logits)" in ref["protocol"]
  logits = tt.jnhwc(npz[f"{case}/logits"])
  gt = jnp.asarray(npz[f"{case}/gt"].astype(np.uint8))[..., None]
  task = semseg.Task(num_classes=k, protocol="mtan")
  got = tt.run_metric(task, logits, gt, ref["batch_size"])
  assert set(got) == set(ref["outputs"]) == set(task.metric_directions)
  for key, want in ref["outputs"].items():
    np.testing.assert_allclose(got[key], want, **METRIC_TOL, err_msg=key)
  # The golden has classes absent from gt and prediction: the mean over all
  # classes (the invpt rule) is lower, so the nanmean is what matched.
  invpt = tt.run_metric(semseg.Task(num_classes=k), logits, gt, 2)
  assert invpt["mIoU"] < got["mIoU"] - 1e-3


def test_mtan_scores_skip_absent_classes():
  cm = np.array([[3, 1, 0], [0, 0, 0], [1, 0, 5]])
  got = common.mtan_scores(cm)
  # Class 1: no gt, predicted once -> IoU 0 (counted); class 2: 5 / 6.
  np.testing.assert_allclose(got["mIoU"], (3 / 5 + 0 + 5 / 6) / 3)
  np.testing.assert_allclose(got["pix_acc"], 8 / 10)
  cm[0, 1] = 0  # class 1 now absent everywhere: skipped, not 0
  np.testing.assert_allclose(common.mtan_scores(cm)["mIoU"],
                             (3 / 4 + 5 / 6) / 2)


@pytest.mark.parametrize("gt_key", ["depth/gt_ignore", "depth/gt_raw"])
def test_depth_golden(golden, gt_key):
  """Both the pipeline's labels (255 invalid) and the raw ones (0 invalid)
  give the reference, which consumed the raw ones."""
  npz, meta = golden("metrics_depth")
  ref = _refs(meta)["ctal_cnn/DepthMeter"]
  pred = tt.jnhwc(npz["depth/pred_raw"])
  gt = jnp.asarray(npz[gt_key])[..., None]
  task = depth.Task(protocol="mtan")
  got = tt.run_metric(task, pred, gt, ref["batch_size"])
  assert set(got) == set(ref["outputs"]) == set(task.metric_directions)
  for key, want in ref["outputs"].items():
    np.testing.assert_allclose(got[key], want, **METRIC_TOL, err_msg=key)
  assert task.primary_metric == "abs"


@pytest.mark.parametrize("gt_key", ["normals/gt_ignore_nchw", "gt_raw"])
def test_normals_golden(golden, gt_key):
  npz, meta = golden("metrics_normals")
  ref = _refs(meta)["ctal_cnn/NormalsMeter"]
  pred = tt.jnhwc(npz["normals/pred_raw"])
  if gt_key == "gt_raw":
    gt = jnp.asarray(npz["normals/gt_raw"])  # already NHWC
  else:
    gt = tt.jnhwc(npz[gt_key])
  task = normals.Task(protocol="mtan")
  got = tt.run_metric(task, pred, gt, ref["batch_size"])
  assert set(got) == set(ref["outputs"]) == set(task.metric_directions)
  for key, want in ref["outputs"].items():
    np.testing.assert_allclose(got[key], want, **METRIC_TOL, err_msg=key)
  # Fractions, not the percents of the other protocols (same angles here).
  invpt = tt.run_metric(normals.Task(), pred,
                        tt.jnhwc(npz["normals/gt_ignore_nchw"]), 2)
  np.testing.assert_allclose(invpt["30"], 100 * got["30"], rtol=1e-4)


def test_normals_sum_zero_gt_is_invalid_as_in_the_reference():
  """A real normal whose channels sum to 0 is skipped by the reference's
  rule (channel sum != 0), so the mtan protocol skips it too."""
  gt = np.zeros((1, 1, 2, 3), np.float32)
  gt[0, 0, 0] = [0.6, -0.6, 0.0]  # unit-ish, sum exactly 0
  gt[0, 0, 1] = [0.0, 0.0, 1.0]
  pred = jnp.asarray([[[[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]]]])
  got = tt.run_metric(normals.Task(protocol="mtan"), pred, jnp.asarray(gt), 1)
  assert got["mean"] == pytest.approx(0.0, abs=1e-5)
  assert got["11.25"] == 1.0


def test_padded_examples_do_not_count(golden):
  npz, meta = golden("metrics_normals")
  ref = _refs(meta)["ctal_cnn/NormalsMeter"]
  task = normals.Task(protocol="mtan")
  pred = tt.nhwc(npz["normals/pred_raw"])
  gt = tt.nhwc(npz["normals/gt_ignore_nchw"])
  update = jax.jit(task.metric_update)
  stats = task.metric_init()
  rng = np.random.default_rng(0)
  for i in range(0, 6, 2):
    p = np.concatenate([pred[i:i + 2], rng.normal(size=pred[:1].shape)])
    g = np.concatenate([gt[i:i + 2], gt[:1]])
    stats = update(stats, jnp.asarray(p, jnp.float32), jnp.asarray(g),
                   jnp.asarray([True, True, False]))
  got = task.metric_compute(jax.device_get(stats))
  np.testing.assert_allclose(got["mean"], ref["outputs"]["mean"],
                             **METRIC_TOL)


# ------------------------------------------------------------------- config


def test_protocol_is_per_task_and_checked_by_config():
  for cls in (semseg.Task, depth.Task, normals.Task):
    assert "mtan" in cls.protocols
  from mtdense_jax.tasks import edge  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="'edge'.*'mtan'"):
    edge.Task(protocol="mtan")
  cfg = config_check.load_config_file(
      str(REPO / "configs" / "synthetic_baseline.py") + ":runlocal")
  cfg.eval.protocol = "mtan"
  assert "edge" in cfg.tasks
  with pytest.raises(config_check.ConfigError) as e:
    config_check.validate(cfg)
  assert any(line.startswith("config.eval.protocol='mtan' is not "
                             "implemented by task 'edge'")
             for line in e.value.lines()), e.value.lines()
  cfg.tasks = ("semseg", "depth", "normals")
  config_check.validate(cfg)
  assert "mtan" in base.PROTOCOLS


# ------------------------------------------------------------------- losses
# numpy transcription of CTAL model_fit (methods.md b.3) on raw MTAN labels.


def _np_log_softmax(x):
  x = x.astype(np.float64)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def _raw_batch(seed=0, shape=(2, 6, 7)):
  rng = np.random.default_rng(seed)
  seg = rng.integers(0, 13, shape).astype(np.float32)
  seg[rng.random(shape) < 0.2] = -1.0  # MTAN's ignore
  dep = rng.uniform(0.5, 9.0, shape + (1,)).astype(np.float32)
  dep[rng.random(shape) < 0.25] = 0.0
  n = rng.normal(size=shape + (3,)).astype(np.float32)
  nor = n / np.linalg.norm(n, axis=-1, keepdims=True)
  nor[rng.random(shape) < 0.25] = 0.0
  preds = {"semseg": rng.normal(size=shape + (13,)).astype(np.float32),
           "depth": rng.normal(2.0, 2.0, shape + (1,)).astype(np.float32),
           "normals": rng.normal(size=shape + (3,)).astype(np.float32)}
  return {"semseg": seg, "depth": dep, "normals": nor}, preds


def _np_ctal_loss(task: str, pred: np.ndarray, gt: np.ndarray) -> float:
  if task == "semseg":
    lab = gt.astype(np.int64)
    ok = lab != -1
    logp = _np_log_softmax(pred)
    picked = np.take_along_axis(logp, np.where(ok, lab, 0)[..., None], -1)
    return float(-(picked[..., 0] * ok).sum() / ok.sum())
  mask = (gt.sum(-1, keepdims=True) != 0).astype(np.float64)
  if task == "depth":
    return float((np.abs(pred - gt) * mask).sum() / mask.sum())
  p = pred / np.linalg.norm(pred.astype(np.float64), axis=-1, keepdims=True)
  return float(1.0 - (p * gt * mask).sum() / mask.sum())


def _pipeline_label(task: base.Task, raw: np.ndarray) -> np.ndarray:
  """What training feeds: the MTAN builders store semseg -1 as 255; the
  pipeline then applies the task's ignore_regions."""
  if task.name == "semseg":
    from data_builders import mtan_common  # pylint: disable=g-import-not-at-top
    raw = mtan_common.semseg_label(raw)
  return task.ignore_regions(raw.astype(task.label_spec.dtype))


@pytest.mark.parametrize("name,task", [
    ("semseg", semseg.Task(num_classes=13)),
    ("depth", depth.Task()),
    ("normals", normals.Task(loss_type="cosine")),
])
def test_ctal_cnn_losses_match_numpy_reference(name, task):
  raws, preds = _raw_batch()
  want = _np_ctal_loss(name, preds[name], raws[name])
  label = _pipeline_label(task, raws[name])
  got = jax.jit(task.loss)(jnp.asarray(preds[name]), jnp.asarray(label))
  np.testing.assert_allclose(float(got), want, rtol=2e-6)


def test_normals_default_loss_is_not_ctal():
  """The option matters: the default (InvPT L1) gives another value."""
  raws, preds = _raw_batch(seed=1)
  task = normals.Task()
  label = task.ignore_regions(raws["normals"])
  want = _np_ctal_loss("normals", preds["normals"], raws["normals"])
  got = float(task.loss(jnp.asarray(preds["normals"]), jnp.asarray(label)))
  assert abs(got - want) > 1e-2
