"""One iteration of each ECS step through the framework's own train step,
against ../shared/golden/ecs_train_a (the reference loops replayed statement
by statement), for the reference coefficients and for amplified ones
(``boosted``) that make every term visible.

The stages come from configs/pascal_ecs.py ``stages`` (the same code the
configs use): optimizer groups (deltas with/without decay, gate logits AdamW 0.1 / wd
0.01 with only their gradients clipped), the fixed loss weights and the
model-returned L0 / activation losses with their coefficients.
Tolerances (sidecar): masks exact; losses rtol 1e-5; gradients atol 1e-6 +
rtol 1e-4 (atol raised to 1e-4 x the tensor's largest |gradient| where that
is larger: float32 summation noise); updated states atol 1e-6 + rtol 1e-5,
except entries whose gradient is rounding noise (see `_cmp`). Steps 2 and 3
start from the golden deltas of the step before."""

from __future__ import annotations

import pathlib

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax
import pytest

from mtdense_jax import config_defaults
from mtdense_jax.models.decoders import ecs_adapter
from mtdense_jax.models.encoders import ecs_vit
from mtdense_jax.train import loop
from mtdense_jax.train import sharding as shd
from mtdense_jax.train import stages as stages_lib
from mtdense_jax.train import state as state_lib
from mtdense_jax.train import step as step_lib
from tests import ecs_testing as et

GRAD_TOL = dict(atol=1e-6, rtol=1e-4)
# Gradients of a tensor are also allowed 1e-4 of the tensor's largest
# |gradient| (float32 summation-order noise scales with it: after the
# boosted Step 1, a few entries of the patch and qkv kernels' Step 2
# gradients differ by 1.6e-6 - 3.4e-6 where the largest entry is ~5e-2).
GRAD_SCALE_ATOL = 1e-4
STATE_TOL = dict(atol=1e-6, rtol=1e-5)
SUB = et.SUB
# The recipe helper every ECS config uses.
ecs_recipe = config_defaults.load_module(et.REPO / "configs" / "pascal_ecs.py")


def _config(meta, variant):
  cfgj, coef = meta["config"], meta["variants"][variant]["coefficients"]
  c = config_defaults.base_config()
  c.tasks = (et.BASE, SUB)
  c.data.image_size = tuple(cfgj["image_hw"])
  model = et.model_config({**cfgj, "dim": cfgj["dim"]}, mode="dense")
  c.model.encoder, c.model.variant = model["encoder"], model["variant"]
  c.model.encoder_kw = mlc.ConfigDict({**model["encoder_kw"],
                                       "act_penalty": False,
                                       "drop_path_rate": 0.0})
  c.model.decoder = model["decoder"]
  c.model.decoder_kw = mlc.ConfigDict(model["decoder_kw"])
  c.weighting.name = "fixed"
  w = cfgj["sub_head"]["loss_weight"]
  c.stages = ecs_recipe.stages(
      et.BASE, (SUB,), steps=(1, 1, 1, 1), loss_weights={SUB: w},
      lr={SUB: coef["lr"]}, step3_lr={SUB: coef["step3_lr"]},
      sparsity_pen={SUB: coef["sparsity_pen"]},
      act_coef={SUB: coef["step3_act_coef"]}, base_lr=1e-5, base_warmup=0,
      base_drop_path=0.0, depth=cfgj["depth"], delta_wd=coef["wd"],
      alpha_clip=coef["max_grad_norm"])
  return c


def _names(model):
  enc = {"module." + ecs_vit.torch_name(n): n for n in model.encoder.shapes}
  head = {"module." + ecs_adapter.torch_name(SUB, n): n
          for n in model.decoder.heads[SUB].p}
  return enc, head


def _experiment(cfg, stage):
  scfg = stages_lib.stage_config(cfg, cfg.stages[stage],
                                    pathlib.Path("/nonexistent"))
  meta = {"tasks": list(cfg.tasks), "num_classes": {et.BASE: 21, SUB: 7}}
  mesh = shd.make_mesh(None, jax.devices()[:1])
  exp = loop.build_experiment(scfg, meta, mesh)
  defs, _, _ = state_lib.model_defs(exp.factory, loop.trainable(scfg))
  return scfg, exp, defs


def _fresh_state(exp, params, stats):
  wparams, wstate = exp.weighting.init(list(exp.tasks))
  return {"step": jnp.zeros((), jnp.int32), "params": params,
          "batch_stats": stats, "wparams": wparams, "wstate": wstate,
          "opt": exp.tx.init({"model": params, "weighting": wparams})}


def _step_and_grads(exp, defs, scfg, state, batch):
  """(train_step's new state and metrics, d total / d params and the model
  losses computed as train_step does, same rng) in one compiled call."""
  loss_cfg = step_lib.LossConfig.from_config(scfg.loss)

  def loss(params):
    preds, _ = step_lib._forward(defs, defs.train, params,  # pylint: disable=protected-access
                                 state["batch_stats"], batch["image"],
                                 nnx.Rngs(dropout=jax.random.key(0)))
    terms = step_lib.loss_terms(exp.tasks, preds, batch, loss_cfg)
    total, *_ = step_lib.objective(terms, exp.weighting, state["wparams"],
                                   state["wstate"], state["step"], loss_cfg)
    return total, preds["losses"]

  train = step_lib.bind(step_lib.train_step, defs=defs, tasks=exp.tasks,
                        weighting=exp.weighting, tx=exp.tx, loss_cfg=loss_cfg,
                        rng=jax.random.key(0))

  @jax.jit
  def both(state, batch):
    grads, losses = jax.grad(loss, has_aux=True)(state["params"])
    new, metrics, _ = train(state, batch, step_lib.zero_acc(exp.tasks))
    return new, metrics, grads, losses
  return both(state, batch)


def _cmp(tree_sub, g, prefix, names, tol, transform, grad_prefix=None,
         lr=0.0):
  """Compares every golden ``prefix + name``. With ``grad_prefix`` (an
  updated state), entries whose golden gradient is float noise (|g| <
  1e-6: e.g. the key bias of qkv, whose true gradient is exactly 0) are
  compared to within two Adam steps (2 lr: the first step g / (|g| + eps)
  of rounding noise may take either sign in either implementation)."""
  for tname, n in names.items():
    key = prefix + tname
    if key not in g:
      continue
    got, want = np.asarray(tree_sub[n]), transform(n, g[key])
    this_tol = tol
    if tol is GRAD_TOL:
      this_tol = dict(tol, atol=max(tol["atol"], GRAD_SCALE_ATOL *
                                    float(np.abs(want).max(initial=0))))
    if grad_prefix is not None and grad_prefix + tname in g:
      noise = np.abs(transform(n, g[grad_prefix + tname])) < 1e-6
      np.testing.assert_allclose(got[noise], want[noise], atol=2.05 * lr,
                                 rtol=0, err_msg=key + " (noise gradient)")
      got, want = got[~noise], want[~noise]
    np.testing.assert_allclose(got, want, **this_tol, err_msg=key)


# ~50 s each on 2 busy cores with a warm compile cache: the boosted
# coefficients exercise every term, the reference ones run as slow.
@pytest.mark.parametrize("variant", [pytest.param("ref",
                                                  marks=pytest.mark.slow),
                                     "boosted"])
def test_steps_1_2_3_one_iteration(golden, monkeypatch, variant):
  g, meta = golden("ecs_train_a")
  cfg = _config(meta, variant)
  w = meta["config"]["sub_head"]["loss_weight"]
  enc_t = ecs_vit.from_torch_layout
  head_t = ecs_adapter.from_torch_layout
  batch = {"image": jnp.asarray(np.transpose(g["input/image"], (0, 2, 3, 1))),
           SUB: jnp.asarray(np.transpose(g["input/label"], (0, 2, 3, 1)))}
  batch[et.BASE] = batch[SUB]
  v = variant

  # --- Step 1 -----------------------------------------------------------
  scfg, exp, defs = _experiment(cfg, 1)
  model = exp.factory()
  enc_names, head_names = _names(model)
  et.load(model, g, base="base_model/", base_head="base_model/",
          p0="init/p0/module.", p1="init/p1/module.",
          log_alpha="init/log_alpha/module.",
          log_alpha_tensor="init/log_alpha_tensor/module.")
  for tname, n in enc_names.items():   # p0 of the backbone is the base
    np.testing.assert_array_equal(enc_t(n, g["init/p0/" + tname]),
                                  np.asarray(model.encoder.base[n][...]))
  et.replay_noise(monkeypatch, g, f"{v}/step1/noise_u/module.",
                  f"{v}/step1/noise_u_tensor/module.")
  _, params, stats = state_lib.split_model(model, defs.trainable)
  state = _fresh_state(exp, params, stats)
  new, metrics, grads, losses = _step_and_grads(exp, defs, scfg, state,
                                                batch)
  l0 = float(losses[f"l0/{SUB}"]) * meta["variants"][v]["coefficients"][
      "sparsity_pen"]
  np.testing.assert_allclose(l0, float(g[f"{v}/step1/l0_term"]), rtol=1e-5)
  np.testing.assert_allclose(float(metrics[f"loss/{SUB}"]),
                             float(g[f"{v}/step1/task_loss"]), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["total"]),
                             float(g[f"{v}/step1/loss"]) + l0, rtol=1e-5)
  ge, gh = grads["encoder"], grads["decoder"]["heads"][SUB]["p"]
  _cmp(ge["delta"][SUB], g, f"{v}/step1/grad_p1/", enc_names, GRAD_TOL, enc_t)
  _cmp(gh, g, f"{v}/step1/grad_p1/", head_names, GRAD_TOL, head_t)
  _cmp(ge["log_alpha"][SUB], g, f"{v}/step1/grad_log_alpha/", enc_names,
       GRAD_TOL, enc_t)
  _cmp(ge["log_alpha_tensor"][SUB], g, f"{v}/step1/grad_log_alpha_tensor/",
       enc_names, GRAD_TOL, lambda n, a: a)
  gate_norm = optax.global_norm((ge["log_alpha"], ge["log_alpha_tensor"]))
  np.testing.assert_allclose(
      float(gate_norm), float(g[f"{v}/step1/alpha_grad_total_norm_before_clip"]),
      rtol=1e-4)
  pe, ph = new["params"]["encoder"], new["params"]["decoder"]["heads"][SUB]
  lr = meta["variants"][v]["coefficients"]["lr"]
  _cmp(pe["delta"][SUB], g, f"{v}/step1/after/p1/", enc_names, STATE_TOL,
       enc_t, f"{v}/step1/grad_p1/", lr)
  _cmp(ph["p"], g, f"{v}/step1/after/p1/", head_names, STATE_TOL, head_t,
       f"{v}/step1/grad_p1/", lr)
  _cmp(pe["log_alpha"][SUB], g, f"{v}/step1/after/log_alpha/", enc_names,
       STATE_TOL, enc_t, f"{v}/step1/grad_log_alpha/", ecs_recipe.ALPHA_LR)
  _cmp(pe["log_alpha_tensor"][SUB], g, f"{v}/step1/after/log_alpha_tensor/",
       enc_names, STATE_TOL, lambda n, a: a)
  # Base backbone and base head are frozen.
  for n in model.encoder.shapes:
    if n in params["encoder"]["base"]:
      np.testing.assert_array_equal(pe["base"][n],
                                    params["encoder"]["base"][n])

  # --- Steps 2 and 3: mask from Step 1's saved sample, fresh optimizer ---
  # Each starts from the golden deltas of the previous step (our own
  # differ within one Adam step where the gradient is rounding noise).
  after = new
  for stage, key in ((2, "step2"), (3, "step3")):
    scfg, exp, defs = _experiment(cfg, stage)
    prev = f"{v}/step{stage - 1}/after/p1/"
    params = jax.tree.map(np.asarray, after["params"])
    for tname, n in enc_names.items():
      params["encoder"]["delta"][SUB][n] = enc_t(n, g[prev + tname])
    for tname, n in head_names.items():
      params["decoder"]["heads"][SUB]["p"][n] = head_t(n, g[prev + tname])
    state = _fresh_state(exp, jax.tree.map(jnp.asarray, params),
                         after["batch_stats"])
    new, metrics, grads, losses = _step_and_grads(exp, defs, scfg, state,
                                                  batch)
    m = nnx.merge(defs.eval, state["params"], state["batch_stats"])
    mask = m.encoder.mask(SUB)
    for tname, n in enc_names.items():
      np.testing.assert_array_equal(np.asarray(mask[n]), enc_t(
          n, g[f"{v}/{key}/mask/{tname}"]).astype(bool), err_msg=tname)
    task_loss = w * float(metrics[f"loss/{SUB}"])
    if stage == 2:
      np.testing.assert_allclose(task_loss, float(g[f"{v}/step2/loss"]),
                                 rtol=1e-5)
      assert not losses
    else:
      np.testing.assert_allclose(task_loss,
                                 float(g[f"{v}/step3/task_loss_weighted"]),
                                 rtol=1e-5)
      np.testing.assert_allclose(float(losses[f"act_l1/{SUB}"]),
                                 float(g[f"{v}/step3/act_l1_total"]),
                                 rtol=1e-5)
      np.testing.assert_allclose(float(metrics["total"]),
                                 float(g[f"{v}/step3/loss"]), rtol=1e-5)
    ge, gh = grads["encoder"], grads["decoder"]["heads"][SUB]["p"]
    _cmp(ge["delta"][SUB], g, f"{v}/{key}/grad_p1/", enc_names, GRAD_TOL,
         enc_t)
    _cmp(gh, g, f"{v}/{key}/grad_p1/", head_names, GRAD_TOL, head_t)
    pe = new["params"]["encoder"]
    ph = new["params"]["decoder"]["heads"][SUB]
    lr = meta["variants"][v]["coefficients"][
        "lr" if stage == 2 else "step3_lr"]
    _cmp(pe["delta"][SUB], g, f"{v}/{key}/after/p1/", enc_names, STATE_TOL,
         enc_t, f"{v}/{key}/grad_p1/", lr)
    _cmp(ph["p"], g, f"{v}/{key}/after/p1/", head_names, STATE_TOL, head_t,
         f"{v}/{key}/grad_p1/", lr)
    # Gate logits are frozen after Step 1.
    np.testing.assert_array_equal(pe["log_alpha"][SUB]["b0_qkv_w"],
                                  after["params"]["encoder"]["log_alpha"][
                                      SUB]["b0_qkv_w"])
    after = new


def test_poly_schedule_clamped_past_horizon():
  from mtdense_jax.train import optim  # pylint: disable=g-import-not-at-top
  sched = optim.make_schedule({"lr": 2e-5, "schedule": "poly",
                               "total_steps": 120000, "poly_power": 0.9})
  assert float(sched(0)) == pytest.approx(2e-5)
  assert float(sched(1)) == pytest.approx(2e-5 * (1 - 1 / 120000) ** 0.9)
  assert float(sched(120000)) == 0.0 and float(sched(187000)) == 0.0


@pytest.mark.parametrize("name", [
    "synthetic_ecs", pytest.param("pascal_ecs", marks=pytest.mark.slow),
    pytest.param("nyud_ecs", marks=pytest.mark.slow)])  # ~20 s each
def test_configs_stage_groups(name):
  """Every ECS config validates; in every stage the right tensors train:
  base backbone and base head only in stage 0, gate logits only in Step 1,
  every sub-task tensor in its own task's group (per-task lr); the
  synthetic config adds the dense-delta reference stage."""
  from mtdense_jax import config_check  # pylint: disable=g-import-not-at-top
  from mtdense_jax.train import optim  # pylint: disable=g-import-not-at-top
  cfg = config_defaults.load_module(
      et.REPO / "configs" / f"{name}.py").get_config("runlocal")
  config_check.validate(cfg)
  base = cfg.model.encoder_kw.base_task
  subs = [t for t in cfg.tasks if t != base]
  meta = {"tasks": list(cfg.tasks),
          "num_classes": {"semseg": 40 if "nyud" in name else 21,
                          "human_parts": 7}}
  modes = []
  for i, stage in enumerate(cfg.stages):
    scfg = stages_lib.stage_config(cfg, stage, pathlib.Path("/x"))
    config_check.validate(scfg)
    modes.append(scfg.model.encoder_kw.mode)
    exp = loop.build_experiment(scfg, meta,
                                shd.make_mesh(None, jax.devices()[:1]))
    _, params, _ = state_lib.model_defs(exp.factory, loop.trainable(scfg))
    labels = optim.group_labels(params, scfg.optim.groups,
                                scfg.optim.freeze)
    flat = {"/".join(str(getattr(k, "key", k)) for k in path): lab
            for path, lab in jax.tree_util.tree_leaves_with_path(labels)}
    for path, lab in flat.items():
      parts = path.split("/")
      if parts[:2] == ["encoder", "base"] or path.startswith(
          f"decoder/heads/{base}/"):
        assert (lab == "frozen") == (i > 0), (i, path, lab)
      elif parts[1] in ("log_alpha", "log_alpha_tensor"):
        assert (lab == "frozen") == (stage["name"] != "step1"), (i, path)
        if stage["name"] == "step1":
          assert lab == f"{parts[2]}_gates", (path, lab)
      elif i > 0:
        task = parts[2]
        assert task in subs and lab.startswith(task + "_"), (path, lab)
        want_nd = path.endswith("_b") or parts[-1] in ("global_tokens",
                                                       "pos_emb")
        assert lab.endswith("_no_decay") == want_nd, (path, lab)
      else:
        assert lab == "frozen", (path, lab)
    jax.eval_shape(exp.tx.init, {"model": params, "weighting": {}})
  want = ["dense", "gates", "mask", "mask"]
  if name == "synthetic_ecs":
    want.insert(1, "delta")
  assert modes == want


@pytest.mark.parametrize("task,golden_name,kw", [
    ("human_parts", "human_parts", {"num_classes": 7}),
    ("semseg", "semseg", {"num_classes": 21}),
    ("sal", "sal", {}),
    ("edge", "edge", {}),
    ("normals", "normal", {"loss_type": "l1_raw"}),
])
def test_reference_losses(golden, task, golden_name, kw):
  """The task plugins with the options the ECS configs use reproduce the
  reference scripts' losses (ecs_losses_a; rtol 1e-6 as the sidecar
  suggests, 1e-6 absolute for float32 summation order)."""
  from tests import task_testing as tt  # pylint: disable=g-import-not-at-top
  g, meta = golden("ecs_losses_a")
  t = tt.plugin_task(task, **kw)
  got = float(t.loss(tt.jnhwc(g[f"{golden_name}/pred"]),
                     tt.jnhwc(g[f"{golden_name}/label"])))
  np.testing.assert_allclose(got, float(g[f"{golden_name}/loss"]),
                             rtol=1e-6, atol=1e-6)
  w = meta["losses"][golden_name]["weight_in_training_loss"]
  np.testing.assert_allclose(w * got, float(g[f"{golden_name}/weighted_loss"]),
                             rtol=1e-6, atol=1e-6 * w)
  if task in ecs_recipe.WEIGHTS:   # what configs/pascal_ecs.py trains with
    assert ecs_recipe.WEIGHTS[task] == w
