"""The MT-CP configs: the released recipe's values (Klodivio355/MT-CP@08c068e
configs/*.yml and main_CL_*.py, ../shared/notes/methods.md a.2), the
per-epoch poly schedule, the single-task baselines, and every config's model
built abstractly (nnx.eval_shape: no weights at 480x640)."""

from __future__ import annotations

from flax import nnx
import jax
import numpy as np
import pytest

from mtdense_jax import config_check
from mtdense_jax.train import loop
from mtdense_jax.train import optim
from mtdense_jax.train import state as state_lib
from tests.conftest import REPO

N_OUT = {"semseg": 40, "depth": 1, "normals": 3, "human_parts": 7, "sal": 1}
REF = {"nyud": dict(tasks=("semseg", "depth", "normals"), size=(480, 640),
                    images=795, eval_epochs=10, scale=(1.0, 1.5)),
       "pascal": dict(tasks=("semseg", "human_parts", "sal"),
                      size=(512, 512), images=4998, eval_epochs=25,
                      scale=(0.75, 1.25))}


def load(name: str, arg: str = ""):
  spec = str(REPO / "configs" / f"{name}_mtcp.py")
  return config_check.load_config_file(spec + (f":{arg}" if arg else ""))


@pytest.mark.parametrize("db", sorted(REF))
@pytest.mark.parametrize("devices", [1, 4])
def test_released_recipe(db, devices):
  ref = REF[db]
  cfg = load(db, f"devices={devices}")
  config_check.validate(cfg)
  assert tuple(cfg.tasks) == ref["tasks"]
  assert tuple(cfg.data.image_size) == ref["size"]
  assert tuple(cfg.data.scale_range) == ref["scale"] and cfg.data.flip
  assert cfg.data.config == "mtcp"
  assert cfg.model.encoder == "mask2former" and cfg.model.variant == "swin_s"
  kw = cfg.model.decoder_kw
  assert (kw.embed_dim, kw.dim, tuple(kw.depths), tuple(kw.num_heads),
          kw.window_size) == (256, 256, (1, 2, 1), (2, 2, 2), 7)
  assert cfg.optim.name == "adamw" and cfg.optim.lr == 5e-5
  assert cfg.optim.weight_decay == 1e-4
  assert (cfg.optim.b1, cfg.optim.b2) == (0.9, 0.999)
  assert cfg.optim.schedule == "poly" and cfg.optim.poly_power == 0.9
  assert cfg.optim.grad_clip_norm is None and cfg.optim.warmup_steps == 0
  batch = 2 * devices
  per_epoch = ref["images"] // batch
  assert cfg.train.batch_size == batch
  assert cfg.optim.decay_every == per_epoch
  assert cfg.train.steps == cfg.optim.total_steps == 100 * per_epoch
  assert cfg.train.eval_every == ref["eval_epochs"] * per_epoch
  assert cfg.train.keep_best_metric == "semseg/mIoU"
  assert cfg.train.keep_best_mode == "max"
  assert cfg.loss.aux_mode == "outside" and cfg.loss.aux_weight == 0.5
  assert cfg.eval.protocol == "mtl"
  weights = loop.build_weighting(cfg).base_weights
  assert weights == {t: 1.0 for t in ref["tasks"]}
  tasks = loop.build_tasks(cfg, {"num_classes": {"semseg": 40,
                                                 "human_parts": 7}})
  if db == "nyud":
    assert tasks["depth"].max_depth == tasks["depth"].loss_max_depth \
        == 6.5535
    assert tasks["normals"].loss_type == "mse"
    assert dict(kw.heads) == {"depth": "depth"}
    assert dict(kw.head_upsample) == {"semseg": 2, "depth": 2}
  else:
    assert tasks["sal"].loss_type == "hed_bce"
    assert tasks["sal"].num_outputs == 1
    assert dict(kw.heads) == {}
    assert dict(kw.head_upsample) == {"semseg": 4, "human_parts": 4}


def test_poly_is_stepped_per_epoch():
  """lr at every step of epoch e is 5e-5 (1 - e/100)^0.9."""
  cfg = load("nyud")
  _, schedule = optim.make_optimizer(cfg.optim)
  per_epoch = cfg.optim.decay_every
  for e in (0, 1, 37, 99):
    want = 5e-5 * (1 - e / 100) ** 0.9
    for s in (e * per_epoch, e * per_epoch + per_epoch - 1):
      np.testing.assert_allclose(float(schedule(s)), want, rtol=1e-5)
  cfg.optim.decay_every = 0
  with pytest.raises(ValueError, match="decay_every"):
    optim.make_schedule(cfg.optim)


@pytest.mark.parametrize("db,task", [("nyud", "depth"), ("nyud", "normals"),
                                     ("pascal", "sal"),
                                     ("pascal", "human_parts")])
def test_single_task_baselines(db, task):
  cfg = load(db, f"task={task}")
  config_check.validate(cfg)
  assert tuple(cfg.tasks) == (task,)
  assert set(cfg.model.decoder_kw.heads) <= {task}
  assert set(cfg.task_kw) <= {task}
  assert list(loop.build_weighting(cfg).base_weights) == [task]
  with pytest.raises(Exception, match="task="):
    load(db, "task=edge")


def _abstract_model(cfg):
  factory = state_lib.model_factory(
      cfg.model, {t: N_OUT[t] for t in cfg.tasks},
      tuple(cfg.data.image_size), 0)
  return nnx.eval_shape(factory)


@pytest.mark.parametrize("spec", ["nyud:runlocal", "pascal:runlocal",
                                  "nyud:task=semseg,runlocal",
                                  "synthetic:runlocal", "synthetic:"])
def test_small_configs_build(spec):
  name, _, arg = spec.partition(":")
  cfg = load(name, arg)
  config_check.validate(cfg)
  model = _abstract_model(cfg)
  assert model.decoder.tasks == tuple(cfg.tasks)
  assert model.decoder.single == (len(cfg.tasks) == 1)


@pytest.mark.slow   # Abstract init of the full Swin-S Mask2Former: ~1 min.
@pytest.mark.parametrize("spec", ["nyud:", "pascal:", "nyud:task=depth"])
def test_full_size_configs_build(spec):
  name, _, arg = spec.partition(":")
  cfg = load(name, arg)
  model = _abstract_model(cfg)
  n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert n > 60e6, n   # Swin-S Mask2Former alone is ~68M.
  # The single-task model is the reference SingleTaskModel: Swin stage 0
  # straight into the head.
  want = (256,) if len(cfg.tasks) == 1 else (256, 512, 1024)
  assert model.decoder.branches[cfg.tasks[0]].swin.dims == want


@pytest.mark.parametrize("db", ["nyud", "pascal"])
def test_released_aux_bugs_flag(db):
  """One switch, off by default, turns on exactly the released loop's
  deep-supervision bugs for that dataset's tasks (methods.md a.2)."""
  spec = str(REPO / "configs" / f"{db}_mtcp.py")
  off = config_check.load_config_file(spec)
  on = config_check.load_config_file(spec + ":released_aux_bugs=True")
  assert not off.loss.aux_loss_from and not off.loss.aux_reduce
  want = ({"aux_loss_from": {"normals": "depth"}, "aux_reduce": {}}
          if db == "nyud" else
          {"aux_loss_from": {}, "aux_reduce": {"human_parts": "last"}})
  assert on.loss.aux_loss_from.to_dict() == want["aux_loss_from"]
  assert on.loss.aux_reduce.to_dict() == want["aux_reduce"]
  assert on.loss.aux_mode == off.loss.aux_mode == "outside"
  assert on.loss.aux_weight == off.loss.aux_weight == 0.5
