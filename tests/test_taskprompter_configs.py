"""The TaskPrompter configs: the paper recipe against the reference's own
resolved config (golden sidecars), full-size models against the reference
parameter counts, and the loss + optimiser recipe against
``taskprompter_losses`` (depth ignore -1, no deep supervision, clip-norm 10
then coupled-L2 Adam with poly 0.9), all built from the config files."""

from __future__ import annotations

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtdense_jax import config_check
from mtdense_jax.train import loop
from mtdense_jax.train import optim
from mtdense_jax.train import state as state_lib
from mtdense_jax.train import step as step_lib
from tests.conftest import REPO

GOLDEN_OF = {"nyud": "taskprompter_nyud_a", "pascal": "taskprompter_pascal_a"}
NUM_CLASSES = {"semseg": 40, "human_parts": 7}
N_OUT = {"nyud": {"semseg": 40, "depth": 1, "normals": 3, "edge": 1},
         "pascal": {"semseg": 21, "human_parts": 7, "sal": 2, "normals": 3,
                    "edge": 1}}


def load(db: str, arg: str = ""):
  spec = str(REPO / "configs" / f"{db}_taskprompter.py")
  return config_check.load_config_file(spec + (f":{arg}" if arg else ""))


@pytest.mark.parametrize("db", sorted(GOLDEN_OF))
def test_paper_recipe_matches_reference_config(db, golden):
  _, meta = golden(GOLDEN_OF[db])
  _, losses = golden("taskprompter_losses")
  ref = meta["config"]["p_after_build"]
  cfg = load(db)
  config_check.validate(cfg)
  assert list(cfg.tasks) == ref["TASKS"]["NAMES"]
  assert "tasks" not in cfg.model.encoder_kw  # build_model passes config.tasks
  assert cfg.optim.name == ref["optimizer"] == "adam"
  assert cfg.optim.lr == ref["optimizer_kwargs"]["lr"]
  assert cfg.optim.weight_decay == ref["optimizer_kwargs"]["weight_decay"]
  assert cfg.optim.schedule == ref["scheduler"]
  assert cfg.optim.total_steps == cfg.train.steps == ref["max_iter"]
  assert cfg.optim.grad_clip_norm == ref["grad_clip_param"]["max_norm"]
  assert cfg.train.eval_every == cfg.train.ckpt_every == ref["val_interval"]
  assert cfg.loss.aux_weight == 0.0 and not ref["intermediate_supervision"]
  assert cfg.model.encoder_kw.prompt_len == ref["prompt_len"]
  weights = loop.build_weighting(cfg).base_weights
  assert weights == {t: float(w)
                     for t, w in ref["loss_kwargs"]["loss_weights"].items()}
  assert weights == losses["yaml_loss_weights"][db]
  tasks = loop.build_tasks(cfg, {"num_classes": NUM_CLASSES})
  if "depth" in tasks:
    assert tasks["depth"].invalid_value == -1


def test_pascal_vitb_recipe(golden):
  _, losses = golden("taskprompter_losses")
  cfg = load("pascal", "backbone=B")
  assert cfg.model.variant == "B/16"
  assert cfg.optim.lr == losses["yaml_optimizer_kwargs"]["pascal_vitb"]["lr"]
  with pytest.raises(config_check.ConfigError, match="backbone"):
    load("pascal", "backbone=S")


# Parameter counts of the reference models built with pretrained=False
# (shared/notes/taskprompter_architecture.md section 5), in millions.
FULL_SIZE = [("nyud", "", 513.5), ("pascal", "", 401.1),
             ("pascal", "backbone=B", 418.3)]


@pytest.mark.slow   # 30-70 s each: abstract init of a 300M+ parameter ViT.
@pytest.mark.parametrize("db,arg,millions", FULL_SIZE)
def test_full_size_models_match_reference_parameter_counts(db, arg, millions):
  cfg = load(db, arg)
  factory = state_lib.model_factory(cfg.model, N_OUT[db],
                                    tuple(cfg.data.image_size), 0)
  model = nnx.eval_shape(factory)
  n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert abs(n / 1e6 - millions) < 0.05, n


def _nhwc(x):
  return np.transpose(x, (0, 2, 3, 1))


@pytest.mark.parametrize("db", sorted(GOLDEN_OF))
def test_losses_golden(db, golden):
  """Per-task losses and the weighted total, as the trainer computes them
  (config tasks + task_kw + weighting, step.loss_terms and step.objective,
  the one place the total is built)."""
  npz, meta = golden("taskprompter_losses")
  cfg = load(db)
  tasks = loop.build_tasks(cfg, {"num_classes": NUM_CLASSES})
  case = meta["cases"][f"multitask_{db}"]
  inputs, outputs = case["inputs"], case["outputs"]
  preds = {"final": {t: jnp.asarray(_nhwc(npz[inputs[f"pred/{t}"]]))
                     for t in tasks}}
  batch = {t: jnp.asarray(_nhwc(npz[inputs[f"label/{t}"]]).astype(
      tasks[t].label_dtype)) for t in tasks}
  loss_cfg = step_lib.LossConfig.from_config(cfg.loss)
  weighting = loop.build_weighting(cfg)

  def total_fn(p, b):
    terms = step_lib.loss_terms(tasks, p, b, loss_cfg)
    total, seen, _, _ = step_lib.objective(
        terms, weighting, {}, {}, jnp.zeros((), jnp.int32), loss_cfg)
    return total, seen

  total, losses = jax.jit(total_fn)(preds, batch)
  for t in tasks:
    np.testing.assert_allclose(losses[t], npz[outputs[t]["key"]], rtol=1e-5,
                               err_msg=f"{db}/{t}")
  np.testing.assert_allclose(total, npz[outputs["total"]["key"]], rtol=1e-5)
  if db == "nyud":   # Depth ignores -1 only: 255 is a valid depth.
    for name in ("depth", "depth_255_is_valid"):
      got = tasks["depth"].loss(jnp.asarray(_nhwc(npz[f"{name}/pred"])),
                                jnp.asarray(_nhwc(npz[f"{name}/label"])))
      np.testing.assert_allclose(got, npz[f"{name}/loss"], rtol=1e-5,
                                 err_msg=name)


@pytest.mark.parametrize("db", sorted(GOLDEN_OF))
def test_optimiser_golden(db, golden):
  """clip_grad_norm_(10) -> Adam(coupled L2) -> poly(0.9), 4 steps, from
  the config's optim block."""
  npz, _ = golden("taskprompter_losses")
  cfg = load(db)
  tx, schedule = optim.make_optimizer(cfg.optim)
  pre = f"optim_{db}/"
  names = ("0.weight", "0.bias", "1.weight", "1.bias")
  params = {n: jnp.asarray(npz[pre + "init/" + n]) for n in names}
  state = tx.init(params)
  update = jax.jit(tx.update)
  norms = npz[pre + "total_norm_before_clip"]
  assert norms.max() > cfg.optim.grad_clip_norm > norms.min()  # Both cases.
  for k in range(4):
    grads = {n: jnp.asarray(npz[pre + "grad/" + n][k]) for n in names}
    np.testing.assert_allclose(optax.global_norm(grads), norms[k], rtol=1e-6)
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(float(schedule(k)),
                               npz[pre + "lr_used_at_step"][k], rtol=1e-6)
    for n in names:
      ref, init = npz[pre + "after_step/" + n][k], npz[pre + "init/" + n]
      np.testing.assert_allclose(params[n], ref, rtol=1e-6, err_msg=n)
      np.testing.assert_allclose(params[n] - init, ref - init, atol=1e-7,
                                 rtol=0, err_msg=n)


@pytest.mark.parametrize("arg", ["", "runlocal"])
def test_synthetic_config_builds_at_its_image_size(arg):
  """The token grid of the configured size fits the channel windows, and
  the encoder's prompts follow config.tasks."""
  cfg = load("synthetic", arg)
  config_check.validate(cfg)
  n_out = {"semseg": 8, "depth": 1, "normals": 3, "edge": 1}
  factory = state_lib.model_factory(cfg.model, {t: n_out[t] for t in
                                                cfg.tasks},
                                    tuple(cfg.data.image_size), 0)
  model = nnx.eval_shape(factory)
  assert model.encoder.tasks == tuple(cfg.tasks)
  assert cfg.loss.aux_weight == 0.0
