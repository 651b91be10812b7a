r"""Seconds per image of the SEISM boundary protocol (evaluators/boundary.py).

  python benchmarks/boundary_eval.py [--images 2] [--processes 2] \
      [--thresholds 101] [--csa] [--reference] [--val 0]

Synthetic scenes at PASCAL-Context size (375x500, maxDist 0.0075) and NYUD
size (448x576, maxDist 0.011): a Voronoi segmentation as gt (seg2bmap), the
prediction a blurred, slightly displaced copy of its boundaries plus smooth
low-frequency clutter (what a network's sigmoid map looks like away from
edges, so NMS keeps background ridges at low thresholds). Prints, per size,
the serial seconds per image (wall and CPU: on a shared machine trust CPU)
with the CPU seconds per stage (prepare, nms, binarise, thin, match) and,
at PASCAL size, the projected PASCAL-Context val time on ``--cores`` cores
(CPU s/image x 5,105 / cores: images spread perfectly), for the
exact default path (matcher "bsds": correspondPixels' assignment problem
solved by boundary_assign), ``--csa`` the same path with correspondPixels'
own CSA run (the counts are checked equal), ``--reference`` the original
full-image path (checked equal too) and the ``max_cardinality`` shortcut;
then the default matcher's own stages (edges, relaxed, draws, graph,
complete, repair; boundary_assign's doc), then, for the default and the
shortcut, the evaluator's pool (wall and worker CPU seconds per image,
counts checked equal to serial) and the projected time of PASCAL-Context
val (5,105 images). ``--val N`` also scores N synthetic-scenes val images
with both matchers (odsF difference of the shortcut; with ``--csa``, the
default's counts checked equal to correspondPixels' own). The matcher's cost
grows with the number of matchable pixels, so real maps may differ.
"""

from __future__ import annotations

import pathlib
import resource
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# pylint: disable=g-import-not-at-top
from absl import app, flags
import numpy as np
from scipy import ndimage

from mtdense_jax.evaluators import boundary
from mtdense_jax.evaluators import boundary_assign
from mtdense_jax.evaluators import boundary_match

flags.DEFINE_integer("images", 2, "Images per size (0: only --val).")
flags.DEFINE_integer("processes", 2,
                     "Pool size for the parallel timing (0: skip it).")
flags.DEFINE_integer("thresholds", 101,
                     "101 = SEISM's HED list; K = linspace(1/(K+1), ..).")
flags.DEFINE_integer("seed", 0, "Scene seed.")
flags.DEFINE_bool("csa", False,
                  "Also time matcher 'bsds_csa' (correspondPixels' CSA, the "
                  "slow original) and check its counts equal the default's.")
flags.DEFINE_bool("reference", False,
                  "Also time the original full-image path (slow) and check "
                  "its counts equal the default path's.")
flags.DEFINE_integer("cores", 2, "Cores for the projected val time.")
flags.DEFINE_integer("chunks", 1, "Threshold chunks per image in the pool.")
flags.DEFINE_integer("pool_images", 8,
                     "Images (repeats) for the pool timings.")
flags.DEFINE_integer("val", 0, "Synthetic-scenes val images to score with "
                     "both matchers (odsF difference of max_cardinality).")
FLAGS = flags.FLAGS

SIZES = {"pascal_context": ((375, 500), boundary.MAX_DIST_PASCAL),
         "nyud": ((448, 576), boundary.MAX_DIST_NYUD)}
PASCAL_VAL = 5105


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


def _serial(data, max_dist, thresholds, **kw):
  """(wall s/image, CPU s/image, counts, StageTimes per image)."""
  prof = boundary.StageTimes()
  t0, c0 = time.perf_counter(), time.process_time()
  counts = [boundary.image_counts(p, s, max_dist, thresholds,
                                  gt_mode="segmentation", profile=prof, **kw)
            for p, s in data]
  n = len(data)
  per = {k: v / n for k, v in prof.items()}
  return ((time.perf_counter() - t0) / n, (time.process_time() - c0) / n,
          np.stack(counts), per)


def _children_cpu() -> float:
  r = resource.getrusage(resource.RUSAGE_CHILDREN)
  return r.ru_utime + r.ru_stime


def _hms(sec: float) -> str:
  m, s = divmod(int(sec), 60)
  return f"{m // 60:d}:{m % 60:02d}:{s:02d}"


def run_size(name: str, thresholds) -> None:
  (h, w), max_dist = SIZES[name]
  rng = np.random.default_rng(FLAGS.seed)
  data = [scene(rng, h, w) for _ in range(FLAGS.images)]
  print(f"{name} {h}x{w}, maxDist {max_dist}:")
  runs = [("bsds (exact)", dict(matcher="bsds"))]
  if FLAGS.csa:
    runs.append(("bsds_csa", dict(matcher="bsds_csa")))
  if FLAGS.reference:
    runs.append(("bsds reference", dict(slow_reference=True)))
  runs.append(("max_cardinality", dict(matcher="max_cardinality")))
  exact = shortcut = None
  for label, kw in runs:
    sec, cpu, counts, per = _serial(data, max_dist, thresholds, **kw)
    s = boundary.summarize(counts)
    same = ""
    if label == "bsds (exact)":
      exact = counts
    elif label == "max_cardinality":
      shortcut = counts
    else:
      same = ("  counts EQUAL" if np.array_equal(counts, exact)
              else "  counts DIFFER")
    print(f"  {label:16s} serial {sec:6.2f} s/image ({cpu:6.2f} CPU s)  "
          f"odsF {s['odsF']:.4f} oisF {s['oisF']:.4f} AP {s['AP']:.4f}"
          f"{same}")
    print("    CPU s/image: " + "  ".join(f"{k} {v:.3f}"
                                           for k, v in per.items()))
    if name == "pascal_context":
      print(f"    PASCAL-Context val ({PASCAL_VAL} images) on "
            f"{FLAGS.cores} cores at this CPU rate: "
            f"{_hms(cpu * PASCAL_VAL / FLAGS.cores)} "
            f"({cpu / FLAGS.cores:.3f} s/image)")
  solver_stages(data, max_dist, thresholds)
  if FLAGS.processes > 0:  # the evaluator's pool; spawn start-up included
    for matcher, serial in (("bsds", exact), ("max_cardinality", shortcut)):
      # Images are repeated so start-up is amortised.
      reps = -(-FLAGS.pool_images // len(data))
      ev = boundary.BoundaryEvaluator(max_dist, thresholds,
                                      gt_mode="segmentation",
                                      processes=FLAGS.processes,
                                      chunks=FLAGS.chunks, matcher=matcher)
      t0, c0 = time.perf_counter(), _children_cpu()
      for p, s in data * reps:
        ev.add(p, s)
      ev.close()  # joins the workers, so their CPU time is counted
      sec = (time.perf_counter() - t0) / (len(data) * reps)
      cpu = (_children_cpu() - c0) / (len(data) * reps)
      same = np.array_equal(ev.counts, np.concatenate([serial] * reps))
      print(f"  {matcher:16s} pool({FLAGS.processes}) {sec:6.3f} s/image "
            f"wall, {cpu:6.3f} CPU s ({len(data) * reps} images); counts "
            f"{'EQUAL' if same else 'DIFFER'} to serial")
      if name == "pascal_context":
        print(f"    PASCAL-Context val ({PASCAL_VAL} images): "
              f"{_hms(sec * PASCAL_VAL)} at this wall rate, "
              f"{_hms(cpu * PASCAL_VAL / FLAGS.processes)} if the "
              f"{FLAGS.processes} processes had a core each")


def solver_stages(data, max_dist, thresholds) -> None:
  """CPU seconds per image in each stage of the default matcher."""
  stages, calls, biggest = {}, 0, 0
  cut = np.float32(np.maximum(np.finfo(np.float64).eps,
                              boundary.resolve_thresholds(thresholds)))
  for prob, seg in data:
    e = boundary.edge_nms(boundary.quantize_uint8(prob)).astype(np.float32)
    sweep = boundary_match.Sweep(e)
    match = boundary_assign.Assign(boundary.seg2bmap(seg), max_dist)
    for n in np.unique(sweep.size(cut)):
      if n == 0:
        continue
      ys, xs = sweep.pixels(int(n))
      last = [time.process_time()]

      def mark(stage, last=last):
        now = time.process_time()
        stages[stage] = stages.get(stage, 0.0) + now - last[0]
        last[0] = now

      t0, marked = last[0], sum(stages.values())
      match.pixels(ys, xs, boundary.DEFAULT_SEED, profile=mark)
      # What no stage covers (Python glue after the last mark).
      glue = time.process_time() - t0 - (sum(stages.values()) - marked)
      stages["glue"] = stages.get("glue", 0.0) + glue
      calls, biggest = calls + 1, max(biggest, int(n))
  total = sum(stages.values())
  print(f"    matcher stages, CPU s/image ({calls / len(data):.0f} solves "
        f"per image, {1e3 * total / max(calls, 1):.2f} ms per solve, up to "
        f"{biggest} pixels): " + "  ".join(
            f"{k} {v / len(data):.3f}" for k, v in stages.items()))


def val_shortcut(n: int) -> None:
  """odsF of both matchers on synthetic-scenes val (pascal_like)."""
  from data_builders.synthetic_scenes import builder as scenes  # pylint: disable=g-import-not-at-top
  cfg = scenes.derive_config("pascal_like")
  rng = np.random.default_rng(FLAGS.seed)
  counts = {"bsds": [], "max_cardinality": []}
  if FLAGS.csa:
    counts["bsds_csa"] = []
  for i in range(n):
    ex = scenes.render_example(cfg, "validation", i)
    edges = ndimage.shift(ex["edge"].astype(float), rng.integers(-1, 2, 2),
                          order=0)
    prob = ndimage.gaussian_filter(edges, 1.0)
    clutter = ndimage.gaussian_filter(rng.random(edges.shape), 2.0)
    clutter = (clutter - clutter.min()) / np.ptp(clutter)
    prob = np.clip(0.9 * prob / max(prob.max(), 1e-9) + 0.2 * clutter, 0, 1)
    for m in counts:
      counts[m].append(boundary.image_counts(
          prob, ex["edge"], scenes.EDGE_MAX_DIST, gt_mode="boundary",
          matcher=m))
  csa = counts.pop("bsds_csa", None)
  s = {m: boundary.summarize(np.stack(c)) for m, c in counts.items()}
  print(f"synthetic-scenes val ({n} images, {cfg.height}x{cfg.width}, "
        f"maxDist {scenes.EDGE_MAX_DIST}):")
  if csa is not None:
    same = np.array_equal(counts["bsds"], csa)
    print(f"  bsds counts {'EQUAL' if same else 'DIFFER'} to bsds_csa "
          "(correspondPixels' CSA)")
  for m, v in s.items():
    print(f"  {m:16s} odsF {v['odsF']:.5f} oisF {v['oisF']:.5f} "
          f"AP {v['AP']:.5f}")
  d = {k: s["max_cardinality"][k] - s["bsds"][k] for k in s["bsds"]}
  print("  max_cardinality - bsds: " + "  ".join(
      f"{k} {v:+.5f}" for k, v in d.items()))


def main(argv):
  del argv
  thresholds = None if FLAGS.thresholds == 101 else FLAGS.thresholds
  n = boundary.resolve_thresholds(thresholds).size
  print(f"{n} thresholds, {FLAGS.images} images per size")
  # Load (or compile, first time) the default matcher's numba code first.
  warm = scene(np.random.default_rng(0), 40, 50, regions=3)
  boundary.image_counts(*warm, 0.05, 5, gt_mode="segmentation")
  for name in SIZES if FLAGS.images > 0 else ():
    run_size(name, thresholds)
  if FLAGS.val:
    val_shortcut(FLAGS.val)


if __name__ == "__main__":
  app.run(main)
