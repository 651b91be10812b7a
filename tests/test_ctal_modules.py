"""CTAL's cross-task affinity core and both AffinityLearningModule variants
against the ``ctal`` golden (Dimitri-Sinodinos/CTAL @ b2d3bb9, float32,
atol 1e-5), in the reference's direct form and in the chunked fused form.
Sizes, channels and task order come from the golden's own arrays."""

from __future__ import annotations

import re

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtdense_jax.convert import torch_utils
from mtdense_jax.models.layers import ctal_affinity as ca

ATOL = 1e-5


@pytest.fixture(autouse=True)
def _highest_precision():
  with jax.default_matmul_precision("highest"):
    yield


def _case(npz, meta, case):
  pre = f"params/{case}/"
  sd = {k[len(pre):]: v for k, v in npz.items() if k.startswith(pre)}
  return sd, list(meta["tasks"])


def _nhwc(x):
  return jnp.asarray(np.transpose(x, (0, 2, 3, 1)))


def _nchw(x):
  return np.transpose(np.asarray(x), (0, 3, 1, 2))


def _inputs(npz, case, tasks):
  return {t: _nhwc(npz[f"inputs/{case}/features_{t}"]) for t in tasks}


def _load(module, sd):
  state, _ = torch_utils.convert(sd, module)
  nnx.update(module, state)
  module.eval()
  return module


def _spatial(npz, meta, mode, chunk=1024):
  sd, tasks = _case(npz, meta, "spatial_attention")
  n = sd["fusion.weight"].shape[0]
  b, c, h, w = npz[f"inputs/spatial_attention/features_{tasks[0]}"].shape
  assert h * w == n
  mod = ca.CrossTaskAffinity(tasks, c, (h, w), meta_gamma(meta),
                             mode=mode, chunk=chunk, rngs=nnx.Rngs(0))
  return _load(mod, sd), tasks


def meta_gamma(meta) -> float:
  """gamma as the golden's generator was called with."""
  return float(re.search(r"--gamma ([0-9.e-]+)", meta["generator"])[1])


@pytest.mark.parametrize("mode,chunk", [("direct", 0), ("fused", 1024),
                                        ("fused", 7)])
def test_spatial_attention_golden(golden, mode, chunk):
  npz, meta = golden("ctal")
  mod, tasks = _spatial(npz, meta, mode, chunk)
  cap = {}
  out = mod(_inputs(npz, "spatial_attention", tasks), capture=cap)
  for t in tasks:
    np.testing.assert_allclose(
        _nchw(out[t]), npz[f"outputs/spatial_attention/features_{t}"],
        atol=ATOL, rtol=0, err_msg=f"{mode}/{chunk}/{t}")
  if mode == "direct":
    for k in ("stacked_affinity", "fused_affinity"):
      np.testing.assert_allclose(
          cap[k], npz[f"intermediate/spatial_attention/{k}"], atol=ATOL,
          rtol=0, err_msg=k)


@pytest.mark.parametrize("chunk", [20, 3])
def test_fused_affinity_equals_golden_and_direct(golden, chunk):
  """The chunked shift-sum builds the same M as the grouped conv."""
  npz, meta = golden("ctal")
  sd, tasks = _case(npz, meta, "spatial_attention")
  x = _inputs(npz, "spatial_attention", tasks)
  b, h, w, c = x[tasks[0]].shape
  normed = [ca.l2_normalize(x[t].reshape(b, h * w, c)) for t in tasks]
  kernel, bias = jnp.asarray(sd["fusion.weight"]), jnp.asarray(
      sd["fusion.bias"])
  fused = ca.fused_affinity(normed, kernel, bias, (h, w), chunk)
  direct = ca.fuse_direct(ca.stacked_affinity(normed), kernel, bias, (h, w))
  want = npz["intermediate/spatial_attention/fused_affinity"].reshape(
      b, h * w, h * w)
  np.testing.assert_allclose(fused, want, atol=ATOL, rtol=0)
  np.testing.assert_allclose(fused, direct, atol=ATOL, rtol=0)


def test_fused_gradients_equal_direct(golden):
  npz, meta = golden("ctal")
  grads = {}
  for mode in ("direct", "fused"):
    mod, tasks = _spatial(npz, meta, mode, chunk=4)
    x = _inputs(npz, "spatial_attention", tasks)

    def loss(m, x):
      return sum(jnp.sum(jnp.sin(v)) for v in m(x).values())

    g_mod, g_x = nnx.grad(loss, argnums=(0, 1))(mod, x)
    grads[mode] = (nnx.to_flat_state(g_mod), g_x)
  for (path, a), (_, b) in zip(grads["direct"][0], grads["fused"][0]):
    np.testing.assert_allclose(a[...], b[...], atol=1e-5, rtol=1e-5,
                               err_msg=str(path))
  for t in grads["direct"][1]:
    np.testing.assert_allclose(grads["direct"][1][t], grads["fused"][1][t],
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case,variant", [("alm_cnn", "cnn"),
                                          ("alm_transformer", "transformer")])
@pytest.mark.parametrize("mode", ["direct", "fused"])
def test_affinity_learning_module_golden(golden, case, variant, mode):
  npz, meta = golden("ctal")
  sd, tasks = _case(npz, meta, case)
  x = _inputs(npz, "alm_cnn", tasks)   # alm_transformer reads these too.
  _, h, w, cin = x[tasks[0]].shape
  cout = sd[f"spatial_att.projection.{tasks[0]}.bias"].shape[0]
  mod = ca.AffinityLearningModule(tasks, cin, cout, (h, w), meta_gamma(meta),
                                  variant=variant, mode=mode, chunk=8,
                                  rngs=nnx.Rngs(0))
  mod = _load(mod, sd)
  assert sum(v.size for v in jax.tree.leaves(nnx.state(mod, nnx.Param))) \
      == meta["param_counts"][case]
  out = mod(x)
  for t in tasks:
    np.testing.assert_allclose(_nchw(out[t]), npz[f"outputs/{case}/"
                                                  f"features_{t}"],
                               atol=ATOL, rtol=0, err_msg=f"{case}/{t}")


def test_other_size_is_rejected_with_the_config_key():
  mod = ca.CrossTaskAffinity(("a", "b"), 4, (4, 5), 0.05, rngs=nnx.Rngs(0))
  x = {t: jnp.zeros((1, 5, 4, 4)) for t in ("a", "b")}
  with pytest.raises(ValueError, match=r"4x5.*5x4.*config.data.image_size"):
    mod(x)


def test_unknown_mode_names_the_key():
  with pytest.raises(ValueError, match="affinity_mode"):
    ca.CrossTaskAffinity(("a",), 4, (2, 2), 0.05, mode="dense",
                         rngs=nnx.Rngs(0))


@pytest.mark.parametrize("n,target,want", [(6912, 1024, 864), (2048, 1024,
                                                                1024),
                                           (20, 7, 5), (7, 100, 7)])
def test_chunk_size_divides_n(n, target, want):
  assert ca.chunk_size(n, target) == want
