"""Look at a prepared dataset: split sizes, per-task statistics, a PNG grid.

  python -m mtdense_jax.data.inspect --dataset nyud_v2 --data_dir DIR \
      [--config all] [--manual_dir M --prepare] [--out grid.png]

Statistics are computed on the stored targets, per task from its label spec
(nothing here names a task): class labels get a class histogram, ignore
share, out-of-range share and all-zero images; {0, 1} maps their positive
share; float maps the share of pixels their task marks invalid
(`Task.ignore_regions`), the range and mean of the rest, and the mean vector
norm of multi-channel maps. The grid shows, per example, the image and each
task's target as the task colours it.
"""

from __future__ import annotations

import argparse
import collections
from typing import Any, Sequence

import numpy as np
from PIL import Image

from mtdense_jax import registry
from mtdense_jax.tasks import base as task_base


def colorize(task: task_base.Task, y: np.ndarray) -> np.ndarray:
  """A stored target -> uint8 RGB (H, W, 3) for the grid."""
  return task.colorize(task.ignore_regions(np.asarray(y)))


def _kind(task: task_base.Task) -> str:
  spec = task.label_spec
  if np.issubdtype(np.dtype(spec.dtype), np.floating):
    return "float"
  if task.num_classes:
    return "classes"
  return "binary" if tuple(spec.value_range) == (0, 1) else "float"


class _Stats:
  """Running per-task statistics over examples."""

  def __init__(self, tasks: Sequence[task_base.Task]) -> None:
    self.tasks = tasks
    self.sums: dict[str, collections.Counter] = {
        t.name: collections.Counter() for t in tasks}
    self.hists = {t.name: np.zeros(256, np.int64) for t in tasks
                  if _kind(t) == "classes"}
    self.sizes: collections.Counter = collections.Counter()

  def update(self, ex: dict[str, Any]) -> None:
    self.sizes[tuple(int(v) for v in ex["orig_size"])] += 1
    for t in self.tasks:
      y, s = np.asarray(ex[t.name]), self.sums[t.name]
      s["pixels"] += y.shape[0] * y.shape[1]
      kind = _kind(t)
      if kind == "classes":
        self.hists[t.name] += np.bincount(y.ravel(), minlength=256)
        s["all_zero_images"] += int(not y.any())
      elif kind == "binary":
        s["positive"] += int((y > 0).sum())
      else:
        marked = t.ignore_regions(y)
        bad = np.all(marked == t.fill, axis=-1)
        v = y[~bad]
        s["invalid"] += int(bad.sum())
        s["sum"] += float(v.sum())
        s["min"] = min(s.get("min", np.inf), float(v.min(initial=np.inf)))
        s["max"] = max(s.get("max", -np.inf), float(v.max(initial=-np.inf)))
        if y.shape[-1] > 1:
          s["norm_sum"] += float(np.linalg.norm(y[~bad], axis=-1).sum())

  def lines(self) -> list[str]:
    out = [f"  image sizes (H, W): {dict(self.sizes.most_common(5))}"]
    for t in self.tasks:
      s, px = self.sums[t.name], max(self.sums[t.name]["pixels"], 1)
      kind = _kind(t)
      if kind == "classes":
        h, n = self.hists[t.name], t.num_classes
        ignore = int(t.fill)
        present = int((h[:n] > 0).sum())
        out_of_range = h[n:].sum() - h[ignore]
        out.append(f"  {t.name}: {present}/{n} classes present, ignore"
                   f"({ignore}) {h[ignore] / px:.3f}, out-of-range "
                   f"{out_of_range / px:.3f}, all-zero images "
                   f"{s['all_zero_images']}")
      elif kind == "binary":
        out.append(f"  {t.name}: positive share {s['positive'] / px:.4f}")
      else:
        valid = px - s["invalid"]
        line = (f"  {t.name}: invalid share {s['invalid'] / px:.3f}, range "
                f"[{s.get('min', 0):.3f}, {s.get('max', 0):.3f}]")
        if t.label_spec.channels > 1:
          line += f", mean norm {s['norm_sum'] / max(valid, 1):.4f}"
        else:
          line += f", mean {s['sum'] / max(valid, 1):.3f}"
        out.append(line)
    return out


def grid(rows: list[list[np.ndarray]], cell: int = 160) -> np.ndarray:
  """Tiles RGB panels (resized to `cell` pixels high) into one image."""
  def fit(a):
    w = max(1, round(a.shape[1] * cell / a.shape[0]))
    return np.asarray(Image.fromarray(a).resize((w, cell), Image.NEAREST))
  rows = [[fit(a) for a in r] for r in rows]
  width = max(sum(a.shape[1] for a in r) for r in rows)
  out = np.zeros((cell * len(rows), width, 3), np.uint8)
  for i, r in enumerate(rows):
    x = 0
    for a in r:
      out[i * cell:(i + 1) * cell, x:x + a.shape[1]] = a
      x += a.shape[1]
  return out


def inspect(builder, *, max_examples: int = 0, grid_rows: int = 4,
            out: str | None = None) -> str:
  """Prints and returns the report; writes the grid PNG to `out`."""
  meta = dict(builder.info.metadata or {})
  names = list(meta.get("tasks", []))
  tasks = task_base.build_all(
      names, num_classes=dict(meta.get("num_classes", {}) or {}))
  lines = [f"{builder.name}/{builder.builder_config.name} in "
           f"{builder.data_dir}", f"tasks: {names}"]
  panels = []
  for split in builder.info.splits:
    ds = builder.as_data_source(split)
    n = len(ds) if max_examples <= 0 else min(len(ds), max_examples)
    stats = _Stats(tasks)
    for i in range(n):
      ex = ds[i]
      stats.update(ex)
      if len(panels) < grid_rows:
        panels.append([ex["image"]] + [colorize(t, ex[t.name]) for t in tasks])
    lines.append(f"split {split}: {len(ds)} examples"
                 + (f" (statistics on {n})" if n < len(ds) else ""))
    lines += stats.lines()
  if out and panels:
    Image.fromarray(grid(panels)).save(out)
    lines.append(f"grid: {out} (columns: image, {', '.join(names)})")
  report = "\n".join(lines)
  print(report)
  return report


def main(argv: Sequence[str] | None = None) -> str:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--dataset", required=True)
  p.add_argument("--config", default=None,
                 help="builder config (default: the dataset's first)")
  p.add_argument("--data_dir", default=None)
  p.add_argument("--manual_dir", default=None)
  p.add_argument("--prepare", action="store_true",
                 help="prepare first if needed (reads the manual archive)")
  p.add_argument("--max_examples", type=int, default=0,
                 help="statistics on at most this many per split (0 = all)")
  p.add_argument("--rows", type=int, default=4)
  p.add_argument("--out", default="inspect_grid.png")
  a = p.parse_args(argv)
  module = registry.lookup("dataset", a.dataset)
  if a.config is None:  # The builder's first (default) config.
    configs = getattr(module.Builder, "BUILDER_CONFIGS", None) or []
    a.config = configs[0].name if configs else None
  builder = module.make_builder(a.config, data_dir=a.data_dir,
                                manual_dir=a.manual_dir)
  if not builder.is_prepared():
    if not a.prepare:
      raise SystemExit(f"{a.dataset}/{builder.builder_config.name} is not "
                       f"prepared in {builder.data_dir}; pass --prepare "
                       "(and --manual_dir for a downloaded archive).")
    builder.download_and_prepare(file_format="array_record")
  return inspect(builder, max_examples=a.max_examples, grid_rows=a.rows,
                 out=a.out)


if __name__ == "__main__":
  main()
