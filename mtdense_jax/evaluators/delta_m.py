"""Multi-task performance Delta_m relative to single-task baselines.

Port (facts only, no code copied) of SimonVandenhende/Multi-Task-Learning-
PyTorch@ed3d9ac evaluation/evaluate_utils.py
``calculate_multi_task_performance``:

    Delta_m = (1/T) * sum_t s_t * (M_t - S_t) / S_t,

s_t = +1 if higher is better, -1 otherwise, T = the number of tasks in the
multi-task dict. A FRACTION (papers print x100). The reference hard-codes the
metric per task (saliency enters through mIoU, not maxF; the table is in
tests/test_delta_m.py); ``directions_from_tasks`` derives them from the Task
objects' declared metrics instead (../shared/notes/methods.md d.7).
"""

from __future__ import annotations

from typing import Iterable, Mapping

Metrics = Mapping[str, Mapping[str, float]]
Directions = Mapping[str, tuple[str, bool]]

def delta_m(mtl_metrics: Metrics, stl_metrics: Metrics,
            directions: Directions) -> float:
  """Delta_m as a fraction, over every task of ``mtl_metrics``.

  Args:
    mtl_metrics: task -> metric name -> value of the multi-task model.
    stl_metrics: the same for the single-task baselines (same task set).
    directions: task -> (metric, higher_is_better).

  Returns:
    The mean signed relative improvement, accumulated in the reference's
    order (tasks in ``mtl_metrics`` order, one division at the end), so it
    matches bit for bit in float64.
  """
  if set(mtl_metrics) != set(stl_metrics):
    raise ValueError(
        f"Delta_m needs the same tasks: multi-task {sorted(mtl_metrics)} vs "
        f"single-task {sorted(stl_metrics)}.")
  missing = set(mtl_metrics) - set(directions)
  if missing:
    raise ValueError(f"No Delta_m metric/direction for tasks {sorted(missing)}")
  total = 0.0
  for task in mtl_metrics:
    metric, higher = directions[task]
    m, s = float(mtl_metrics[task][metric]), float(stl_metrics[task][metric])
    if higher:
      total += (m - s) / s
    else:
      total -= (m - s) / s
  return total / len(mtl_metrics)


def directions_from_tasks(tasks: Iterable | Mapping,
                          metrics: Metrics | None = None
                          ) -> dict[str, tuple[str, bool]]:
  """task name -> (metric, higher_is_better) from Task objects.

  ``tasks`` is an iterable of Tasks or a mapping name -> Task.

  Each task contributes its ``primary_metric`` with its direction in
  ``metric_directions``, unless one of its optional ``delta_m_metrics``
  (e.g. edge's offline ``odsF``) is present in ``metrics[task.name]``; that
  one is preferred, so a run with boundary results uses odsF and a run
  without falls back to the online edge loss.
  """
  if isinstance(tasks, Mapping):
    tasks = tasks.values()
  out = {}
  for task in tasks:
    have = (metrics or {}).get(task.name, {})
    preferred = getattr(task, "delta_m_metrics", {})
    chosen = next(((m, bool(h)) for m, h in preferred.items() if m in have),
                  None)
    if chosen is None:
      metric = task.primary_metric
      chosen = (metric, bool(task.metric_directions[metric]))
    out[task.name] = chosen
  return out
