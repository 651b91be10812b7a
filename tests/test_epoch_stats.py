"""weighting.base.EpochStatistics: epoch means computed inside jit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mtdense_jax.weighting import base


def test_epoch_means_match_numpy():
  rng = np.random.default_rng(0)
  losses = rng.uniform(0.1, 3.0, size=(7, 2)).astype(np.float32)
  es = base.EpochStatistics(steps_per_epoch=3)
  stats = es.init(["a", "b"])
  update = jax.jit(es.update)
  for i, (a, b) in enumerate(losses):
    stats = update(stats, {"a": jnp.asarray(a), "b": jnp.asarray(b)})
    epochs = (i + 1) // 3
    assert int(stats["epochs"]) == epochs
    if epochs:
      want = losses[3 * (epochs - 1):3 * epochs].mean(0)
      np.testing.assert_allclose(
          [float(stats["mean"]["a"]), float(stats["mean"]["b"])], want,
          rtol=1e-6)
  assert int(stats["n"]) == 1     # step 7 opened epoch 3
  np.testing.assert_allclose(float(stats["sum"]["a"]), losses[6, 0])
