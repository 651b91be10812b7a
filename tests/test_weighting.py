"""Tests for the loss-weighting schemes and the released-LPS reference."""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtdense_jax import registry
from mtdense_jax.weighting import dwa
from mtdense_jax.weighting import fixed
from mtdense_jax.weighting import lps
from mtdense_jax.weighting import lps_reference
from mtdense_jax.weighting import uncertainty

TASKS = ("semseg", "depth", "normals")


def _losses(values):
  return {t: jnp.asarray(v, jnp.float32) for t, v in zip(TASKS, values)}


def _arr(d, tasks=TASKS):
  return np.array([float(d[t]) for t in tasks])


# --- released LPS (golden) -------------------------------------------------


@pytest.mark.parametrize("feedback,prefix", [("literal", "iter_literal/"),
                                             ("total", "iter_total_feedback/")])
def test_per_iteration_reference_matches_golden(golden, feedback, prefix):
  npz, meta = golden("lps")
  assert list(meta["tasks"]) == list(TASKS)
  out = lps_reference.per_iteration_lps(npz["inputs/raw_task_losses"],
                                        feedback)
  for key in ("log_loss", "weights_used", "total", "second_return",
              "new_weights"):
    # Sidecar: float32 port matches to ~4e-6 relative, inf/0 included;
    # tiny atol for the float32 subnormal a flush-to-zero backend drops.
    np.testing.assert_allclose(out[key], npz[prefix + key], rtol=1e-5,
                               atol=1e-40, err_msg=prefix + key)
    np.testing.assert_array_equal(np.isinf(out[key]),
                                  np.isinf(npz[prefix + key]))
  np.testing.assert_array_equal(out["total_requires_grad"],
                                npz[prefix + "total_requires_grad"])
  first_bad = int(np.argmax(~np.isfinite(out["new_weights"]).all(axis=1)))
  assert first_bad == meta["first_nonfinite_iteration"][
      "iter_literal" if feedback == "literal" else "iter_total_feedback"]


def test_epoch_level_reference_matches_golden(golden):
  npz, meta = golden("lps")
  assert "s = 7.5" in meta["epoch_level_formula"]["e>=1"]
  out = lps_reference.epoch_level_lps(npz["inputs/raw_task_losses"], 7.5)
  for key in ("lT", "weights_before_spread", "weights"):
    # float64 in the reference (Python floats): rtol 1e-12.
    np.testing.assert_allclose(out[key], npz["epoch/" + key], rtol=1e-12,
                               err_msg=key)
  for key in ("mtl_total_with_weights", "sum_of_losses"):
    # float32 sums: rtol 1e-6.
    np.testing.assert_allclose(out[key], npz["epoch/" + key], rtol=1e-6,
                               err_msg=key)


# --- registry / construction -----------------------------------------------


@pytest.mark.parametrize("name", ["fixed", "uncertainty", "dwa", "lps"])
def test_registry_builds_and_runs_under_jit(name):
  scheme = registry.lookup("weighting", name).Weighting()
  params, state = scheme.init(TASKS)
  # A closure, as the train step uses it (the dataclass is not hashable).
  step = jax.jit(lambda *args: scheme(*args))
  total, new_state, weights = step(params, state, _losses([1., 2., 3.]),
                                   jnp.asarray(0))
  assert jnp.isfinite(total) and set(weights) == set(TASKS)
  assert (jax.tree_util.tree_structure(new_state)
          == jax.tree_util.tree_structure(state))


# --- fixed -----------------------------------------------------------------


def test_fixed_applies_weights_once():
  scheme = fixed.Weighting(weights={"normals": 10.0, "depth": 2.0})
  total, _, weights = scheme({}, {}, _losses([1.0, 2.0, 3.0]), 0)
  np.testing.assert_allclose(float(total), 1.0 + 2.0 * 2.0 + 10.0 * 3.0,
                             rtol=1e-6)
  np.testing.assert_allclose(_arr(weights), [1.0, 2.0, 10.0])
  with pytest.raises(ValueError):
    fixed.Weighting(weights={"depth": 2.0}, base_weights={"depth": 2.0})


def test_invpt_configs_carry_the_reference_weights():
  """The recipes' weights are config data (InvPT configs/*.yml)."""
  from mtdense_jax import config_check  # pylint: disable=g-import-not-at-top
  root = pathlib.Path(__file__).resolve().parents[1]
  nyud = config_check.load_config_file(str(root / "configs/nyud_invpt.py"))
  pascal = config_check.load_config_file(
      str(root / "configs/pascal_invpt.py"))
  assert fixed.Weighting(**nyud.weighting.kw).base_weights == {
      "semseg": 1.0, "depth": 1.0, "normals": 10.0, "edge": 50.0}
  assert fixed.Weighting(**pascal.weighting.kw).base_weights == {
      "semseg": 1.0, "human_parts": 2.0, "sal": 5.0, "normals": 10.0,
      "edge": 50.0}


# --- uncertainty -----------------------------------------------------------


@pytest.mark.parametrize("half", [False, True])
def test_uncertainty_total_weights_and_grads(half):
  scheme = uncertainty.Weighting(half=half, base_weights={"depth": 2.0})
  params, state = scheme.init(TASKS)
  params = {"log_var": {"semseg": jnp.float32(0.5), "depth": jnp.float32(-1.),
                        "normals": jnp.float32(0.0)}}
  raw = np.array([1.5, 0.7, 2.0])
  scaled = raw * np.array([1.0, 2.0, 1.0])
  s = np.array([0.5, -1.0, 0.0])
  c = 0.5 if half else 1.0
  total, _, weights = scheme(params, state, _losses(raw), 0)
  np.testing.assert_allclose(float(total),
                             c * np.sum(np.exp(-s) * scaled + s), rtol=1e-6)
  np.testing.assert_allclose(_arr(weights), c * np.exp(-s), rtol=1e-6)
  grads = jax.grad(lambda p: scheme(p, state, _losses(raw), 0)[0])(params)
  np.testing.assert_allclose(_arr(grads["log_var"]),
                             c * (1 - np.exp(-s) * scaled), rtol=1e-5)


# --- DWA -------------------------------------------------------------------


def test_dwa_matches_independent_computation():
  period, temp, steps = 3, 2.0, 21
  scheme = dwa.Weighting(period=period, temperature=temp)
  params, state = scheme.init(TASKS)
  rng = np.random.default_rng(1)
  raw = rng.uniform(0.1, 3.0, size=(steps, 3))
  call = jax.jit(lambda *args: scheme(*args))
  for n in range(steps):
    total, state, weights = call(params, state, _losses(raw[n]), n)
    p = n // period
    if p < 2:
      want = np.ones(3)
    else:
      m1 = raw[(p - 1) * period:p * period].mean(0)
      m2 = raw[(p - 2) * period:(p - 1) * period].mean(0)
      e = np.exp(m1 / m2 / temp)
      want = 3 * e / e.sum()
    # float32 running sums: rtol 1e-5.
    np.testing.assert_allclose(_arr(weights), want, rtol=1e-5)
    np.testing.assert_allclose(float(total), np.dot(want, raw[n]), rtol=1e-5)


# --- LPS (stable per-iteration variant) ------------------------------------


def _scan(scheme, raw):
  """Runs `scheme` over the (steps, T) losses `raw` with lax.scan."""
  params, state = scheme.init(TASKS)

  def body(state, x):
    _, state, w = scheme(params, state, dict(zip(TASKS, x)), 0)
    return state, jnp.stack([w[t] for t in TASKS])

  return jax.jit(lambda s, r: jax.lax.scan(body, s, r))(state, raw)


def _numpy_lps(raw, decay, warmup, spread, floor, reference, period):
  """Independent float64 transcription of the lps.py docstring formula."""
  ema = ref = None
  w = np.ones(raw.shape[1])
  out = []
  for n, row in enumerate(raw):
    l = np.log(row + 1 + 1e-6)
    ema = l if n == 0 else decay * ema + (1 - decay) * l
    if n >= warmup - 1 and (reference == "initial" and n >= warmup or
                            reference == "period" and n > warmup - 1 and
                            (n - warmup + 1) % period == 0):
      p = (ema / ref) / (ema.sum() / ref.sum())
      v = np.maximum(p.mean() + spread * (p - p.mean()), floor)
      w = len(l) * v / v.sum()
    if n == warmup - 1 or (reference == "period" and n > warmup - 1 and
                           (n - warmup + 1) % period == 0):
      ref = ema.copy()
    out.append(w)
  return np.array(out)


@pytest.mark.parametrize("reference", ["initial", "period"])
def test_lps_matches_docstring_formula(reference):
  rng = np.random.default_rng(2)
  steps = np.arange(60)[:, None]
  raw = (np.array([3.0, 1.0, 0.5]) * np.exp(-steps * np.array([0.05, 0.01,
                                                                0.02]))
         * rng.uniform(0.8, 1.2, size=(60, 3)))
  kw = dict(ema_decay=0.8, warmup=5, spread=2.5, min_weight=0.05,
            reference=reference, period=7)
  _, w = _scan(lps.Weighting(**kw), jnp.asarray(raw, jnp.float32))
  want = _numpy_lps(raw, 0.8, 5, 2.5, 0.05, reference, 7)
  # float32 against float64: rtol 1e-4.
  np.testing.assert_allclose(np.asarray(w), want, rtol=1e-4)
  assert not np.allclose(want[15:], 1.0, atol=1e-2)  # the test is not vacuous


@pytest.mark.parametrize("reference", ["initial", "period"])
def test_lps_10k_noisy_iterations_stay_bounded(reference):
  steps, t = 10_000, len(TASKS)
  key = jax.random.PRNGKey(0)
  # Log-normal losses spanning ~1e-4 .. 1e4, some exactly 0.
  raw = jnp.exp(4.0 * jax.random.normal(key, (steps, t)))
  raw = raw.at[::97, 1].set(0.0)
  scheme = lps.Weighting(ema_decay=0.9, warmup=10, spread=7.5,
                         reference=reference, period=50)
  state, w = _scan(scheme, raw)
  w = np.asarray(w)
  assert np.isfinite(w).all()
  assert (w >= 0).all() and (w <= t + 1e-4).all()
  np.testing.assert_allclose(w.sum(1), t, rtol=1e-5)  # float32 normalisation
  first = 10 if reference == "initial" else 9 + 50
  np.testing.assert_array_equal(w[:first], 1.0)  # warmup
  assert not np.allclose(w[first], 1.0)
  assert w.std() > 0.05  # the weights did move
  assert int(state["count"]) == steps


def test_lps_slower_task_gets_larger_weight():
  steps = 3000
  k = np.arange(steps)[:, None]
  rng = np.random.default_rng(3)
  # Task 0 falls fast, task 1 slowly, task 2 in between, with 20% noise.
  raw = (2.0 * np.exp(-k * np.array([1 / 300, 1 / 5000, 1 / 1000]))
         * rng.uniform(0.8, 1.2, size=(steps, 3)))
  for reference in ("initial", "period"):
    scheme = lps.Weighting(warmup=100, reference=reference, period=200)
    _, w = _scan(scheme, jnp.asarray(raw, jnp.float32))
    last = np.asarray(w)[-1]
    assert last[1] > last[2] > last[0], (reference, last)


def test_lps_gradient_does_not_flow_through_weights():
  scheme = lps.Weighting(ema_decay=0.5, warmup=2, spread=3.0,
                         reference="initial")
  params, state = scheme.init(TASKS)
  for values in ([4.0, 1.0, 0.3], [3.0, 0.9, 0.3], [1.0, 0.8, 0.29]):
    _, state, _ = scheme(params, state, _losses(values), 0)
  losses = _losses([0.5, 0.7, 0.28])
  _, _, weights = scheme(params, state, losses, 0)
  assert not np.allclose(_arr(weights), 1.0, atol=1e-2)
  grads = jax.grad(lambda ls: scheme(params, state, ls, 0)[0])(losses)
  want = _arr(weights) / (_arr(losses) + 1 + 1e-6)
  np.testing.assert_allclose(_arr(grads), want, rtol=1e-6)  # float32


def test_lps_skips_nonfinite_losses_in_the_ema():
  scheme = lps.Weighting(ema_decay=0.5, warmup=1)
  params, state = scheme.init(TASKS)
  _, state, _ = scheme(params, state, _losses([1.0, 1.0, 1.0]), 0)
  _, state2, w = scheme(params, state, _losses([np.nan, 0.5, 0.5]), 0)
  assert float(state2["ema"]["semseg"]) == float(state["ema"]["semseg"])
  assert np.isfinite(_arr(w)).all()
