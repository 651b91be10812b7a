"""Hard-concrete (L0) gates as EfficientMTL codes them (diff-pruning recipe).

Facts from sarashoouri/EfficientMTL@6946429 ``Codes/Pascal_Train_VIT/<task>/
Step1.py: concrete_stretched`` (shared/notes/efficient_sharing.md section 4):

  u  ~ U(0, 1) clamped to [1e-4, 0.9999]
  s  = sigmoid(log u - log(1 - u) + log_alpha)     (temperature 1)
  z  = clip(s (r - l) + l, 0, 1)                   (l = -1.5, r = 1.5)

The reference writes dz/dlog_alpha by hand; it equals autodiff of the clip
expression, so here gradients simply flow through ``jnp.clip``. The expected
L0 term per gate is sigmoid(log_alpha - log(-l / r)) (0 for the reference's
symmetric limits). Two evaluation gates (notes section 8.2):

  ``reference``  the reference has no test-time gate: evaluation uses the
                 last *sampled* gate of training (the caller keeps it);
  ``louizos``    the deterministic clip(sigmoid(log_alpha) (r - l) + l, 0, 1)
                 (not in the reference; 1 for every log_alpha > log 5 with
                 the reference limits).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

LOWER = -1.5      # args.concrete_lower
UPPER = 1.5       # args.concrete_upper
ALPHA_INIT = 5.0  # args.alpha_init
NOISE_MIN, NOISE_MAX = 1e-4, 0.9999
EVAL_MODES = ("reference", "louizos")


def uniform_noise(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """U(0, 1) clamped as the reference clamps it (no log(0) downstream)."""
  u = jax.random.uniform(key, shape, jnp.float32)
  return jnp.clip(u, NOISE_MIN, NOISE_MAX)


def sample(log_alpha: jax.Array, u: jax.Array, lower: float = LOWER,
           upper: float = UPPER) -> jax.Array:
  """Stretched hard-concrete sample z in [0, 1] (differentiable in
  log_alpha wherever 0 < stretched value < 1)."""
  s = jax.nn.sigmoid(jnp.log(u) - jnp.log(1.0 - u) + log_alpha)
  return jnp.clip(s * (upper - lower) + lower, 0.0, 1.0)


def log_ratio(lower: float = LOWER, upper: float = UPPER) -> float:
  """log(-l / r): the shift inside the expected-L0 sigmoid."""
  if not lower < 0 < upper:
    raise ValueError(f"hard-concrete limits need l < 0 < r; got l={lower}, "
                     f"r={upper}")
  return math.log(-lower / upper)


def l0_prob(log_alpha: jax.Array, lower: float = LOWER,
            upper: float = UPPER) -> jax.Array:
  """P(gate != 0) per gate, the expected-L0 term the Step 1 loop sums."""
  return jax.nn.sigmoid(log_alpha - log_ratio(lower, upper))


def louizos_gate(log_alpha: jax.Array, lower: float = LOWER,
                 upper: float = UPPER) -> jax.Array:
  """Deterministic test-time gate (an addition, not reference behaviour)."""
  return jnp.clip(jax.nn.sigmoid(log_alpha) * (upper - lower) + lower,
                  0.0, 1.0)


def gated_delta(delta: jax.Array, log_alpha: jax.Array,
                log_alpha_tensor: jax.Array, u: jax.Array, u_tensor: jax.Array,
                lower: float = LOWER, upper: float = UPPER) -> jax.Array:
  """(z2 * z) * delta with a per-entry gate z and a per-tensor gate z2
  (shape (1,)); the reference computes the gate product first."""
  z = sample(log_alpha, u, lower, upper)
  z2 = sample(log_alpha_tensor, u_tensor, lower, upper)
  return (z2 * z) * delta


def expected_l0(log_alpha: jax.Array, log_alpha_tensor: jax.Array,
                lower: float = LOWER, upper: float = UPPER) -> jax.Array:
  """One tensor's L0 term: sum of per-entry probabilities plus the
  per-tensor gate's (simply added, not multiplied: notes section 4.2)."""
  return (jnp.sum(l0_prob(log_alpha, lower, upper))
          + jnp.sum(l0_prob(log_alpha_tensor, lower, upper)))
