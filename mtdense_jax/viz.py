"""One colour map for scalar maps (depth in metres), shared by the dataset
inspector, the tasks' colorize and the prediction panels, so that a colour
means the same value everywhere; invalid pixels get a grey checkerboard,
never a colour a valid value could have."""

from __future__ import annotations

import matplotlib
import numpy as np
from PIL import Image, ImageDraw

SCALAR_CMAP = "viridis"
_CHECKER = (np.uint8(96), np.uint8(160))  # two greys: invalid / padding
_CELL = 4  # checkerboard cell, pixels


def invalid_pattern(hw: tuple[int, int]) -> np.ndarray:
  """(H, W, 3) uint8 grey checkerboard marking invalid or padded pixels."""
  yy, xx = np.indices(hw)
  on = ((yy // _CELL + xx // _CELL) % 2).astype(bool)
  g = np.where(on, _CHECKER[1], _CHECKER[0]).astype(np.uint8)
  return np.repeat(g[..., None], 3, -1)


def scalar_rgb(x: np.ndarray, vmin: float, vmax: float,
               valid: np.ndarray | None = None) -> np.ndarray:
  """(H, W) or (H, W, 1) values -> (H, W, 3) uint8 over [vmin, vmax];
  pixels where `valid` is False show the invalid checkerboard."""
  x = np.asarray(x, np.float32)
  if x.ndim == 3:
    x = x[..., 0]
  t = np.clip((x - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0)
  rgb = (matplotlib.colormaps[SCALAR_CMAP](t)[..., :3] * 255.0 + 0.5
         ).astype(np.uint8)
  if valid is not None:
    valid = np.asarray(valid, bool)
    if valid.ndim == 3:
      valid = valid[..., 0]
    rgb = np.where(valid[..., None], rgb, invalid_pattern(x.shape))
  return rgb


def colorbar(width: int, vmin: float, vmax: float, unit: str = "",
             height: int = 30) -> np.ndarray:
  """A horizontal colour bar with end and middle values: (h, w, 3) uint8."""
  width = max(width, 60)
  bar_h = max(6, height // 2 - 2)
  ramp = np.linspace(vmin, vmax, width - 8)[None].repeat(bar_h, 0)
  canvas = Image.new("RGB", (width, height), "white")
  canvas.paste(Image.fromarray(scalar_rgb(ramp, vmin, vmax)), (4, 1))
  draw = ImageDraw.Draw(canvas)
  for frac, anchor in ((0.0, "la"), (0.5, "ma"), (1.0, "ra")):
    v = vmin + frac * (vmax - vmin)
    x = 4 + frac * (width - 9)
    draw.text((x, bar_h + 2), f"{v:g}{(' ' + unit) if frac == 1 else ''}",
              fill="black", anchor=anchor)
  return np.asarray(canvas)
