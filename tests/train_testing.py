"""Shared by the train tests and the multi-process worker: a few train steps
outside the full loop."""

from __future__ import annotations

import contextlib

import jax
import numpy as np

from mtdense_jax.data import pipeline
from mtdense_jax.train import checkpointing as ckpt
from mtdense_jax.train import loop
from mtdense_jax.train import sharding as shd
from mtdense_jax.train import state as state_lib
from mtdense_jax.train import step as step_lib


def host_copy(tree):
  """Writable host copies, so later (donating) steps cannot change them."""
  return jax.tree.map(lambda x: np.array(x, copy=True), jax.device_get(tree))


def setup_state(cfg, devices=None):
  """(experiment, model defs, sharded train state, shardings) as the loop
  builds them, honouring config.model.trainable."""
  exp = loop.setup(cfg, devices)
  defs, state, shardings = state_lib.init_state(
      exp.factory, exp.tx, exp.weighting, list(exp.tasks), exp.mesh,
      cfg.get("sharding"), loop.trainable(cfg))
  return exp, defs, state, shardings


def steps(exp, defs, shardings, state, n: int,
          seed: int | None = None) -> tuple[dict, list[dict]]:
  """Runs `n` jitted train steps on the train split (data seed: `seed`,
  default config.seed); returns (state, per-step metrics as floats)."""
  cfg = exp.config
  it = pipeline.make_train_iter(cfg.data, list(exp.tasks),
                                global_batch_size=cfg.train.batch_size,
                                seed=cfg.seed if seed is None else seed)
  fn = loop.compile_train_step(exp, defs, shardings)
  acc = jax.device_put(step_lib.zero_acc(exp.tasks), shd.replicated(exp.mesh))
  history = []
  for _ in range(n):
    state, metrics, acc = fn(state, shd.global_batch(next(it), exp.mesh), acc)
    history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
  return state, history


def run_steps(cfg, n: int = 1, devices=None) -> tuple[list[dict], dict]:
  """Builds the experiment on `devices` and runs `n` train steps.

  Returns (per-step metrics as floats, final train state).
  """
  exp, defs, state, shardings = setup_state(cfg, devices)
  state, history = steps(exp, defs, shardings, state, n)
  return history, state


@contextlib.contextmanager
def killed_at(step: int):
  """Within the block, the loop's train step raises KeyboardInterrupt (a
  simulated kill) when asked to run from optimizer step `step`."""
  real = loop.compile_train_step

  def crashing(*args, **kwargs):
    fn = real(*args, **kwargs)

    def wrapped(state, batch, acc):
      if int(jax.device_get(state["step"])) == step:
        raise KeyboardInterrupt(f"simulated kill at step {step}")
      return fn(state, batch, acc)
    return wrapped

  loop.compile_train_step = crashing
  try:
    yield
  finally:
    loop.compile_train_step = real


def restored_params(directory, cfg, step=None, exp=None):
  """(host params {"params", "batch_stats"}, step) of a checkpoints dir,
  restored params-only (as --mode eval does), replicated."""
  exp = exp or loop.setup(cfg)
  _, abs_params, abs_stats = state_lib.model_defs(exp.factory)
  repl = shd.replicated(exp.mesh)
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl),
      {"params": abs_params, "batch_stats": abs_stats})
  params, got = ckpt.restore_params(directory, abstract, step)
  return jax.tree.map(np.asarray, params), got
