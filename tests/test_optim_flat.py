"""train/optim.py flattened: the raveled update equals the per-parameter one.

Every case runs N jitted steps of make_model_optimizer with flatten "off"
and "on" from the same parameters and gradients and compares parameters
and Adam moments: same elementwise arithmetic, so float32 rounding only
(global-norm clipping sums in another order).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtdense_jax.train import optim

STEPS = 4
BASE = {"name": "adam", "lr": 1e-2, "weight_decay": 1e-3, "schedule": "poly",
        "total_steps": 10, "poly_power": 0.9}


def _params(seed: int = 0, bf16: bool = False) -> dict:
  """A model-shaped tree: embedding, two blocks, a decoder head."""
  rng = np.random.default_rng(seed)
  f = lambda *s: jnp.asarray(rng.normal(size=s).astype(np.float32))
  model = {"encoder": {"embed": {"kernel": f(3, 8), "bias": f(8)},
                       "blocks": {0: {"attn": {"kernel": f(8, 8)},
                                      "norm": {"scale": f(8)}},
                                  1: {"attn": {"kernel": f(8, 8)},
                                      "norm": {"scale": f(8)}}}},
           "decoder": {"head": {"kernel": f(8, 2), "bias": f(2)}}}
  if bf16:
    model["decoder"]["head"]["kernel"] = model["decoder"]["head"][
        "kernel"].astype(jnp.bfloat16)
  return {"model": model}


def _run(cfg: dict, flatten: str, bf16: bool = False):
  tx, _ = optim.make_model_optimizer({**cfg, "flatten": flatten})
  params = _params(0, bf16)
  grads = [jax.tree.map(lambda p, s=s: (p * 0.5 + s).astype(p.dtype),
                        _params(s + 1, bf16)) for s in range(STEPS)]

  @jax.jit
  def step(params, state, g):
    updates, state = tx.update(g, state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  for g in grads:
    params, state = step(params, state, g)
  return params, state


def _moments(state) -> list:
  """Adam's mu and nu leaves, in a layout-independent order (concatenated
  per dtype over the per-parameter trees' leaves)."""
  out = []
  for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(
      x, optax.ScaleByAdamState)):
    if isinstance(s, optax.ScaleByAdamState):
      out.append(np.concatenate([np.ravel(np.asarray(x, np.float32))
                                 for x in jax.tree.leaves(s.mu)]))
  return out


CASES = {
    "invpt_adam": dict(BASE),
    "adamw_clip": dict(BASE, name="adamw", grad_clip_norm=0.5),
    "groups_freeze_layer_decay": dict(
        BASE,
        groups=({"name": "head", "match": "^decoder/head", "lr": 3e-2,
                 "clip": 0.1, "optimizer": "adamw"},),
        freeze=("norm",),
        layer_decay={"rate": 0.5, "num_layers": 2,
                     "regex": r"^encoder/blocks/(\d+)/",
                     "embed_regex": "^encoder/embed"}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_flat_equals_per_parameter(case):
  cfg = CASES[case]
  want, want_state = _run(cfg, "off")
  got, got_state = _run(cfg, "on")
  init = _params(0)
  # Parameters: float32 rounding (rtol 1e-6), and the displacement from
  # the start (~STEPS * lr) to 1e-5 of itself plus 2 ulps of the parameter
  # (the update is exact to ~2 ulps of lr; p + u then rounds at |p|).
  for (path, w), g, p0 in zip(
      jax.tree_util.tree_flatten_with_path(want)[0], jax.tree.leaves(got),
      jax.tree.leaves(init)):
    w, g, p0 = np.asarray(w), np.asarray(g), np.asarray(p0)
    np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-8, err_msg=str(path))
    moved = np.abs((g - p0) - (w - p0))
    bound = 1e-5 * np.abs(w - p0) + 2 * np.spacing(np.abs(w))
    assert np.all(moved <= bound), (path, float(np.max(moved - bound)))
  if "freeze" in cfg:   # frozen leaves never move
    np.testing.assert_array_equal(
        got["model"]["encoder"]["blocks"][0]["norm"]["scale"],
        init["model"]["encoder"]["blocks"][0]["norm"]["scale"])
  # Same moments (per group, in the same order) to float32 rounding; with
  # clipping the global norm's sum order differs, and mu ~ 1/norm,
  # nu ~ 1/norm^2 carry its few-ulp difference (measured 1.9e-6): 1e-5.
  for w, g in zip(_moments(want_state), _moments(got_state), strict=True):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-12)


def test_flat_mixed_dtypes():
  """A bfloat16 leaf gets a vector of its own and keeps its dtype."""
  want, _ = _run(BASE, "off", bf16=True)
  got, _ = _run(BASE, "on", bf16=True)
  assert got["model"]["decoder"]["head"]["kernel"].dtype == jnp.bfloat16
  jax.tree.map(lambda g, w: np.testing.assert_allclose(
      np.asarray(g, np.float32), np.asarray(w, np.float32), rtol=1e-6,
      atol=1e-8), got, want)


def test_flat_state_is_one_vector_per_dtype():
  tx, _ = optim.make_model_optimizer({**BASE, "flatten": "on"})
  (adam,) = [s for s in jax.tree.leaves(
      tx.init(_params()), is_leaf=lambda x: isinstance(
          x, optax.ScaleByAdamState)) if isinstance(s, optax.ScaleByAdamState)]
  size = sum(x.size for x in jax.tree.leaves(_params()))
  assert [x.shape for x in jax.tree.leaves(adam.mu)] == [(size,)]


def test_golden_adam_poly_flattened(golden):
  """InvPT's Adam + poly golden (tests/test_optim.py) through `flattened`."""
  npz, _ = golden("optim_adam_poly")
  from tests.test_optim import INVPT  # pylint: disable=g-import-not-at-top
  tx = optim.flattened(optim.make_optimizer(INVPT)[0])
  params = {"weight": jnp.asarray(npz["init/weight"]),
            "bias": jnp.asarray(npz["init/bias"])}
  init = dict(params)
  state = tx.init(params)
  for k in range(5):
    g = {n: jnp.asarray(npz[f"grad/{n}"][k]) for n in ("weight", "bias")}
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
    for n in ("weight", "bias"):   # tolerances of test_golden_adam_poly
      ref = npz[f"after_step/{n}"][k]
      np.testing.assert_allclose(params[n], ref, rtol=1e-6, atol=0)
      np.testing.assert_allclose(params[n] - init[n], ref - init[n],
                                 rtol=0, atol=1e-7)


def test_use_flat():
  assert optim.use_flat({"flatten": "auto"}, devices=1) == (
      jax.default_backend() == "cpu")
  assert not optim.use_flat({"flatten": "auto"}, devices=8)
  assert optim.use_flat({"flatten": "on"}, devices=8)
  assert not optim.use_flat({}, devices=8)
  assert not optim.use_flat({"flatten": "auto"}, devices=None)
  with pytest.raises(ValueError, match="config.optim.flatten"):
    optim.use_flat({"flatten": "yes"})
