"""MT-CP's loss recipe (models/decoders/mtcp_recipe.py): the per-task losses
against numpy transcriptions of the released ones, and the released deep
supervision bugs behind `loss_config(released_aux_bugs=True)`, which must
change exactly the buggy aux terms and nothing else. The "model" is a dict
of random predictions shaped as a model returns them (final + two aux
heads, coarse first, as tests/test_open_train.py's fake)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from mtdense_jax import config_check
from mtdense_jax import registry
from mtdense_jax.models.decoders import mtcp_recipe
from mtdense_jax.train import step as step_lib
from tests import test_train

B, H, W = 2, 6, 8
NYUD = ("semseg", "depth", "normals")
PASCAL = ("semseg", "human_parts", "sal")
CLASSES = {"semseg": 5, "human_parts": 7}


def _tasks(names):
  kw = mtcp_recipe.task_kw(names)
  return {n: registry.lookup("task", n).Task(num_classes=CLASSES.get(n),
                                             **kw.get(n, {}))
          for n in names}


def _labels(rng, names):
  out = {}
  for n in names:
    if n in CLASSES:
      y = rng.integers(0, CLASSES[n], (B, H, W, 1))
      y[0, 0] = 255
      out[n] = y.astype(np.uint8)
    elif n == "depth":
      y = rng.uniform(0.5, 9.0, (B, H, W, 1)).astype(np.float32)
      y[1, :2] = 255.0
      out[n] = y
    elif n == "normals":
      y = rng.normal(size=(B, H, W, 3))
      y = (y / np.linalg.norm(y, axis=-1, keepdims=True)).astype(np.float32)
      y[0, -1] = 255.0
      out[n] = y
    else:  # sal: {0, 1}
      out[n] = (rng.random((B, H, W, 1)) < 0.3).astype(np.uint8)
  return out


def _preds(rng, tasks):
  def one():
    return {n: jnp.asarray(rng.normal(size=(B, H, W, t.num_outputs)),
                           jnp.float32) for n, t in tasks.items()}
  return {"final": one(), "aux": {"s16": one(), "s8": one()}}


# numpy transcriptions of the released losses (notes a.2)


def _nll(logits, label):
  z = logits - logits.max(-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  y = label[..., 0].astype(np.int64)
  ok = y != 255
  return -np.take_along_axis(logp, np.where(ok, y, 0)[..., None],
                             -1)[..., 0][ok].mean()


def _depth_l1(pred, label):
  ok = (label != 255) & (label < 6.5535)
  return np.abs(pred - label)[ok].mean()


def _masked_mse(pred, label):
  ok = label != 255
  return np.square(pred - label)[ok].mean()


def test_released_per_task_losses():
  rng = np.random.default_rng(0)
  tasks = _tasks(NYUD + ("human_parts",))
  labels = _labels(rng, tasks)
  preds = _preds(rng, tasks)["final"]
  ref = {"semseg": _nll, "human_parts": _nll, "depth": _depth_l1,
         "normals": _masked_mse}
  for n, fn in ref.items():
    want = fn(np.asarray(preds[n], np.float64), labels[n].astype(np.float64))
    np.testing.assert_allclose(tasks[n].loss(preds[n], labels[n]), want,
                               rtol=1e-5, err_msg=n)   # float32 vs float64
  # depth drops >= 6.5535 m from the loss; the metrics name that range.
  assert tasks["depth"].loss_max_depth == pytest.approx(6.5535)
  assert set(tasks["depth"].metric_directions) == {
      "rmse_lt6.5535m", "log_rmse_lt6.5535m", "abs_rel_lt6.5535m",
      "sq_rel_lt6.5535m"}
  # saliency: HED-balanced BCE on one channel (tests/test_task_sal.py).
  assert _tasks(PASCAL)["sal"].num_outputs == 1


def _terms(names, bugs, seed=0):
  rng = np.random.default_rng(seed)
  tasks = _tasks(names)
  batch = _labels(rng, names)
  preds = _preds(rng, tasks)
  cfg = step_lib.LossConfig.from_config(
      mtcp_recipe.loss_config(names, released_aux_bugs=bugs))
  final, aux, extra = step_lib.loss_terms(tasks, preds, batch, cfg)
  as_np = lambda d: {k: float(v) for k, v in d.items()}
  return as_np(final), as_np(aux), extra, preds, batch


def test_nyud_bug_scores_normals_aux_with_the_depth_loss():
  final0, aux0, _, preds, batch = _terms(NYUD, bugs=False)
  final1, aux1, _, _, _ = _terms(NYUD, bugs=True)
  assert final1 == final0
  assert {t: aux1[t] for t in ("semseg", "depth")} == {
      t: aux0[t] for t in ("semseg", "depth")}
  heads = [np.asarray(preds["aux"][h]["normals"], np.float64)
           for h in ("s16", "s8")]
  y = batch["normals"].astype(np.float64)
  np.testing.assert_allclose(aux0["normals"],
                             0.5 * sum(_masked_mse(p, y) for p in heads),
                             rtol=1e-5)
  np.testing.assert_allclose(aux1["normals"],
                             0.5 * sum(_depth_l1(p, y) for p in heads),
                             rtol=1e-5)
  assert abs(aux1["normals"] - aux0["normals"]) > 0.1


def test_pascal_bug_keeps_only_the_last_parts_aux():
  final0, aux0, _, preds, batch = _terms(PASCAL, bugs=False)
  final1, aux1, _, _, _ = _terms(PASCAL, bugs=True)
  assert final1 == final0
  assert {t: aux1[t] for t in ("semseg", "sal")} == {
      t: aux0[t] for t in ("semseg", "sal")}
  y = batch["human_parts"]
  nll = {h: _nll(np.asarray(preds["aux"][h]["human_parts"], np.float64), y)
         for h in ("s16", "s8")}
  np.testing.assert_allclose(aux0["human_parts"],
                             0.5 * (nll["s16"] + nll["s8"]), rtol=1e-5)
  np.testing.assert_allclose(aux1["human_parts"], 0.5 * nll["s8"],
                             rtol=1e-5)
  # "last" is by head name ("s8" sorts after "s16"), not dict order, which
  # jax transforms do not keep.
  tasks = _tasks(PASCAL)
  flipped = {**preds, "aux": {"s8": preds["aux"]["s8"],
                              "s16": preds["aux"]["s16"]}}
  cfg = step_lib.LossConfig.from_config(
      mtcp_recipe.loss_config(PASCAL, released_aux_bugs=True))
  _, aux2, _ = step_lib.loss_terms(tasks, flipped, batch, cfg)
  assert float(aux2["human_parts"]) == aux1["human_parts"]


def test_recipe_options_and_errors():
  assert mtcp_recipe.aux_bug_options(NYUD) == ({"normals": "depth"}, {})
  assert mtcp_recipe.aux_bug_options(PASCAL) == ({}, {"human_parts": "last"})
  off = mtcp_recipe.loss_config(NYUD)
  assert (off.aux_mode, off.aux_weight) == ("outside", 0.5)
  assert not off.aux_loss_from and not off.aux_reduce
  with pytest.raises(ValueError, match="config.loss.aux_reduce.semseg"):
    step_lib.LossConfig(aux_reduce={"semseg": "mean"})
  tasks = _tasks(("semseg",))
  with pytest.raises(ValueError, match="config.loss.aux_loss_from"):
    step_lib.loss_terms(tasks, {"final": {}}, {},
                        step_lib.LossConfig(aux_loss_from={"semseg": "x"}))


def test_config_with_the_switch_validates(tmp_path):
  cfg = test_train.tiny_config(tmp_path)
  cfg.tasks = NYUD
  cfg.task_kw = mtcp_recipe.task_kw(NYUD)
  cfg.loss = mtcp_recipe.loss_config(NYUD, released_aux_bugs=True)
  config_check.validate(cfg)
  assert step_lib.LossConfig.from_config(cfg.loss).aux_loss_from == {
      "normals": "depth"}
