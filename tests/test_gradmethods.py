"""Gradient-based MTL methods (mtdense_jax/gradmethods) and FAMO, each
against a closed form or an independent numpy/scipy solve."""

from __future__ import annotations

import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from mtdense_jax import registry
from mtdense_jax.gradmethods import base
from mtdense_jax.gradmethods import nash_mtl
from mtdense_jax.weighting import famo

STEP = jnp.zeros((), jnp.int32)


def _method(name, **kw):
  return registry.lookup("gradmethod", name).Method(**kw)


def _run(method, vectors, losses=None):
  """Method on rows of `vectors` (T, D) -> (combined, weights, state)."""
  g = jnp.asarray(vectors, jnp.float32)
  tasks = [f"t{i}" for i in range(g.shape[0])]
  losses = losses if losses is not None else np.ones(g.shape[0])
  loss = {t: jnp.float32(l) for t, l in zip(tasks, losses)}
  out, state, info = method(g, loss, method.init(tasks), STEP)
  return np.asarray(out), np.array([info[t] for t in tasks]), state


def _conflicting(seed, t=3, d=5):
  rng = np.random.default_rng(seed)
  g = rng.normal(size=(t, d))
  g[1] = -0.8 * g[0] + 0.3 * rng.normal(size=d)       # a real conflict
  return g


# --- PCGrad ----------------------------------------------------------------


def test_pcgrad_projects_two_conflicting_gradients():
  # g1.g2 = -1: g1' = g1 + g2/2 = (.5, .5), g2' = g2 + g1 = (0, 1).
  out, w, _ = _run(_method("pcgrad"), [[1.0, 0.0], [-1.0, 1.0]])
  np.testing.assert_allclose(out, [0.5, 1.5], atol=1e-6)
  np.testing.assert_allclose(w, [2.0, 1.5], atol=1e-6)


def test_pcgrad_matches_numpy_surgery_in_fixed_order():
  g = _conflicting(0)
  ref = []
  for i in range(3):
    gi = g[i].copy()
    for j in range(3):
      if j != i and gi @ g[j] < 0:
        gi -= gi @ g[j] / (g[j] @ g[j]) * g[j]
    ref.append(gi)
  out, _, _ = _run(_method("pcgrad", random_order=False), g)
  np.testing.assert_allclose(out, np.sum(ref, 0), rtol=1e-5, atol=1e-6)


def test_pcgrad_leaves_agreeing_gradients_alone():
  g = np.abs(_conflicting(1))                           # all dots > 0
  out, _, _ = _run(_method("pcgrad"), g)
  np.testing.assert_allclose(out, g.sum(0), rtol=1e-6)


# --- MGDA-UB ---------------------------------------------------------------


def test_mgda_two_task_closed_form():
  g = np.array([[2.0, 0.0], [-1.0, 1.0]])
  a = np.clip((g[1] - g[0]) @ g[1] / np.sum((g[0] - g[1]) ** 2), 0, 1)
  _, w, _ = _run(_method("mgda_ub"), g)
  np.testing.assert_allclose(w, [a, 1 - a], atol=1e-5)


def test_mgda_min_norm_point_matches_brute_force():
  g = _conflicting(2, t=3, d=4)
  gram = g @ g.T
  grid = np.linspace(0, 1, 401)
  ws = np.array([(a, b, 1 - a - b) for a, b in itertools.product(grid, grid)
                 if a + b <= 1 + 1e-12])
  brute = np.min(np.einsum("ni,ij,nj->n", ws, gram, ws))
  out, w, _ = _run(_method("mgda_ub"), g)
  assert np.all(w >= -1e-7) and abs(w.sum() - 1) < 1e-5
  assert out @ out <= brute + 1e-6 * np.trace(gram)
  assert out @ out >= brute - 1e-3 * np.trace(gram)    # grid resolution
  # KKT: every task gradient's dot with the min-norm point is >= its norm^2.
  assert np.all(g @ out >= out @ out - 1e-4 * np.trace(gram))


def test_mgda_l2_normalization_uses_unit_gradients():
  g = _conflicting(3)
  n = np.linalg.norm(g, axis=1)
  out_unit, _, _ = _run(_method("mgda_ub"), g / n[:, None])
  out, _, _ = _run(_method("mgda_ub", normalization="l2"), g)
  np.testing.assert_allclose(out, out_unit, rtol=1e-4, atol=1e-6)


# --- Nash-MTL --------------------------------------------------------------


def test_nash_two_task_bargaining_solution():
  g = np.array([[1.0, 0.2], [-0.5, 2.0]])
  gram = g @ g.T
  alpha = np.asarray(nash_mtl.bargaining(jnp.asarray(gram, jnp.float32),
                                         eps=0.0))
  assert np.all(alpha > 0)
  np.testing.assert_allclose(gram @ alpha, 1 / alpha, rtol=1e-4)


def test_nash_orthogonal_gradients_get_inverse_norms():
  g = np.diag([0.5, 2.0, 8.0])
  _, w, _ = _run(_method("nash_mtl", eps=0.0), g)
  np.testing.assert_allclose(w, [2.0, 0.5, 0.125], rtol=1e-4)


# --- CAGrad ----------------------------------------------------------------


def test_cagrad_matches_scipy_dual():
  g = _conflicting(4, t=3, d=6)
  gram = g @ g.T
  c = 0.5
  # Float64 numpy objective (the official formulation): SLSQP's finite
  # differences need more precision than float32 gives.
  obj = lambda w: (w @ gram @ np.full(3, 1 / 3)
                   + c * np.sqrt(gram.mean() + 1e-8) * np.sqrt(w @ gram @ w
                                                               + 1e-8))
  ref = optimize.minimize(
      obj, np.full(3, 1 / 3), method="SLSQP", bounds=[(0, 1)] * 3,
      constraints={"type": "eq", "fun": lambda w: w.sum() - 1},
      options={"ftol": 1e-12, "maxiter": 500}).x
  g0 = g.mean(0)
  gw = ref @ g
  d = g0 + c * np.linalg.norm(g0) / np.linalg.norm(gw) * gw
  out, _, _ = _run(_method("cagrad", c=c), g)
  np.testing.assert_allclose(out, d / (1 + c ** 2), rtol=2e-3, atol=2e-4)
  # The primal constraint is tight: ||d - g0|| = c ||g0||.
  mine = out * (1 + c ** 2)
  np.testing.assert_allclose(np.linalg.norm(mine - g0),
                             c * np.linalg.norm(g0), rtol=1e-3)


def test_cagrad_with_c_zero_is_the_mean():
  g = _conflicting(5)
  out, _, _ = _run(_method("cagrad", c=0.0), g)
  np.testing.assert_allclose(out, g.mean(0), rtol=1e-5, atol=1e-6)


# --- IMTL-G ----------------------------------------------------------------


def test_imtl_closed_form_and_equal_projections():
  g = _conflicting(6, t=3, d=5)
  u = g / np.linalg.norm(g, axis=1, keepdims=True)
  dmat, umat = g[0] - g[1:], u[0] - u[1:]
  rest = g[0] @ umat.T @ np.linalg.inv(dmat @ umat.T)
  ref = np.concatenate([[1 - rest.sum()], rest])
  out, w, _ = _run(_method("imtl"), g)
  np.testing.assert_allclose(w, ref, rtol=1e-4, atol=1e-5)
  proj = u @ out
  np.testing.assert_allclose(proj, proj[0], rtol=1e-4)


def test_imtl_identical_gradients_stay_finite():
  g = np.array([[1.0, 2.0, 0.0], [1.0, 2.0, 0.0], [0.0, 1.0, 1.0]])
  out, w, _ = _run(_method("imtl"), g)
  assert np.all(np.isfinite(w)) and abs(w.sum() - 1) < 1e-5
  proj = (g / np.linalg.norm(g, axis=1, keepdims=True)) @ out
  np.testing.assert_allclose(proj, proj[0], rtol=1e-4)


# --- Aligned-MTL -----------------------------------------------------------


def test_aligned_mtl_matches_eigendecomposition():
  g = _conflicting(7, t=3, d=6)
  lam, v = np.linalg.eigh(g @ g.T)
  b = v @ np.diag(np.sqrt(lam.min() / lam)) @ v.T
  aligned = b.T @ g                                   # g'_t = sum_s B_st g_s
  np.testing.assert_allclose(aligned @ aligned.T, lam.min() * np.eye(3),
                             atol=1e-9 * lam.max())
  out, w, _ = _run(_method("aligned_mtl"), g)
  np.testing.assert_allclose(w, b.sum(1), rtol=1e-4)
  np.testing.assert_allclose(out, aligned.sum(0), rtol=1e-4, atol=1e-5)


def test_aligned_mtl_rank_deficient_stays_finite():
  g = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])   # rank 2, T = 3
  out, w, _ = _run(_method("aligned_mtl"), g)
  assert np.all(np.isfinite(w)) and np.all(np.isfinite(out))


# --- GradNorm --------------------------------------------------------------


def test_gradnorm_weight_update_direction():
  method = _method("gradnorm")
  tasks = ["a", "b"]
  state = method.init(tasks)
  # Equal training rates, task a's gradient 4x larger: a's weight falls.
  gram = jnp.diag(jnp.asarray([16.0, 1.0]))
  losses = {"a": jnp.float32(1.0), "b": jnp.float32(1.0)}
  w0, state, _ = method.solve(gram, losses, state, STEP)
  np.testing.assert_allclose(np.asarray(w0), [1.0, 1.0])
  assert state["w"][0] < 1.0 < state["w"][1]
  np.testing.assert_allclose(float(state["w"].sum()), 2.0, rtol=1e-6)
  # Equal norms, task b trains slower (higher L/L0): b's weight rises.
  state = method.init(tasks)
  _, state, _ = method.solve(jnp.eye(2), losses, state, STEP)
  before = np.asarray(state["w"])
  _, state, _ = method.solve(
      jnp.diag(1.0 / before ** 2),                    # w_t ||g_t|| equal
      {"a": jnp.float32(0.2), "b": jnp.float32(0.9)}, state, STEP)
  assert state["w"][1] > before[1] and state["w"][0] < before[0]


# --- FAMO (a loss weighting) -----------------------------------------------


def test_famo_two_task_update():
  w = famo.Weighting(lr=0.1, gamma=0.0)
  _, state = w.init(["a", "b"])
  l1 = {"a": jnp.float32(2.0), "b": jnp.float32(2.0)}
  _, state, wts = w(None, state, l1, STEP)
  np.testing.assert_allclose([wts["a"], wts["b"]], [0.5, 0.5], rtol=1e-6)
  # Task a improved (log-loss fell by log 2), b did not: a's logit falls by
  # lr (first Adam step is lr * sign), b's rises by lr.
  l2 = {"a": jnp.float32(1.0), "b": jnp.float32(2.0)}
  total, state, wts = w(None, state, l2, STEP)
  np.testing.assert_allclose(np.asarray(state["xi"]), [-0.1, 0.1], rtol=1e-5)
  z = np.exp([-0.1, 0.1]) / np.exp([-0.1, 0.1]).sum()
  d = np.array([1.0, 2.0])
  c = np.sum(z / d)
  np.testing.assert_allclose(float(total), np.sum(z * np.log(d)) / c,
                             rtol=1e-5)
  np.testing.assert_allclose([wts["a"], wts["b"]], z / (c * d), rtol=1e-5)


def test_famo_gradient_equals_reported_weights():
  w = famo.Weighting()
  _, state = w.init(["a", "b", "c"])
  losses = {"a": 0.5, "b": 3.0, "c": 1.0}
  grads = jax.grad(lambda l: w(None, state, l, STEP)[0])(
      {k: jnp.float32(v) for k, v in losses.items()})
  _, _, wts = w(None, state, {k: jnp.float32(v) for k, v in losses.items()},
                STEP)
  for k in losses:
    np.testing.assert_allclose(grads[k], wts[k], rtol=1e-5)
  np.testing.assert_allclose(sum(float(v) for v in wts.values()), 1.0,
                             rtol=1e-5)


# --- interface: jit, pytrees, per-task gradients of a toy model -------------


@pytest.mark.parametrize("name", registry.available("gradmethod"))
def test_method_jits_on_pytrees(name):
  module = registry.lookup("gradmethod", name)
  assert issubclass(module.Method, base.Method)
  # The docstring names the paper (year) and its defaults.
  assert re.search(r"20[12]\d", module.__doc__), name
  assert "default" in module.__doc__.lower(), name
  method = module.Method()
  rng = np.random.default_rng(8)
  tasks = ["a", "b", "c"]
  grads = {t: {"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
               "b": jnp.asarray(rng.normal(size=(2,)), jnp.float32)}
           for t in tasks}
  losses = {t: jnp.float32(i + 1.0) for i, t in enumerate(tasks)}
  state = method.init(tasks)
  # Closed over, as the train step holds it (config dicts are unhashable).
  out, new_state, info = jax.jit(
      lambda g, l, s, k: method(g, l, s, k))(grads, losses, state, STEP)
  # Same as the method on the flattened vectors, eagerly.
  flat = np.stack([np.concatenate([grads[t]["w"].ravel(), grads[t]["b"]])
                   for t in tasks])
  ref, w, _ = _run(method, flat, [1.0, 2.0, 3.0])
  got = np.concatenate([np.asarray(out["w"]).ravel(), np.asarray(out["b"])])
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose([info[t] for t in tasks], w, rtol=1e-4,
                             atol=1e-5)
  assert jax.tree.structure(new_state) == jax.tree.structure(state)


def _toy():
  """2-layer model: shared W1, one linear head per task."""
  rng = np.random.default_rng(9)
  x = jnp.asarray(rng.normal(size=(16, 4)), jnp.float32)
  y = {t: jnp.asarray(rng.normal(size=(16,)), jnp.float32) for t in "ab"}
  shared = {"w1": jnp.asarray(rng.normal(size=(4, 8)), jnp.float32)}
  other = {t: jnp.asarray(rng.normal(size=(8,)), jnp.float32) for t in "ab"}
  encode = lambda s: jnp.tanh(x @ s["w1"])
  heads = lambda o, z: ({t: jnp.mean((z @ o[t] - y[t]) ** 2) for t in "ab"},
                        None)
  return shared, other, encode, heads


def test_task_gradients_equal_jacrev():
  shared, other, encode, heads = _toy()
  loss_fn = lambda s, o: heads(o, encode(s))
  _, (g_shared, _), _, _ = base.task_gradients(loss_fn, shared, other)
  jac = jax.jacrev(lambda s: loss_fn(s, other)[0])(shared)
  for i, t in enumerate("ab"):
    np.testing.assert_allclose(g_shared["w1"][i], jac[t]["w1"], rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("mode", ["params", "representation"])
def test_steps_give_weighted_gradients(mode):
  shared, other, encode, heads = _toy()
  method = _method("mgda_ub", mode=mode, base_weights={"b": 2.0})
  loss_fn = lambda s, o: heads(o, encode(s))
  state = method.init(list("ab"))
  if mode == "params":
    step = jax.jit(lambda s, o: base.params_step(method, loss_fn, s, o,
                                                 state, STEP))
    jac = jax.jacrev(lambda s: loss_fn(s, other)[0])(shared)
    g = jnp.stack([jac[t]["w1"] for t in "ab"]).reshape(2, -1)
  else:
    step = jax.jit(lambda s, o: base.representation_step(
        method, encode, heads, s, o, state, STEP))
    jac = jax.jacrev(lambda z: heads(other, z)[0])(encode(shared))
    g = jnp.stack([jac[t] for t in "ab"]).reshape(2, -1)
  _, (d_shared, d_other), _, _, info = step(shared, other)
  # Weights: MGDA on the base-weighted gradients (b counts twice).
  g_b = np.asarray(g) * np.array([[1.0], [2.0]])
  _, w_ref, _ = _run(_method("mgda_ub"), g_b)
  w = np.array([info["a"], info["b"]])
  np.testing.assert_allclose(w, w_ref * [1.0, 2.0], rtol=1e-4, atol=1e-6)
  # Gradients: those of sum_t w_t L_t.
  total = lambda s, o: sum(w[i] * loss_fn(s, o)[0][t]
                           for i, t in enumerate("ab"))
  ref_s, ref_o = jax.grad(total, argnums=(0, 1))(shared, other)
  np.testing.assert_allclose(d_shared["w1"], ref_s["w1"], rtol=1e-4,
                             atol=1e-6)
  for t in "ab":
    np.testing.assert_allclose(d_other[t], ref_o[t], rtol=1e-4, atol=1e-6)


def test_resolve_one_name_for_both_kinds():
  assert base.resolve("lps")[0] == "weighting"
  assert base.resolve("famo")[0] == "weighting"
  kind, module = base.resolve("nash_mtl")
  assert kind == "gradmethod" and module.Method
  with pytest.raises(KeyError, match="gradient methods: .*pcgrad"):
    base.resolve("nash")
  with pytest.raises(ValueError, match="mode must be"):
    _method("pcgrad", mode="layer")


def test_accumulated_step_equals_one_big_step():
  shared, other, _, _ = _toy()
  rng = np.random.default_rng(10)
  batch = {"x": jnp.asarray(rng.normal(size=(8, 4)), jnp.float32),
           "y": jnp.asarray(rng.normal(size=(8, 2)), jnp.float32)}

  def loss_fn(s, o, b):
    z = jnp.tanh(b["x"] @ s["w1"])
    return ({t: jnp.mean((z @ o[t] - b["y"][:, i]) ** 2)
             for i, t in enumerate("ab")}, None)

  method = _method("cagrad")
  state = method.init(list("ab"))
  big = base.params_step(method, lambda s, o: loss_fn(s, o, batch), shared,
                         other, state, STEP)
  micro = jax.tree.map(lambda x: x.reshape(4, 2, *x.shape[1:]), batch)
  acc = jax.jit(lambda s, o, m: base.accumulated_params_step(
      method, loss_fn, s, o, m, state, STEP))(shared, other, micro)
  for a, b in zip(jax.tree.leaves((big[0], big[1], big[4])),
                  jax.tree.leaves((acc[0], acc[1], acc[4]))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_params_step_keeps_parameter_sharding():
  """Per-task gradients stay sharded like the parameters: the compiled
  step gathers nothing; only the T x T Gram matrix (and the toy's forward
  contraction) is all-reduced."""
  devices = np.array(jax.devices()[:4]).reshape(2, 2)
  if devices.size < 4:
    pytest.skip("needs 4 devices (conftest forces 8 CPU devices)")
  mesh = jax.sharding.Mesh(devices, ("data", "model"))
  spec = jax.sharding.PartitionSpec
  shard = lambda *p: jax.sharding.NamedSharding(mesh, spec(*p))
  shared, other, _, _ = _toy()
  rng = np.random.default_rng(11)
  x = jnp.asarray(rng.normal(size=(16, 4)), jnp.float32)
  y = jnp.asarray(rng.normal(size=(16, 2)), jnp.float32)

  def loss_fn(s, o, x, y):
    z = jnp.tanh(x @ s["w1"])
    return ({t: jnp.mean((z @ o[t] - y[:, i]) ** 2)
             for i, t in enumerate("ab")}, None)

  method = _method("nash_mtl")
  state = method.init(list("ab"))
  step = jax.jit(
      lambda s, o, x, y: base.params_step(
          method, lambda s_, o_: loss_fn(s_, o_, x, y), s, o, state, STEP),
      in_shardings=({"w1": shard(None, "model")},
                    {t: shard("model") for t in "ab"},
                    shard("data"), shard("data")))
  args = (shared, other, x, y)
  hlo = step.lower(*args).compile().as_text()
  assert "all-gather" not in hlo
  _, (d_shared, _), _, _, _ = step(*args)
  assert d_shared["w1"].sharding.is_equivalent_to(shard(None, "model"), 2)
  ref = base.params_step(method, lambda s_, o_: loss_fn(s_, o_, x, y),
                         shared, other, state, STEP)[1][0]["w1"]
  np.testing.assert_allclose(d_shared["w1"], ref, rtol=1e-4, atol=1e-6)
