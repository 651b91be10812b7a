"""Runs every task's metric over an eval split, plus boundary odsF and the
multi-task delta_m.

Metrics are sufficient statistics folded in on device by the jitted eval
step (one compile for the whole split: the last batch is padded, never
smaller) and finalised once on the host by each task. Boundary tasks can
also get the offline SEISM benchmark (evaluators/boundary.py), computed on
the host from the post-processed predictions.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Mapping

import jax
from jax.experimental import multihost_utils
import numpy as np

from mtdense_jax.tasks import base as task_base


@dataclasses.dataclass
class BoundaryEval:
  """Offline boundary benchmark for the tasks with `boundary_metric`.

  predict_fn: jitted (params, batch_stats, image) -> {task: postprocessed}.
  make_evaluator: () -> a fresh evaluators.boundary.BoundaryEvaluator.
  """
  predict_fn: Callable
  make_evaluator: Callable[[], Any]


def _host(x: jax.Array) -> np.ndarray:
  """A global array on every host (all rows), for host-side metrics."""
  if jax.process_count() == 1:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _label_box(label: np.ndarray) -> tuple[int, int, int, int]:
  """(top, left, h, w) of the unpadded region: eval padding is 255."""
  rows = np.flatnonzero(np.any(label != task_base.IGNORE, axis=1))
  cols = np.flatnonzero(np.any(label != task_base.IGNORE, axis=0))
  if rows.size == 0:
    return 0, 0, 0, 0
  return (int(rows[0]), int(cols[0]), int(rows[-1] - rows[0] + 1),
          int(cols[-1] - cols[0] + 1))


def _add_boundaries(evaluators: dict, preds: dict, batch: Mapping) -> None:
  valid = _host(batch["valid"])
  for name, ev in evaluators.items():
    prob, label = _host(preds[name]), _host(batch[name])
    for i in np.flatnonzero(valid):
      box = _label_box(label[i, ..., 0])
      if box[2] and box[3]:
        ev.add(prob[i, ..., 0], label[i, ..., 0], crop=box)


def evaluate(tasks: Mapping[str, task_base.Task], eval_fn: Callable,
             params: Any, batch_stats: Any, batches: Iterable[dict],
             stl_baselines: Mapping[str, Mapping[str, float]] | None = None,
             boundary: BoundaryEval | None = None) -> dict[str, float]:
  """Returns {"<task>/<metric>": value, ..., "delta_m": ...}.

  Args:
    tasks: the configured tasks.
    eval_fn: jitted (params, batch_stats, stats, batch) -> stats.
    params, batch_stats: the model state to evaluate.
    batches: global eval batches (with a "valid" mask).
    stl_baselines: optional single-task results {task: {metric: value}};
      when given, delta_m (a fraction, MTL-PyTorch convention) is added.
    boundary: optional offline boundary benchmark (odsF, oisF, AP).
  """
  stats = {name: t.metric_init() for name, t in tasks.items()}
  evaluators = {}
  if boundary is not None:
    evaluators = {n: boundary.make_evaluator() for n, t in tasks.items()
                  if t.boundary_metric}
  for batch in batches:
    stats = eval_fn(params, batch_stats, stats, batch)
    if evaluators:
      preds = boundary.predict_fn(params, batch_stats, batch["image"])
      _add_boundaries(evaluators, preds, batch)
  stats = jax.device_get(stats)
  per_task = {name: t.metric_compute(stats[name]) for name, t in tasks.items()}
  for name, ev in evaluators.items():
    per_task[name].update(ev.compute())
    ev.close()
  # Per-threshold curves etc. stay out of the flat scalar dict.
  out = {f"{name}/{k}": float(v) for name, m in per_task.items()
         for k, v in m.items() if np.ndim(v) == 0}
  if stl_baselines:
    from mtdense_jax.evaluators import delta_m  # pylint: disable=g-import-not-at-top
    out["delta_m"] = delta_m.delta_m(
        per_task, {k: dict(v) for k, v in stl_baselines.items()},
        delta_m.directions_from_tasks(tasks, per_task))
  return out
