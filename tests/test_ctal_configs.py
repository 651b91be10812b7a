"""The CTAL configs: the paper recipes (Dimitri-Sinodinos/CTAL @ b2d3bb9
``configs/*/ctal.yml``, ``shared/notes/methods.md`` b.2-b.4), the models
they build (abstractly: ``nnx.eval_shape``, no 512x512 init) against the
parameter counts computed from the reference code, and the STL and
synthetic configs."""

from __future__ import annotations

from flax import nnx
import jax
import pytest

from mtdense_jax import config_check
from mtdense_jax import registry
from mtdense_jax.models import features as feats_lib
from mtdense_jax.models.decoders import ctal
from mtdense_jax.train import loop
from mtdense_jax.train import state as state_lib
from tests.conftest import REPO

# Reference TASKS.NUM_OUTPUT (code_{cnn,transformer}/config.py).
N_OUT = {"nyuv2": {"semseg": 13, "depth": 1, "normals": 3},
         "cityscapes": {"semseg": 19, "depth": 1},
         "pascal": {"semseg": 21, "normals": 3, "sal": 2, "edge": 1,
                    "human_parts": 7}}

RECIPES = {
    "nyuv2": dict(
        tasks=("semseg", "depth", "normals"), data="mtan_nyuv2",
        size=(288, 384), encoder="hrnet", variant="cnn", lr=1e-4, wd=1e-4,
        steps=200 * (795 // 8), clip=None,
        weights=dict(semseg=1.0, depth=1.0, normals=1.0)),
    "cityscapes": dict(
        tasks=("semseg", "depth"), data="mtan_cityscapes", size=(128, 256),
        encoder="hrnet", variant="cnn", lr=5e-4, wd=1e-4,
        steps=75 * (2975 // 8), clip=None,
        weights=dict(semseg=1.0, depth=10.0)),
    "pascal": dict(
        tasks=("semseg", "normals", "sal", "edge", "human_parts"),
        data="pascal_context", size=(512, 512), encoder="swin_v2",
        variant="transformer", lr=2e-5, wd=1e-5, steps=70 * (4998 // 8),
        clip=10.0, weights=dict(semseg=2.0, human_parts=2.0, sal=5.0,
                                edge=50.0, normals=10.0)),
}


def load(name: str, arg: str = ""):
  spec = str(REPO / "configs" / f"{name}.py")
  return config_check.load_config_file(spec + (f":{arg}" if arg else ""))


def validate(cfg) -> None:
  """Full validation, the dataset builder and eval protocol included."""
  assert cfg.data.name in registry.available("dataset"), cfg.data.name
  config_check.validate(cfg)


@pytest.mark.parametrize("db", sorted(RECIPES))
def test_paper_recipe(db):
  want = RECIPES[db]
  cfg = load(f"{db}_ctal")
  validate(cfg)
  assert tuple(cfg.tasks) == want["tasks"]
  assert cfg.data.name == want["data"]
  if want["variant"] == "cnn":   # MTAN data and metrics (methods.md b.5)
    assert cfg.eval.protocol == "mtan"
    assert tuple(cfg.data.image_std) == (1.0, 1.0, 1.0)
  assert tuple(cfg.data.image_size) == want["size"]
  assert cfg.model.encoder == want["encoder"]
  assert cfg.model.decoder == "ctal"
  assert cfg.model.decoder_kw.variant == want["variant"]
  assert cfg.model.decoder_kw.gamma == 0.05
  assert cfg.optim.name == "adam" and cfg.optim.schedule == "cosine"
  assert cfg.optim.lr == want["lr"]
  assert cfg.optim.weight_decay == want["wd"]
  assert cfg.optim.grad_clip_norm == want["clip"]
  assert cfg.optim.warmup_steps == 0
  assert cfg.train.steps == cfg.optim.total_steps == want["steps"]
  assert cfg.train.batch_size == 8
  assert cfg.loss.aux_mode == "inside" and cfg.loss.aux_weight == 1.0
  assert loop.build_weighting(cfg).base_weights == want["weights"]
  if db == "pascal":
    assert cfg.task_kw.edge.pos_weight == 0.95
    assert cfg.model.variant == "S"
    assert cfg.model.encoder_kw.out_norms == "last"
  else:
    assert cfg.model.variant == "W18-small-v2"
    assert cfg.model.encoder_kw.fuse and cfg.model.decoder_kw.fuse


def _count(tree) -> int:
  return sum(x.size for x in jax.tree.leaves(tree))


# (config, whole model or decoder only, millions, fusion conv params):
# computed from the reference code, notes/methods.md b.2.
@pytest.mark.parametrize("db,whole,millions,fusion", [
    ("nyuv2", True, 6.06, 6912 * 28),
    pytest.param("cityscapes", True, 5.26, 2048 * 19,
                 marks=pytest.mark.slow),   # The same HRNet again.
])
def test_cnn_models_match_reference_parameter_counts(db, whole, millions,
                                                     fusion):
  cfg = load(f"{db}_ctal")
  model = nnx.eval_shape(state_lib.model_factory(
      cfg.model, N_OUT[db], tuple(cfg.data.image_size), 0))
  n = _count(nnx.state(model, nnx.Param))
  assert abs(n / 1e6 - millions) < 0.01, n
  att = model.decoder.affinity_learning_module.spatial_att
  assert _count(nnx.state(att.fusion, nnx.Param)) == fusion
  h, w = cfg.data.image_size
  assert att.hw == (h // 4, w // 4)


class _Swin32:
  """Stands in for Swin-V2-S's output spec (768 ch at stride 32)."""
  produces = feats_lib.spec((32,), (768,))


def test_pascal_decoder_matches_reference_parameter_count():
  cfg = load("pascal_ctal")
  dec = nnx.eval_shape(lambda: ctal.build(
      encoder=_Swin32(), task_outputs={t: N_OUT["pascal"][t]
                                       for t in cfg.tasks},
      img_size=tuple(cfg.data.image_size), rngs=nnx.Rngs(0),
      **cfg.model.decoder_kw))
  n = _count(nnx.state(dec, nnx.Param))
  assert abs(n / 1e6 - 13.21) < 0.01, n
  heads = _count(nnx.state(dec.heads, nnx.Param))
  assert abs(heads / 1e6 - 9.37) < 0.01, heads
  att = dec.affinity_learning_module.spatial_att
  assert att.hw == (16, 16)
  assert _count(nnx.state(att.fusion, nnx.Param)) == 11776


@pytest.mark.slow   # Abstract init of Swin-V2-S (24 blocks) at 512x512.
def test_pascal_model_builds_from_config():
  cfg = load("pascal_ctal")
  model = nnx.eval_shape(state_lib.model_factory(
      cfg.model, N_OUT["pascal"], tuple(cfg.data.image_size), 0))
  dec = _count(nnx.state(model.decoder, nnx.Param))
  assert abs(dec / 1e6 - 13.21) < 0.01, dec


@pytest.mark.parametrize("db,task", [("nyuv2", "depth"),
                                     ("cityscapes", "semseg"),
                                     ("pascal", "edge")])
def test_stl_configs(db, task):
  cfg = load("ctal_stl", f"dataset={db},task={task}")
  validate(cfg)
  assert tuple(cfg.tasks) == (task,)
  assert cfg.model.decoder_kw.single_task
  assert loop.build_weighting(cfg).base_weights == {task: 1.0}
  mtl = load(f"{db}_ctal")
  assert cfg.optim.lr == mtl.optim.lr and cfg.optim.name == "adam"
  assert cfg.train.batch_size == (2 if db == "pascal" else 8)
  if db == "pascal":
    assert cfg.task_kw.to_dict() == {"edge": {"pos_weight": 0.95}}
  else:
    assert cfg.model.encoder_kw.fuse and cfg.model.decoder_kw.fuse


def test_stl_config_rejects_a_foreign_task():
  with pytest.raises(Exception, match="human_parts"):
    load("ctal_stl", "dataset=nyuv2,task=human_parts")


@pytest.mark.parametrize("arg", ["", "runlocal"])
def test_synthetic_config_builds(arg):
  cfg = load("synthetic_ctal", arg)
  config_check.validate(cfg)
  model = nnx.eval_shape(state_lib.model_factory(
      cfg.model, {"semseg": 8, "depth": 1, "normals": 3},
      tuple(cfg.data.image_size), 0))
  h, w = cfg.data.image_size
  assert model.decoder.affinity_learning_module.spatial_att.hw == (h // 4,
                                                                   w // 4)
