"""What a run tells its user on stdout: what it is doing at start, the
parameter overview, and one closing summary. Only formatting lives here;
train/loop.py calls it (process 0 prints)."""

from __future__ import annotations

import collections
import pathlib
import shlex
import time
from typing import Any, Mapping

from clu import parameter_overview
import jax
import numpy as np


def say(msg: str) -> None:
  if jax.process_index() == 0:
    print(msg, flush=True)


class Timer:
  """`with Timer("compiling") as t:` ... prints 'compiling ... took 3.2 s'."""

  def __init__(self, what: str, done: str | None = None):
    self.what, self.done, self.seconds = what, done, 0.0

  def __enter__(self):
    say(f"{self.what} ...")
    self._t0 = time.perf_counter()
    return self

  def __exit__(self, *exc):
    self.seconds = time.perf_counter() - self._t0
    if exc[0] is None:
      say(f"{self.done or self.what}: took {self.seconds:.1f} s")


def _path_names(path) -> tuple[str, ...]:
  names = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        names.append(str(getattr(k, attr)))
        break
  while names and names[-1] == "value":
    names.pop()
  return tuple(names)


def parameter_table(params: Any, depth: int = 2) -> str:
  """Parameter count and bytes per module (the first `depth` path names)
  and the total, as big_vision prints at start; the total is
  clu.parameter_overview's count."""
  flat = {"/".join(_path_names(path)): np.asarray(
      jax.ShapeDtypeStruct(np.shape(leaf), leaf.dtype).shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
  counts, nbytes = collections.Counter(), collections.Counter()
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    size = int(np.prod(np.shape(leaf), dtype=np.int64))
    key = "/".join(_path_names(path)[:depth]) or "(root)"
    counts[key] += size
    nbytes[key] += size * np.dtype(leaf.dtype).itemsize
  total = parameter_overview.count_parameters(
      {k: jax.ShapeDtypeStruct(tuple(v), np.float32) for k, v in flat.items()})
  width = max([len(k) for k in counts] + [len("module")])
  lines = [f"{'module':<{width}}  {'params':>12}  {'size':>10}"]
  for k in sorted(counts):
    lines.append(f"{k:<{width}}  {counts[k]:>12,}  "
                 f"{_human_bytes(nbytes[k]):>10}")
  lines.append(f"{'total':<{width}}  {total:>12,}  "
               f"{_human_bytes(sum(nbytes.values())):>10}")
  return "\n".join(lines)


def _human_bytes(n: float) -> str:
  for unit in ("B", "KiB", "MiB", "GiB"):
    if n < 1024 or unit == "GiB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1024
  return f"{n:.1f} GiB"


def metrics_table(metrics: Mapping[str, float]) -> str:
  """task/metric rows as a small two-column table, grouped by task."""
  if not metrics:
    return "  (no metrics)"
  width = max(len(k) for k in metrics)
  return "\n".join(f"  {k:<{width}}  {float(v):>10.4f}"
                   for k, v in sorted(metrics.items()))


def end_summary(workdir: str | pathlib.Path, step: int,
                metrics: Mapping[str, float]) -> str:
  """The closing block: metrics, where everything is, what to run next."""
  w = pathlib.Path(workdir)
  q = shlex.quote(str(w))
  return "\n".join([
      f"Done: step {step}. Validation metrics:",
      metrics_table({k: v for k, v in metrics.items()
                     if np.ndim(v) == 0}),
      f"  checkpoint   {w / 'checkpoints' / str(step)}",
      f"  metrics      {w / 'metrics.jsonl'}",
      f"  TensorBoard  tensorboard --logdir {w / 'tensorboard'}",
      f"  curves       python -m mtdense_jax.plots --workdir {q}  "
      f"(-> {w / 'curves.png'})",
      f"  predict      python -m mtdense_jax.predict --workdir {q} "
      "--images IMG.jpg --out preds/",
  ])
