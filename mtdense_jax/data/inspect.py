"""Look at a prepared dataset: split sizes, per-task statistics, a PNG grid.

  python -m mtdense_jax.data.inspect --dataset nyud_v2 --data_dir DIR \
      [--config all] [--manual_dir M --prepare] [--out grid.png]

Statistics are computed on the stored targets (before the input pipeline's
ignore handling): semseg/human_parts class histograms and ignore share,
depth range and invalid (0) share, normals invalid (all-zero) share and
norm, edge/sal positive share. The grid shows, per example, the image and
each task's target.
"""

from __future__ import annotations

import argparse
import collections
from typing import Any, Sequence

import numpy as np
from PIL import Image

from mtdense_jax import registry
from mtdense_jax import viz

_LABEL_TASKS = ("semseg", "human_parts")


def _palette(n: int = 256) -> np.ndarray:
  """PASCAL VOC-style bit-interleaved colour map; 255 (ignore) is white."""
  pal = np.zeros((n, 3), np.uint8)
  for i in range(n):
    c, r, g, b = i, 0, 0, 0
    for j in range(8):
      r |= ((c >> 0) & 1) << (7 - j)
      g |= ((c >> 1) & 1) << (7 - j)
      b |= ((c >> 2) & 1) << (7 - j)
      c >>= 3
    pal[i] = (r, g, b)
  pal[255] = 255
  return pal


def colorize(task: str, y: np.ndarray) -> np.ndarray:
  """A stored target -> uint8 RGB (H, W, 3) for the grid."""
  if task in _LABEL_TASKS:
    return _palette()[y[..., 0]]
  if task in ("edge", "sal"):
    return np.repeat((y[..., :1] > 0).astype(np.uint8) * 255, 3, -1)
  if task == "depth":  # the colours of predict's panels (0..10 m)
    d = y[..., 0].astype(np.float32)
    return viz.scalar_rgb(d, 0.0, 10.0, valid=d > 0)
  return np.clip((y + 1) * 127.5, 0, 255).astype(np.uint8)  # normals


class _Stats:
  """Running per-task statistics over examples."""

  def __init__(self, tasks: Sequence[str], num_classes: dict) -> None:
    self.tasks, self.num_classes = tasks, num_classes
    self.sums: dict[str, collections.Counter] = {
        t: collections.Counter() for t in tasks}
    self.hists = {t: np.zeros(256, np.int64) for t in tasks
                  if t in _LABEL_TASKS}
    self.sizes: collections.Counter = collections.Counter()

  def update(self, ex: dict[str, Any]) -> None:
    self.sizes[tuple(int(v) for v in ex["orig_size"])] += 1
    for t in self.tasks:
      y, s = ex[t], self.sums[t]
      s["pixels"] += y.shape[0] * y.shape[1]
      if t in _LABEL_TASKS:
        self.hists[t] += np.bincount(y.ravel(), minlength=256)
        s["all_zero_images"] += int(not y.any())
      elif t in ("edge", "sal"):
        s["positive"] += int((y > 0).sum())
      elif t == "depth":
        v = y[y > 0]
        s["invalid"] += int(y.size - v.size)
        s["sum"] += float(v.sum())
        s["min"] = min(s.get("min", np.inf), float(v.min(initial=np.inf)))
        s["max"] = max(s.get("max", 0.0), float(v.max(initial=0.0)))
      else:
        norm = np.linalg.norm(y, axis=-1)
        s["invalid"] += int((norm == 0).sum())
        s["norm_sum"] += float(norm[norm > 0].sum())

  def lines(self) -> list[str]:
    out = [f"  image sizes (H, W): {dict(self.sizes.most_common(5))}"]
    for t in self.tasks:
      s, px = self.sums[t], max(self.sums[t]["pixels"], 1)
      if t in _LABEL_TASKS:
        h = self.hists[t]
        n = self.num_classes.get(t, 0)
        present = int((h[:n] > 0).sum())
        out.append(f"  {t}: {present}/{n} classes present, ignore(255) "
                   f"{h[255] / px:.3f}, out-of-range "
                   f"{h[n:255].sum() / px:.3f}, all-zero images "
                   f"{s['all_zero_images']}")
      elif t in ("edge", "sal"):
        out.append(f"  {t}: positive share {s['positive'] / px:.4f}")
      elif t == "depth":
        valid = px - s["invalid"]
        out.append(f"  depth: invalid share {s['invalid'] / px:.3f}, range "
                   f"[{s.get('min', 0):.3f}, {s.get('max', 0):.3f}] m, mean "
                   f"{s['sum'] / max(valid, 1):.3f} m")
      else:
        valid = px - s["invalid"]
        out.append(f"  normals: invalid share {s['invalid'] / px:.3f}, mean "
                   f"norm {s['norm_sum'] / max(valid, 1):.4f}")
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
  tasks = list(meta.get("tasks", []))
  lines = [f"{builder.name}/{builder.builder_config.name} in "
           f"{builder.data_dir}", f"tasks: {tasks}"]
  panels = []
  for split in builder.info.splits:
    ds = builder.as_data_source(split)
    n = len(ds) if max_examples <= 0 else min(len(ds), max_examples)
    stats = _Stats(tasks, dict(meta.get("num_classes", {}) or {}))
    for i in range(n):
      ex = ds[i]
      stats.update(ex)
      if len(panels) < grid_rows:
        panels.append([ex["image"]] + [colorize(t, ex[t]) for t in tasks])
    lines.append(f"split {split}: {len(ds)} examples"
                 + (f" (statistics on {n})" if n < len(ds) else ""))
    lines += stats.lines()
  if out and panels:
    Image.fromarray(grid(panels)).save(out)
    lines.append(f"grid: {out} (columns: image, {', '.join(tasks)})")
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
