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
import sys
import time
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
  gt_key: batch key of the ground truth to score against (e.g. a label
    map for SEISM's LabelMap mode); None: the task's own label.
  progress_every: seconds between progress lines when not on a terminal
    (on one, a tqdm bar).
  """
  predict_fn: Callable
  make_evaluator: Callable[[], Any]
  gt_key: str | None = None
  progress_every: float = 30.0


class _Progress:
  """Boundary images done / total with rate and ETA (process 0 only)."""

  def __init__(self, total: int | None, every: float):
    self.total, self.every = total, every
    self._t0 = self._last = time.perf_counter()
    self._bar = None
    self._shown = 0
    self._on = jax.process_index() == 0
    if self._on and sys.stderr.isatty():
      import tqdm  # pylint: disable=g-import-not-at-top
      self._bar = tqdm.tqdm(total=total, unit="img", desc="boundary odsF")

  def line(self, done: int) -> str:
    rate = done / max(time.perf_counter() - self._t0, 1e-9)
    total = f"/~{self.total}" if self.total else ""
    eta = ""
    if self.total and rate > 0:
      left = max(self.total - done, 0) / rate
      m, s = divmod(int(left), 60)
      eta = f" | ETA {m // 60:d}:{m % 60:02d}:{s:02d}"
    return (f"boundary odsF: {done}{total} images | {rate:.2f} images/s"
            f"{eta}")

  def update(self, done: int, final: bool = False) -> None:
    if not self._on:
      return
    if self._bar is not None:
      self._bar.update(done - self._shown)
      self._shown = done
      if final:
        self._bar.close()
      return
    now = time.perf_counter()
    if final or now - self._last >= self.every:
      self._last = now
      print(self.line(done), flush=True)


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


def _add_boundaries(evaluators: dict, preds: dict, batch: Mapping,
                    gt_key: str | None = None) -> None:
  valid = _host(batch["valid"])
  if gt_key is not None and gt_key not in batch:
    raise KeyError(f"config.eval.boundary.gt_key={gt_key!r} but the eval "
                   f"batch has no {gt_key!r} (keys: {sorted(batch)}); the "
                   "dataset must carry it, or unset gt_key")
  gts = _host(batch[gt_key]) if gt_key is not None else None
  for name, ev in evaluators.items():
    prob, label = _host(preds[name]), _host(batch[name])
    for i in np.flatnonzero(valid):
      box = _label_box(label[i, ..., 0])  # the task label marks the padding
      gt = label[i, ..., 0] if gts is None else np.squeeze(gts[i])
      if box[2] and box[3]:
        ev.add(prob[i, ..., 0], gt, crop=box)


def _num_batches(batches: Iterable[dict], given: int | None) -> int | None:
  if given is not None:
    return given
  try:
    return len(batches)  # type: ignore[arg-type]
  except TypeError:
    return None


def evaluate(tasks: Mapping[str, task_base.Task], eval_fn: Callable,
             params: Any, batch_stats: Any, batches: Iterable[dict],
             stl_baselines: Mapping[str, Mapping[str, float]] | None = None,
             boundary: BoundaryEval | None = None,
             num_batches: int | None = None) -> dict[str, float]:
  """Returns {"<task>/<metric>": value, ..., "delta_m": ...}.

  Args:
    tasks: the configured tasks.
    eval_fn: jitted (params, batch_stats, stats, batch) -> stats.
    params, batch_stats: the model state to evaluate.
    batches: global eval batches (with a "valid" mask).
    stl_baselines: optional single-task results {task: {metric: value}};
      when given, delta_m (a fraction, MTL-PyTorch convention) is added.
    boundary: optional offline boundary benchmark (odsF, oisF, AP).
    num_batches: batch count for the boundary progress ETA (else len()).
  """
  stats = {name: t.metric_init() for name, t in tasks.items()}
  evaluators = {}
  if boundary is not None:
    evaluators = {n: boundary.make_evaluator() for n, t in tasks.items()
                  if t.boundary_metric}
  progress = None
  num_batches = _num_batches(batches, num_batches)
  for batch in batches:
    stats = eval_fn(params, batch_stats, stats, batch)
    if evaluators:
      if progress is None:
        per = int(np.shape(batch["valid"])[0]) * len(evaluators)
        progress = _Progress(num_batches and num_batches * per,
                             boundary.progress_every)
      preds = boundary.predict_fn(params, batch_stats, batch["image"])
      _add_boundaries(evaluators, preds, batch, boundary.gt_key)
      progress.update(sum(ev.done for ev in evaluators.values()))
  if progress is not None:  # the pool's tail
    while True:
      done = sum(ev.done for ev in evaluators.values())
      if done >= sum(ev.submitted for ev in evaluators.values()):
        break
      progress.update(done)
      time.sleep(0.2)
    progress.update(done, final=True)
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
