"""Runs every task's metric over an eval split, plus the multi-task delta_m.

Metrics are sufficient statistics folded in on device by the jitted eval
step (one compile for the whole split: the last batch is padded, never
smaller) and finalised once on the host by each task.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import jax
import numpy as np

from mtdense_jax.tasks import base as task_base


def evaluate(tasks: Mapping[str, task_base.Task], eval_fn: Callable,
             params: Any, batch_stats: Any, batches: Iterable[dict],
             stl_baselines: Mapping[str, Mapping[str, float]] | None = None
             ) -> dict[str, float]:
  """Returns {"<task>/<metric>": value, ..., "delta_m": ...}.

  Args:
    tasks: the configured tasks.
    eval_fn: jitted (params, batch_stats, stats, batch) -> stats.
    params, batch_stats: the model state to evaluate.
    batches: global eval batches (with a "valid" mask).
    stl_baselines: optional single-task results {task: {metric: value}};
      when given, delta_m (a fraction, MTL-PyTorch convention) is added.
  """
  stats = {name: t.metric_init() for name, t in tasks.items()}
  for batch in batches:
    stats = eval_fn(params, batch_stats, stats, batch)
  stats = jax.device_get(stats)
  per_task = {name: t.metric_compute(stats[name]) for name, t in tasks.items()}
  # Per-threshold curves etc. stay out of the flat scalar dict.
  out = {f"{name}/{k}": float(v) for name, m in per_task.items()
         for k, v in m.items() if np.ndim(v) == 0}
  if stl_baselines:
    from mtdense_jax.evaluators import delta_m  # pylint: disable=g-import-not-at-top
    out["delta_m"] = delta_m.delta_m(
        per_task, {k: dict(v) for k, v in stl_baselines.items()},
        delta_m.directions_from_tasks(tasks, per_task))
  return out
