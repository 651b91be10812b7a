"""The released MT-CP LPS computations as weighting plugins (lps_epoch,
lps_iteration): they reproduce shared/golden/lps.npz when fed the golden raw
losses through their jitted update, and they run in the train step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtdense_jax import registry
from mtdense_jax.train import loop
from mtdense_jax.weighting import lps_epoch
from mtdense_jax.weighting import lps_iteration
from tests import test_train
from tests import train_testing


def _tasks(meta):
  return list(meta["tasks"])


def _run(scheme, tasks, rows, repeat=1):
  """Feeds every row `repeat` times through the jitted scheme; returns
  per call (total, weights used, state)."""
  params, state = scheme.init(tasks)
  call = jax.jit(lambda s, x: scheme(params, s, dict(zip(tasks, x)), 0))
  out = []
  for row in rows:
    for _ in range(repeat):
      total, state, w = call(state, jnp.asarray(row, jnp.float32))
      out.append((float(total), np.array([float(w[t]) for t in tasks]),
                  jax.device_get(state)))
  return out


def test_both_are_registered():
  names = registry.available("weighting")
  assert {"lps", "lps_epoch", "lps_iteration"} <= set(names)


@pytest.mark.parametrize("feedback,prefix", [("literal", "iter_literal/"),
                                             ("total", "iter_total_feedback/")])
def test_lps_iteration_reproduces_golden(golden, feedback, prefix):
  npz, meta = golden("lps")
  tasks = _tasks(meta)
  raw = npz["inputs/raw_task_losses"]
  out = _run(lps_iteration.Weighting(feedback=feedback), tasks, raw)
  total = np.array([o[0] for o in out])
  used = np.array([o[1] for o in out])
  new_w = np.array([[o[2]["weights"][t] for t in tasks] for o in out])
  second = np.array([o[2]["second"] for o in out])
  want_used = npz[prefix + "weights_used"].copy()
  want_used[0] = 1.0                       # k = 0 is unweighted (golden NaN)
  # Sidecar: a float32 port matches to ~4e-6 relative, inf/0 included;
  # the tiny atol covers the float32 subnormal a flush-to-zero backend
  # returns as 0. rtol 2e-5: the recurrence amplifies rounding like the
  # Fibonacci numbers (x55 by k = 10) before it overflows.
  for got, key in ((total, "total"), (used, None), (new_w, "new_weights"),
                   (second, "second_return")):
    want = want_used if key is None else npz[prefix + key]
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-37,
                               err_msg=prefix + str(key))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
  first_bad = int(np.argmax(~np.isfinite(new_w).all(axis=1)))
  assert first_bad == meta["first_nonfinite_iteration"][prefix[:-1]]


def test_lps_iteration_released_no_grad_and_gradient():
  scheme = lps_iteration.Weighting(released_no_grad=True)
  free = lps_iteration.Weighting()
  tasks = ["a", "b"]
  losses = {"a": jnp.float32(2.0), "b": jnp.float32(0.5)}
  for s in (scheme, free):
    _, state = s.init(tasks)
    for k in range(3):
      g = jax.grad(lambda ls: s({}, state, ls, 0)[0])(losses)
      _, state, w = s({}, state, losses, 0)
      grads = np.array([float(g[t]) for t in tasks])
      # d total / d L_t = w_t / (L_t + 1 + eta) (weights held fixed).
      want = np.array([float(w[t]) for t in tasks]) / (
          np.array([2.0, 0.5]) + 1 + 1e-6)
      if s is scheme and k >= 2:
        want = np.zeros(2)   # the released k >= 2 branch is under no_grad
      np.testing.assert_allclose(grads, want, rtol=1e-6)


@pytest.mark.parametrize("steps_per_epoch", [1, 2])
def test_lps_epoch_reproduces_golden(golden, steps_per_epoch):
  npz, meta = golden("lps")
  tasks = _tasks(meta)
  spread = float(meta["epoch_level_formula"]["e>=1"].rsplit("s = ", 1)[1])
  raw = npz["inputs/raw_task_losses"]
  # Each golden row is one epoch's mean: fed steps_per_epoch times (the
  # mean of equal float32 values is exact).
  released = _run(lps_epoch.Weighting(steps_per_epoch=steps_per_epoch,
                                      spread=spread), tasks, raw,
                  repeat=steps_per_epoch)
  end = slice(steps_per_epoch - 1, None, steps_per_epoch)
  lps_w = np.array([[o[2]["lps"][t] for t in tasks] for o in released])
  # float32 against the float64 reference, amplified by the spread 7.5:
  # rtol 1e-5 plus atol 1e-5 (weights are O(1); golden epoch 2 has -0.31).
  np.testing.assert_allclose(lps_w[end], npz["epoch/weights"], rtol=1e-5,
                             atol=1e-5)
  assert (lps_w[end] < 0).any()            # spread 7.5 turns some negative
  # Released: the weights are discarded; total = plain sum, weights 1.
  totals = np.array([o[0] for o in released])
  np.testing.assert_allclose(totals[end], npz["epoch/sum_of_losses"],
                             rtol=1e-6)     # float32 sums
  np.testing.assert_array_equal([o[1] for o in released], 1.0)
  # apply_weights=True: epoch e + 1 is weighted by the weights of epoch e.
  applied = _run(lps_epoch.Weighting(steps_per_epoch=steps_per_epoch,
                                     spread=spread, apply_weights=True),
                 tasks, raw, repeat=steps_per_epoch)
  used = np.array([o[1] for o in applied])
  want = np.concatenate([np.ones((1, len(tasks))), npz["epoch/weights"][:-1]])
  np.testing.assert_allclose(used[end], want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose([o[0] for o in applied][steps_per_epoch - 1::
                                                      steps_per_epoch],
                             np.sum(want * raw, axis=1), rtol=1e-5,
                             atol=1e-5)


def test_lps_epoch_resumes_from_its_state():
  """The epoch statistics live in the state: splitting the calls over two
  runs (a checkpoint in between) gives the same weights."""
  scheme = lps_epoch.Weighting(steps_per_epoch=3, apply_weights=True)
  rng = np.random.default_rng(0)
  raw = rng.uniform(0.2, 3.0, (10, 2)).astype(np.float32)
  whole = _run(scheme, ["a", "b"], raw)
  params, state = scheme.init(["a", "b"])
  for row in raw[:5]:
    _, state, _ = scheme(params, state, dict(zip("ab", row)), 0)
  state = jax.tree.map(np.array, jax.device_get(state))   # "restored"
  for row in raw[5:]:
    total, state, _ = scheme(params, state, dict(zip("ab", row)), 0)
  np.testing.assert_allclose(float(total), whole[-1][0], rtol=1e-6)


# --- in the train step -------------------------------------------------------


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


def _config(data_dir, name, steps, **kw):
  cfg = test_train.tiny_config(data_dir, steps=steps)
  cfg.weighting.name = name
  cfg.weighting.kw = kw
  return cfg


@pytest.mark.slow   # ~40 s of CPU: dataset render + a ViT compile
def test_lps_epoch_trains_on_the_baseline_config(data_dir):
  cfg = _config(data_dir, "lps_epoch", 4, steps_per_epoch=2,
                apply_weights=True)
  hist, state = train_testing.run_steps(cfg, n=4, devices=jax.devices()[:1])
  tasks = list(cfg.tasks)
  for h in hist:
    assert np.isfinite(h["total"]), h
  # Weights 1 during epoch 0, then the released e = 0 rule L / L_t.
  assert all(h[f"weight/{t}"] == 1.0 for h in hist[:2] for t in tasks)
  mean = np.array([np.mean([h[f"loss/{t}"] for h in hist[:2]])
                   for t in tasks])
  got = np.array([hist[2][f"weight/{t}"] for t in tasks])
  np.testing.assert_allclose(got, mean.sum() / mean, rtol=1e-4)
  assert int(state["wstate"]["stats"]["epochs"]) == 2


@pytest.mark.slow   # ~40 s of CPU: a ViT compile + the train loop
def test_lps_iteration_blows_up_and_the_loop_stops(data_dir, tmp_path):
  """The released recurrence reaches inf/0 within ~10 calls whatever the
  data: the loop's finiteness check stops training with a clear error."""
  cfg = _config(data_dir, "lps_iteration", 24)
  cfg.train.log_every = 4
  cfg.train.eval_every = cfg.train.ckpt_every = 24
  with pytest.raises(FloatingPointError, match="Non-finite loss"):
    loop.train_and_evaluate(cfg, str(tmp_path))
