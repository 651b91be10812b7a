"""Hard-concrete gates against ../shared/golden/ecs_gates_a (the reference
``concrete_stretched`` on recorded noise). Tolerance (sidecar): z exact where
clamped to 0 or 1, atol 1e-6 elsewhere; the same for dz/dlog_alpha (autodiff
through the clip versus the reference's hand-written derivative)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mtdense_jax.models.layers import hard_concrete as hc

ATOL = 1e-6


def _limits(meta, variant):
  if variant == "tensor_gate":
    return tuple(meta["variants"]["ref_limits"]["limits_l_r"])
  return tuple(meta["variants"][variant]["limits_l_r"])


def _check_variant(g, meta, variant):
  lower, upper = _limits(meta, variant)
  la = jnp.asarray(g[f"{variant}/log_alpha"])
  u = jnp.asarray(g[f"{variant}/noise_u"])
  z = np.asarray(hc.sample(la, u, lower, upper))
  want = g[f"{variant}/z"]
  hard = (want == 0) | (want == 1)
  np.testing.assert_array_equal(z[hard], want[hard])
  np.testing.assert_allclose(z, want, atol=ATOL, rtol=0)
  dz = jax.grad(lambda a: jnp.sum(hc.sample(a, u, lower, upper)))(la)
  np.testing.assert_allclose(np.asarray(dz), g[f"{variant}/dz_dlog_alpha"],
                             atol=ATOL, rtol=0)
  return lower, upper, la


def test_sample_and_derivative_both_limits(golden):
  g, meta = golden("ecs_gates_a")
  for variant in ("ref_limits", "louizos_limits"):
    lower, upper, la = _check_variant(g, meta, variant)
    np.testing.assert_allclose(np.asarray(hc.l0_prob(la, lower, upper)),
                               g[f"{variant}/l0_prob"], atol=ATOL, rtol=0)
    total = hc.expected_l0(la, jnp.zeros((0,)), lower, upper)
    np.testing.assert_allclose(float(total), float(g[f"{variant}/l0_sum"]),
                               rtol=1e-5)
    np.testing.assert_allclose(
        np.asarray(hc.louizos_gate(la, lower, upper)),
        g[f"{variant}/eval_gate_louizos_NOT_REFERENCE"], atol=ATOL, rtol=0)
  # The log_ratio shift is not hard-coded: the two limits give two values.
  assert hc.log_ratio(-0.1, 1.1) < 0 == hc.log_ratio()


def test_per_tensor_gate(golden):
  g, meta = golden("ecs_gates_a")
  _check_variant(g, meta, "tensor_gate")


def test_gated_delta_and_noise():
  delta = jnp.arange(1.0, 7.0).reshape(2, 3)
  la = jnp.full((2, 3), 5.0)
  u = jnp.full((2, 3), 0.5)
  # u = 0.5, log_alpha = 5: s = sigmoid(5), z = clip(3 s - 1.5, 0, 1) = 1.
  out = hc.gated_delta(delta, la, jnp.full((1,), -5.0), u, jnp.full((1,), .5))
  np.testing.assert_array_equal(np.asarray(out), 0.0)  # tensor gate off
  out = hc.gated_delta(delta, la, jnp.full((1,), 5.0), u, jnp.full((1,), .5))
  np.testing.assert_array_equal(np.asarray(out), np.asarray(delta))
  noise = hc.uniform_noise(jax.random.key(0), (1000,))
  assert noise.min() >= np.float32(hc.NOISE_MIN)
  assert noise.max() <= np.float32(hc.NOISE_MAX)
  try:
    hc.log_ratio(0.1, 1.1)
  except ValueError as e:
    assert "l < 0 < r" in str(e)
  else:
    raise AssertionError("expected a ValueError")
