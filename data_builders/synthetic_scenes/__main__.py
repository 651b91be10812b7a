"""Preview: ``python -m data_builders.synthetic_scenes --out DIR``.

Writes ``DIR/<config>.png``: one row per example with the image and every
target coloured (depth, normals, semseg, parts, saliency, edges), rendered
directly (no TFDS preparation), to eyeball the generator.
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np
from PIL import Image

from data_builders.synthetic_scenes import builder as builder_lib


def _palette(n: int = 256) -> np.ndarray:
  """Distinct colours per id (golden-ratio hues), 255 (ignore) white."""
  import colorsys  # pylint: disable=g-import-not-at-top
  pal = np.array([colorsys.hsv_to_rgb((i * 0.618) % 1, 0.65, 0.95)
                  for i in range(n)]) * 255
  pal[0] = (40, 40, 40)
  pal[255] = (255, 255, 255)
  return pal.astype(np.uint8)


def _row(out: dict[str, np.ndarray]) -> np.ndarray:
  pal = _palette()
  depth = out["depth"]
  grey = np.uint8(255 * (1 - depth / max(float(depth.max()), 1e-6)))
  grey[depth == 0] = 0
  normals = np.uint8((out["normals"] + 1) * 127.5)
  mono = lambda m: np.repeat(np.uint8(m * 255)[..., None], 3, axis=-1)
  return np.concatenate([
      out["image"], np.repeat(grey[..., None], 3, -1), normals,
      pal[out["semseg"] + 1], pal[out["human_parts"]], mono(out["sal"]),
      mono(out["edge"])], axis=1)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--out", required=True, type=pathlib.Path)
  parser.add_argument("--config", default="nyud_like")
  parser.add_argument("--split", default="train")
  parser.add_argument("--num", type=int, default=6)
  parser.add_argument("--height", type=int, default=96)
  parser.add_argument("--width", type=int, default=128)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  cfg = builder_lib.derive_config(args.config, height=args.height,
                                  width=args.width, seed=args.seed)
  rows = [_row(builder_lib.render_example(cfg, args.split, i))
          for i in range(args.num)]
  args.out.mkdir(parents=True, exist_ok=True)
  path = args.out / f"{args.config}.png"
  Image.fromarray(np.concatenate(rows, axis=0)).save(path)
  print(f"wrote {path}: columns image, depth, normals, semseg, parts, "
        "sal, edge")


if __name__ == "__main__":
  main()
