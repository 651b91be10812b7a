"""A training run compiles its train and eval steps exactly once, and the
loop reads device values only at log/checkpoint/eval steps.

A recompile per step (a changing shape, sharding, weak type or Python
scalar in the step's arguments) would multiply the wall time of every run,
and an unplanned device->host read stalls the step pipeline; neither shows
up as a wrong number, so this test watches for them directly.
"""

from __future__ import annotations

import jax
import numpy as np

from mtdense_jax import config_check
from mtdense_jax.train import loop
from tests.conftest import REPO


def test_runlocal_compiles_each_step_once(tmp_path, monkeypatch):
  cfg = config_check.load_config_file(
      str(REPO / "configs" / "synthetic_baseline.py") + ":runlocal")
  cfg.data.data_dir = str(tmp_path / "tfds")
  cfg.train.steps = cfg.optim.total_steps = 6
  cfg.train.log_every = cfg.train.ckpt_every = 3
  cfg.train.eval_every = 3
  # Two eval batches, so the eval step also sees its own output totals
  # (device arrays) after the host-made initial ones.
  cfg.data.builder_kwargs.num_validation = 2 * cfg.eval.batch_size
  jitted, reads = {}, []
  steps_done = {"n": 0}

  def spy(name, real):
    def make(*args, **kwargs):
      fn = real(*args, **kwargs)
      jitted[name] = fn
      if name != "train":
        return fn

      def counted(*a):
        steps_done["n"] += 1
        return fn(*a)
      return counted
    return make

  real_get = jax.device_get

  def get(x):
    reads.append(steps_done["n"])
    return real_get(x)

  monkeypatch.setattr(loop, "compile_train_step",
                      spy("train", loop.compile_train_step))
  monkeypatch.setattr(loop, "compile_eval_step",
                      spy("eval", loop.compile_eval_step))
  monkeypatch.setattr(jax, "device_get", get)
  metrics = loop.train_and_evaluate(cfg, str(tmp_path / "run"))
  assert all(np.isfinite(v) for v in metrics.values())
  assert steps_done["n"] == 6
  # 6 steps (the accumulator reset after each log included) and 2
  # evaluations of 2 batches each: one executable per step function.
  assert jitted["train"]._cache_size() == 1
  assert jitted["eval"]._cache_size() == 1
  # Host reads of training values happen at log steps only (3 and 6), plus
  # the start step before training; evaluation reads its totals at the end.
  train_reads = sorted(set(r for r in reads if r not in (0,)))
  assert set(train_reads) <= {3, 6}, reads
  # Resuming: the state restored by Orbax must hit the same executable as
  # the freshly initialised one (same shardings, dtypes, committedness).
  cfg.train.steps = cfg.optim.total_steps = 8
  loop.train_and_evaluate(cfg, str(tmp_path / "run"))
  assert steps_done["n"] == 8
  assert jitted["train"]._cache_size() == 1
