"""Gradient methods inside the train step (`config.weighting.name`): every
method trains, PCGrad's step equals a numpy hand computation, the method
state resumes exactly, gradient accumulation and 2 devices give the one-step
one-device result.

The model is the toy plugin pair (tests/toy_encoder.py, tests/toy_decoder.py,
two tasks): its decoder returns a model loss ("distill", a term outside the
method that also reaches the encoder) and an aux head, so the terms the
methods do not weight are exercised too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtdense_jax import config_check
from mtdense_jax import registry
from mtdense_jax.data import pipeline
from mtdense_jax.train import checkpointing as ckpt
from mtdense_jax.train import loop
from mtdense_jax.train import sharding as shd
from mtdense_jax.train import state as state_lib
from mtdense_jax.train import step as step_lib
from tests import test_open_train
from tests import train_testing

METHODS = registry.available("gradmethod")


def method_config(data_dir, name, **kw):
  cfg = test_open_train.toy_config(data_dir)
  cfg.optim.groups = ()
  cfg.optim.freeze = ()
  # Per-parameter optimizer state (a one-device CPU mesh would flatten it,
  # train/optim.py): _opt_mu reads Adam's moments per parameter and the
  # device-count tests compare states leaf by leaf.
  cfg.optim.flatten = "off"
  cfg.weighting.name = name
  cfg.weighting.kw = kw
  return cfg


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


def _check_trains(cfg):
  exp, defs, state, shardings = train_testing.setup_state(
      cfg, jax.devices()[:1])
  before = train_testing.host_copy(state["params"])
  state, hist = train_testing.steps(exp, defs, shardings, state, 2)
  after = train_testing.host_copy(state["params"])
  for h in hist:
    assert np.isfinite(h["total"]) and np.isfinite(h["grad_norm"]), h
    ws = [h[f"weight/{t}"] for t in exp.tasks]
    assert all(np.isfinite(ws)) and any(w != 0 for w in ws), h
    assert -1.0 - 1e-5 <= h["cos/semseg|depth"] <= 1.0 + 1e-5, h
  for branch in ("encoder", "decoder"):
    moved = [np.abs(a - b).max() for a, b in zip(
        jax.tree.leaves(after[branch]), jax.tree.leaves(before[branch]))]
    assert max(moved) > 0, branch
  return hist


@pytest.mark.parametrize("name", METHODS)
def test_every_method_trains_in_params_mode(data_dir, name):
  _check_trains(method_config(data_dir, name, mode="params"))


@pytest.mark.parametrize("name", [
    "mgda_ub", pytest.param("nash_mtl", marks=pytest.mark.slow)])
def test_representation_mode_trains(data_dir, name):
  _check_trains(method_config(data_dir, name, mode="representation"))


def _opt_mu(opt_state):
  """Adam's first moment over the model params, merged over the optimizer's
  parameter groups (after one step: (1 - b1) g of the gradient the optimizer
  received; no clipping in the toy config)."""
  found = []
  jax.tree.map(lambda x: found.append(x.mu["model"]) if hasattr(x, "mu")
               else None, opt_state, is_leaf=lambda x: hasattr(x, "mu"))
  masked = lambda x: isinstance(x, optax.MaskedNode)
  pick = lambda *xs: next(x for x in xs if not masked(x))
  return jax.tree.map(pick, *found, is_leaf=masked)


def _flat(tree):
  return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


def test_pcgrad_step_equals_hand_computation(data_dir):
  """One train step's gradient (read from Adam's first moment) against
  numpy PCGrad on per-task gradients from jax.grad of the model's losses:
  encoder = projected g_1 + projected g_2 + the distill term's gradient;
  decoder = gradient of w_1 L_1 + w_2 L_2 + distill, w from the
  projections (w_i = 1 - [g_i.g_j < 0] g_i.g_j / |g_i|^2)."""
  cfg = method_config(data_dir, "pcgrad", random_order=False)
  exp, defs, state, shardings = train_testing.setup_state(
      cfg, jax.devices()[:1])
  params = train_testing.host_copy(state["params"])
  stats = train_testing.host_copy(state["batch_stats"])
  batch = next(pipeline.make_train_iter(
      cfg.data, list(exp.tasks), global_batch_size=cfg.train.batch_size,
      seed=cfg.seed))
  loss_cfg = step_lib.LossConfig.from_config(cfg.loss)
  key = jax.random.fold_in(jax.random.key(cfg.seed + 1), 0)

  def losses(p):
    preds, _ = step_lib._forward(defs, defs.train, p, stats,
                                 jnp.asarray(batch["image"]),
                                 state_lib.nnx.Rngs(dropout=key))
    terms = step_lib.loss_terms(exp.tasks, preds, batch, loss_cfg)
    return step_lib.split_terms(terms, loss_cfg)

  seen, rest = losses(params)
  assert list(rest) == ["extra/distill"]
  grad = lambda f: jax.grad(f)(params)
  g = {t: grad(lambda p, t=t: losses(p)[0][t]) for t in exp.tasks}
  g_rest = grad(lambda p: losses(p)[1]["extra/distill"])
  enc = {t: _flat(g[t]["encoder"]) for t in g}
  g1, g2 = enc["semseg"], enc["depth"]
  dot = float(g1 @ g2)
  assert dot < 0, "the toy's two tasks should conflict at init"
  p1 = g1 - dot / (g2 @ g2) * g2
  p2 = g2 - dot / (g1 @ g1) * g1
  want_enc = p1 + p2 + _flat(g_rest["encoder"])
  w = {"semseg": 1 - dot / (g1 @ g1), "depth": 1 - dot / (g2 @ g2)}
  want_dec = _flat(jax.grad(lambda p: sum(
      w[t] * losses(p)[0][t] for t in w) + losses(p)[1]["extra/distill"])(
          params)["decoder"])

  state, hist = train_testing.steps(exp, defs, shardings, state, 1)
  mu = train_testing.host_copy(_opt_mu(state["opt"]))
  b1 = 0.9
  got_enc, got_dec = _flat(mu["encoder"]) / (1 - b1), _flat(
      mu["decoder"]) / (1 - b1)
  scale = np.abs(want_enc).max()
  np.testing.assert_allclose(got_enc, want_enc, rtol=1e-4, atol=1e-5 * scale)
  scale = np.abs(want_dec).max()
  np.testing.assert_allclose(got_dec, want_dec, rtol=1e-4, atol=1e-5 * scale)
  for t in w:
    np.testing.assert_allclose(hist[0][f"weight/{t}"], w[t], rtol=1e-5)
  cos = dot / np.sqrt((g1 @ g1) * (g2 @ g2))
  np.testing.assert_allclose(hist[0]["cos/semseg|depth"], cos, rtol=1e-4)


def _one_step(cfg, devices, duplicate_rows=False):
  exp, defs, state, shardings = train_testing.setup_state(cfg, devices)
  batch = next(pipeline.make_train_iter(
      cfg.data, list(exp.tasks), global_batch_size=cfg.train.batch_size,
      seed=cfg.seed))
  if duplicate_rows:
    batch = {k: np.repeat(v[:len(v) // 2], 2, axis=0)
             for k, v in batch.items()}
  fn = loop.compile_train_step(exp, defs, shardings)
  acc = jax.device_put(step_lib.zero_acc(exp.tasks, exp.weighting),
                       shd.replicated(exp.mesh))
  state, metrics, acc = fn(state, shd.global_batch(batch, exp.mesh), acc)
  assert float(acc["count"]) == 1 and set(acc) - {"count"} <= set(metrics)
  sharded = [not s.is_fully_replicated
             for s in jax.tree.leaves(shardings["params"])]
  return ({k: float(v) for k, v in jax.device_get(metrics).items()},
          train_testing.host_copy(
              {k: state[k] for k in ("params", "wstate", "opt")}),
          any(sharded))


def _assert_same(got, want, what, rtol=1e-4):
  for k in want[0]:
    np.testing.assert_allclose(got[0][k], want[0][k], rtol=rtol, atol=1e-6,
                               err_msg=f"{what}: {k}")
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(got[1]),
                          jax.tree.leaves(want[1])):
    # Adam's first update moves each parameter by about lr; rounding noise
    # in a near-zero gradient entry can flip it, so params get an lr-scale
    # tolerance, the moments a per-leaf relative one.
    scale = float(np.max(np.abs(y), initial=0.0))
    np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * scale + 1e-9,
                               err_msg=f"{what}: {shd.path_str(path)}")


@pytest.mark.parametrize("mode,name", [
    ("params", "cagrad"),
    pytest.param("representation", "mgda_ub", marks=pytest.mark.slow)])
def test_accumulation_equals_one_step(data_dir, mode, name):
  """Two identical micro-batches (rows duplicated) give the one-step
  result: params mode sums the per-task gradients before the Gram matrix,
  representation mode adds the micro-batches' Gram matrices / k^2."""
  cfg = method_config(data_dir, name, mode=mode)
  want = _one_step(cfg, jax.devices()[:1], duplicate_rows=True)
  cfg.train.grad_accum = 2
  got = _one_step(cfg, jax.devices()[:1], duplicate_rows=True)
  _assert_same(got, want, f"{name} {mode} grad_accum=2")


@pytest.mark.parametrize("mode,name", [
    pytest.param("params", "nash_mtl", marks=pytest.mark.slow),
    ("representation", "imtl")])
def test_two_devices_equal_one(data_dir, mode, name):
  """Data-parallel batch and fsdp-sharded params (so the per-task gradients
  are sharded too) on 2 devices give the 1-device step."""
  cfg = method_config(data_dir, name, mode=mode)
  want = _one_step(cfg, jax.devices()[:1])
  cfg.sharding.strategy = "fsdp"
  cfg.sharding.min_size = 64
  got = _one_step(cfg, jax.devices()[:2])
  assert got[2] and not want[2], "fsdp should shard some parameters"
  _assert_same(got, want, f"{name} {mode} on 2 devices")


@pytest.mark.slow
def test_method_state_resumes_exactly(data_dir, tmp_path):
  """GradNorm's weights and Adam moments live in the checkpointed state: a
  run killed after its step-2 checkpoint and resumed matches a straight
  run in parameters and method state."""
  cfg = method_config(data_dir, "gradnorm")
  cfg.train.steps = cfg.optim.total_steps = 4
  cfg.train.ckpt_every = 2
  cfg.train.eval_every = 100
  loop.train_and_evaluate(cfg, str(tmp_path / "straight"))
  with pytest.raises(KeyboardInterrupt), train_testing.killed_at(3):
    loop.train_and_evaluate(cfg, str(tmp_path / "resumed"))
  loop.train_and_evaluate(cfg, str(tmp_path / "resumed"))
  exp, _, state, shardings = train_testing.setup_state(cfg)
  got = {}
  for run in ("straight", "resumed"):
    mngr = ckpt.manager(tmp_path / run / "checkpoints", read_only=True)
    assert mngr.latest_step() == 4
    got[run] = train_testing.host_copy(ckpt.restore(mngr, state, shardings))
    mngr.close()
  w = got["straight"]["wstate"]["w"]
  assert np.all(np.isfinite(w)) and not np.allclose(w, 1.0), w
  for part in ("params", "wstate", "opt"):
    for x, y in zip(jax.tree.leaves(got["resumed"][part]),
                    jax.tree.leaves(got["straight"][part])):
      np.testing.assert_array_equal(x, y, err_msg=part)


def test_config_check_names_both_kinds(data_dir):
  cfg = method_config(data_dir, "nash_mtl")
  config_check.validate(cfg)
  cfg.weighting.name = "nash"
  with pytest.raises(config_check.ConfigError,
                     match=r"config.weighting.name: .*loss weightings: .*lps"
                           r".*gradient methods: .*nash_mtl"):
    config_check.validate(cfg)
