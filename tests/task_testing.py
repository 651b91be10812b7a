"""Helpers shared by the tests/test_task_*.py files (not a test module).

They feed goldens and synthetic batches through a Task the way the
evaluator does (jitted ``metric_update`` over batches, padded examples
marked invalid), so each task's tests only state what is task-specific.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mtdense_jax import registry
from mtdense_jax.tasks import base

# Metric tolerance from the metrics_* sidecar notes. The loss sidecars give
# none; float32 sums over ~1.5k pixels agree with torch to ~1e-7 relative.
METRIC_TOL = dict(rtol=1e-5, atol=1e-7)
LOSS_TOL = dict(rtol=1e-5, atol=1e-6)

Junk = Callable[[np.random.Generator, np.ndarray], np.ndarray]


def nhwc(x: np.ndarray) -> np.ndarray:
  """Golden arrays are NCHW (PyTorch); the tasks take NHWC."""
  return np.transpose(x, (0, 2, 3, 1))


def jnhwc(x: np.ndarray) -> jax.Array:
  """`nhwc` as a device array."""
  return jnp.asarray(nhwc(x))


def loss_case(npz, spec: dict) -> tuple[jax.Array, jax.Array, np.ndarray]:
  """(pred, label, reference loss) of one case of a losses_* golden whose
  sidecar names its arrays by key (NCHW, turned NHWC here)."""
  return (jnhwc(npz[spec["inputs"]["pred"]["key"]]),
          jnhwc(npz[spec["inputs"]["label"]["key"]]),
          npz[spec["outputs"]["loss"]["key"]])


def plugin_task(name: str, **kwargs) -> base.Task:
  """Builds the task as the trainer does (registry lookup by name) and
  checks the plugin contract: a base.Task named like its module."""
  mod = registry.lookup("task", name)
  task = mod.Task(**kwargs)
  assert isinstance(task, base.Task)
  assert task.name == mod.__name__.rsplit(".", 1)[-1] == name
  return task


def run_metric(task: base.Task, pred, gt, batch: int) -> dict[str, float]:
  """Feeds a whole set batch by batch through the jitted update."""
  update = jax.jit(task.metric_update)
  stats = task.metric_init()
  for i in range(0, pred.shape[0], batch):
    stats = update(stats, pred[i:i + batch], gt[i:i + batch],
                   jnp.ones((min(batch, pred.shape[0] - i),), bool))
  return task.metric_compute(jax.device_get(stats))


def run_padded_batches(update, stats, pred: np.ndarray, gt: np.ndarray, *,
                       junk_pred: Junk, junk_label: Junk, batch: int = 2,
                       seed: int = 0):
  """Jitted updates over batches of `batch` real examples plus one garbage
  example marked invalid, which must not count.

  Args:
    update: (stats, pred, label, valid) -> stats.
    stats: the initial running totals.
    pred: (N, H, W, C) predictions.
    gt: (N, H, W) labels; sent as uint8 (N, H, W, 1).
    junk_pred, junk_label: (rng, one real example (1, ...)) -> the garbage
      example of that shape; called in this order.
    batch: real examples per batch.
    seed: of the garbage.
  """
  rng = np.random.default_rng(seed)
  update = jax.jit(update)
  for i in range(0, len(gt), batch):
    p, lb = pred[i:i + batch], gt[i:i + batch, ..., None]
    p = np.concatenate([p, junk_pred(rng, p[:1])])
    lb = np.concatenate([lb, junk_label(rng, lb[:1])]).astype(np.uint8)
    valid = np.arange(len(lb)) < batch
    stats = update(stats, jnp.asarray(p), jnp.asarray(lb), jnp.asarray(valid))
  return stats


def run_classification(task: base.Task, logits: np.ndarray, gt: np.ndarray,
                       batch: int = 2, seed: int = 0):
  """`run_padded_batches` of a class-map task: garbage logits and ids."""
  return run_padded_batches(
      task.metric_update, task.metric_init(), logits, gt,
      junk_pred=lambda rng, p: rng.normal(size=p.shape).astype(np.float32),
      junk_label=lambda rng, lb: rng.integers(0, task.num_outputs, lb.shape),
      batch=batch, seed=seed)


def check_loss_and_postprocess(task: base.Task, seed: int,
                               shape: tuple[int, int, int] = (2, 4, 6)):
  """Random logits and in-range labels: a finite positive jitted loss and a
  (B, H, W, 1) postprocess. Returns (pred, postprocessed as numpy)."""
  rng = np.random.default_rng(seed)
  pred = jnp.asarray(rng.normal(size=shape + (task.num_outputs,)),
                     jnp.float32)
  label = jnp.asarray(rng.integers(0, task.num_outputs, shape + (1,)),
                      jnp.uint8)
  loss = jax.jit(task.loss)(pred, label)
  assert np.isfinite(float(loss)) and float(loss) > 0
  out = np.asarray(jax.jit(task.postprocess)(pred))
  assert out.shape == shape + (1,)
  return pred, out
