"""Sharding strategies, remat and gradient accumulation on 8 simulated CPU
devices give the one-device train step (tests/conftest.py sets 8 devices).

One train step of the runlocal config per case; the loss, the gradient
norm, the updated parameters and the Adam moments (whose first step holds
the clipped gradient: mu = (1 - b1) g, nu = (1 - b2) g^2) are compared with
a one-device, replicated, no-remat run of the same batch.
"""

from __future__ import annotations

import jax
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from mtdense_jax import config_check
from mtdense_jax.data import pipeline
from mtdense_jax.models.encoders import vit
from mtdense_jax.train import loop
from mtdense_jax.train import sharding as shd
from mtdense_jax.train import state as state_lib
from mtdense_jax.train import step as step_lib
from tests.conftest import REPO

# float32 sums over different device splits: ~1e-6 relative on 2 cores.
RTOL = 1e-5
# A gradient that is a sum over every pixel of the batch (e.g. a head bias),
# with cancellation, keeps only ~1e-5 relative accuracy in float32 when the
# summation order changes (measured 3.6e-5 on decoder/heads/normals/pred/
# bias): Adam's moments are held to this.
OPT_RTOL = 1e-4
LR = 5e-4   # runlocal optim.lr, the largest first Adam update.
# Adam's first update lr * g / (|g| + eps) turns the rounding noise of a
# gradient entry near 0 (relative to its leaf) into up to lr; the gradients
# themselves (Adam's mu, nu) are held to RTOL, the parameters to 10% of lr.
PARAM_ATOL = 0.1 * LR
# Tensor-parallel rules (Megatron ViT split) for the (4 data x 2 model) mesh.
TP_RULES = ((r"attn/qkv/kernel$", (None, "model")),
            (r"attn/qkv/bias$", ("model",)),
            (r"mlp/fc1/kernel$", (None, "model")),
            (r"mlp/fc1/bias$", ("model",)),
            (r"mlp/fc2/kernel$", ("model", None)))
CASES = {
    "replicate": {},
    "fsdp": {"sharding.strategy": "fsdp", "sharding.min_size": 1024},
    "rules_4x2": {"sharding.strategy": "rules", "sharding.rules": TP_RULES,
                  "mesh.model": 2},
    "fsdp_remat": {"sharding.strategy": "fsdp", "sharding.min_size": 1024,
                   "model.remat": "block",
                   "model.remat_policy": "dots_saveable"},
}


def _config(data_dir, **overrides):
  cfg = config_check.load_config_file(
      str(REPO / "configs" / "synthetic_baseline.py") + ":runlocal")
  cfg.data.data_dir = str(data_dir)
  cfg.optim.warmup_steps = 0      # A non-zero first update to compare.
  # The one-device reference would flatten its optimizer ("auto"): keep
  # both sides per parameter so their states compare leaf by leaf
  # (tests/test_optim_flat.py checks flat == per parameter).
  cfg.optim.flatten = "off"
  for key, value in overrides.items():
    node, _, leaf = key.rpartition(".")
    cfg[node][leaf] = value
  return cfg


def one_step(cfg, devices, duplicate_rows=False):
  """(metrics, host state after one step, state shardings).

  ``duplicate_rows``: the batch's first half with every row twice
  (0, 0, 1, 1, ...), whose two strided micro-batches are identical.
  """
  exp = loop.setup(cfg, devices)
  defs, state, shardings = state_lib.init_state(
      exp.factory, exp.tx, exp.weighting, list(exp.tasks), exp.mesh,
      cfg.sharding)
  it = pipeline.make_train_iter(cfg.data, list(exp.tasks),
                                global_batch_size=cfg.train.batch_size,
                                seed=cfg.seed)
  fn = loop.compile_train_step(exp, defs, shardings)
  acc = jax.device_put(step_lib.zero_acc(exp.tasks), shd.replicated(exp.mesh))
  batch = next(it)
  if duplicate_rows:
    batch = {k: np.repeat(v[:len(v) // 2], 2, axis=0)
             for k, v in batch.items()}
  state, metrics, _ = fn(state, shd.global_batch(batch, exp.mesh), acc)
  metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
  return metrics, state, shardings


def _host(state):
  return {k: jax.tree.map(np.asarray, state[k]) for k in ("params", "opt")}


def assert_same_step(got, want, what):
  (m_got, s_got), (m_want, s_want) = got, want
  for k in m_want:
    np.testing.assert_allclose(m_got[k], m_want[k], rtol=RTOL, atol=1e-7,
                               err_msg=f"{what}: {k}")
  flat_got = jax.tree_util.tree_leaves_with_path(s_got)
  flat_want = jax.tree.leaves(s_want)
  assert len(flat_got) == len(flat_want)
  for (path, x), y in zip(flat_got, flat_want):
    name = shd.path_str(path)
    # Per-leaf scale: tiny entries of a leaf carry its largest entries'
    # absolute rounding error.
    rtol = OPT_RTOL if name.startswith("opt/") else RTOL
    atol = rtol * float(np.max(np.abs(y), initial=0.0)) + 1e-12
    if name.startswith("params/"):
      atol = PARAM_ATOL
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol,
                               err_msg=f"{what}: {name}")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def reference(data_dir):
  metrics, state, _ = one_step(_config(data_dir), jax.devices()[:1])
  return metrics, _host(state)


@pytest.mark.parametrize("case", [
    pytest.param(c, marks=pytest.mark.slow) if c == "fsdp_remat" else c
    for c in CASES])   # Remat's cheap checks: the jaxpr test below.
def test_eight_devices_match_one(case, data_dir, reference):
  assert len(jax.devices()) == 8, "conftest sets 8 fake CPU devices"
  cfg = _config(data_dir, **CASES[case])
  metrics, state, shardings = one_step(cfg, jax.devices())
  assert_same_step((metrics, _host(state)), reference, case)
  if case.startswith("fsdp"):
    _check_fsdp(state, shardings)
  if case == "rules_4x2":
    qkv = state["params"]["encoder"]["blocks"][0]["attn"]["qkv"]["kernel"]
    assert qkv.sharding.spec == P(None, "model")
    assert qkv.addressable_shards[0].data.shape == (48, 72)


def _check_fsdp(state, shardings):
  """The big kernels are split over 'data' and so are their Adam moments."""
  fc1 = state["params"]["encoder"]["blocks"][0]["mlp"]["fc1"]["kernel"]
  assert fc1.shape == (48, 192)
  assert fc1.sharding.spec == P(None, "data")
  assert fc1.addressable_shards[0].data.shape == (48, 24)
  by_path = {shd.path_str(p): s.spec for p, s in
             jax.tree_util.tree_leaves_with_path(shardings["opt"])}
  moments = {k: v for k, v in by_path.items()
             if k.endswith("encoder/blocks/0/mlp/fc1/kernel")}
  assert len(moments) == 2, moments        # Adam mu and nu.
  assert set(moments.values()) == {P(None, "data")}
  small = state["params"]["encoder"]["blocks"][0]["norm1"]["scale"]
  assert small.sharding.spec == P()        # 48 < min_size: replicated.


def test_grad_accum_two_micro_batches(data_dir):
  """k=2 micro-batches on 8 devices == one k=1 step on 1 device, to RTOL.

  On a batch whose two strided micro-batches are identical (every row
  twice), each micro-batch has the full batch's BatchNorm statistics and
  per-pixel loss means, so accumulation must reproduce the big step. (On
  a general batch it does not, by design: BatchNorm normalises each
  micro-batch with its own statistics and each loss averages its own
  valid pixels; measured ~8% on the first step's gradient norm.) BatchNorm
  running statistics are not compared: k=2 applies the momentum twice.
  """
  cfg = _config(data_dir)
  want, want_state, _ = one_step(cfg, jax.devices()[:1], duplicate_rows=True)
  cfg.train.grad_accum = 2
  got, got_state, _ = one_step(cfg, jax.devices(), duplicate_rows=True)
  assert_same_step((got, _host(got_state)), (want, _host(want_state)),
                   "grad_accum=2")


def test_remat_wraps_every_vit_block():
  """remat='block' puts one checkpoint (remat) per block in the jaxpr."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  model = vit.build("Ti/16", img_size=(32, 32), rngs=nnx.Rngs(0), depth=4,
                    width=32, num_heads=2, remat="block")
  graphdef, params = nnx.split(model)

  def loss(p, x):
    return sum(jax.numpy.sum(t) for t in nnx.merge(graphdef, p)(x)["maps"])

  x = jax.numpy.ones((1, 32, 32, 3))
  jaxpr = str(jax.make_jaxpr(jax.grad(loss))(params, x))
  assert jaxpr.count("remat") >= 4
  with pytest.raises(ValueError, match="remat"):
    vit.build("Ti/16", img_size=(32, 32), rngs=nnx.Rngs(0), remat="all")


def test_fsdp_spec_rules():
  mesh = shd.make_mesh({"data": 4, "model": 2}, jax.devices())
  assert shd.fsdp_spec((48, 192), mesh, min_size=16) == P(None, "data")
  assert shd.fsdp_spec((192, 48), mesh, min_size=16) == P("data", None)
  assert shd.fsdp_spec((7, 9), mesh, min_size=16) == P()      # no fit
  assert shd.fsdp_spec((4096,), mesh) == P()                   # < 2**14
  with pytest.raises(ValueError, match="strategy"):
    shd.strategy_shardings({"a": np.zeros(3)}, mesh, {"strategy": "zero"})


@pytest.mark.slow
def test_invpt_remat_same_loss_grads_and_stats():
  """remat='block' on ViT + InvPT (BatchNorm inside the checkpointed
  stages) changes neither the loss, the gradients nor the BatchNorm
  statistics, to rtol 1e-4 / atol 1e-6 (the loss is O(1)): XLA fuses the
  recomputed forward differently (measured: 1.3e-7 absolute on a
  gradient leaf whose largest entry is 1e-3)."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from mtdense_jax.models import multitask  # pylint: disable=g-import-not-at-top

  def run(remat):
    cfg = {"encoder": "vit", "variant": "Ti/16", "decoder": "invpt",
           "encoder_kw": dict(depth=4, width=32, num_heads=2),
           "decoder_kw": dict(embed_dim=16, pred_out_constant=8),
           "remat": remat}
    model = multitask.build_model(cfg, task_outputs={"semseg": 3, "depth": 1},
                                  img_size=(64, 64), rngs=nnx.Rngs(0))
    model.train()
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)

    def loss(p, x):
      m = nnx.merge(graphdef, p, stats, copy=True)
      out = m(x)
      total = sum(jax.numpy.mean(v ** 2) for v in out["final"].values())
      return total, nnx.state(m, nnx.BatchStat)

    x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
    fn = jax.jit(jax.value_and_grad(loss, has_aux=True))
    jaxpr = str(jax.make_jaxpr(fn)(params, x))
    (value, new_stats), grads = fn(params, x)
    return jaxpr, jax.device_get((value, new_stats, grads))

  plain_jaxpr, plain = run("none")
  remat_jaxpr, remat = run("block")
  assert "remat" not in plain_jaxpr and remat_jaxpr.count("remat") >= 7
  for a, b in zip(jax.tree.leaves(remat), jax.tree.leaves(plain)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
