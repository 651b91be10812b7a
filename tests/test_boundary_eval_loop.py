"""Boundary odsF inside evaluators/dense.evaluate: gt_key, progress, ETA."""

from __future__ import annotations

import numpy as np
import pytest

from mtdense_jax.evaluators import boundary
from mtdense_jax.evaluators import dense


class _EdgeTask:
  """Just what dense.evaluate asks of a task."""
  boundary_metric = True

  def metric_init(self):
    return {"n": np.zeros(())}

  def metric_compute(self, stats):
    return {"n": float(stats["n"])}


def _batches(rng, n=3, b=2, h=24, w=32):
  out = []
  for _ in range(n):
    seg = np.zeros((b, h, w, 1), np.int32)  # two regions per image
    for i, col in enumerate(rng.integers(8, w - 8, b)):
      seg[i, 4:, col:] = 1
    edge = np.stack([boundary.seg2bmap(s[..., 0]) for s in seg])[..., None]
    # The "network" predicts the image's first channel: the edges.
    image = np.concatenate([edge, np.zeros((b, h, w, 2))], -1)
    out.append({"image": image.astype(np.float32),
                "valid": np.ones((b,), bool), "edge": edge.astype(np.uint8),
                "labelmap": seg})
  return out


def _eval(batches, gt_key=None, every=0.0, gt_mode="auto"):
  task = _EdgeTask()
  predict = lambda p, s, image: {"edge": image[..., :1]}
  make = lambda: boundary.BoundaryEvaluator(0.05, 5, gt_mode=gt_mode,
                                            matcher="max_cardinality")
  return dense.evaluate(
      {"edge": task}, lambda p, s, stats, batch: stats, None, None,
      iter(batches), boundary=dense.BoundaryEval(predict, make, gt_key,
                                                 progress_every=every),
      num_batches=len(batches))


def test_progress_lines_with_eta(capsys):
  rng = np.random.default_rng(0)
  out = _eval(_batches(rng))
  assert set(out) == {"edge/n", "edge/odsF", "edge/oisF", "edge/AP"}
  lines = [l for l in capsys.readouterr().out.splitlines()
           if l.startswith("boundary odsF:")]
  assert lines[0].startswith("boundary odsF: 2/~6 images |")
  assert "ETA" in lines[0]
  assert lines[-1].startswith("boundary odsF: 6/~6 images |")


def test_gt_key_scores_against_that_map():
  # The prediction is the edge map: the same scores against the edges and
  # against a label map whose seg2bmap they are, 0 against a map without
  # boundaries. (Not quite 1: NMS fades the 5 border pixels.)
  rng = np.random.default_rng(1)
  batches = _batches(rng)
  by_edge = _eval(batches)
  assert by_edge["edge/odsF"] > 0.8
  assert _eval(batches, gt_key="labelmap", gt_mode="segmentation") == by_edge
  for b in batches:
    b["flat"] = np.zeros_like(b["labelmap"])
  assert _eval(batches, gt_key="flat",
               gt_mode="segmentation")["edge/odsF"] == 0.0
  with pytest.raises(KeyError, match="gt_key='instance'.*no 'instance'"):
    _eval(batches, gt_key="instance")
