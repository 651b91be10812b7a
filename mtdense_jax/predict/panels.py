"""PNG panels: the input and every task's prediction side by side, each with
what is needed to read it: a class legend (names from the dataset metadata)
under label maps, a colour bar with units under scalar maps (a task that
declares ``units`` and ``vis_range``, e.g. depth in metres)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from mtdense_jax import viz

_BAR = 18     # title bar, pixels
_FOOT = 32    # legend / colour bar strip, pixels


def legend(width: int, entries: Sequence[tuple[str, np.ndarray]],
           height: int = _FOOT) -> np.ndarray:
  """Colour swatches with names, left to right, wrapped: (h, w, 3) uint8."""
  canvas = Image.new("RGB", (max(width, 1), height), "white")
  draw = ImageDraw.Draw(canvas)
  x, y = 2, 1
  for name, colour in entries:
    w = 12 + 6 * len(name) + 6
    if x + w > width and x > 2:
      x, y = 2, y + 12
    if y + 10 > height:
      draw.text((max(width - 14, 0), height - 11), "...", fill="black")
      break
    draw.rectangle((x, y + 1, x + 8, y + 9),
                   fill=tuple(int(c) for c in colour), outline="black")
    draw.text((x + 11, y), name, fill="black")
    x += w
  return np.asarray(canvas)


def _class_entries(task, pred: np.ndarray,
                   names: Sequence[str]) -> list[tuple[str, np.ndarray]]:
  """(name, colour) of the classes present in `pred`, in class order."""
  present = np.unique(np.asarray(pred).astype(np.int64))
  present = [int(c) for c in present if 0 <= c < len(names)]
  if not present:
    return []
  colours = task.colorize(np.asarray(present, np.int64).reshape(1, -1, 1))
  return [(str(names[c]), colours[0, i]) for i, c in enumerate(present)]


def footer(task, pred: np.ndarray, meta: Mapping[str, Any],
           name: str, width: int) -> np.ndarray | None:
  """The legend or colour bar drawn under a task's tile, if it has one."""
  names = (meta.get("class_names") or {}).get(name)
  if names and getattr(task, "num_classes", None):
    return legend(width, _class_entries(task, pred, names))
  if getattr(task, "units", None) and getattr(task, "vis_range", None):
    lo, hi = task.vis_range
    return viz.colorbar(width, lo, hi, task.units, height=_FOOT)
  return None


def panel(tiles: Sequence[tuple[str, np.ndarray]], *, max_cols: int = 4,
          min_height: int = 160, max_height: int = 480,
          max_width: int = 640,
          footers: Sequence[Any] | None = None) -> np.ndarray:
  """Titled RGB tiles on a grid near 16:9; tiny images are enlarged.

  `footers[k]` is None or a callable width -> (h, w, 3) strip drawn under
  tile k (a legend or a colour bar).
  """
  h, w = tiles[0][1].shape[:2]
  th = int(np.clip(h, min_height, max_height))
  th = max(1, min(th, round(max_width * h / w)))
  tw = max(1, round(w * th / h))
  foot = _FOOT if footers and any(f is not None for f in footers) else 0
  cell_h = _BAR + th + foot
  n = len(tiles)

  def aspect_error(cols: int) -> float:
    rows = -(-n // cols)
    return abs(np.log(cols * tw / (rows * cell_h) / (16 / 9)))

  ncols = min(range(1, min(n, max_cols) + 1), key=aspect_error)
  nrows = -(-n // ncols)
  canvas = Image.new("RGB", (ncols * tw, nrows * cell_h), "white")
  draw = ImageDraw.Draw(canvas)
  for k, (title, rgb) in enumerate(tiles):
    r, c = divmod(k, ncols)
    resample = Image.BILINEAR if k == 0 else Image.NEAREST
    tile = Image.fromarray(np.asarray(rgb, np.uint8)).resize((tw, th),
                                                             resample)
    canvas.paste(tile, (c * tw, r * cell_h + _BAR))
    draw.text((c * tw + 4, r * cell_h + 3), title, fill="black")
    make = footers[k] if footers else None
    if make is not None and foot:
      strip = Image.fromarray(np.asarray(make(tw), np.uint8))
      canvas.paste(strip.crop((0, 0, tw, foot)),
                   (c * tw, r * cell_h + _BAR + th))
  return np.asarray(canvas)


def task_panel(image: np.ndarray, preds: Mapping[str, np.ndarray],
               tasks: Mapping[str, Any], meta: Mapping[str, Any], *,
               max_cols: int = 4) -> np.ndarray:
  """The input and each task's colorized prediction, with legends."""
  tiles, footers = [("input", image)], [None]
  for name, task in tasks.items():
    if name not in preds:
      continue
    tiles.append((name, task.colorize(preds[name])))
    has = footer(task, preds[name], meta, name, 64) is not None
    footers.append((lambda w, t=task, n=name: footer(t, preds[n], meta, n, w))
                   if has else None)
  return panel(tiles, max_cols=max_cols, footers=footers)
