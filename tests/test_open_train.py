"""The open train state: optimizer groups, freezing, a non-trainable
collection, model-returned losses, aux terms inside/outside the weighting,
and old-layout (nnx.Variable leaf) checkpoints. The model is the toy plugin
pair tests/toy_encoder.py + tests/toy_decoder.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtdense_jax import registry
from mtdense_jax.train import checkpointing as ckpt
from mtdense_jax.train import state as state_lib
from mtdense_jax.train import step as step_lib
from tests import test_train
from tests import train_testing

ENC_LR, DEC_LR = 1e-2, 1e-3


def toy_config(data_dir, **train):
  cfg = test_train.tiny_config(data_dir, **train)
  cfg.tasks = ("semseg", "depth")
  cfg.model.encoder = "tests.toy_encoder"
  cfg.model.decoder = "tests.toy_decoder"
  cfg.model.encoder_kw = {}
  cfg.model.decoder_kw = {}
  cfg.weighting.name = "fixed"
  cfg.optim.name = "adam"
  cfg.optim.weight_decay = 0.0
  cfg.optim.grad_clip_norm = None
  cfg.optim.schedule = "constant"
  cfg.optim.warmup_steps = 0
  cfg.optim.lr = DEC_LR
  cfg.optim.groups = ({"name": "enc", "match": "^encoder/", "lr": ENC_LR},)
  cfg.optim.freeze = ("^decoder/aux_heads/depth/",)
  return cfg


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


def test_groups_freeze_collection_and_model_loss(data_dir):
  cfg = toy_config(data_dir)
  exp, defs, state, shardings = train_testing.setup_state(cfg)
  # Pure arrays, the teacher collection carried untrained.
  assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(state))
  assert "teacher" in state["batch_stats"]["decoder"]
  assert "teacher" not in state["params"]["decoder"]
  init = train_testing.host_copy(state)
  state, hist1 = train_testing.steps(exp, defs, shardings, state, 1, seed=0)
  one = train_testing.host_copy(state)
  state, hist = train_testing.steps(exp, defs, shardings, state, 4, seed=1)
  five = train_testing.host_copy(state)

  # Bit-identical after 5 steps: the collection and the frozen-by-rule head.
  np.testing.assert_array_equal(five["batch_stats"]["decoder"]["teacher"],
                                init["batch_stats"]["decoder"]["teacher"])
  for k, v in init["params"]["decoder"]["aux_heads"]["depth"].items():
    np.testing.assert_array_equal(
        five["params"]["decoder"]["aux_heads"]["depth"][k], v)
  # Adam's first step moves every parameter with a non-tiny gradient by
  # ~lr (m/sqrt(v) = sign(g)): each group used its own lr.
  enc = [np.abs(one["params"]["encoder"][m][k] -
                init["params"]["encoder"][m][k]).max()
         for m in ("embed", "block") for k in ("kernel", "bias")]
  dec = [np.abs(one["params"]["decoder"]["heads"][t][k] -
                init["params"]["decoder"]["heads"][t][k]).max()
         for t in ("semseg", "depth") for k in ("kernel", "bias")]
  np.testing.assert_allclose(enc, ENC_LR, rtol=1e-3)
  np.testing.assert_allclose(dec, DEC_LR, rtol=1e-3)
  # The model-returned loss: 0 while student == teacher (step 1), then > 0
  # and part of the total (fixed weights 1, aux inside).
  assert hist1[0]["extra"] == 0.0
  last = hist[-1]
  assert last["extra"] > 0
  np.testing.assert_allclose(
      last["total"], last["loss/semseg"] + last["loss/depth"] + last["extra"],
      rtol=1e-6)


class _SquareTask:
  def loss(self, pred, label):
    return jnp.mean((pred - label) ** 2)


def _terms_case():
  tasks = {"a": _SquareTask(), "b": _SquareTask()}
  batch = {"a": jnp.zeros(4), "b": jnp.zeros(4)}
  preds = {"final": {"a": jnp.full(4, 1.0), "b": jnp.full(4, 2.0)},
           "aux": {"s1": {"a": jnp.full(4, 3.0), "b": jnp.full(4, 1.0)},
                   "s2": {"a": jnp.full(4, 2.0)}},
           "losses": {"reg": jnp.asarray(0.25)}}
  return tasks, batch, preds


@pytest.mark.parametrize("mode", ["inside", "outside"])
def test_aux_inside_vs_outside_weighting(mode):
  """F = (1, 4); aux losses s1 = (9, 1), s2 = (4, -); per-head weights
  s1: 0.5, s2 (default aux_weight): 0.25 -> A = (5.5, 0.5); R = 2 * 0.25.
  inside:  sum_t w_t (F_t + A_t) + R = 2 * 6.5 + 3 * 4.5 + 0.5 = 27
  outside: sum_t w_t F_t + sum_t A_t + R = 2 + 12 + 6 + 0.5 = 20.5"""
  tasks, batch, preds = _terms_case()
  cfg = step_lib.LossConfig(aux_weight=0.25, aux_weights={"s1": 0.5},
                            aux_mode=mode, extra_weights={"reg": 2.0})
  weighting = registry.lookup("weighting", "fixed").Weighting(
      weights={"a": 2.0, "b": 3.0})
  terms = step_lib.loss_terms(tasks, preds, batch, cfg)
  total, seen, _, _ = step_lib.objective(terms, weighting, {}, {},
                                         jnp.zeros((), jnp.int32), cfg)
  expect = {"inside": 27.0, "outside": 20.5}[mode]
  np.testing.assert_allclose(float(total), expect, rtol=1e-6)
  np.testing.assert_allclose(float(seen["a"]),
                             {"inside": 6.5, "outside": 1.0}[mode])


def test_mtcp_lps_finals_plus_half_aux():
  """MT-CP: total = LPS(finals) + sum_t aux_t / 2."""
  tasks, batch, preds = _terms_case()
  del preds["losses"], preds["aux"]["s2"]
  cfg = step_lib.LossConfig(aux_weight=0.5, aux_mode="outside")
  lps = registry.lookup("weighting", "lps").Weighting()
  wp, ws = lps.init(list(tasks))
  step = jnp.zeros((), jnp.int32)
  total, _, _, _ = step_lib.objective(
      step_lib.loss_terms(tasks, preds, batch, cfg), lps, wp, ws, step, cfg)
  weighted, _, _ = lps(wp, ws, {"a": jnp.asarray(1.0),
                                "b": jnp.asarray(4.0)}, step)
  np.testing.assert_allclose(float(total), float(weighted) + (9 + 1) / 2,
                             rtol=1e-6)


def test_old_layout_checkpoint_restores(data_dir, tmp_path):
  """A checkpoint written with nnx.Variable leaves (the train state before
  it held pure arrays) restores into the pure-array state, params-only and
  in full (optimizer moments included)."""
  cfg = toy_config(data_dir)
  exp, defs, state, shardings = train_testing.setup_state(cfg)
  state, _ = train_testing.steps(exp, defs, shardings, state, 1, seed=0)
  new = train_testing.host_copy(state)

  def wrap(tree, cls):
    return jax.tree.map(cls, tree)
  old_params = wrap(new["params"], lambda x: state_lib.nnx.Param(x))
  old_layout = jax.tree.structure(exp.tx.init(
      {"model": old_params, "weighting": {}}))
  assert any("value" in str(p) for p, _ in
             jax.tree_util.tree_flatten_with_path(old_params)[0])
  old = {**new, "params": old_params,
         "batch_stats": wrap(new["batch_stats"],
                             lambda x: state_lib.nnx.BatchStat(x)),
         "opt": jax.tree.unflatten(old_layout, jax.tree.leaves(new["opt"]))}
  mngr = ckpt.manager(tmp_path / "checkpoints", async_save=False)
  ckpt.save(mngr, 1, old)
  mngr.wait_until_finished()
  restored = train_testing.host_copy(ckpt.restore(mngr, state, shardings))
  mngr.close()
  jax.tree.map(np.testing.assert_array_equal, restored, new)
  params, step = ckpt.restore_params(
      tmp_path / "checkpoints",
      ckpt.abstract({"params": state["params"],
                     "batch_stats": state["batch_stats"]},
                    {"params": shardings["params"],
                     "batch_stats": shardings["batch_stats"]}))
  assert step == 1
  jax.tree.map(np.testing.assert_array_equal,
               train_testing.host_copy(params["params"]), new["params"])


def test_layer_decay_and_default_is_plain_optimizer():
  """lr of block i is rate^(L - i), of the embedding rate^(L + 1), of the
  rest 1; without groups/freeze/decay the optimizer (and its state layout)
  is make_optimizer's."""
  from mtdense_jax.train import optim  # pylint: disable=g-import-not-at-top
  base = {"name": "adam", "lr": 1.0, "schedule": "constant",
          "total_steps": 10}
  params = {"model": {"embed": jnp.ones(2),
                      "blocks": {0: jnp.ones(2), 1: jnp.ones(2)},
                      "head": jnp.ones(2)}}
  grads = jax.tree.map(jnp.ones_like, params)
  tx, _ = optim.make_model_optimizer(
      {**base, "layer_decay": {"rate": 0.5, "num_layers": 2,
                               "regex": r"^blocks/(\d+)",
                               "embed_regex": "^embed"}})
  upd, _ = tx.update(grads, tx.init(params), params)
  got = {k: float(jnp.abs(v).max()) for k, v in
         {"embed": upd["model"]["embed"], "b0": upd["model"]["blocks"][0],
          "b1": upd["model"]["blocks"][1], "head": upd["model"]["head"]}
         .items()}
  np.testing.assert_allclose(
      [got["embed"], got["b0"], got["b1"], got["head"]],
      [0.125, 0.25, 0.5, 1.0], rtol=1e-4)   # Adam: |m/sqrt(v)| = 1 - ~7e-6
  plain, _ = optim.make_optimizer(base)
  mine, _ = optim.make_model_optimizer(base)
  assert (jax.tree.structure(plain.init(params)) ==
          jax.tree.structure(mine.init(params)))
