"""Tests for train/optim.py: InvPT's Adam + poly golden and torch parity."""

from __future__ import annotations

import math

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mtdense_jax.train import optim

INVPT = {"name": "adam", "lr": 2e-5, "weight_decay": 1e-6, "b1": 0.9,
         "b2": 0.999, "eps": 1e-8, "schedule": "poly", "warmup_steps": 0,
         "total_steps": 40000, "poly_power": 0.9, "min_lr": 0.0,
         "grad_clip_norm": None}


def _run(tx, init, grads):
  """Applies `tx` to the per-step `grads`; returns params after each step."""
  params = {k: jnp.asarray(v) for k, v in init.items()}
  state = tx.init(params)
  out = []
  for g in grads:
    updates, state = tx.update({k: jnp.asarray(v) for k, v in g.items()},
                               state, params)
    params = optax.apply_updates(params, updates)
    out.append({k: np.asarray(v) for k, v in params.items()})
  return out


def test_golden_adam_poly(golden):
  npz, meta = golden("optim_adam_poly")
  assert "coupled L2" in meta["what"]
  tx, schedule = optim.make_optimizer(INVPT)
  init = {"weight": npz["init/weight"], "bias": npz["init/bias"]}
  grads = [{"weight": npz["grad/weight"][k], "bias": npz["grad/bias"][k]}
           for k in range(5)]
  for k, params in enumerate(_run(tx, init, grads)):
    # float32: rtol 1e-6 on the parameters, and 1e-7 absolute (~1 float32
    # ulp at |p| ~ 1, 0.5% of one step's displacement of ~2e-5) on the
    # displacement from the initial value.
    for name in ("weight", "bias"):
      ref = npz[f"after_step/{name}"][k]
      np.testing.assert_allclose(params[name], ref, rtol=1e-6, atol=0)
      np.testing.assert_allclose(params[name] - init[name], ref - init[name],
                                 rtol=0, atol=1e-7)
    # lr used at step k is lr(k): the schedule is evaluated at the number of
    # updates already taken. float32 schedule: rtol 1e-6.
    np.testing.assert_allclose(float(schedule(k)), npz["lr_used_at_step"][k],
                               rtol=1e-6)


def test_golden_schedule_table(golden):
  npz, _ = golden("optim_adam_poly")
  _, schedule = optim.make_optimizer(ml_collections.ConfigDict(INVPT))
  got = np.array([float(schedule(int(i))) for i in npz["schedule/iteration"]])
  # float32 evaluation of 1 - it/max_iter: rtol 1e-6 plus an absolute 1e-6
  # of the peak lr (the last steps' lr ~1e-9 carries ~1e-3 relative error).
  np.testing.assert_allclose(got, npz["schedule/lr"], rtol=1e-6,
                             atol=1e-6 * INVPT["lr"])


def _torch_reference(name, init, grads, lr0, wd, clip, total):
  """torch.optim.Adam/AdamW + clip_grad_norm_ + poly lr set before each step."""
  torch = pytest.importorskip("torch")
  params = [torch.tensor(v, dtype=torch.float32) for v in init]
  for p in params:
    p.requires_grad_(True)
  cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
  opt = cls(params, lr=lr0, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)
  out = []
  for k, g in enumerate(grads):
    for group in opt.param_groups:
      group["lr"] = lr0 * (1 - k / total) ** 0.9
    for p, gv in zip(params, g):
      p.grad = torch.tensor(gv, dtype=torch.float32)
    torch.nn.utils.clip_grad_norm_(params, clip)
    opt.step()
    out.append([p.detach().numpy().copy() for p in params])
  return out


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_matches_torch_with_large_decay_and_clip(name):
  # The golden's wd (1e-6) is below float32 resolution, so coupled and
  # decoupled decay are told apart here with wd = 0.1 against torch itself.
  rng = np.random.default_rng(0)
  init = [rng.normal(size=(3, 4)).astype(np.float32),
          rng.normal(size=(4,)).astype(np.float32)]
  grads = [[rng.normal(size=v.shape).astype(np.float32) * 3 for v in init]
           for _ in range(6)]
  cfg = dict(INVPT, name=name, lr=1e-2, weight_decay=0.1, total_steps=20,
             grad_clip_norm=1.0)
  tx, _ = optim.make_optimizer(cfg)
  ours = _run(tx, {"a": init[0], "b": init[1]},
              [{"a": g[0], "b": g[1]} for g in grads])
  ref = _torch_reference(name, init, grads, 1e-2, 0.1, 1.0, 20)
  for mine, theirs in zip(ours, ref):
    # float32 on both sides: rtol 1e-5, atol 1e-6.
    np.testing.assert_allclose(mine["a"], theirs[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mine["b"], theirs[1], rtol=1e-5, atol=1e-6)


def test_adam_and_adamw_differ():
  params = {"w": jnp.ones((3,))}
  grads = {"w": jnp.asarray([0.1, -0.2, 0.3])}
  results = []
  for name in ("adam", "adamw"):
    tx, _ = optim.make_optimizer(dict(name=name, lr=0.1, weight_decay=0.5,
                                      schedule="constant"))
    updates, _ = tx.update(grads, tx.init(params), params)
    results.append(np.asarray(updates["w"]))
  assert not np.allclose(results[0], results[1], rtol=1e-3)


def test_warmup_cosine_and_constant_schedules():
  lr, warm, total, min_lr = 1e-3, 10, 110, 1e-5
  _, cosine = optim.make_optimizer(dict(
      lr=lr, schedule="cosine", warmup_steps=warm, total_steps=total,
      min_lr=min_lr))
  for s in (0, 3, 10, 35, 60, 109, 110, 200):
    if s < warm:
      want = lr * s / warm
    else:
      frac = min(s - warm, total - warm) / (total - warm)
      want = min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * frac))
    # float32 schedule evaluation: rtol 1e-5 plus 1e-6 of the peak lr.
    np.testing.assert_allclose(float(cosine(s)), want, rtol=1e-5,
                               atol=1e-6 * lr)
  _, poly = optim.make_optimizer(dict(lr=lr, warmup_steps=warm,
                                      total_steps=total, min_lr=min_lr))
  for s in (0, 5, 10, 50, 110):
    want = lr * s / warm if s < warm else (
        (lr - min_lr) * (1 - (s - warm) / (total - warm)) ** 0.9 + min_lr)
    np.testing.assert_allclose(float(poly(s)), want, rtol=1e-5,
                               atol=1e-6 * lr)
  _, const = optim.make_optimizer(dict(lr=lr, schedule="constant"))
  assert [float(const(s)) for s in (0, 1000)] == pytest.approx([lr, lr])


@pytest.mark.parametrize("bad", [dict(name="sgd"), dict(schedule="step"),
                                 dict(total_steps=0)])
def test_rejects_bad_config(bad):
  with pytest.raises(ValueError):
    optim.make_optimizer(dict(INVPT, **bad))
