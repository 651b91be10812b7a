r"""Seconds per image of the SEISM boundary protocol (evaluators/boundary.py).

  python benchmarks/boundary_eval.py [--images 2] [--processes 2] \
      [--thresholds 101]

Synthetic scenes at PASCAL-Context size (375x500, maxDist 0.0075) and NYUD
size (448x576, maxDist 0.011): a Voronoi segmentation as gt (seg2bmap), the
prediction a blurred, slightly displaced copy of its boundaries plus smooth
low-frequency clutter (what a network's sigmoid map looks like away from
edges, so NMS keeps background ridges at low thresholds). Prints the serial
seconds per image (one process; wall and CPU, the CPU figure being the one
to trust on a shared machine) with the reference matcher (correspondPixels)
and with the fast ``max_cardinality`` stand-in, and the wall seconds per
image of the reference with a pool of ``--processes`` workers (the
BoundaryEvaluator path). correspondPixels dominates; its cost grows with the
number of predicted pixels, i.e. with low thresholds and cluttered
predictions, so real maps may differ.
"""

from __future__ import annotations

import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# pylint: disable=g-import-not-at-top
from absl import app, flags
import numpy as np
from scipy import ndimage

from mtdense_jax.evaluators import boundary

flags.DEFINE_integer("images", 2, "Images per size.")
flags.DEFINE_integer("processes", 2,
                     "Pool size for the parallel timing (0: skip it).")
flags.DEFINE_integer("thresholds", 101,
                     "101 = SEISM's HED list; K = linspace(1/(K+1), ..).")
flags.DEFINE_integer("seed", 0, "Scene seed.")
FLAGS = flags.FLAGS

SIZES = {"pascal_context": ((375, 500), boundary.MAX_DIST_PASCAL),
         "nyud": ((448, 576), boundary.MAX_DIST_NYUD)}


def scene(rng: np.random.Generator, h: int, w: int,
          regions: int = 16) -> tuple[np.ndarray, np.ndarray]:
  """(prob, segmentation) of one synthetic image."""
  pts = rng.random((regions, 2)) * [h, w]
  yy, xx = np.mgrid[:h, :w]
  seg = np.zeros((h, w), np.int32)
  best = np.full((h, w), np.inf)
  for k, (py, px) in enumerate(pts):
    d = (yy - py) ** 2 + (xx - px) ** 2
    seg[d < best], best = k, np.minimum(best, d)
  edges = boundary.seg2bmap(seg).astype(np.float64)
  edges = ndimage.shift(edges, rng.integers(-2, 3, 2), order=0)
  prob = ndimage.gaussian_filter(edges, 1.5)
  clutter = ndimage.gaussian_filter(rng.random((h, w)), 4.0)
  clutter = (clutter - clutter.min()) / np.ptp(clutter)
  prob = 0.9 * prob / prob.max() + 0.15 * clutter
  return np.clip(prob, 0.0, 1.0), seg


def _serial(data, max_dist, thresholds, matcher):
  """(wall s/image, CPU s/image, counts) of one process."""
  t0, c0 = time.perf_counter(), time.process_time()
  counts = [boundary.image_counts(p, s, max_dist, thresholds,
                                  gt_mode="segmentation", matcher=matcher)
            for p, s in data]
  n = len(data)
  return ((time.perf_counter() - t0) / n, (time.process_time() - c0) / n,
          np.stack(counts))


def run_size(name: str, thresholds) -> None:
  (h, w), max_dist = SIZES[name]
  rng = np.random.default_rng(FLAGS.seed)
  data = [scene(rng, h, w) for _ in range(FLAGS.images)]
  print(f"{name} {h}x{w}, maxDist {max_dist}:")
  for matcher in ("bsds", "max_cardinality"):
    sec, cpu, counts = _serial(data, max_dist, thresholds, matcher)
    s = boundary.summarize(counts)
    print(f"  {matcher:15s} serial {sec:6.2f} s/image ({cpu:6.2f} CPU s)  "
          f"odsF {s['odsF']:.4f} oisF {s['oisF']:.4f} AP {s['AP']:.4f}")
  if FLAGS.processes > 0:  # the evaluator's pool; spawn start-up included
    ev = boundary.BoundaryEvaluator(max_dist, thresholds,
                                    gt_mode="segmentation",
                                    processes=FLAGS.processes)
    t0 = time.perf_counter()
    for p, s in data:
      ev.add(p, s)
    ev.close()
    sec = (time.perf_counter() - t0) / len(data)
    print(f"  {'bsds':15s} pool({FLAGS.processes}) {sec:6.2f} s/image wall")


def main(argv):
  del argv
  thresholds = None if FLAGS.thresholds == 101 else FLAGS.thresholds
  n = boundary.resolve_thresholds(thresholds).size
  print(f"{n} thresholds, {FLAGS.images} images per size")
  for name in SIZES:
    run_size(name, thresholds)


if __name__ == "__main__":
  app.run(main)
